"""Load flywheel records into Elasticsearch with the official client's bulk helper.

The index follows the data-flywheel storage convention (CONTRACTS.md §5): top level
``dynamic: strict``, ``workload_id``/``client_id`` keywords, ``request``/``response``
stored but not indexed (``dynamic: false``). Two deliberate differences: ``timestamp``
is a ``date`` with ``format: epoch_second`` (the default date format would read our
epoch seconds as milliseconds, so range queries and Kibana would be off by a factor of 1000), and
a few ``request.metadata`` keys (lead id, policy version, rule) are keywords so the
records can be sliced by them.

Idempotent: each document's ``_id`` is the record's deterministic id and the bulk
operation is ``create``, so loading the same records again adds nothing (Elasticsearch
answers 409 ``version_conflict_engine_exception`` per item, counted as already present).
Items rejected with 429/502/503/504, or whole bulk requests failing with them, are
retried with exponential backoff; what still fails is listed in the report.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from elasticsearch import ApiError, Elasticsearch, TransportError
from elasticsearch.helpers import streaming_bulk

from kpi_pipeline.core.flywheel.schema import FlywheelRecordError, describe_record, validate_record
from kpi_pipeline.telemetry.metrics import record_error

log = logging.getLogger(__name__)

RETRY_STATUSES = (429, 502, 503, 504)
_INVALID_INDEX_CHARS = re.compile(r'[\\/*?"<>| ,#:A-Z]')


class ElasticLoadError(RuntimeError):
    """Elasticsearch could not be used at all (unreachable, incompatible index, refused template)."""


@dataclass(frozen=True)
class LoadFailure:
    record_id: str
    status: int | None  # HTTP status of the item; None when the record was never sent
    error_type: str
    reason: str


@dataclass
class LoadReport:
    """What one ``load`` did. ``indexed`` = records now in the index from this load."""

    attempted: int = 0  # valid records sent
    created: int = 0
    already_present: int = 0  # same id already indexed: nothing added (the no-op of a re-load)
    failed: list[LoadFailure] = field(default_factory=list)

    @property
    def indexed(self) -> int:
        return self.created + self.already_present

    @property
    def ok(self) -> bool:
        return not self.failed

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "indexed": self.indexed}


def index_template(index: str) -> dict[str, Any]:
    """The composable index template body for ``index`` (explicit mappings, see module doc)."""
    return {
        "index_patterns": [index],
        "priority": 500,
        "template": {
            "settings": {"index.mapping.total_fields.limit": 1000},
            "mappings": {
                "dynamic": "strict",
                "properties": {
                    "timestamp": {"type": "date", "format": "epoch_second"},
                    "workload_id": {"type": "keyword"},
                    "client_id": {"type": "keyword"},
                    "request": {
                        "type": "object",
                        "dynamic": False,
                        "properties": {
                            "metadata": {
                                "type": "object",
                                "dynamic": False,
                                "properties": {
                                    "lead_id": {"type": "keyword"},
                                    "policy_version": {"type": "keyword"},
                                    "rule": {"type": "keyword"},
                                },
                            }
                        },
                    },
                    "response": {"type": "object", "dynamic": False, "properties": {}},
                },
            },
        },
        "_meta": {"managed_by": "kpi_pipeline", "contract": "data-flywheel log record"},
    }


def check_index_name(index: str) -> str:
    if not index or _INVALID_INDEX_CHARS.search(index) or index[0] in "-_+" or index in (".", ".."):
        raise ValueError(
            f"Elasticsearch index name {index!r} is invalid: use lowercase letters, digits, "
            "'-', '_' or '.', not starting with '-', '_' or '+'"
        )
    return index


class ElasticLoader:
    """Bulk-loads flywheel records into one index (see module docstring)."""

    def __init__(
        self,
        url: str | None = None,
        index: str = "flywheel",
        *,
        client: Elasticsearch | None = None,
        chunk_size: int = 500,
        max_retries: int = 4,
        initial_backoff: float = 0.5,
        max_backoff: float = 30.0,
        request_timeout: float = 30.0,
    ) -> None:
        if client is None and not url:
            raise ValueError(
                "ElasticLoader needs an Elasticsearch url (e.g. http://localhost:9200) or a client"
            )
        self.url = url
        self.index = check_index_name(index)
        # Statuses are retried by the bulk helper (per item, with backoff); the transport
        # itself only retries connection errors and timeouts.
        self.client = client or Elasticsearch(
            url,
            request_timeout=request_timeout,
            max_retries=3,
            retry_on_status=(),
            retry_on_timeout=True,
        )
        self.chunk_size = chunk_size
        self.max_retries = max_retries
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff

    @property
    def template_name(self) -> str:
        return f"kpi-pipeline-{self.index}"

    def ensure_index_template(self) -> dict[str, Any]:
        """Put the index template (idempotent); refuse an existing index with other mappings."""
        body = index_template(self.index)
        client = self.client.options(
            max_retries=self.max_retries,
            retry_on_status=RETRY_STATUSES,
            retry_backoff_base=self.initial_backoff,
            retry_backoff_cap=self.max_backoff,
        )
        with self._translate_errors("put the index template"):
            client.indices.put_index_template(name=self.template_name, **body)
            if client.indices.exists(index=self.index):
                self._check_existing_mapping(client)
        return body

    def load(self, records: Iterable[dict[str, Any]], *, refresh: bool = False) -> LoadReport:
        """Bulk-create ``records``; invalid ones are reported, not sent. See ``LoadReport``."""
        report = LoadReport()
        results = streaming_bulk(
            self.client,
            self._actions(records, report),
            chunk_size=self.chunk_size,
            raise_on_error=False,
            raise_on_exception=False,
            max_retries=self.max_retries,
            initial_backoff=self.initial_backoff,
            max_backoff=self.max_backoff,
            retry_on_status=RETRY_STATUSES,
            refresh="wait_for" if refresh else None,
        )
        with self._translate_errors("bulk-load flywheel records"):
            for ok, item in results:
                self._account(report, ok, item)
        if report.failed:
            record_error("flywheel")
            log.warning(
                "flywheel load into %s: %d record(s) failed", self.index, len(report.failed)
            )
        return report

    def count(self) -> int:
        """Documents in the index (after a refresh, as Elasticsearch counts)."""
        with self._translate_errors("count documents"):
            return int(self.client.count(index=self.index)["count"])

    # --- internals ----------------------------------------------------------------------
    def _actions(
        self, records: Iterable[dict[str, Any]], report: LoadReport
    ) -> Iterator[dict[str, Any]]:
        for record in records:
            try:
                document = validate_record(record).to_dict()
            except FlywheelRecordError as exc:
                report.failed.append(
                    LoadFailure(describe_record(record), None, "invalid_record", str(exc))
                )
                continue
            report.attempted += 1
            yield {
                "_op_type": "create",
                "_index": self.index,
                "_id": document["response"]["id"],
                "_source": document,
            }

    @staticmethod
    def _account(report: LoadReport, ok: bool, item: dict[str, Any]) -> None:
        _, info = next(iter(item.items()))
        if ok:
            report.created += 1
            return
        error = info.get("error")
        error_type = error.get("type", "unknown") if isinstance(error, dict) else "request_failed"
        if info.get("status") == 409 and error_type == "version_conflict_engine_exception":
            report.already_present += 1
            return
        reason = error.get("reason", str(error)) if isinstance(error, dict) else str(error)
        report.failed.append(
            LoadFailure(str(info.get("_id")), info.get("status"), error_type, reason)
        )

    def _check_existing_mapping(self, client: Elasticsearch) -> None:
        response = client.indices.get_mapping(index=self.index)
        mappings = next(iter(response.body.values()), {}).get("mappings", {})
        expected = index_template(self.index)["template"]["mappings"]
        problems = []
        if str(mappings.get("dynamic")) != "strict":
            problems.append(f"dynamic is {mappings.get('dynamic')!r}, not 'strict'")
        properties = mappings.get("properties", {})
        for name in ("timestamp", "workload_id", "client_id"):
            if properties.get(name) != expected["properties"][name]:
                problems.append(
                    f"{name} is mapped {properties.get(name)}, expected {expected['properties'][name]}"
                )
        if problems:
            raise ElasticLoadError(
                f"index {self.index!r} already exists with other mappings ({'; '.join(problems)}); "
                "records carry epoch-second timestamps, so loading into it would be wrong: "
                "load into a new index (--index NAME) or reindex this one"
            )

    @contextmanager
    def _translate_errors(self, action: str) -> Iterator[None]:
        """Turn transport failures into ``ElasticLoadError`` saying what we did and where."""
        where = f"could not {action} on Elasticsearch {self.url or '(given client)'}"
        try:
            yield
        except ApiError as exc:
            raise ElasticLoadError(f"{where}: HTTP {exc.status_code} {exc.message}") from exc
        except TransportError as exc:
            raise ElasticLoadError(f"{where}: {exc} (is the server up and the URL right?)") from exc
