"""cdc_sensor: drains Change Data Capture into durable batches, cursor = replay ids.

The sensor body is ``kpi_pipeline.app.ingest.drain_tick``; this file only translates its
outcome into Dagster terms (run requests, cursor, observations of ``cdc_events``).
"""

import json
from datetime import UTC, datetime, timedelta

import dagster as dg
from dagster._core.storage.dagster_run import RunRecord
from dagster._core.storage.tags import (
    AUTO_RETRY_RUN_ID_TAG,
    MAX_RUNTIME_SECONDS_TAG,
    PARENT_RUN_ID_TAG,
    RETRY_NUMBER_TAG,
    WILL_RETRY_TAG,
)

from kpi_pipeline.adapters.ledger.partitions import release_partitions
from kpi_pipeline.adapters.ledger.store import BatchInfo
from kpi_pipeline.app.ingest import DrainLimits, TickOutcome, drain_tick
from kpi_pipeline.core.cursor import ChannelCursor, SensorCursor
from kpi_pipeline.core.events import replay_id_hex
from kpi_pipeline.defs.asset_keys import CDC_EVENTS_KEY
from kpi_pipeline.defs.cdc.jobs import PARTITION_TAG, PARTITIONS_TAG, process_cdc_batch
from kpi_pipeline.defs.cdc.stream import STREAM_JOB, cdc_stream
from kpi_pipeline.defs.resources import PipelineResource


def _is_invalid_replay(exc: Exception) -> bool:
    from kpi_pipeline.core.errors import ReplayIdInvalidError

    return isinstance(exc, ReplayIdInvalidError)


_IN_PROGRESS = {
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
}
# How long a failed run's promise of an automatic retry holds off a new attempt: the retry
# daemon acts within a loop or two (seconds).
_RETRY_GRACE = timedelta(minutes=2)
# Bounds one processing run's run config (the batch ids travel in it).
_MAX_BATCHES_PER_RUN = 1000
# Batches left for an operator are looked at again on every tick; this bounds that cost.
_MAX_HEADS_CHECKED = 20
FIRST_BATCH_TAG = "kpi/first_batch_id"


def _drain_requests(
    pending: list[BatchInfo],
    attempt: int,
    max_events: int,
    max_runtime_seconds: int,
    partitions: int = 1,
) -> list[dg.RunRequest]:
    """One process_cdc_batch run for the oldest pending batches, in replay order, up to
    ``max_events`` (always at least one batch); with lead partitions, one such run per
    partition, each over the same batches."""
    request = _drain_request(pending, attempt, max_events, max_runtime_seconds)
    if partitions == 1:
        return [request]
    config = request.run_config["ops"]["load_batch"]["config"]
    return [
        dg.RunRequest(
            job_name=request.job_name,
            run_key=f"{request.run_key}/p{partition}of{partitions}",
            run_config={
                "ops": {
                    "load_batch": {
                        "config": {**config, "partition": partition, "partitions": partitions}
                    }
                }
            },
            tags={
                **request.tags,
                PARTITION_TAG: str(partition),
                PARTITIONS_TAG: str(partitions),
            },
        )
        for partition in range(partitions)
    ]


def _drain_request(
    pending: list[BatchInfo], attempt: int, max_events: int, max_runtime_seconds: int
) -> dg.RunRequest:
    """One process_cdc_batch run for the oldest pending batches, in replay order, up to
    ``max_events`` (always at least one batch)."""
    chosen: list[BatchInfo] = []
    events = 0
    for info in pending:
        full = events + info.event_count > max_events or len(chosen) >= _MAX_BATCHES_PER_RUN
        if chosen and full:
            break
        chosen.append(info)
        events += info.event_count
    first, last = chosen[0], chosen[-1]
    return dg.RunRequest(
        job_name=process_cdc_batch.name,  # the sensor also targets cdc_stream
        run_key=f"cdc:{first.batch_id}..{last.batch_id}#attempt{attempt}",
        # Only batch ids travel in run config; the events stay in the ledger inbox.
        run_config={"ops": {"load_batch": {"config": {"batch_ids": [b.batch_id for b in chosen]}}}},
        tags={
            FIRST_BATCH_TAG: first.batch_id,
            "kpi/last_batch_id": last.batch_id,
            "kpi/batches": str(len(chosen)),
            "kpi/events": str(events),
            "kpi/channels": ",".join(sorted({b.channel for b in chosen})),
            # Set per request, not on the job, because settings are read at tick time; Dagster
            # copies it onto automatic retries with the other tags.
            MAX_RUNTIME_SECONDS_TAG: str(max_runtime_seconds),
        },
    )


