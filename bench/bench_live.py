"""Live latency and cost under the `make dev` configuration, measured from outside the pipeline.

Starts ``dagster dev -w workspace.yaml`` (webserver + daemon + code server, the repo's
dagster.yaml with its paths moved to a scratch DAGSTER_HOME, SQLite instance, scratch
KPI_DATA_DIR) in ``KPI_CDC_MODE=stream`` or ``sensor``. The code server starts the sandbox org
with its default live simulation, as under ``make dev``. Once the seeded history is processed,
this process acts as a user of the org, over the sandbox's REST API only:

* creates a Lead every 1/``--lead-rate`` s (POST sobjects/Lead) owned by a queue
  (``QUEUE_IDS[0]``), so it needs routing;
* 3-6 s after each, creates a completed Task on it (POST sobjects/Task: ``WhoId``,
  ``Status`` Completed, ``Subject``, ``CompletedDateTime``), its first response;
* polls ``SELECT Id, OwnerId, Owner_Assigned_At__c, First_Response_At__c, LastModifiedDate
  FROM Lead WHERE Id IN (...)`` every ``--poll-ms`` for the leads still waiting.

Latencies (commit times are the org's: ``commit_ts`` of each CREATE in the sandbox change log,
the CDC event's ``commitTimestamp``):

* assignment: lead commit -> first poll that sees ``OwnerId`` = a user (005...) and
  ``Owner_Assigned_At__c`` set;
* first response: Task commit -> first poll that sees ``First_Response_At__c`` set;
* CDC event: commit -> ``cdc_inbox.staged_at`` in the ledger, for our creates and for every
  change event committed in the window (simulation and write-back echoes included).

Where the time goes, per lead/Task: commit -> staged -> decided (``routing_decisions`` /
``decisions`` first_touch) -> batch completed (``cdc_batches.completed_at``) -> written back
(the lead's ``LastModifiedDate`` in the poll that first saw the value) -> seen by the poll.

Cost over the measurement window: CPU-seconds (utime+stime, children included once reaped)
of the ``dagster dev`` process tree from /proc, the sandbox org process apart; Dagster runs
created per hour (from the instance); change events committed in the window.

``--postgres`` runs the same with a PostgreSQL ledger (``KPI_LEDGER_URL=postgresql+psycopg2://
postgres@127.0.0.1:5432/<scratch>``) and a dagster-postgres instance (the repo's dagster.yaml
with ``storage: postgres`` on another scratch database); both databases are created on the
local server (user postgres, trust auth) and dropped at the end. ``--code DIR`` runs the
pipeline code and dagster.yaml of DIR (a git worktree of another commit) through PYTHONPATH.
``bench_live_scenarios.py`` (burst, backlog, cost side by side) builds on this module.

    python bench/bench_live.py --mode stream --seconds 600
    python bench/bench_live.py --mode stream --seconds 600 --postgres
    python bench/bench_live.py --mode sensor --seconds 240 --ready-timeout 120
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bench_latency as common  # pct, _dt, _caught_up, read_inbox_and_decisions (its import makes an empty scratch dir)
import requests
import sqlalchemy as sa

from kpi_pipeline.core.events import parse_sf_datetime
from kpi_pipeline.sandbox.runtime import read_endpoints, shutdown_sandbox
from kpi_pipeline.sandbox.store import QUEUE_IDS, REP_USER_IDS, SandboxStore
from kpi_pipeline_tests.support.harness import write_instance_yaml

shutil.rmtree(common.WORKDIR, ignore_errors=True)
REPO_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
API = "v60.0"
TASK_DELAY_S = (3.0, 6.0)
CLK_TCK = os.sysconf("SC_CLK_TCK")


def now_ms() -> float:
    return time.time() * 1000.0


# --- the user of the org: creates and polls over REST -----------------------------------------


@dataclass
class Observed:
    lead_created: dict[str, float] = field(default_factory=dict)  # lead -> POST answered (ms)
    task_of: dict[str, str] = field(default_factory=dict)  # lead -> task id
    task_created: dict[str, float] = field(default_factory=dict)  # task -> POST answered (ms)
    assigned_seen: dict[str, float] = field(default_factory=dict)  # lead -> first seen (ms)
    assigned_modified: dict[str, float] = field(default_factory=dict)  # LastModifiedDate then
    owner: dict[str, str] = field(default_factory=dict)
    response_seen: dict[str, float] = field(default_factory=dict)  # lead -> first seen (ms)
    response_modified: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    polls: int = 0
    poll_seconds: list[float] = field(default_factory=list)


class OrgUser:
    def __init__(
        self, rest_url: str, token: str, *, lead_rate: float, seed: int, ca_file: str | None = None
    ) -> None:
        self.base = f"{rest_url.rstrip('/')}/services/data/{API}"
        self.verify: str | bool = ca_file or True  # a sandbox serving TLS names its CA
        self.headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            "Sforce-Call-Options": "client=bench-web-to-lead",
        }
        self.lead_rate = lead_rate
        self.rng = random.Random(seed)
        self.obs = Observed()
        self.lock = threading.Lock()
        self.stop_creating = threading.Event()
        self.stop_polling = threading.Event()
        self.number = 0
        self.due: list[tuple[float, str]] = []  # (when, lead) of Tasks still to create

    def _post(self, session: requests.Session, sobject: str, body: dict[str, Any]) -> str | None:
        try:
            answer = session.post(
                f"{self.base}/sobjects/{sobject}",
                json=body,
                headers=self.headers,
                verify=self.verify,
            )
        except requests.RequestException as exc:
            with self.lock:
                self.obs.errors.append(f"POST {sobject}: {exc}")
            return None
        if answer.status_code != 201:
            with self.lock:
                self.obs.errors.append(f"POST {sobject}: {answer.status_code} {answer.text[:300]}")
            return None
        return answer.json()["id"]

    def create_loop(self) -> None:
        """Leads at ``self.lead_rate`` per second (read at each lead, so a scenario may change
        it on the fly); each lead's Task is due 3-6 s later (``task_loop``)."""
        session = requests.Session()
        next_lead = time.time()
        while not self.stop_creating.is_set():
            now = time.time()
            if now >= next_lead:
                self.number += 1
                lead_id = self._post(session, "Lead", self._lead(self.number))
                if lead_id:
                    with self.lock:
                        self.obs.lead_created[lead_id] = now_ms()
                        self.due.append((time.time() + self.rng.uniform(*TASK_DELAY_S), lead_id))
                # Behind schedule (slow POSTs) the next lead goes at once; the rate reached is
                # reported, not assumed.
                next_lead += 1.0 / self.lead_rate
            time.sleep(max(0.0, min(next_lead - time.time(), 0.2)))

    def task_loop(self) -> None:
        """Creates each lead's completed Task when due; ends once creating stopped and none
        is left."""
        session = requests.Session()
        while True:
            with self.lock:
                ready = [d for d in self.due if d[0] <= time.time()]
                for item in ready:
                    self.due.remove(item)
                left = len(self.due)
            for _, lead_id in sorted(ready):
                task_id = self._post(session, "Task", self._task(lead_id))
                if task_id:
                    with self.lock:
                        self.obs.task_of[lead_id] = task_id
                        self.obs.task_created[task_id] = now_ms()
            if not ready:
                if self.stop_creating.is_set() and not left:
                    return
                time.sleep(0.05)

    def creators(self) -> list[threading.Thread]:
        return [
            threading.Thread(target=self.create_loop, daemon=True),
            threading.Thread(target=self.task_loop, daemon=True),
        ]

    def _lead(self, number: int) -> dict[str, Any]:
        return {
            "FirstName": "Live",
            "LastName": f"Bench {number}",
            "Company": f"Live Latency {number}",
            "Email": f"live.bench{number}@latency.example",
            "Status": "Open - Not Contacted",
            "LeadSource": "Web",
            "Industry": "Technology",
            "NumberOfEmployees": 120,
            "Country": "United States",
            "City": "Austin",
            "OwnerId": QUEUE_IDS[0],
        }

    def _task(self, lead_id: str) -> dict[str, Any]:
        completed = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return {
            "WhoId": lead_id,
            "Subject": "Intro call",
            "Status": "Completed",
            "Priority": "Normal",
            "OwnerId": self.rng.choice(REP_USER_IDS),
            "CompletedDateTime": completed,
            "TaskSubtype": "Call",
            "Type": "Call",
        }

    def poll_loop(self, interval_s: float, created_after_ms: float = 0.0) -> None:
        """Polls the leads created after ``created_after_ms`` that still wait for their owner
        or first response (a second poller may cover older ones at another interval)."""
        session = requests.Session()
        while not self.stop_polling.is_set():
            started = time.time()
            with self.lock:
                waiting = [
                    lead
                    for lead, created in self.obs.lead_created.items()
                    if created >= created_after_ms
                    and (
                        lead not in self.obs.assigned_seen
                        or (lead in self.obs.task_of and lead not in self.obs.response_seen)
                    )
                ]
            for chunk in (waiting[i : i + 100] for i in range(0, len(waiting), 100)):
                self._poll(session, chunk)
            if waiting:
                with self.lock:
                    self.obs.polls += 1
                    self.obs.poll_seconds.append(time.time() - started)
            time.sleep(max(0.0, interval_s - (time.time() - started)))

    def _poll(self, session: requests.Session, ids: list[str]) -> None:
        soql = (
            "SELECT Id, OwnerId, Owner_Assigned_At__c, First_Response_At__c, LastModifiedDate "
            f"FROM Lead WHERE Id IN ({', '.join(repr(i) for i in ids)})"
        )
        try:
            answer = session.get(
                f"{self.base}/query", params={"q": soql}, headers=self.headers, verify=self.verify
            )
        except requests.RequestException as exc:
            with self.lock:
                self.obs.errors.append(f"query: {exc}")
            return
        seen = now_ms()
        if answer.status_code != 200:
            with self.lock:
                self.obs.errors.append(f"query: {answer.status_code} {answer.text[:300]}")
            return
        with self.lock:
            for rec in answer.json()["records"]:
                lead = rec["Id"]
                modified = parse_sf_datetime(rec.get("LastModifiedDate"))
                modified_ms = modified.timestamp() * 1000.0 if modified else None
                owner = rec.get("OwnerId") or ""
                if (
                    lead not in self.obs.assigned_seen
                    and owner.startswith("005")
                    and rec.get("Owner_Assigned_At__c")
                ):
                    self.obs.assigned_seen[lead] = seen
                    self.obs.assigned_modified[lead] = modified_ms
                    self.obs.owner[lead] = owner
                if (
                    lead in self.obs.task_of
                    and lead not in self.obs.response_seen
                    and rec.get("First_Response_At__c")
                ):
                    self.obs.response_seen[lead] = seen
                    self.obs.response_modified[lead] = modified_ms

    def pending(self) -> int:
        with self.lock:
            return sum(
                1
                for lead in self.obs.lead_created
                if lead not in self.obs.assigned_seen or lead not in self.obs.response_seen
            )


