"""Builds the adapters from settings: the one place that decides sandbox or real org.

No Dagster here; the Dagster resources in ``kpi_pipeline.defs.resources`` are thin
wrappers. Objects are cached per process because a Dagster code server evaluates the
sensor many times in one process (gRPC channels and schema caches are worth keeping),
while each run is a fresh process that builds its own.

The embedded sandbox runs in a process of its own (``kpi_pipeline.sandbox.runtime``) that
can stop or be replaced while this process lives on, so the sandbox connection is checked
(cheaply: ``sandbox.json`` and two loopback TCP connects) each time it is handed out, and
the clients built for a sandbox that no longer answers are dropped and rebuilt.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kpi_pipeline.config import Settings

if TYPE_CHECKING:
    from kpi_pipeline.app.replay import ReplayPorts

_lock = threading.RLock()
_cache: dict[tuple[str, ...], Any] = {}
_sandbox_checked: dict[tuple[str, ...], float] = {}  # when each sandbox was last checked
SANDBOX_CHECK_INTERVAL_S = 1.0


def _cached(key: tuple[str, ...], build):
    with _lock:
        if key not in _cache:
            _cache[key] = build()
        return _cache[key]


@dataclass(frozen=True)
class OrgConnection:
    """Where the org is and how to authenticate (sandbox or real)."""

    pubsub_target: str
    pubsub_tls: bool
    token_provider: Any  # kpi_pipeline.adapters.auth.jwt.JWTTokenProvider | StaticTokenProvider
    is_sandbox: bool
    sandbox_endpoints: Any = None  # kpi_pipeline.sandbox.runtime.SandboxEndpoints it was built for
    ca_file: str | None = None  # PEM CA trusted for TLS (None: the system's)


def org_connection(settings: Settings) -> OrgConnection:
    if settings.uses_real_org:
        return _cached(("org", settings.salesforce_username or ""), lambda: _real_org(settings))
    key = ("sandbox", str(settings.data_dir.resolve()))
    with _lock:
        cached = _cache.get(key)
        if (
            cached is not None
            and _sandbox_check_due(key)
            and not _sandbox_still_serves(settings, cached)
        ):
            _forget_sandbox(key, cached)
        return _cached(key, lambda: _sandbox_org(settings))


def _real_org(settings: Settings) -> OrgConnection:
    from kpi_pipeline.adapters.auth.jwt import JWTTokenProvider

    provider = JWTTokenProvider.from_settings(settings)
    ca_file = str(settings.pubsub_ca_file) if settings.pubsub_ca_file else None
    return OrgConnection(
        settings.pubsub_endpoint, settings.pubsub_tls, provider, is_sandbox=False, ca_file=ca_file
    )


def _sandbox_org(settings: Settings) -> OrgConnection:
    from kpi_pipeline.adapters.auth.tokens import StaticTokenProvider
    from kpi_pipeline.sandbox.runtime import ensure_sandbox

    endpoints = ensure_sandbox(settings.data_dir, settings=settings)
    provider = StaticTokenProvider(endpoints.access_token, endpoints.rest_url, endpoints.tenant_id)
    # The sandbox serves TLS with its own CA (DATA_DIR/sandbox_ca.pem) unless it was started
    # without --tls; either way its endpoints say which.
    return OrgConnection(
        endpoints.pubsub_target,
        endpoints.ca_file is not None,
        provider,
        is_sandbox=True,
        sandbox_endpoints=endpoints,
        ca_file=endpoints.ca_file,
    )


def _sandbox_check_due(key: tuple[str, ...]) -> bool:
    """At most one liveness check per second and process: a sensor tick asks for its clients
    several times in a row, and a burst of connects would only queue up at the sandbox."""
    now = time.monotonic()
    if now - _sandbox_checked.get(key, float("-inf")) < SANDBOX_CHECK_INTERVAL_S:
        return False
    _sandbox_checked[key] = now
    return True


def _sandbox_still_serves(settings: Settings, conn: OrgConnection) -> bool:
    """``sandbox.json`` still names the sandbox ``conn`` was built for, and it answers."""
    from kpi_pipeline.sandbox.runtime import read_endpoints

    return read_endpoints(settings.data_dir) == conn.sandbox_endpoints


def _forget_sandbox(key: tuple[str, ...], conn: OrgConnection) -> None:
    """Drop a dead sandbox's connection and the clients built on it (their channels would
    answer "connection refused" until rebuilt). Not closed here: a call in another thread
    may still hold one; they close when collected."""
    _cache.pop(key, None)
    client = _cache.pop(("pubsub", conn.pubsub_target), None)
    if client is not None:
        _cache.pop(("decoder", str(id(client))), None)
    _cache.pop(("rest", conn.pubsub_target), None)


def _org_client(settings: Settings, kind: str, build: Callable[[Settings, OrgConnection], Any]):
    """The one ``kind`` client of the org's current connection, built on first use
    (``_forget_sandbox`` drops it with a dead sandbox's connection)."""
    conn = org_connection(settings)
    return _cached((kind, conn.pubsub_target), lambda: build(settings, conn))


def pubsub_client(settings: Settings):
    return _org_client(settings, "pubsub", _new_pubsub_client)


def _new_pubsub_client(settings: Settings, conn: OrgConnection):
    from kpi_pipeline.adapters.pubsub.client import PubSubClient

    return PubSubClient(
        conn.pubsub_target,
        conn.token_provider,
        tls=conn.pubsub_tls,
        stall_timeout_s=settings.cdc_stall_timeout_seconds,
        ca_file=conn.ca_file,
    )


def event_decoder(settings: Settings):
    """Decoder for the sensor's summaries, fetching unknown schemas from the Pub/Sub API."""
    from kpi_pipeline.adapters.pubsub.decode import EventDecoder

    client = pubsub_client(settings)
    return _cached(("decoder", str(id(client))), lambda: EventDecoder(client.get_schema))


def staged_batch_decoder():
    """Decoder for staged batches: they carry the schemas staged with them, so it never
    fetches one (no Pub/Sub connection per processing run); one per process, so parsed
    schemas are reused across runs."""
    from kpi_pipeline.adapters.pubsub.decode import EventDecoder
    from kpi_pipeline.core.errors import UnknownSchemaError

    def _not_staged(schema_id: str) -> str:
        raise UnknownSchemaError(
            f"schema id {schema_id!r} must come with its batch (LoadedBatch.schemas); "
            "staged batches are decoded from the ledger, never from the Pub/Sub API"
        )

    return _cached(("staged_decoder",), lambda: EventDecoder(_not_staged))


def ledger(settings: Settings):
    from kpi_pipeline.adapters.ledger.store import Ledger

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    url = settings.resolved_ledger_url
    return _cached(("ledger", url), lambda: Ledger.from_url(url))


def salesforce_rest(settings: Settings):
    return _org_client(settings, "rest", _new_salesforce_rest)


def _new_salesforce_rest(settings: Settings, conn: OrgConnection):
    from kpi_pipeline.adapters.salesforce.rest import SalesforceRest

    return SalesforceRest(
        conn.token_provider,
        api_version=settings.salesforce_api_version,
        client_id=settings.client_id,
        session=_https_session(conn),
        concurrent_requests=settings.writeback_concurrent_requests,
    )


def _https_session(conn: OrgConnection):
    """A requests session trusting the sandbox's CA for its HTTPS REST server (a real org's
    REST API uses the system's CAs, or REQUESTS_CA_BUNDLE); None: SalesforceRest's default."""
    if not conn.is_sandbox or conn.ca_file is None:
        return None
    from kpi_pipeline.sandbox.tls import ca_pinned_session

    return ca_pinned_session(conn.ca_file)


def probe_org(settings: Settings, *, timeout_s: float = 5.0):
    """Ask the org for a token and one row (``operator_status.OrgProbe``), never starting
    the embedded sandbox: a stopped sandbox is exactly what readiness must report. A fresh
    token provider each time, so a replaced key file is noticed without a restart."""
    from datetime import UTC, datetime

    import requests

    from kpi_pipeline.adapters.auth.jwt import JWTTokenProvider
    from kpi_pipeline.adapters.auth.tokens import AuthError, StaticTokenProvider
    from kpi_pipeline.adapters.salesforce.rest import SalesforceRest
    from kpi_pipeline.app.operator_status import OrgProbe
    from kpi_pipeline.core.salesforce_rest import SessionInvalidError

    now = datetime.now(UTC)
    session = None
    if settings.uses_real_org:
        provider: Any = JWTTokenProvider.from_settings(settings)
    else:
        from kpi_pipeline.sandbox.runtime import read_endpoints
        from kpi_pipeline.sandbox.tls import ca_pinned_session

        endpoints = read_endpoints(settings.data_dir)
        if endpoints is None:
            detail = f"the embedded sandbox org of {settings.data_dir} is not running (make dev starts it)"
            return OrgProbe(False, "org_unreachable", detail, now)
        provider = StaticTokenProvider(
            endpoints.access_token, endpoints.rest_url, endpoints.tenant_id
        )
        session = ca_pinned_session(endpoints.ca_file) if endpoints.ca_file else None
    rest = SalesforceRest(
        provider,
        api_version=settings.salesforce_api_version,
        client_id=settings.client_id,
        session=session,
        max_attempts=1,
        timeout_s=timeout_s,
    )
    try:
        rest.query("SELECT Id FROM Lead LIMIT 1")
    except (AuthError, SessionInvalidError) as exc:
        # A login URL that does not answer is the org being unreachable, not a refused key.
        code = getattr(exc, "error", None) or getattr(exc, "error_code", None)
        if code == "unreachable":
            return OrgProbe(False, "org_unreachable", f"{exc}"[:500], now)
        return OrgProbe(False, "org_auth_failed", f"authentication failed: {exc}"[:1000], now)
    except (requests.RequestException, OSError, RuntimeError) as exc:
        return OrgProbe(False, "org_unreachable", f"{type(exc).__name__}: {exc}"[:500], now)
    return OrgProbe(True, None, "token and a one-row query answered", now)


def batch_processor(settings: Settings, *, live_clock: bool = True):
    """The processor the job's ops share. Live runs stamp decisions with the wall clock;
    ``replay`` uses the event clock instead (``live_clock=False``)."""
    from datetime import UTC, datetime

    from kpi_pipeline.adapters.llm.client import selector_from_settings
    from kpi_pipeline.app.processing import BatchProcessor
    from kpi_pipeline.core.policy.load import load_policy
    from kpi_pipeline.core.workloads.outreach_templates import load_catalog

    return _cached(
        ("processor", settings.resolved_ledger_url, str(settings.policy_file), str(live_clock)),
        lambda: BatchProcessor(
            ledger(settings),
            load_policy(settings.policy_file),
            selector=selector_from_settings(settings),
            catalog=load_catalog(),
            client_id=settings.client_id,
            clock=(lambda: datetime.now(UTC)) if live_clock else None,
            integration_user_id=settings.salesforce_integration_user_id,
            # Live runs re-read diffed fields a workload needs; replay stays offline.
            field_reader=_LazyRest(settings) if live_clock else None,
        ),
    )


class _LazyRest:
    """The org's REST API for the processor, built on first use: most batches carry no
    diffed field a workload reads, so a processing run needs no REST session."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def get_record(self, sobject: str, record_id: str, fields):
        return salesforce_rest(self._settings).get_record(sobject, record_id, fields)


def drain_writeback(settings: Settings):
    """One write-back drain with this process's ledger, org and processor (which records
    decisions a person's owner change superseded)."""
    from kpi_pipeline.adapters.salesforce.rest import MAX_COLLECTION_RECORDS
    from kpi_pipeline.app.writeback import drain_writeback as drain

    processor = batch_processor(settings)
    return drain(
        ledger(settings),
        salesforce_rest(settings),
        processor.owner_rules,
        recorder=processor,
        lease_seconds=settings.writeback_lease_seconds,
        # One round's claim fills every request the REST adapter sends at once.
        batch_size=MAX_COLLECTION_RECORDS * settings.writeback_concurrent_requests,
    )


def replay_ports() -> ReplayPorts:
    """What ``kpi-pipeline replay`` writes with: a scratch SQLite ledger, the KPI CSV
    rendering of the daily assets, the flywheel JSONL writer and a forked child process for
    half of the output files. No settings needed."""
    from kpi_pipeline.adapters.beside import run_beside
    from kpi_pipeline.adapters.flywheel.loaders.to_jsonl import write_jsonl
    from kpi_pipeline.adapters.kpi_files import kpi_csv_text
    from kpi_pipeline.adapters.ledger.scratch import scratch_sqlite_ledger
    from kpi_pipeline.app.replay import ReplayPorts

    return ReplayPorts(
        scratch_ledger=scratch_sqlite_ledger,
        kpi_csv_text=kpi_csv_text,
        write_jsonl=write_jsonl,
        run_beside=run_beside,
    )


def reset_cache() -> None:
    """For tests that change settings within one process."""
    with _lock:
        _cache.clear()
        _sandbox_checked.clear()


def stream_worker(settings: Settings, *, holder: str, on_progress=None):
    """One generation of the stream-mode live path (``kpi_pipeline.app.stream_worker``)."""
    from datetime import timedelta

    from kpi_pipeline.adapters.pubsub.decode import EventDecoder
    from kpi_pipeline.adapters.pubsub.stager import LedgerStager, newest_commit_ms
    from kpi_pipeline.adapters.pubsub.stream import StreamSubscriber
    from kpi_pipeline.app.stream_worker import COALESCE_EVENTS, StreamLimits, StreamWorker

    client, the_ledger = pubsub_client(settings), ledger(settings)
    # Events decoded to stage them are taken by the processing of their batch, in this
    # process: a flush comes at most COALESCE_EVENTS (plus one response) after the first.
    decoder = EventDecoder(client.get_schema, keep=4 * COALESCE_EVENTS)

    def subscribe(channels, resume_from, initial_preset) -> StreamSubscriber:
        return StreamSubscriber(
            client, channels, resume_from=resume_from, initial_preset=initial_preset
        )

    return StreamWorker(
        ledger=the_ledger,
        processor=batch_processor(settings),
        subscribe=subscribe,
        stager=LedgerStager(
            the_ledger, client.get_schema, commit_ms=newest_commit_ms(decoder.decode_and_keep)
        ),
        decoder=decoder,
        channels=settings.cdc_channels,
        drain=(lambda: drain_writeback(settings)) if settings.writeback_enabled else None,
        holder=holder,
        limits=StreamLimits(
            lifetime=timedelta(seconds=settings.cdc_stream_generation_seconds),
            lease_ttl=timedelta(seconds=settings.cdc_stream_lease_seconds),
            initial_preset=settings.cdc_initial_preset,
            on_invalid_replay=settings.cdc_on_invalid_replay,
        ),
        on_progress=on_progress,
    )