def _processing_request(
    instance: dg.DagsterInstance,
    ledger,
    *,
    max_attempts: int,
    max_events: int,
    max_runtime_seconds: int,
) -> dg.RunRequest | str:
    """``_processing_requests`` without lead partitions: the one request, or why none."""
    requests = _processing_requests(
        instance,
        ledger,
        max_attempts=max_attempts,
        max_events=max_events,
        max_runtime_seconds=max_runtime_seconds,
    )
    return requests if isinstance(requests, str) else requests[0]


def _processing_requests(
    instance: dg.DagsterInstance,
    ledger,
    *,
    max_attempts: int,
    max_events: int,
    max_runtime_seconds: int,
    partitions: int = 1,
) -> list[dg.RunRequest] | str:
    """At most one processing run at a time (one per lead partition: a round), for every
    pending batch: the requests, or why there are none.

    A run that died (killed worker, canceled, max_runtime) leaves its batches pending, and
    the next tick requests them again under a new attempt key. Attempts count the runs this
    sensor requested with that batch at their head, not Dagster's automatic retries of them.
    A head batch that used up ``max_attempts`` is left pending for an operator (it shows in
    the live_path_health check and ``kpi-pipeline ledger``) and the batches after it go on.
    A round of N partition runs is one attempt (its partition-0 run is counted); a batch
    stays pending until all N partitions completed it, and the next round requests it for
    every partition again (idempotent steps).
    """
    pending = ledger.pending_batches()
    if not pending:
        return "no staged batch is pending"
    running = instance.get_runs(
        filters=dg.RunsFilter(job_name=process_cdc_batch.name, statuses=list(_IN_PROGRESS)),
        limit=1,
    )
    if running:
        return f"run {running[0].run_id} is processing; {len(pending)} batches pending"
    now = datetime.now(UTC)
    for position, head in enumerate(pending[:_MAX_HEADS_CHECKED]):
        records = instance.get_run_records(
            filters=dg.RunsFilter(
                job_name=process_cdc_batch.name, tags={FIRST_BATCH_TAG: head.batch_id}
            )
        )
        if any(_retry_coming(r, now) for r in records):
            return f"an automatic retry of the run for {head.batch_id} is about to start"
        attempts = sum(1 for r in records if _is_attempt(r.dagster_run))
        if attempts < max_attempts:
            if partitions > 1:
                # Nothing runs: a lease left by a run that died after its retries is stale.
                release_partitions(ledger)
            return _drain_requests(
                pending[position:], attempts + 1, max_events, max_runtime_seconds, partitions
            )
    return (
        f"{min(len(pending), _MAX_HEADS_CHECKED)} pending batches used up their "
        f"{max_attempts} runs each; left for an operator (kpi-pipeline ledger)"
    )


def _is_attempt(run: dg.DagsterRun) -> bool:
    """A run the sensor requested (partition 0 of its round, if partitioned)."""
    return not _is_automatic_retry(run) and run.tags.get(PARTITION_TAG, "0") == "0"


def _is_automatic_retry(run: dg.DagsterRun) -> bool:
    """A run Dagster's retry daemon (or a re-execution) made from an earlier run of the batch.

    Only the runs cdc_sensor requested are attempts: a killed worker's run is retried by
    Dagster up to ``dagster/max_retries`` times, and counting those would spend the whole
    stalled-batch allowance on one death.
    """
    return PARENT_RUN_ID_TAG in run.tags or RETRY_NUMBER_TAG in run.tags


def _retry_coming(record: RunRecord, now: datetime) -> bool:
    """A failed run the retry daemon has promised to retry (``dagster/will_retry``) but has
    not yet: requesting another attempt now would run the batch twice at once. Bounded in
    time so a promise the daemon never keeps (retries switched off) cannot block the batch."""
    run = record.dagster_run
    if run.status != dg.DagsterRunStatus.FAILURE or AUTO_RETRY_RUN_ID_TAG in run.tags:
        return False
    if run.tags.get(WILL_RETRY_TAG, "").lower() != "true":
        return False
    # end_time is unset when the run's end was reported without events (run monitoring).
    ended = record.end_time or record.update_timestamp.timestamp()
    return now.timestamp() - ended < _RETRY_GRACE.total_seconds()