# --- CPU of the dagster dev process tree ------------------------------------------------------


def _stat(pid: int) -> tuple[int, float] | None:
    """(ppid, utime+stime+cutime+cstime in seconds) of a process, None when gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    ppid = int(fields[1])
    ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))
    return ppid, ticks / CLK_TCK


def tree_cpu(root: int, exclude: set[int]) -> tuple[float, set[int]]:
    """CPU-seconds of ``root`` and its live descendants (reaped ones are in their parent's
    cutime/cstime), leaving out ``exclude`` and their subtrees."""
    parents: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = _stat(int(entry))
            if info:
                parents[int(entry)] = info
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in parents.items():
        children.setdefault(ppid, []).append(pid)
    total, seen, stack = 0.0, set(), [root]
    while stack:
        pid = stack.pop()
        if pid in exclude or pid not in parents:
            continue
        seen.add(pid)
        total += parents[pid][1]
        stack.extend(children.get(pid, []))
    return total, seen


def proc_cpu(pid: int) -> float | None:
    info = _stat(pid)
    return None if info is None else info[1]


def exit_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so dagster dev, the sandbox and scratch databases are
    cleaned up (a background job ignores SIGINT)."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


# --- the dagster dev configuration ------------------------------------------------------------

PG_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432"


def pg_admin(statement: str) -> None:
    engine = sa.create_engine(f"{PG_URL}/postgres", isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(statement))
    finally:
        engine.dispose()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, log_path: Path) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except sa.exc.OperationalError:
            pass
        time.sleep(1.0)
    raise SystemExit(f"timed out waiting for {what}; log tail:\n{log_path.read_text()[-3000:]}")


def backlog(ledger_url: str) -> int:
    engine = sa.create_engine(ledger_url)
    try:
        with engine.connect() as conn:
            query = "select count(*) from cdc_batches where status != 'done'"
            return conn.execute(sa.text(query)).scalar_one()
    finally:
        engine.dispose()


def sandbox_pid(data_dir: Path) -> int | None:
    try:
        return int(json.loads((data_dir / "sandbox.json").read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return None


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def code_version(code_root: Path) -> str:
    """The commit the pipeline code runs at, and whether kpi_pipeline/ has uncommitted edits."""
    git = ["git", "-C", str(code_root)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "--", "kpi_pipeline", "dagster.yaml"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return head.stdout.strip() + (" + uncommitted kpi_pipeline/ edits" if dirty else "")


class LoadSampler:
    """1-minute load average every 5 s, in a thread."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(5.0):
            self.samples.append((time.time(), os.getloadavg()[0]))

    def between(self, t0: float, t1: float) -> str:
        values = [v for t, v in self.samples if t0 <= t <= t1]
        if not values:
            return "no samples"
        return f"mean {sum(values) / len(values):.2f}, max {max(values):.2f}"

    def stop(self) -> None:
        self._stop.set()


