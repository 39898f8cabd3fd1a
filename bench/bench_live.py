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

    python bench/bench_live.py --mode stream --seconds 600
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
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bench_latency as common  # pct, _dt, _caught_up (its import makes an empty scratch dir)
import requests
import sqlalchemy as sa

from kpi_pipeline.cdc.events import parse_sf_datetime, replay_id_to_int
from kpi_pipeline.sandbox.runtime import read_endpoints, shutdown_sandbox
from kpi_pipeline.sandbox.store import QUEUE_IDS, REP_USER_IDS, SandboxStore

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
    def __init__(self, rest_url: str, token: str, *, lead_rate: float, seed: int) -> None:
        self.base = f"{rest_url.rstrip('/')}/services/data/{API}"
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

    def _post(self, session: requests.Session, sobject: str, body: dict[str, Any]) -> str | None:
        answer = session.post(f"{self.base}/sobjects/{sobject}", json=body, headers=self.headers)
        if answer.status_code != 201:
            with self.lock:
                self.obs.errors.append(f"POST {sobject}: {answer.status_code} {answer.text[:300]}")
            return None
        return answer.json()["id"]

    def create_loop(self) -> None:
        session = requests.Session()
        number = 0
        next_lead = time.time()
        due: list[tuple[float, str]] = []
        while not self.stop_creating.is_set() or due:
            now = time.time()
            if now >= next_lead and not self.stop_creating.is_set():
                number += 1
                lead_id = self._post(session, "Lead", self._lead(number))
                if lead_id:
                    with self.lock:
                        self.obs.lead_created[lead_id] = now_ms()
                    due.append((time.time() + self.rng.uniform(*TASK_DELAY_S), lead_id))
                next_lead += 1.0 / self.lead_rate
            for item in [d for d in due if d[0] <= time.time()]:
                due.remove(item)
                task_id = self._post(session, "Task", self._task(item[1]))
                if task_id:
                    with self.lock:
                        self.obs.task_of[item[1]] = task_id
                        self.obs.task_created[task_id] = now_ms()
            upcoming = [d[0] for d in due] + (
                [next_lead] if not self.stop_creating.is_set() else []
            )
            if upcoming:
                time.sleep(max(0.0, min(min(upcoming) - time.time(), 0.2)))

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

    def poll_loop(self, interval_s: float) -> None:
        session = requests.Session()
        while not self.stop_polling.is_set():
            started = time.time()
            with self.lock:
                waiting = [
                    lead
                    for lead in self.obs.lead_created
                    if lead not in self.obs.assigned_seen
                    or (lead in self.obs.task_of and lead not in self.obs.response_seen)
                ]
            for chunk in (waiting[i : i + 100] for i in range(0, len(waiting), 100)):
                self._poll(session, chunk)
            if waiting:
                self.obs.polls += 1
                self.obs.poll_seconds.append(time.time() - started)
            time.sleep(max(0.0, interval_s - (time.time() - started)))

    def _poll(self, session: requests.Session, ids: list[str]) -> None:
        soql = (
            "SELECT Id, OwnerId, Owner_Assigned_At__c, First_Response_At__c, LastModifiedDate "
            f"FROM Lead WHERE Id IN ({', '.join(repr(i) for i in ids)})"
        )
        answer = session.get(f"{self.base}/query", params={"q": soql}, headers=self.headers)
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


# --- the dagster dev configuration ------------------------------------------------------------