def _observations(outcome: TickOutcome) -> list[dg.AssetObservation]:
    observations = []
    for report in outcome.reports:
        metadata: dict = {
            "channel": report.channel,
            "replay_id": report.replay_id_hex or "",
            "events": report.events,
            "caught_up": report.caught_up,
            "by_change_type": dg.MetadataValue.json(report.by_change_type),
        }
        if report.lag_seconds is not None:
            metadata["lag_seconds"] = round(report.lag_seconds, 3)
        if report.undecodable:
            metadata["undecodable"] = report.undecodable
        if report.resync_window_id is not None:
            metadata["resync_window_id"] = report.resync_window_id
        observations.append(dg.AssetObservation(asset_key=CDC_EVENTS_KEY, metadata=metadata))
    return observations


def cdc_sensor_tick(
    context: dg.SensorEvaluationContext, pipeline: PipelineResource
) -> dg.SensorResult:
    settings = pipeline.settings()
    if settings.cdc_mode == "stream":
        return _stream_mode_tick(context, pipeline)
    held = _channels_leased_by_a_stream(pipeline.ledger(), settings.cdc_channels)
    if held:
        # Just switched from stream mode: the old stream run still consumes these channels.
        return dg.SensorResult(
            skip_reason=f"a cdc_stream run still holds {sorted(held)}; waiting for it to end",
            cursor=context.cursor,
        )
    decoder = pipeline.decoder()
    outcome = drain_tick(
        channels=settings.cdc_channels,
        cursor=SensorCursor.from_json(context.cursor),
        fetcher=pipeline.pubsub(),
        ledger=pipeline.ledger(),
        decode=decoder.decode,
        limits=DrainLimits(
            max_events=settings.cdc_max_events_per_tick,
            max_seconds=settings.cdc_fetch_timeout_seconds,
            initial_preset=settings.cdc_initial_preset,
            on_invalid_replay=settings.cdc_on_invalid_replay,
            idle_return_seconds=settings.cdc_idle_return_seconds,
        ),
        is_invalid_replay=_is_invalid_replay,
    )
    _mirror_cursor_to_replay_store(pipeline.ledger(), outcome.cursor)
    requests = _processing_requests(
        context.instance,
        pipeline.ledger(),
        max_attempts=settings.cdc_stalled_batch_max_attempts,
        max_events=settings.cdc_max_events_per_run,
        max_runtime_seconds=settings.cdc_run_max_runtime_seconds,
        partitions=settings.cdc_lead_partitions,
    )
    new_cursor = outcome.cursor.to_json()
    if isinstance(requests, str):
        summary = json.dumps({r.channel: r.replay_id_hex for r in outcome.reports})
        return dg.SensorResult(
            skip_reason=f"{requests} (replay ids: {summary})",
            cursor=new_cursor,
            asset_events=_observations(outcome),
        )
    return dg.SensorResult(
        run_requests=requests, cursor=new_cursor, asset_events=_observations(outcome)
    )


# --- stream mode -------------------------------------------------------------------------


def _stream_mode_tick(
    context: dg.SensorEvaluationContext, pipeline: PipelineResource
) -> dg.SensorResult:
    """Keep exactly one cdc_stream run alive; report the durable replay ids it reached."""
    settings = pipeline.settings()
    ledger = pipeline.ledger()
    _seed_replay_store_from_cursor(ledger, SensorCursor.from_json(context.cursor))
    cursor = _cursor_from_replay_store(ledger, settings.cdc_channels)
    observations = _replay_store_observations(ledger, settings.cdc_channels)
    live = context.instance.get_runs(
        filters=dg.RunsFilter(job_name=STREAM_JOB, statuses=list(_IN_PROGRESS)), limit=1
    )
    if live:
        return dg.SensorResult(
            skip_reason=f"cdc_stream run {live[0].run_id} is consuming",
            cursor=cursor.to_json(),
            asset_events=observations,
        )
    generation = context.instance.get_runs_count(dg.RunsFilter(job_name=STREAM_JOB)) + 1
    lifetime = settings.cdc_stream_generation_seconds
    request = dg.RunRequest(
        job_name=STREAM_JOB,
        run_key=f"cdc_stream:{generation}",
        tags={
            # A generation ends itself after its lifetime; this only ends a lost one.
            MAX_RUNTIME_SECONDS_TAG: str(int(lifetime + settings.cdc_run_max_runtime_seconds)),
            # No Dagster retries: this sensor starts the next generation itself, and a retry
            # beside it would only hold a run slot waiting for the leases.
            "dagster/max_retries": "0",
            "kpi/generation": str(generation),
        },
    )
    return dg.SensorResult(
        run_requests=[request], cursor=cursor.to_json(), asset_events=observations
    )