@dataclass
class Deployment:
    """The ``make dev`` configuration in a scratch directory: ``dagster dev -w workspace.yaml``
    from ``code_root`` (the repository, or a git worktree of another commit, imported through
    PYTHONPATH), its sandbox org, a SQLite or PostgreSQL ledger and instance."""

    workdir: Path
    mode: str
    postgres: bool = False
    code_root: Path = REPO_ROOT
    seed_leads_per_day: int = 20
    port: int = 0
    # Seconds the sandbox org waits before answering each record update (the write-back's
    # REST round trip to a real org, which loopback does not have); 0: at once.
    org_update_delay_s: float = 0.0
    dev: subprocess.Popen | None = None
    pg_dbs: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.home, self.data_dir = self.workdir / "dagster_home", self.workdir / "kpi"
        self.log_path = self.workdir / "dagster_dev.log"
        self.port = self.port or free_port()
        self.ledger_url = f"sqlite:///{self.data_dir / 'ledger.db'}"
        self.version = code_version(self.code_root)
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("KPI_", "DAGSTER_")) and k not in ("PROMETHEUS_MULTIPROC_DIR", "PYTHONPATH")
        }  # fmt: skip
        self.env.update(
            DAGSTER_HOME=str(self.home),
            KPI_DATA_DIR=str(self.data_dir),
            KPI_CDC_MODE=self.mode,
            KPI_SANDBOX_LEADS_PER_DAY=str(self.seed_leads_per_day),
            PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        )
        if self.org_update_delay_s:
            # Read by the embedded sandbox's `kpi-pipeline sandbox serve`.
            self.env["KPI_SANDBOX_REST_UPDATE_DELAY_SECONDS"] = repr(self.org_update_delay_s)
        if self.code_root.resolve() != REPO_ROOT:
            # Every process (webserver, daemon, code server, run workers, sandbox) imports
            # kpi_pipeline from the worktree, ahead of the venv's editable install.
            self.env["PYTHONPATH"] = str(self.code_root)

    def start(self, ready_timeout: float) -> None:
        pg_db = None
        if self.postgres:
            tag = f"bench_live_{os.getpid()}_{int(time.time())}"
            for suffix in ("ledger", "dagster"):
                pg_admin(f"CREATE DATABASE {tag}_{suffix}")
                self.pg_dbs.append(f"{tag}_{suffix}")
            self.ledger_url = f"{PG_URL}/{tag}_ledger"
            self.env["KPI_LEDGER_URL"] = self.ledger_url
            pg_db = f"{tag}_dagster"
        write_instance_yaml(self.home, f"{PG_URL}/{pg_db}" if pg_db else None, self.code_root)
        command = [str(BIN / "dagster"), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(self.port)]  # fmt: skip
        shown = {k: self.env[k] for k in sorted(self.env) if k.startswith(("KPI_", "DAGSTER_", "PYTHONPATH"))}  # fmt: skip
        print(f"$ (cd {self.code_root}; {' '.join(f'{k}={v}' for k, v in shown.items())} "
              f"{' '.join(command[1:])})  # code at {self.version}"
              + (f"; instance storage: postgres db {pg_db}" if pg_db else ""))  # fmt: skip
        print(f"uptime before: {uptime()}", flush=True)
        self.dev = subprocess.Popen(
            command,
            cwd=self.code_root,
            env=self.env,
            stdout=self.log_path.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        booted = time.time()
        self.endpoints = wait_for(
            lambda: read_endpoints(self.data_dir), 300, "the sandbox org", self.log_path
        )
        try:
            wait_for(
                lambda: common._caught_up(self.ledger_url), ready_timeout, "catch-up", self.log_path
            )
            print(f"dagster dev up and caught up after {time.time() - booted:.0f} s", flush=True)
        except SystemExit:
            # Sensor mode under load may never drain its queue of runs: measure from here.
            print(f"not caught up {time.time() - booted:.0f} s after start; measuring anyway "
                  f"with {backlog(self.ledger_url)} batches staged and not processed")  # fmt: skip
        self.sandbox = sandbox_pid(self.data_dir)
        import dagster as dg

        self.instance = dg.DagsterInstance.from_config(str(self.home))

    def cpu(self) -> float:
        """CPU-seconds of the dagster dev tree so far, the sandbox org apart."""
        assert self.dev is not None
        return tree_cpu(self.dev.pid, {self.sandbox} if self.sandbox else set())[0]

    def sandbox_cpu(self) -> float | None:
        return proc_cpu(self.sandbox) if self.sandbox else None

    def runs(self, after: float | None = None) -> list[Any]:
        import dagster as dg

        filters = dg.RunsFilter(created_after=datetime.fromtimestamp(after, UTC)) if after else None
        return list(self.instance.get_run_records(filters=filters))

    def dagster_cli(self, *args: str) -> str:
        """``dagster ...`` as an operator runs it, against this instance and workspace."""
        command = [str(BIN / "dagster"), *args]
        print(f"$ dagster {' '.join(args)}", flush=True)
        done = subprocess.run(
            command, cwd=self.code_root, env=self.env, capture_output=True, text=True
        )
        if done.returncode != 0:
            raise SystemExit(f"{command} failed: {done.stdout[-2000:]} {done.stderr[-2000:]}")
        return done.stdout

    def stop(self) -> None:
        if self.dev is not None:
            # Kill what is in the tree now (pids seen earlier may have been reused since).
            _, live_tree = tree_cpu(self.dev.pid, {sandbox_pid(self.data_dir) or -1})
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.dev.pid, signal.SIGKILL)
            for pid in live_tree - {self.dev.pid}:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)  # run workers in another process group, if any
            self.dev.wait(timeout=30)
            self.dev = None
        shutdown_sandbox(self.data_dir)
        if getattr(self, "instance", None) is not None:
            self.instance.dispose()
        for db in self.pg_dbs:
            pg_admin(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        if self.pg_dbs:
            print(f"dropped scratch databases {', '.join(self.pg_dbs)}")
        self.pg_dbs = []


# --- reading the ledger and the org's change log ----------------------------------------------


def store_changes(store_path: Path) -> list[tuple[int, str, str, int, str, str]]:
    """(replay, changeType, first record id, commit ms, entity, origin client) of every
    change event."""
    store = SandboxStore(store_path)
    try:
        out = []
        for change in store.iter_changes(0):
            ids = change.header.get("recordIds") or [""]
            out.append(
                (change.replay, change.header.get("changeType", ""), ids[0], change.commit_timestamp,
                 change.entity, _client(change.header.get("changeOrigin") or ""))
            )  # fmt: skip
        return out
    finally:
        store.close()


def _client(origin: str) -> str:
    return origin.split("client=", 1)[1] if "client=" in origin else (origin or "-")


def ledger_times(ledger_url: str) -> dict[str, Any]:
    engine = sa.create_engine(ledger_url)
    try:
        with engine.connect() as conn:
            inbox, routed, touched = common.read_inbox_and_decisions(conn)
            completed = dict(
                conn.execute(sa.text("select batch_id, completed_at from cdc_batches")).all()
            )
    finally:
        engine.dispose()
    ms = lambda v: None if v is None else common._dt(v).timestamp() * 1000.0  # noqa: E731
    return {
        "staged": {k: ms(v[0]) for k, v in inbox.items()},
        "batch": {k: v[1] for k, v in inbox.items()},
        "completed": {k: ms(v) for k, v in completed.items()},
        "routed": {k: ms(v) for k, v in routed.items()},
        "touched": {k: ms(v) for k, v in touched.items()},
    }


# --- statistics -------------------------------------------------------------------------------


def stats_row(label: str, seconds: list[float], target_s: float | None = None) -> str:
    if not seconds:
        return f"| {label} | 0 | - | - | - | - |" + (" no data |" if target_s else "")
    p = [common.pct(seconds, q) for q in (0.5, 0.95, 0.99)]
    cells = f"{len(seconds)} | {p[0]:.3f} s | {p[1]:.3f} s | {p[2]:.3f} s | {max(seconds):.3f} s"
    if target_s is None:
        return f"| {label} | {cells} |"
    return f"| {label} | {cells} | < {target_s:g} s: {'met' if p[1] < target_s else 'MISSED'} |"


def diffs(pairs: list[tuple[float | None, float | None]]) -> list[float]:
    return [(b - a) / 1000.0 for a, b in pairs if a is not None and b is not None]


# --- a measurement: what the org's user saw, the ledger and the org's change log ---------------


@dataclass
class Collected:
    obs: Observed
    ledger: dict[str, Any]
    changes: list[tuple[int, str, str, int, str, str]]

    def __post_init__(self) -> None:
        self.commit = {rid: ts for _, kind, rid, ts, _, _ in self.changes if kind == "CREATE"}
        self.replay = {rid: r for r, kind, rid, _, _, _ in self.changes if kind == "CREATE"}
        self.commit_of_replay = {r: ts for r, _, _, ts, _, _ in self.changes}

    def leads(self, t0: float = 0.0, t1: float = float("inf")) -> list[str]:
        """Our leads committed in [t0, t1] (epoch seconds)."""
        return [
            lead
            for lead in self.obs.lead_created
            if t0 * 1000 <= self.commit.get(lead, -1) <= t1 * 1000
        ]

    def samples(self, t0: float = 0.0, t1: float = float("inf")) -> dict[str, list[tuple[float, float | None]]]:  # fmt: skip
        """(commit ms, latency s or None when never seen) per measurement, for what was
        committed in [t0, t1]."""
        obs, staged = self.obs, self.ledger["staged"]
        lo, hi = t0 * 1000, t1 * 1000
        leads = self.leads(t0, t1)

        def lat(a: float | None, b: float | None) -> float | None:
            return None if a is None or b is None else (b - a) / 1000.0

        out: dict[str, list[tuple[float, float | None]]] = {"cdc": [], "cdc_ours": [], "cdc_wall": []}  # fmt: skip
        for r, _, _, ts, _, client in self.changes:
            if lo <= ts <= hi:
                out["cdc"].append((ts, lat(ts, staged.get(r))))
                if client in WALL_CLOCK_CLIENTS:
                    out["cdc_wall"].append((ts, lat(ts, staged.get(r))))
        ours = list(leads) + [obs.task_of[lead] for lead in leads if lead in obs.task_of]
        for rid in ours:
            r = self.replay.get(rid)
            if r is not None:
                ts = self.commit_of_replay[r]
                out["cdc_ours"].append((ts, lat(ts, staged.get(r))))
        out["assignment"] = [
            (self.commit[lead], lat(self.commit.get(lead), obs.assigned_seen.get(lead)))
            for lead in leads
        ]
        out["first_response"] = [
            (self.commit[obs.task_of[lead]], lat(self.commit.get(obs.task_of[lead]), obs.response_seen.get(lead)))
            for lead in leads
            if obs.task_of.get(lead) in self.commit
        ]  # fmt: skip
        return out


# Changes committed at wall-clock time: our REST creates and the pipeline's write-back echoes.
# The live simulator's commitTimestamps are back-dated by 0-1 s (RESULTS.md), which in a
# 10-s window of a few dozen events is enough to move a p95 across 0.5 s on its own.
WALL_CLOCK_CLIENTS = ("bench-web-to-lead", "kpi_pipeline")
# The four measurements, in report order: their row label and latency target (s, p95).
MEASUREMENTS = {
    "cdc_ours": ("CDC event (our creates): commit -> staged in ledger inbox", 0.5),
    "cdc": ("CDC event (every change in the window): commit -> staged", 0.5),
    "assignment": ("assignment: lead commit -> OwnerId + Owner_Assigned_At__c over REST", 1.0),
    "first_response": ("first response: Task commit -> First_Response_At__c over REST", 1.0),
}


def collect(dep: Deployment, user: OrgUser) -> Collected:
    return Collected(user.obs, ledger_times(dep.ledger_url), store_changes(dep.data_dir / "sandbox.db"))  # fmt: skip


def print_latency(c: Collected, t0: float, t1: float, title: str) -> None:
    """p50/p95/p99/max of the four measurements for what was committed in [t0, t1]; a value
    never seen counts in n as 'not seen' and is left out of the percentiles."""
    print(f"\n| {title} | n | p50 | p95 | p99 | max | target |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    samples = c.samples(t0, t1)
    for key, (label, target) in MEASUREMENTS.items():
        values = [v for _, v in samples[key] if v is not None]
        missing = len(samples[key]) - len(values)
        label += f" ({missing} never seen)" if missing else ""
        print(stats_row(label, values, target))


def print_breakdown(c: Collected, t0: float, t1: float) -> None:
    """CDC latency by kind of change, counts, and where the time goes per lead/Task."""
    obs, ledger = c.obs, c.ledger
    leads = c.leads(t0, t1)
    task_lead = [(obs.task_of[lead], lead) for lead in leads if lead in obs.task_of]
    groups: dict[str, list[tuple[float, float | None]]] = {}
    for r, kind, _, ts, entity, client in c.changes:
        if t0 * 1000 <= ts <= t1 * 1000:
            groups.setdefault(f"{entity} {kind}, origin {client}", []).append(
                (ts, ledger["staged"].get(r))
            )
    print("\n| CDC event commit -> staged, by kind | n | p50 | p95 | p99 | max |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in sorted(groups):
        print(stats_row(name, diffs(groups[name])))
    in_window = [s for g in groups.values() for s in g]
    unstaged = sum(1 for _, s in in_window if s is None)
    print(f"\nleads created {len(leads)}, assignments seen {sum(1 for x in leads if x in obs.assigned_seen)}, "
          f"tasks created {len(task_lead)}, first responses seen {sum(1 for _, x in task_lead if x in obs.response_seen)}; "
          f"change events committed in the window {len(in_window)} (not staged by the end: {unstaged}); "
          f"polls with leads waiting {obs.polls}, their p50 {common.pct(obs.poll_seconds, 0.5) * 1000:.0f} ms")  # fmt: skip
    not_user = [lead for lead, owner in obs.owner.items() if not owner.startswith("005")]
    if not_user:
        print(f"assigned to a non-user: {len(not_user)}")

    print("\n| stage | lead (assignment) n / p50 / p95 / max | Task (first response) n / p50 / p95 / max |")  # fmt: skip
    print("| --- | --- | --- |")

    def stages(kind: str) -> dict[str, list[float]]:
        out: dict[str, list[tuple[Any, Any]]] = {}
        items = [(lead, lead) for lead in leads] if kind == "lead" else task_lead
        for rid, lead in items:
            r = c.replay.get(rid)
            staged = ledger["staged"].get(r)
            done = ledger["completed"].get(ledger["batch"].get(r))
            decided = (ledger["routed"] if kind == "lead" else ledger["touched"]).get(lead)
            seen = (obs.assigned_seen if kind == "lead" else obs.response_seen).get(lead)
            written = (obs.assigned_modified if kind == "lead" else obs.response_modified).get(lead)
            points = [
                ("commit -> staged", c.commit.get(rid), staged),
                ("staged -> decided", staged, decided),
                ("decided -> batch completed", decided, done),
                ("batch completed -> written back (LastModifiedDate)", done, written),
                ("written back -> seen by the poll", written, seen),
                ("commit -> seen (total)", c.commit.get(rid), seen),
            ]
            for name, a, b in points:
                out.setdefault(name, []).append((a, b))
        return {k: diffs(v) for k, v in out.items()}

    lead_stages, task_stages = stages("lead"), stages("task")

    def cell(values: list[float]) -> str:
        if not values:
            return "-"
        return (f"{len(values)} / {common.pct(values, 0.5):.3f} / {common.pct(values, 0.95):.3f}"
                f" / {max(values):.3f} s")  # fmt: skip

    for name in lead_stages:
        print(f"| {name} | {cell(lead_stages[name])} | {cell(task_stages.get(name, []))} |")


@dataclass
class CostWindow:
    """CPU and runs of a deployment over a measurement window."""

    dep: Deployment
    t0: float = 0.0
    t1: float = 0.0
    cpu: float = 0.0
    sandbox_cpu: float | None = None
    bench_cpu: float = 0.0

    def begin(self) -> CostWindow:
        self.t0, self.cpu, self.sandbox_cpu = time.time(), self.dep.cpu(), self.dep.sandbox_cpu()
        self.bench_cpu = time.process_time()
        return self

    def end(self) -> CostWindow:
        sb = self.dep.sandbox_cpu()
        self.t1, self.cpu = time.time(), self.dep.cpu() - self.cpu
        self.sandbox_cpu = None if sb is None or self.sandbox_cpu is None else sb - self.sandbox_cpu
        self.bench_cpu = time.process_time() - self.bench_cpu
        return self

    def figures(self, c: Collected) -> dict[str, Any]:
        import dagster as dg

        window = self.t1 - self.t0
        events = sum(1 for _, _, _, ts, _, _ in c.changes if self.t0 * 1000 <= ts <= self.t1 * 1000)
        by_job: dict[str, int] = {}
        for record in self.dep.runs(after=self.t0):
            if record.create_timestamp.timestamp() <= self.t1:
                name = record.dagster_run.job_name
                by_job[name] = by_job.get(name, 0) + 1
        alive, since_boot = [], {}
        for r in self.dep.runs():
            name = r.dagster_run.job_name
            since_boot[name] = since_boot.get(name, 0) + 1
            if r.dagster_run.status in (dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING):
                alive.append(name)
        return {
            "window": window,
            "events": events,
            "runs": by_job,
            "runs_per_hour": sum(by_job.values()) * 3600 / window,
            "alive": alive,
            "since_boot": dict(sorted(since_boot.items())),
            "cpu": self.cpu,
            "cpu_per_1000": self.cpu / max(events, 1) * 1000,
            "sandbox_cpu": self.sandbox_cpu,
            "bench_cpu": self.bench_cpu,
        }


def print_cost(fig: dict[str, Any], backlog_end: int | None = None) -> None:
    window, events, cpu = fig["window"], fig["events"], fig["cpu"]
    print("\n| cost | value |")
    print("| --- | --- |")
    print(f"| window | {window:.0f} s |")
    if backlog_end is not None:
        print(f"| batches staged and not processed at the end of the window | {backlog_end} |")
    print(f"| change events committed in the window | {events} ({events / window:.2f}/s) |")
    print(f"| Dagster runs created in the window | {sum(fig['runs'].values())} {dict(sorted(fig['runs'].items()))} |")  # fmt: skip
    print(f"| Dagster runs per hour | {fig['runs_per_hour']:.0f} |")
    print(f"| Dagster runs since dagster dev started (warm-up included) | {fig['since_boot']} |")  # fmt: skip
    print(f"| runs in progress at the end | {len(fig['alive'])} {sorted(fig['alive'])} |")
    print(f"| CPU-seconds, dagster dev tree (webserver, daemon, code server, runs) | {cpu:.1f} s ({cpu / window * 100:.0f}% of a core) |")  # fmt: skip
    print(f"| CPU-seconds per 1,000 events, dagster dev tree | {fig['cpu_per_1000']:.1f} s |")  # fmt: skip
    if fig["sandbox_cpu"] is not None:
        print(f"| CPU-seconds, sandbox org process (simulation, REST, Pub/Sub; not the pipeline) | {fig['sandbox_cpu']:.1f} s |")  # fmt: skip
    print(f"| CPU-seconds, this benchmark (REST creates + polls) | {fig['bench_cpu']:.1f} s |")


def start_user(dep: Deployment, lead_rate: float, poll_ms: float) -> tuple[OrgUser, list[threading.Thread]]:  # fmt: skip
    endpoints = dep.endpoints
    user = OrgUser(
        endpoints.rest_url,
        endpoints.access_token,
        lead_rate=lead_rate,
        seed=7,
        ca_file=getattr(endpoints, "ca_file", None),
    )
    threads = [
        *user.creators(),
        threading.Thread(target=user.poll_loop, args=(poll_ms / 1000.0,), daemon=True),
    ]
    for t in threads:
        t.start()
    deadline = time.time() + 10
    while not user.obs.lead_created and time.time() < deadline:
        time.sleep(0.1)
    if not user.obs.lead_created:
        user.stop_creating.set()
        user.stop_polling.set()
        raise SystemExit(f"the first REST create failed: {user.obs.errors[:1]}")
    return user, threads


def finish_user(user: OrgUser, threads: list[threading.Thread], drain_seconds: float) -> None:
    """Stop creating, wait for the last Tasks, poll until everything is seen (or the drain
    time is up)."""
    user.stop_creating.set()
    for t in threads[:2]:
        t.join()
    deadline = time.time() + drain_seconds
    while user.pending() and time.time() < deadline:
        time.sleep(0.5)
    user.stop_polling.set()
    for t in threads[2:]:
        t.join()
    time.sleep(2.0)  # the last batches' completed_at


def drain_and_measure(
    dep: Deployment,
    user: OrgUser,
    threads: list[threading.Thread],
    drain_seconds: float,
    cost: CostWindow,
) -> tuple[Collected, dict[str, Any]]:
    """After the measured window: let the user finish, collect what the run left and the
    window's cost figures over it."""
    finish_user(user, threads, drain_seconds)
    collected = collect(dep, user)
    return collected, cost.figures(collected)


ORG_UPDATE_DELAY_HELP = (
    "seconds the sandbox org waits before answering each record update, for the REST round "
    "trip of a real org's write-back (default 0: loopback)"
)


# --- the run ----------------------------------------------------------------------------------


def run(args: argparse.Namespace, workdir: Path) -> int:
    dep = Deployment(
        workdir,
        args.mode,
        postgres=args.postgres,
        code_root=Path(args.code).resolve(),
        seed_leads_per_day=args.seed_leads_per_day,
        port=args.port,
        org_update_delay_s=args.org_update_delay,
    )
    loads = LoadSampler()
    try:
        dep.start(args.ready_timeout)
        time.sleep(args.warmup)
        cost = CostWindow(dep).begin()
        user, threads = start_user(dep, args.lead_rate, args.poll_ms)
        time.sleep(args.seconds)
        user.stop_creating.set()
        threads[0].join()
        cost.end()
        backlog_end = backlog(dep.ledger_url)
        uptime_end = uptime()
        collected, fig = drain_and_measure(dep, user, threads, args.drain_seconds, cost)
    finally:
        loads.stop()
        dep.stop()

    t0, t1 = cost.t0, cost.t1
    obs = user.obs
    store = "PostgreSQL ledger + dagster-postgres instance" if args.postgres else "SQLite"
    print(f"\n{args.mode} mode ({store}, code at {dep.version}): {t1 - t0:.0f} s of REST creates "
          f"at {args.lead_rate:g} leads/s (+1 Task each), poll every {args.poll_ms:g} ms; load "
          f"average (1 min) during the run {loads.between(t0, t1)}; uptime at the end: "
          f"{uptime_end}")  # fmt: skip
    if obs.errors:
        print(f"REST errors: {len(obs.errors)}, first: {obs.errors[0]}")
    print_latency(collected, t0, t1, f"{args.mode}, {t1 - t0:.0f} s")
    print_breakdown(collected, t0, t1)
    print_cost(fig, backlog_end)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mode", choices=("stream", "sensor"), default="stream")
    parser.add_argument("--seconds", type=float, default=600.0, help="measurement window")
    parser.add_argument("--lead-rate", type=float, default=1.0, help="REST leads per second")
    parser.add_argument("--poll-ms", type=float, default=100.0)
    parser.add_argument("--warmup", type=float, default=15.0, help="seconds after catch-up")
    parser.add_argument(
        "--ready-timeout",
        type=float,
        default=600.0,
        help="seconds to wait for the seeded history to be processed before measuring anyway",
    )
    parser.add_argument("--drain-seconds", type=float, default=90.0)
    parser.add_argument("--seed-leads-per-day", type=int, default=20)
    parser.add_argument("--port", type=int, default=0, help="webserver port (0: a free one)")
    parser.add_argument("--org-update-delay", type=float, default=0.0, help=ORG_UPDATE_DELAY_HELP)
    parser.add_argument(
        "--postgres",
        action="store_true",
        help="PostgreSQL ledger and dagster-postgres instance (scratch databases on "
        "127.0.0.1:5432, user postgres, dropped at the end) instead of SQLite",
    )
    parser.add_argument(
        "--code",
        default=str(REPO_ROOT),
        help="repository (or git worktree of another commit) whose pipeline code and "
        "dagster.yaml dagster dev runs (default: this one)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args()
    exit_on_sigterm()
    return run_in_scratch(args, f"bench_live_{args.mode}_", run)


def run_in_scratch(
    args: argparse.Namespace, prefix: str, func: Callable[[argparse.Namespace, Path], int]
) -> int:
    """``func(args, workdir)`` in a fresh scratch directory, removed after unless ``--keep``."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        return func(args, workdir)
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
