"""The plan's latency targets measured on the real pipeline (sandbox org, ledger, Dagster job).

A committer thread writes into the sandbox org's store at random instants (Poisson): new
leads owned by the inbound queue (they need routing) and, 8 to 15 s after each, a completed
call Task on it (its first response). Every commit is stamped with the wall clock, as
Salesforce stamps ``commitTimestamp``. Latencies are read afterwards from the ledger's own
wall-clock columns, one sample per event or lead:

* CDC event latency: commit of each of our changes -> its row in the ledger inbox
  (``cdc_inbox.staged_at``), i.e. staged by a sensor tick;
* assignment latency: lead commit -> routing decision (``routing_decisions.decided_at``),
  -> queued for write-back (``sf_outbox.created_at``), -> written back to the sandbox over
  REST (our OwnerId update's commit in the org's change log);
* TTFR detection latency: response commit -> first response decided in the ledger (the
  ``first_touch`` row in ``decisions``).

Scenarios:

``inprocess``: the real ``cdc_sensor`` evaluated in this process (``build_sensor_context``)
at a fixed cadence, each run request executed right away with ``execute_in_process``
(in-process executor): no run launch. ``--interval 5`` is Dagster's sensor floor;
``--interval 0`` ticks back to back, the closest a long-running loop outside the daemon
gets with today's code. Also reports the pure in-tick part and per-batch processing time.

``daemon``: ``dagster-daemon run`` (code server, QueuedRunCoordinator, run workers as
processes) against the sandbox org with live simulation on (served from this process, as a
real org is outside Dagster; the code server and runs find it in sandbox.json); the
per-stage breakdown comes from the Dagster instance (run created / started / ended) and the
sensor's tick history. ``--coordinator queued`` is Dagster's default (dequeue every 5 s),
``queued-1s`` dequeues every second.

    python bench/bench_latency.py inprocess [--interval 5] [--seconds 60] [--lead-rate 0.2]
    python bench/bench_latency.py daemon [--coordinator queued] [--seconds 150]
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

WORKDIR = Path(tempfile.mkdtemp(prefix="bench_latency_"))
os.environ.setdefault("KPI_DATA_DIR", str(WORKDIR / "kpi"))
os.environ.setdefault("KPI_CDC_MODE", "sensor")  # it measures the run-per-batch path

import sqlalchemy as sa  # noqa: E402

from kpi_pipeline.core.events import replay_id_to_int  # noqa: E402
from kpi_pipeline.sandbox.simulator import API_ORIGIN, UI_ORIGIN  # noqa: E402
from kpi_pipeline.sandbox.store import (  # noqa: E402
    INBOUND_QUEUE,
    INTEGRATION_USER,
    REPS,
    SandboxStore,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RESPONSE_DELAY_S = (8.0, 15.0)
SEED_LEADS_PER_DAY = "20"  # a small seeded history: the warm-up drains it in one tick
QUIET_LOGS = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


# --- committing activity ----------------------------------------------------------------


@dataclass
class CommitLog:
    leads: dict[str, int] = field(default_factory=dict)  # lead id -> commit ms
    responses: dict[str, tuple[str, int]] = field(default_factory=dict)  # task -> (lead, ms)


class Committer(threading.Thread):
    """Creates leads at Poisson instants and answers each 8-15 s later, for ``seconds``."""

    def __init__(self, store_path: Path, *, lead_rate: float, seconds: float, seed: int) -> None:
        super().__init__(name="committer", daemon=True)
        self.store_path, self.lead_rate, self.seconds = store_path, lead_rate, seconds
        self.rng = random.Random(seed)
        self.log = CommitLog()
        self.error: BaseException | None = None

    def run(self) -> None:
        store = SandboxStore(self.store_path)
        try:
            self._commit_all(store)
        except BaseException as exc:  # reported by the caller: a silent thread would skew results
            self.error = exc
        finally:
            store.close()

    def _commit_all(self, store: SandboxStore) -> None:
        end = time.time() + self.seconds
        next_lead = time.time() + self.rng.expovariate(self.lead_rate)
        due: list[tuple[float, str]] = []  # (when, lead id) of responses still to write
        number = 0
        while True:
            upcoming = [when for when, _ in due] + ([next_lead] if next_lead < end else [])
            if not upcoming:
                return
            wait = min(upcoming) - time.time()
            if wait > 0:
                time.sleep(wait)
            now = time.time()
            if now >= next_lead and next_lead < end:
                number += 1
                lead_id = self._lead(store, number)
                due.append((now + self.rng.uniform(*RESPONSE_DELAY_S), lead_id))
                next_lead = now + self.rng.expovariate(self.lead_rate)
            for item in [d for d in due if d[0] <= now]:
                due.remove(item)
                self._respond(store, item[1])

    def _lead(self, store: SandboxStore, number: int) -> str:
        at_ms = time.time_ns() // 1_000_000
        lead_id = store.create_record(
            "Lead",
            {
                "FirstName": "Bench",
                "LastName": f"Lead {number}",
                "Company": f"Latency Labs {number}",
                "Email": f"bench.lead{number}@latency.example",
                "Status": "Open - Not Contacted",
                "LeadSource": "Web",
                "Industry": "Technology",
                "NumberOfEmployees": 120,
                "Address": {"Country": "United States", "CountryCode": "US", "City": "Austin"},
                "OwnerId": INBOUND_QUEUE.id,
            },
            user_id=INTEGRATION_USER.id,
            at_ms=at_ms,
            change_origin=API_ORIGIN,
        )
        self.log.leads[lead_id] = at_ms
        return lead_id

    def _respond(self, store: SandboxStore, lead_id: str) -> None:
        rep = self.rng.choice(REPS)
        at_ms = time.time_ns() // 1_000_000
        task_id = store.create_record(
            "Task",
            {
                "Subject": "Intro call",
                "Status": "Completed",
                "Priority": "Normal",
                "IsClosed": True,
                "WhoId": lead_id,
                "OwnerId": rep.id,
                "ActivityDate": at_ms - at_ms % 86_400_000,
                "CompletedDateTime": at_ms,
                "TaskSubtype": "Call",
                "Type": "Call",
            },
            user_id=rep.id,
            at_ms=at_ms,
            change_origin=UI_ORIGIN,
        )
        self.log.responses[task_id] = (lead_id, at_ms)


# --- reading latencies back ----------------------------------------------------------------


def _ms(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp() * 1000.0


@dataclass
class EventTrace:
    """One of our CDC events through the pipeline (ms since the epoch; None = not reached)."""

    kind: str  # lead | response
    record_id: str
    commit: float
    staged: float | None = None
    batch_id: str | None = None
    decided: float | None = None
    queued: float | None = None
    sent: float | None = None


def read_inbox_and_decisions(
    conn: sa.Connection,
) -> tuple[dict[int, tuple[Any, Any]], dict[str, Any], dict[str, Any]]:
    """The ledger's inbox (replay id -> (staged_at, batch_id)) and, per lead, when it was
    routed and when it was first touched (bench_live reads the same)."""
    inbox = {
        replay_id_to_int(row.replay_id): (row.staged_at, row.batch_id)
        for row in conn.execute(sa.text("select replay_id, staged_at, batch_id from cdc_inbox"))
    }
    routed = dict(conn.execute(sa.text("select lead_id, decided_at from routing_decisions")).all())
    touched = dict(
        conn.execute(
            sa.text(
                "select lead_id, min(decided_at) from decisions "
                "where workload = 'first_touch' group by lead_id"
            )
        ).all()
    )
    return inbox, routed, touched


def read_traces(ledger_url: str, store_path: Path, log: CommitLog) -> list[EventTrace]:
    """Join our commits with the store's change log and the ledger's timestamps."""
    replay_of = _create_replays(store_path, set(log.leads) | set(log.responses))
    engine = sa.create_engine(ledger_url)
    try:
        with engine.connect() as conn:
            inbox, routed, touched = read_inbox_and_decisions(conn)
            # One outbox row per record (dirty fields): created when the lead's first field
            # was marked, which for a routed lead is its routing decision.
            queued_at = dict(
                conn.execute(sa.text("select record_id, created_at from sf_outbox")).all()
            )
    finally:
        engine.dispose()
    owner_written = _owner_writes(store_path)
    assignment_rows: dict[str, tuple[Any, Any]] = {
        lead_id: (queued_at.get(lead_id), owner_written[lead_id]) for lead_id in owner_written
    }
    traces = []
    for lead_id, commit in log.leads.items():
        trace = EventTrace("lead", lead_id, commit, decided=_ms(_dt(routed.get(lead_id))))
        queued_sent = assignment_rows.get(lead_id)
        if queued_sent:
            trace.queued, trace.sent = (_ms(_dt(v)) for v in queued_sent)
        traces.append(trace)
    for task_id, (lead_id, commit) in log.responses.items():
        traces.append(
            EventTrace("response", task_id, commit, decided=_ms(_dt(touched.get(lead_id))))
        )
    for trace in traces:
        staged = inbox.get(replay_of.get(trace.record_id, -1))
        if staged:
            trace.staged, trace.batch_id = _ms(_dt(staged[0])), staged[1]
    return traces


def _dt(value: Any) -> datetime | None:
    """Ledger times come back as aware datetimes (PostgreSQL) or naive UTC text (raw SQLite)."""
    if value is None or isinstance(value, datetime):
        return value if value is None or value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromisoformat(str(value)).replace(tzinfo=UTC)


def _owner_writes(store_path: Path) -> dict[str, datetime]:
    """When our write-back's OwnerId update committed in the org, per lead (the org's own
    change log: the moment a user of the org could read it)."""
    store = SandboxStore(store_path)
    try:
        found: dict[str, datetime] = {}
        for change in store.iter_changes(0):
            ids = change.header.get("recordIds") or []
            ours = "client=kpi_pipeline" in (change.header.get("changeOrigin") or "")
            if ours and "OwnerId" in change.fields and ids and ids[0] not in found:
                found[ids[0]] = datetime.fromtimestamp(change.commit_timestamp / 1000.0, tz=UTC)
        return found
    finally:
        store.close()


def _create_replays(store_path: Path, record_ids: set[str]) -> dict[str, int]:
    """Replay number of the CREATE event of each of our records."""
    store = SandboxStore(store_path)
    try:
        found = {}
        for change in store.iter_changes(0):
            ids = change.header.get("recordIds") or []
            if change.header.get("changeType") == "CREATE" and ids and ids[0] in record_ids:
                found[ids[0]] = change.replay
        return found
    finally:
        store.close()


# --- statistics and printing ----------------------------------------------------------------


def pct(values: Iterable[float], q: float) -> float | None:
    data = sorted(values)
    if not data:
        return None
    position = (len(data) - 1) * q
    low = int(position)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (position - low)


def row(label: str, seconds: list[float], target_s: float | None = None) -> str:
    """A markdown row: n, p50, p95, max, and whether p95 meets the target when one is given."""
    if not seconds:
        cells = "0 | - | - | -"
    else:
        p50, p95 = pct(seconds, 0.5), pct(seconds, 0.95)
        cells = f"{len(seconds)} | {p50:.3f} s | {p95:.3f} s | {max(seconds):.3f} s"
    if target_s is None:
        return f"| {label} | {cells} |"
    p95 = pct(seconds, 0.95)
    verdict = "no data" if p95 is None else ("met" if p95 < target_s else "missed")
    return f"| {label} | {cells} | < {target_s:g} s: {verdict} |"


def latencies(traces: list[EventTrace], kind: str, start: str, end: str) -> list[float]:
    out = []
    for trace in traces:
        if trace.kind != kind and kind != "any":
            continue
        a, b = getattr(trace, start), getattr(trace, end)
        if a is not None and b is not None:
            out.append((b - a) / 1000.0)
    return out


# (measurement, which events, the trace time it ends at, the plan's target in seconds)
TARGETS = (
    ("CDC event: commit -> staged in ledger inbox", "any", "staged", 0.5),
    ("assignment: lead commit -> owner decided", "lead", "decided", 5.0),
    ("assignment: lead commit -> queued for write-back", "lead", "queued", 5.0),
    ("assignment: lead commit -> written back (REST)", "lead", "sent", 5.0),
    ("TTFR detection: response commit -> first response in ledger", "response", "decided", 1.0),
)


def print_targets(traces: list[EventTrace]) -> None:
    print("| measurement | n | p50 | p95 | max | plan target |")
    print("| --- | --- | --- | --- | --- | --- |")
    for label, kind, end, target in TARGETS:
        print(row(label, latencies(traces, kind, "commit", end), target))
    missing = [t for t in traces if t.staged is None or t.decided is None]
    if missing:
        print(f"not reached within the drain time: {len(missing)} of {len(traces)} events")


# --- scenario: in-process sensor + execute_in_process -----------------------------------------


def run_inprocess(args: argparse.Namespace) -> int:
    import dagster as dg

    from kpi_pipeline import wiring
    from kpi_pipeline.definitions import defs
    from kpi_pipeline.defs.cdc.sensors import build_cdc_sensor
    from kpi_pipeline.defs.resources import PipelineResource
    from kpi_pipeline.sandbox.runtime import shutdown_sandbox

    os.environ["KPI_SANDBOX_LIVE_LEADS_PER_HOUR"] = "0"  # only our commits: clean timestamps
    os.environ["KPI_SANDBOX_LEADS_PER_DAY"] = SEED_LEADS_PER_DAY
    data_dir = WORKDIR / f"inprocess_{args.interval:g}_{args.idle_return}"
    wiring.reset_cache()
    pipeline = PipelineResource(data_dir=str(data_dir))
    job = defs().resolve_job_def("process_cdc_batch")
    cdc_sensor = build_cdc_sensor(minimum_interval_seconds=1)
    instance = dg.DagsterInstance.ephemeral()
    ticks: list[tuple[float, float, int]] = []  # (start, end of staging, events staged)
    runs: list[tuple[int, float]] = []  # (events, seconds) per execute_in_process

    def evaluate(cursor: str | None) -> tuple[str | None, list[tuple[dict, int]]]:
        """One sensor evaluation: the new cursor and (run config, events) per run request."""
        if args.idle_return is None:
            result = cdc_sensor(
                dg.build_sensor_context(
                    instance=instance, cursor=cursor, resources={"pipeline": pipeline}
                )
            )
            requests = [(r.run_config, int(r.tags["kpi/events"])) for r in result.run_requests]
            return result.cursor, requests
        outcome = drain_tick_with_idle_return(pipeline, cursor, args.idle_return)
        requests = [
            ({"ops": {"load_batch": {"config": {"batch_id": b.batch_id}}}}, b.event_count)
            for b in outcome.batches
        ]
        return outcome.cursor.to_json(), requests

    def tick(cursor: str | None, record: bool) -> tuple[str | None, int]:
        started = time.time()
        cursor, requests = evaluate(cursor)
        staged_at = time.time()
        for run_config, events in requests:
            run_started = time.perf_counter()
            run = job.execute_in_process(
                run_config={**run_config, **QUIET_LOGS},
                instance=instance,
                resources={"pipeline": pipeline},
            )
            if not run.success:
                raise SystemExit(f"process_cdc_batch failed for {run_config}")
            if record:
                runs.append((events, time.perf_counter() - run_started))
        if record:
            ticks.append((started, staged_at, sum(events for _, events in requests)))
        return cursor, len(requests)

    try:
        # Seeds the sandbox, drains its history and the echoes of our write-back, warms up.
        cursor, launched = tick(None, record=False)
        for _ in range(10):
            if not launched:
                break
            cursor, launched = tick(cursor, record=False)
        store_path = pipeline.settings().sandbox_store_path
        committer = Committer(store_path, lead_rate=args.lead_rate, seconds=args.seconds, seed=1)
        committer.start()
        next_tick = time.time()
        drain_until = None
        while True:
            now = time.time()
            if now < next_tick:
                time.sleep(next_tick - now)
            next_tick = time.time() + args.interval
            cursor, _ = tick(cursor, record=True)
            if not committer.is_alive():
                drain_until = drain_until or time.time() + max(3 * args.interval, 5.0)
                if time.time() > drain_until:
                    break
        if committer.error:
            raise committer.error
        traces = read_traces(pipeline.settings().resolved_ledger_url, store_path, committer.log)
    finally:
        wiring.reset_cache()
        shutdown_sandbox(data_dir)

    body = (
        "cdc_sensor"
        if args.idle_return is None
        else f"drain_tick, idle return {args.idle_return:g} s"
    )
    print(f"\nin-process {body} every {args.interval:g} s, {args.seconds:g} s of commits at "
          f"{args.lead_rate:g} leads/s, load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    print_targets(traces)
    in_tick = [
        (trace.staged - start * 1000.0) / 1000.0
        for trace in traces
        if trace.staged
        for start, end, _ in ticks
        if start * 1000.0 >= trace.commit and start * 1000.0 <= trace.staged <= end * 1000.0
    ]
    busy = [end - start for start, end, events in ticks if events]
    idle = [end - start for start, end, events in ticks if not events]
    print("\n| part | n | p50 | p95 | max |")
    print("| --- | --- | --- | --- | --- |")
    print(row("in-tick: tick start -> event staged (events committed before the tick)", in_tick))
    print(row("sensor tick with new events (fetch + decode + stage, 3 channels)", busy))
    print(row("sensor tick with nothing new", idle))
    small = [s for n, s in runs if n <= 50]
    print(row("process_cdc_batch execute_in_process, batches of <= 50 events", small))
    for n, s in runs:
        if n > 50:
            print(f"| process_cdc_batch, batch of {n} events | 1 | {s:.3f} s | | |")
    return 0


class QuickReturnFetcher:
    """The pipeline's own client, asked to return after ``idle_return_s`` without a new event
    instead of its 1 s default (not a setting today: ``ingest`` does not pass it)."""

    def __init__(self, client: Any, idle_return_s: float) -> None:
        self.client, self.idle_return_s = client, idle_return_s

    def fetch(self, channel: str, **kwargs: Any) -> Any:
        return self.client.fetch(channel, idle_return_s=self.idle_return_s, **kwargs)

    def get_schema(self, schema_id: str) -> str:
        return self.client.get_schema(schema_id)


def drain_tick_with_idle_return(pipeline: Any, cursor: str | None, idle_return_s: float) -> Any:
    """The body of cdc_sensor (same settings, client, decoder, ledger) with a shorter idle return."""
    from kpi_pipeline.app.ingest import DrainLimits, drain_tick
    from kpi_pipeline.core.cursor import SensorCursor
    from kpi_pipeline.core.errors import ReplayIdInvalidError

    settings = pipeline.settings()
    return drain_tick(
        channels=settings.cdc_channels,
        cursor=SensorCursor.from_json(cursor),
        fetcher=QuickReturnFetcher(pipeline.pubsub(), idle_return_s),
        ledger=pipeline.ledger(),
        decode=pipeline.decoder().decode,
        limits=DrainLimits(
            max_events=settings.cdc_max_events_per_tick,
            max_seconds=settings.cdc_fetch_timeout_seconds,
            initial_preset=settings.cdc_initial_preset,
            on_invalid_replay=settings.cdc_on_invalid_replay,
        ),
        is_invalid_replay=lambda exc: isinstance(exc, ReplayIdInvalidError),
    )


# --- scenario: the real daemon -------------------------------------------------------------


def _dagster_yaml(home: Path, coordinator: str) -> None:
    home.mkdir(parents=True, exist_ok=True)
    text = f"storage:\n  sqlite:\n    base_dir: {home / 'storage'}\ntelemetry:\n  enabled: false\n"
    if coordinator == "queued-1s":
        text += (
            "run_coordinator:\n  module: dagster.core.run_coordinator\n"
            "  class: QueuedRunCoordinator\n  config:\n    dequeue_interval_seconds: 1\n"
        )
    (home / "dagster.yaml").write_text(text)


def run_daemon(args: argparse.Namespace) -> int:
    import dagster as dg

    from kpi_pipeline.config import Settings
    from kpi_pipeline.sandbox.runtime import ensure_sandbox, shutdown_sandbox

    home, data_dir = WORKDIR / "dagster_home", WORKDIR / "daemon_kpi"
    _dagster_yaml(home, args.coordinator)
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "KPI_DATA_DIR": str(data_dir),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    env.pop("KPI_METRICS_DIR", None)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # the daemon records into its own data dir
    instance = dg.DagsterInstance.from_config(str(home))
    instance.get_runs()  # creates the storage before the daemon does (see the e2e test)
    # The sandbox org lives in this process, as a real org lives outside Dagster: the daemon
    # replaces its code server every 60 s (RELOAD_WORKSPACE_INTERVAL), and a sandbox started
    # inside one dies with it. The code server and run workers find this one in sandbox.json.
    ensure_sandbox(
        data_dir,
        settings=Settings(
            data_dir=data_dir, sandbox_seed=11, sandbox_leads_per_day=int(SEED_LEADS_PER_DAY)
        ),
        live=True,
    )
    log_path = WORKDIR / "daemon.log"
    daemon = subprocess.Popen(
        [str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"],
        cwd=REPO_ROOT,
        env=env,
        stdout=log_path.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    ledger_url = f"sqlite:///{data_dir / 'ledger.db'}"
    try:
        _wait(lambda: _caught_up(ledger_url), 180, "the seeded history to be processed", log_path)
        committer = Committer(
            data_dir / "sandbox.db", lead_rate=args.lead_rate, seconds=args.seconds, seed=2
        )
        started = time.time()
        committer.start()
        committer.join()
        if committer.error:
            raise committer.error
        _wait(
            lambda: _all_reached(ledger_url, data_dir, committer.log),
            args.drain_seconds,
            "every committed lead and response to reach the ledger",
            log_path,
            fail=False,
        )
        traces = read_traces(ledger_url, data_dir / "sandbox.db", committer.log)
        time.sleep(
            5
        )  # the runs that wrote the last decisions end (< 2 s after them) for the breakdown
    finally:
        os.killpg(daemon.pid, signal.SIGKILL)
        daemon.wait(timeout=30)
        shutdown_sandbox(data_dir)
    print(f"\ndagster-daemon, coordinator {args.coordinator}, live simulation on, "
          f"{args.seconds:g} s of commits at {args.lead_rate:g} leads/s, "
          f"load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    print_targets(traces)
    print_daemon_breakdown(instance, traces, started)
    return 0


def _wait(predicate, timeout: float, what: str, log_path: Path, *, fail: bool = True) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except sa.exc.OperationalError:
            pass  # the ledger is not created yet
        time.sleep(1.0)
    if fail:
        raise SystemExit(
            f"timed out waiting for {what}; daemon log tail:\n{log_path.read_text()[-3000:]}"
        )
    print(f"(timed out after {timeout:g} s waiting for {what}; reporting what arrived)")


def _caught_up(ledger_url: str) -> bool:
    engine = sa.create_engine(ledger_url)
    try:
        with engine.connect() as conn:
            done = conn.execute(
                sa.text("select count(*) from cdc_batches where status = 'done'")
            ).scalar_one()
            pending = conn.execute(
                sa.text("select count(*) from cdc_batches where status != 'done'")
            ).scalar_one()
    finally:
        engine.dispose()
    return done > 0 and pending == 0


def _all_reached(ledger_url: str, data_dir: Path, log: CommitLog) -> bool:
    traces = read_traces(ledger_url, data_dir / "sandbox.db", log)
    return all(t.decided is not None and (t.kind != "lead" or t.sent is not None) for t in traces)


STAGES = (
    "commit -> staged by a sensor tick",
    "staged -> run created (rest of the tick, run submitted)",
    "run created -> run started (dequeue + launch + process spawn)",
    "run started -> decision written (process start, ops)",
    "decision -> run ended",
)


def print_daemon_breakdown(instance: Any, traces: list[EventTrace], started: float) -> None:
    """Where the time goes, per event: tick staging, queue + launch, run until the decision."""
    runs = {}
    for record in instance.get_run_records():
        key = record.dagster_run.tags.get("dagster/run_key", "")
        if key.startswith("cdc:"):
            runs[key[4:]] = record
    segments: dict[tuple[str, str], list[float]] = {}
    for trace in traces:
        record = runs.get(trace.batch_id or "")
        if record is None or trace.staged is None or trace.decided is None or not record.end_time:
            continue
        created = record.create_timestamp.timestamp() * 1000.0
        points = [trace.commit, trace.staged, created, record.start_time * 1000.0, trace.decided]
        points.append(record.end_time * 1000.0)
        for stage, (a, b) in zip(STAGES, itertools.pairwise(points), strict=True):
            segments.setdefault((trace.kind, stage), []).append((b - a) / 1000.0)
    print("\n| stage (daemon) | lead events p50 / p95 | response events p50 / p95 |")
    print("| --- | --- | --- |")
    for stage in STAGES:
        cells = []
        for kind in ("lead", "response"):
            values = segments.get((kind, stage), [])
            cells.append(
                f"{pct(values, 0.5):.2f} s / {pct(values, 0.95):.2f} s (n={len(values)})"
                if values
                else "-"
            )
        print(f"| {stage} | {cells[0]} | {cells[1]} |")
    print("\n| daemon timing | n | p50 | p95 | max |")
    print("| --- | --- | --- | --- | --- |")
    states = [s for s in instance.all_instigator_state() if s.name == "cdc_sensor"]
    if states:
        ticks = instance.get_ticks(
            states[0].instigator_origin_id, states[0].selector_id, after=started
        )
        starts = sorted(t.timestamp for t in ticks)
        gaps = [b - a for a, b in itertools.pairwise(starts)]
        durations = [t.end_timestamp - t.timestamp for t in ticks if t.end_timestamp]
        print(row("sensor tick interval (start to start)", gaps))
        print(
            f"| sensor tick intervals of 9 s or more | {sum(g >= 9 for g in gaps)} of {len(gaps)} | | | |"
        )
        print(row("sensor tick duration", durations))
    durations = [
        r.end_time - r.start_time
        for r in runs.values()
        if r.start_time and r.end_time and r.start_time >= started
    ]
    print(row("run duration (start -> end, process_cdc_batch)", durations))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="scenario", required=True)
    inproc = sub.add_parser("inprocess", help="sensor + execute_in_process in this process")
    inproc.add_argument("--interval", type=float, default=5.0, help="seconds between tick starts")
    inproc.add_argument(
        "--idle-return",
        type=float,
        default=None,
        help="what-if: run the sensor body (drain_tick) with the client's idle return set to "
        "this many seconds instead of 1",
    )
    daemon = sub.add_parser("daemon", help="the real dagster-daemon with its run workers")
    daemon.add_argument("--coordinator", choices=("queued", "queued-1s"), default="queued")
    daemon.add_argument("--drain-seconds", type=float, default=90.0)
    for p in (inproc, daemon):
        p.add_argument("--seconds", type=float, default=60.0 if p is inproc else 150.0)
        p.add_argument("--lead-rate", type=float, default=0.2, help="new leads per second")
        p.add_argument("--keep", action="store_true", help=f"keep the scratch directory {WORKDIR}")
    args = parser.parse_args()
    if args.seconds <= 0 or args.lead_rate <= 0:
        parser.error("--seconds and --lead-rate must be positive")
    if args.scenario == "inprocess" and args.interval < 0:
        parser.error("--interval must be >= 0")
    if args.scenario == "inprocess" and args.idle_return is not None and args.idle_return <= 0:
        parser.error("--idle-return must be positive")
    try:
        return run_inprocess(args) if args.scenario == "inprocess" else run_daemon(args)
    finally:
        if not args.keep:
            shutil.rmtree(WORKDIR, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