def _channels_leased_by_a_stream(ledger, channels: list[str]) -> set[str]:
    now = datetime.now(UTC)
    return {
        lease.channel
        for lease in ledger.channel_leases()
        if lease.channel in channels and lease.expires_at > now
    }


def _seed_replay_store_from_cursor(ledger, cursor: SensorCursor) -> None:
    """Switching sensor -> stream: channels the stream has no position for resume where
    the sensor's cursor left them (sensor mode also mirrors each tick; this covers a
    cursor from before the replay store existed)."""
    known = {p.channel for p in ledger.replay_positions()}
    for channel, position in cursor.channels.items():
        if channel not in known and position.replay_id is not None:
            ledger.set_replay_id(channel, position.replay_id)


def _mirror_cursor_to_replay_store(ledger, cursor: SensorCursor) -> None:
    """Sensor mode keeps the replay store in step, so switching to stream mode resumes
    exactly where the sensor staged up to."""
    stored = {p.channel: p.replay_id for p in ledger.replay_positions()}
    for channel, position in cursor.channels.items():
        if position.replay_id is not None and stored.get(channel) != position.replay_id:
            ledger.set_replay_id(channel, position.replay_id)


def _cursor_from_replay_store(ledger, channels: list[str]) -> SensorCursor:
    """Stream mode: the cursor mirrors the durable replay ids, so the UI shows them as in
    sensor mode and switching back to sensor mode resumes there."""
    cursor = SensorCursor()
    for position in ledger.replay_positions():
        if position.channel in channels:
            cursor = cursor.with_channel(
                position.channel,
                ChannelCursor(replay_id=position.replay_id, commit_ms=position.commit_ms),
            )
    return cursor


def _replay_store_observations(ledger, channels: list[str]) -> list[dg.AssetObservation]:
    now_ms = datetime.now(UTC).timestamp() * 1000
    observations = []
    pending = {}
    for info in ledger.pending_batches():
        pending[info.channel] = pending.get(info.channel, 0) + 1
    for position in ledger.replay_positions():
        if position.channel not in channels:
            continue
        metadata: dict = {
            "channel": position.channel,
            "replay_id": replay_id_hex(position.replay_id),
            "mode": "stream",
            "pending_batches": pending.get(position.channel, 0),
            # Seconds since the stream last advanced the position (events or keepalives):
            # a live, caught-up stream keeps this small even when the org is quiet.
            "position_age_seconds": round((now_ms / 1000.0) - position.updated_at.timestamp(), 3),
        }
        if position.commit_ms is not None:
            # Not a lag: on a quiet org the newest commit simply gets older.
            metadata["newest_commit_age_seconds"] = round(
                max(0.0, (now_ms - position.commit_ms) / 1000.0), 3
            )
        observations.append(dg.AssetObservation(asset_key=CDC_EVENTS_KEY, metadata=metadata))
    return observations


def build_cdc_sensor(minimum_interval_seconds: int) -> dg.SensorDefinition:
    """``cdc_sensor``, ticking every ``KPI_SENSOR_INTERVAL_SECONDS`` (read by the definitions
    factory when the code location loads, never at import)."""
    return dg.sensor(
        name="cdc_sensor",
        jobs=[process_cdc_batch, cdc_stream],
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Sensor mode: drains Salesforce CDC per channel into staged batches and keeps "
        "at most one process_cdc_batch run going over every pending batch (one per lead partition "
        "with KPI_CDC_LEAD_PARTITIONS > 1). Stream mode: keeps one "
        "cdc_stream run alive. Cursor = replay ids.",
    )(cdc_sensor_tick)