def write_instance_yaml(home: Path) -> None:
    """The repo's dagster.yaml (launcher, monitoring, retries, sensors, concurrency), with its
    .dagster_home/ paths moved to the scratch home."""
    home.mkdir(parents=True, exist_ok=True)
    text = (REPO_ROOT / "dagster.yaml").read_text()
    (home / "dagster.yaml").write_text(text.replace(".dagster_home/", f"{home}/"))


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
            inbox = {
                replay_id_to_int(r.replay_id): (r.staged_at, r.batch_id)
                for r in conn.execute(sa.text("select replay_id, staged_at, batch_id from cdc_inbox"))
            }  # fmt: skip
            completed = dict(
                conn.execute(sa.text("select batch_id, completed_at from cdc_batches")).all()
            )
            routed = dict(
                conn.execute(sa.text("select lead_id, decided_at from routing_decisions")).all()
            )
            touched = dict(
                conn.execute(
                    sa.text(
                        "select lead_id, min(decided_at) from decisions "
                        "where workload = 'first_touch' group by lead_id"
                    )
                ).all()
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


# --- the run ----------------------------------------------------------------------------------


def run(args: argparse.Namespace, workdir: Path) -> int:
    import dagster as dg

    home, data_dir = workdir / "dagster_home", workdir / "kpi"
    write_instance_yaml(home)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("KPI_", "DAGSTER_")) and k != "PROMETHEUS_MULTIPROC_DIR"
    }
    env.update(
        DAGSTER_HOME=str(home),
        KPI_DATA_DIR=str(data_dir),
        KPI_CDC_MODE=args.mode,
        KPI_SANDBOX_LEADS_PER_DAY=str(args.seed_leads_per_day),
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    port = args.port or free_port()
    log_path = workdir / "dagster_dev.log"
    command = [str(BIN / "dagster"), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)]  # fmt: skip
    print(f"$ KPI_CDC_MODE={args.mode} DAGSTER_HOME={home} KPI_DATA_DIR={data_dir} "
          f"KPI_SANDBOX_LEADS_PER_DAY={args.seed_leads_per_day} {' '.join(command[1:])}")  # fmt: skip
    print(f"uptime before: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")  # fmt: skip
    dev = subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        env=env,
        stdout=log_path.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    ledger_url = f"sqlite:///{data_dir / 'ledger.db'}"
    user: OrgUser | None = None
    try:
        booted = time.time()
        endpoints = wait_for(lambda: read_endpoints(data_dir), 300, "the sandbox org", log_path)
        try:
            wait_for(
                lambda: common._caught_up(ledger_url), args.ready_timeout, "catch-up", log_path
            )
            print(f"dagster dev up and caught up after {time.time() - booted:.0f} s")
        except SystemExit:
            # Sensor mode under load may never drain its queue of runs: measure from here.
            print(f"not caught up {time.time() - booted:.0f} s after start; measuring anyway "
                  f"with {backlog(ledger_url)} batches staged and not processed")  # fmt: skip
        time.sleep(args.warmup)
        sb_pid = sandbox_pid(data_dir)
        exclude = {sb_pid} if sb_pid else set()
        instance = dg.DagsterInstance.from_config(str(home))

        user = OrgUser(endpoints.rest_url, endpoints.access_token, lead_rate=args.lead_rate, seed=7)
        loads: list[float] = []
        cpu0, _ = tree_cpu(dev.pid, exclude)
        sb0 = proc_cpu(sb_pid) if sb_pid else None
        me0 = time.process_time()
        t0 = time.time()
        threads = [
            threading.Thread(target=user.create_loop, daemon=True),
            threading.Thread(target=user.poll_loop, args=(args.poll_ms / 1000.0,), daemon=True),
        ]
        for t in threads:
            t.start()
        while time.time() < t0 + args.seconds:
            time.sleep(5.0)
            loads.append(os.getloadavg()[0])
        user.stop_creating.set()
        threads[0].join()
        t1 = time.time()
        backlog_end = backlog(ledger_url)
        cpu1, _ = tree_cpu(dev.pid, exclude)
        sb1 = proc_cpu(sb_pid) if sb_pid else None
        me1 = time.process_time()
        uptime_end = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
        drain_deadline = time.time() + args.drain_seconds
        while user.pending() and time.time() < drain_deadline:
            time.sleep(0.5)
        user.stop_polling.set()
        threads[1].join()
        time.sleep(2.0)  # the last batches' completed_at
        runs = instance.get_run_records(
            filters=dg.RunsFilter(created_after=datetime.fromtimestamp(t0, UTC))
        )
        all_runs = instance.get_run_records()
        ledger = ledger_times(ledger_url)
        changes = store_changes(data_dir / "sandbox.db")
    finally:
        # Kill what is in the tree now (pids seen earlier may have been reused since).
        _, live_tree = tree_cpu(dev.pid, {sandbox_pid(data_dir) or -1})
        os.killpg(dev.pid, signal.SIGKILL)
        for pid in live_tree - {dev.pid}:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)  # run workers in another process group, if any
        dev.wait(timeout=30)
        shutdown_sandbox(data_dir)
        if user is not None:
            user.stop_creating.set()
            user.stop_polling.set()

    obs = user.obs
    window = t1 - t0
    commit = {rid: ts for _, kind, rid, ts, _, _ in changes if kind == "CREATE"}
    replay = {rid: r for r, kind, rid, _, _, _ in changes if kind == "CREATE"}
    leads = list(obs.lead_created)
    task_lead = [(obs.task_of[lead], lead) for lead in leads if lead in obs.task_of]

    print(f"\n{args.mode} mode: {window:.0f} s of REST creates at {args.lead_rate:g} leads/s "
          f"(+1 Task each), poll every {args.poll_ms:g} ms; load average (1 min) during the "
          f"run mean {sum(loads) / max(len(loads), 1):.2f}, max {max(loads, default=0):.2f}; "
          f"uptime at the end: {uptime_end}")  # fmt: skip
    if obs.errors:
        print(f"REST errors: {len(obs.errors)}, first: {obs.errors[0]}")
    print("\n| measurement | n | p50 | p95 | p99 | max | target |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    commit_of_replay = {r: ts for r, _, _, ts, _, _ in changes}
    ours = [replay[r] for r in list(leads) + [t for t, _ in task_lead] if r in replay]
    cdc_ours = diffs([(commit_of_replay[r], ledger["staged"].get(r)) for r in ours])
    in_window = [(ts, ledger["staged"].get(r)) for r, _, _, ts, _, _ in changes
                 if t0 * 1000 <= ts <= t1 * 1000]  # fmt: skip
    print(stats_row("CDC event (our creates): commit -> staged in ledger inbox", cdc_ours, 0.5))
    print(stats_row("CDC event (every change in the window): commit -> staged", diffs(in_window), 0.5))  # fmt: skip
    assign = diffs([(commit.get(lead), obs.assigned_seen.get(lead)) for lead in leads])
    response = diffs([(commit.get(task), obs.response_seen.get(lead)) for task, lead in task_lead])
    print(stats_row("assignment: lead commit -> OwnerId + Owner_Assigned_At__c over REST", assign, 1.0))  # fmt: skip
    print(stats_row("first response: Task commit -> First_Response_At__c over REST", response, 1.0))  # fmt: skip
    groups: dict[str, list[tuple[float, float | None]]] = {}
    for r, kind, _, ts, entity, client in changes:
        if t0 * 1000 <= ts <= t1 * 1000:
            groups.setdefault(f"{entity} {kind}, origin {client}", []).append(
                (ts, ledger["staged"].get(r))
            )
    print("\n| CDC event commit -> staged, by kind | n | p50 | p95 | p99 | max |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in sorted(groups):
        print(stats_row(name, diffs(groups[name])))
    unstaged = sum(1 for _, s in in_window if s is None)
    print(f"\nleads created {len(leads)}, assignments seen {len(obs.assigned_seen)}, tasks created "
          f"{len(task_lead)}, first responses seen {len(obs.response_seen)}; change events "
          f"committed in the window {len(in_window)} (not staged by the end: {unstaged}); "
          f"polls with leads waiting {obs.polls}, their p50 {common.pct(obs.poll_seconds, 0.5) * 1000:.0f} ms")  # fmt: skip
    not_user = [lead for lead, owner in obs.owner.items() if not owner.startswith("005")]
    if not_user:
        print(f"assigned to a non-user: {len(not_user)}")

    # where the time goes
    print("\n| stage | lead (assignment) n / p50 / p95 / max | Task (first response) n / p50 / p95 / max |")  # fmt: skip
    print("| --- | --- | --- |")

    def stages(kind: str) -> dict[str, list[float]]:
        out: dict[str, list[tuple[Any, Any]]] = {}
        items = [(lead, lead) for lead in leads] if kind == "lead" else task_lead
        for rid, lead in items:
            r = replay.get(rid)
            staged = ledger["staged"].get(r)
            done = ledger["completed"].get(ledger["batch"].get(r))
            decided = (ledger["routed"] if kind == "lead" else ledger["touched"]).get(lead)
            seen = (obs.assigned_seen if kind == "lead" else obs.response_seen).get(lead)
            written = (obs.assigned_modified if kind == "lead" else obs.response_modified).get(lead)
            points = [
                ("commit -> staged", commit.get(rid), staged),
                ("staged -> decided", staged, decided),
                ("decided -> batch completed", decided, done),
                ("batch completed -> written back (LastModifiedDate)", done, written),
                ("written back -> seen by the poll", written, seen),
                ("commit -> seen (total)", commit.get(rid), seen),
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

    # cost
    by_job: dict[str, int] = {}
    for record in runs:
        by_job[record.dagster_run.job_name] = by_job.get(record.dagster_run.job_name, 0) + 1
    alive = [
        r.dagster_run.job_name
        for r in all_runs
        if r.dagster_run.status in (dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING)
    ]
    cpu = cpu1 - cpu0
    events = len(in_window)
    print("\n| cost | value |")
    print("| --- | --- |")
    print(f"| window | {window:.0f} s |")
    print(f"| batches staged and not processed at the end of the window | {backlog_end} |")
    print(f"| change events committed in the window | {events} ({events / window:.2f}/s) |")
    print(f"| Dagster runs created in the window | {sum(by_job.values())} {dict(sorted(by_job.items()))} |")  # fmt: skip
    print(f"| Dagster runs per hour | {sum(by_job.values()) * 3600 / window:.0f} |")
    since_boot: dict[str, int] = {}
    for record in all_runs:
        name = record.dagster_run.job_name
        since_boot[name] = since_boot.get(name, 0) + 1
    print(f"| Dagster runs since dagster dev started (warm-up included) | {dict(sorted(since_boot.items()))} |")  # fmt: skip
    print(f"| runs in progress at the end | {len(alive)} {sorted(alive)} |")
    print(f"| CPU-seconds, dagster dev tree (webserver, daemon, code server, runs) | {cpu:.1f} s ({cpu / window * 100:.0f}% of a core) |")  # fmt: skip
    print(f"| CPU-seconds per 1,000 events, dagster dev tree | {cpu / max(events, 1) * 1000:.1f} s |")  # fmt: skip
    if sb0 is not None and sb1 is not None:
        print(f"| CPU-seconds, sandbox org process (simulation, REST, Pub/Sub; not the pipeline) | {sb1 - sb0:.1f} s |")  # fmt: skip
    print(f"| CPU-seconds, this benchmark (REST creates + polls) | {me1 - me0:.1f} s |")
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
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix=f"bench_live_{args.mode}_"))
    try:
        return run(args, workdir)
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
