"""Staging what the stream delivers (an adapter): ``LedgerStager`` stages each batch in the
ledger inbox and advances the channel's durable replay id in the same transaction, using the
batch's previous replay id as the compare-and-set's expected value; ``newest_commit_ms``
reads a batch's newest commit time for the replay store."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from kpi_pipeline.adapters.ledger.replay_store import ReplayStoreMixin, StagedResponse
from kpi_pipeline.core.events import ChangeEvent
from kpi_pipeline.core.raw import RawEvent, StreamBatch


def newest_commit_ms(
    decode: Callable[[RawEvent], ChangeEvent],
) -> Callable[[Sequence[RawEvent]], int | None]:
    """Newest commit time of a batch, for the replay store; undecodable events are skipped
    here (the processor dead-letters them with their reason)."""

    def newest(events: Sequence[RawEvent]) -> int | None:
        times = []
        for raw in events:
            try:
                times.append(decode(raw).header.commit_timestamp)
            except Exception:  # decoding problems belong to the processor
                continue
        return max(times, default=None)

    return newest


class LedgerStager:
    """Handler that stages a ``StreamBatch`` and advances the durable replay id atomically.

    ``get_schema`` supplies the Avro schema JSON of each schema id (``client.get_schema``);
    ``commit_ms`` optionally reads the newest commit time (``newest_commit_ms``).
    Returns the ledger's ``StagedResponse`` (None for a keepalive on an empty bus).
    """

    def __init__(
        self,
        ledger: ReplayStoreMixin,
        get_schema: Callable[[str], str],
        *,
        commit_ms: Callable[[Sequence[RawEvent]], int | None] | None = None,
    ) -> None:
        self.ledger = ledger
        self._get_schema = get_schema
        self._commit_ms = commit_ms

    def __call__(self, batch: StreamBatch) -> StagedResponse | None:
        if not batch.latest_replay_id:
            return None
        schemas = {
            sid: self._get_schema(sid) for sid in sorted({e.schema_id for e in batch.events})
        }
        return self.ledger.stage_and_advance(
            batch.channel,
            batch.events,
            schemas,
            replay_id=batch.latest_replay_id,
            expected=batch.previous_replay_id,
            commit_ms=self._commit_ms(batch.events) if self._commit_ms and batch.events else None,
        )
