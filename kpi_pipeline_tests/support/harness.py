"""Real-process harness for the daemon tests and bench/bench_recovery.py.

A ``Deployment`` is one pipeline as an operator runs it: a fresh DAGSTER_HOME, a data dir
(ledger, sandbox store), ``dagster-daemon run -w workspace.yaml`` started in its own session
(the daemon, its code server and the run workers share that process group; the sandbox org
runs detached, in a session of its own, and outlives them). It can be killed the three ways
issue 7 measured (a run worker, the whole group, the daemon alone) and restarted.

``Outcome`` reads what a finished deployment left (ledger tables, the sandbox org's records and
its change log), and the ``check_*`` functions compare two outcomes or check one; each returns
a list of human-readable problems, empty when the property holds, so a test asserts them one
by one and the bench reports them.

Nothing here mocks the pipeline: the processes are the ones ``make dev`` / DEPLOYMENT.md run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import dagster as dg
import sqlalchemy as sa
import yaml

from kpi_pipeline.core.kpis.lead_facts import lead_facts_columns
from kpi_pipeline.core.salesforce_fields import (
    OWNER_FIELD,
    WRITTEN_FIELD_NAMES,
    WRITTEN_LEAD_FIELDS,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CDC_ENTITIES = ("Lead", "Task", "EmailMessage")  # the default channels' entities
CLIENT_ID = "kpi_pipeline"
# The Lead fields the write-back owns that the ledger's lead facts hold under the same name:
# the org must hold the ledger's value for each.
WRITTEN_FIELDS = (OWNER_FIELD, *(n for n in WRITTEN_FIELD_NAMES if n in lead_facts_columns()))
TTFR_FIELDS = (
    "First_Response_At__c",
    "First_Response_User__c",
    "First_Response_Source__c",
    "Time_to_First_Response__c",
)
DATETIME_FIELDS = frozenset(f.api_name for f in WRITTEN_LEAD_FIELDS if f.sf_type == "DateTime")
FLOAT_FIELDS = frozenset(f.api_name for f in WRITTEN_LEAD_FIELDS if f.sf_type == "Number")


# --- instance and daemon -----------------------------------------------------------------------


def write_instance_yaml(
    home: Path, postgres_url: str | None = None, code_root: Path = REPO_ROOT
) -> dict[str, Any]:
    """The repository's dagster.yaml as deployed (run launcher, run monitoring, retries, run
    slots, sensors), with its storage, artifacts and compute logs moved under ``home``; with
    ``postgres_url`` the storage is dagster-postgres on that database. Returns the config.

    Run monitoring matters to every test that kills a daemon: a run whose worker died with it
    (STARTING or STARTED) would otherwise hold one of the two run slots for ever."""
    home.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load((code_root / "dagster.yaml").read_text())
    if postgres_url:
        pg = postgres_url.replace("postgresql+psycopg2://", "postgresql://")
        config["storage"] = {"postgres": {"postgres_url": pg}}
    else:
        config["storage"] = {"sqlite": {"base_dir": str(home / "storage")}}
    for key, sub in (("local_artifact_storage", "artifacts"), ("compute_logs", "compute_logs")):
        if isinstance(config.get(key), dict) and "config" in config[key]:
            config[key]["config"]["base_dir"] = str(home / sub)
    (home / "dagster.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return config


def daemon_env(home: Path, data_dir: Path, **settings: str) -> dict[str, str]:
    """The environment of a dagster-daemon on DAGSTER_HOME ``home`` and its pipeline on
    KPI_DATA_DIR ``data_dir``: this one's, with no live org simulation (only the seeded
    history and what a test writes change the org), the venv's scripts first on PATH, and
    ``settings`` on top."""
    return {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "KPI_DATA_DIR": str(data_dir),
        "KPI_SANDBOX_LIVE_LEADS_PER_HOUR": "0",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        **settings,
    }


def start_daemon(
    env: Mapping[str, str], log_path: Path, extra_args: Iterable[str] = ()
) -> subprocess.Popen:
    """dagster-daemon (and so its code server and run workers) writing to ``log_path``."""
    argv = [str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml", *extra_args]
    return start_logged(argv, env, log_path)


def start_logged(argv: Iterable[str], env: Mapping[str, str], log_path: Path) -> subprocess.Popen:
    """``argv`` from the repository root in a session of its own (``kill`` ends its whole
    process group), its output appended to ``log_path``."""
    with log_path.open("ab") as log:
        return subprocess.Popen(
            list(argv),
            cwd=REPO_ROOT,
            env=dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL the daemon's whole process group (daemon, code server, run workers)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


@contextlib.contextmanager
def _fresh_instance(env: Mapping[str, str]) -> Iterator[dg.DagsterInstance]:
    """A new instance over the storage of ``env``'s DAGSTER_HOME, closed afterwards: what an
    operator's process reads after a restart. Opened in this process, not a new Python: each
    poll of a separate process paid about 2 s of CPU importing dagster, and the waits poll
    every few seconds."""
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        yield instance


def instance_state(env: Mapping[str, str]) -> dict:
    """The sensor's stored cursor and every run (id, run key, job, status)."""
    with _fresh_instance(env) as inst:
        cursor = None
        for state in inst.all_instigator_state():
            if state.name == "cdc_sensor":
                cursor = state.instigator_data.cursor if state.instigator_data else None
        runs = [
            {
                "id": r.run_id,
                "key": r.tags.get("dagster/run_key"),
                "job": r.job_name,
                "status": r.status.value,
            }
            for r in inst.get_runs()
        ]
    return {"cursor": cursor, "runs": runs}


def check_executions(env: Mapping[str, str], asset: str, check: str) -> list[str]:
    """Statuses of the executions of one asset check (newest first): what the UI's check
    history shows."""
    key = dg.AssetCheckKey(dg.AssetKey(asset), check)
    with _fresh_instance(env) as inst:
        history = inst.event_log_storage.get_asset_check_execution_history(key, limit=20)
        return [record.status.value for record in history]


def job_runs(env: Mapping[str, str], job_name: str) -> list[dict]:
    """Runs of ``job_name`` (newest first): id, status, tags and the pid the run's worker
    logged ("Started process for run (pid: N)"), found as the repository's run launcher finds
    it for its health check; start and end times (epoch seconds, None until then)."""
    from kpi_pipeline.defs.run_launcher import LocalProcessRunLauncher

    out = []
    with _fresh_instance(env) as inst:
        for record in inst.get_run_records(filters=dg.RunsFilter(job_name=job_name)):
            run = record.dagster_run
            worker = LocalProcessRunLauncher._worker_pid(inst, run.run_id)
            out.append(
                {
                    "id": run.run_id,
                    "status": run.status.value,
                    "tags": dict(run.tags),
                    "pid": worker[0] if worker else None,
                    "start_time": record.start_time,
                    "end_time": record.end_time,
                }
            )
    return out


def wait_for_state(
    env: Mapping[str, str], predicate: Callable[[dict], bool], timeout: float, log_path: Path
) -> dict:
    deadline = time.monotonic() + timeout
    state: dict = {}
    while time.monotonic() < deadline:
        state = instance_state(env)
        if predicate(state):
            return state
        time.sleep(3)
    raise AssertionError(
        f"timed out; last state {state}\n--- daemon log tail ---\n{log_path.read_text()[-4000:]}"
    )


# --- processes ---------------------------------------------------------------------------------


def _read_proc(pid: int, name: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes()
    except OSError:
        return b""


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def run_worker_pids(dagster_home: Path) -> list[int]:
    """Live run workers of this instance.

    The code server runs each run in a ``multiprocessing`` spawn child of its own (its
    command line is ``spawn_main ... --multiprocessing-fork``); launchers that shell out use
    ``dagster api execute_run``/``execute_step``. Matched by command line and by the
    DAGSTER_HOME in their environment, not by ancestry from the daemon: after the daemon
    alone is killed, its code server and workers live on outside its tree."""
    home = f"DAGSTER_HOME={dagster_home}".encode()
    found = []
    for pid in _pids():
        argv = _read_proc(pid, "cmdline").split(b"\0")
        cli_worker = b"api" in argv and bool({b"execute_run", b"execute_step"} & set(argv))
        spawned = b"--multiprocessing-fork" in argv and _is_code_server(_parent(pid))
        if not (cli_worker or spawned):
            continue
        if home in _read_proc(pid, "environ").split(b"\0") and _alive(pid):
            found.append(pid)
    return found


def _parent(pid: int) -> int:
    stat = _read_proc(pid, "stat")
    return int(stat.rpartition(b")")[2].split()[1]) if stat else 0


def _is_code_server(pid: int) -> bool:
    argv = _read_proc(pid, "cmdline").split(b"\0") if pid else []
    return b"api" in argv and b"grpc" in argv


def _alive(pid: int) -> bool:
    stat = _read_proc(pid, "stat")
    return bool(stat) and stat.rpartition(b")")[2].split()[0] not in (b"Z", b"X")


def _process_group(pid: int) -> int | None:
    stat = _read_proc(pid, "stat")
    if not stat:
        return None
    return int(stat.rpartition(b")")[2].split()[2])


# --- ledger and org readers --------------------------------------------------------------------


def _ms(value: datetime | None) -> int | None:
    return None if value is None else round(value.timestamp() * 1000)


@dataclass(frozen=True)
class Progress:
    inbox: int
    org_changes: int
    staged: int  # batches not done
    done: int
    outbox: dict[str, int]
    last_completed: datetime | None

    @property
    def caught_up(self) -> bool:
        return (
            self.staged == 0
            and self.inbox == self.org_changes
            and self.outbox.get("pending", 0) + self.outbox.get("claimed", 0) == 0
        )


def read_progress(data_dir: Path) -> Progress:
    from kpi_pipeline.adapters.ledger import schema as t

    engine = sa.create_engine(f"sqlite:///{data_dir / 'ledger.db'}")
    try:
        with engine.connect() as conn:
            inbox = conn.execute(sa.select(sa.func.count()).select_from(t.cdc_inbox)).scalar_one()
            by_batch = dict(
                conn.execute(
                    sa.select(t.cdc_batches.c.status, sa.func.count()).group_by(
                        t.cdc_batches.c.status
                    )
                ).all()
            )
            last = conn.execute(sa.select(sa.func.max(t.cdc_batches.c.completed_at))).scalar()
            outbox = dict(
                conn.execute(
                    sa.select(t.sf_outbox.c.status, sa.func.count()).group_by(t.sf_outbox.c.status)
                ).all()
            )
    except sa.exc.OperationalError:  # the first code server has not migrated the ledger yet
        return Progress(0, org_change_count(data_dir), 0, 0, {}, None)
    finally:
        engine.dispose()
    done = int(by_batch.get("done", 0))
    staged = sum(int(v) for k, v in by_batch.items() if k != "done")
    return Progress(int(inbox), org_change_count(data_dir), staged, done, outbox, last)


def org_change_count(data_dir: Path) -> int:
    path = data_dir / "sandbox.db"
    with contextlib.closing(_sqlite_ro(path)) as conn:
        marks = ",".join("?" * len(CDC_ENTITIES))
        return int(
            conn.execute(
                f"SELECT count(*) FROM changes WHERE entity IN ({marks})", CDC_ENTITIES
            ).fetchone()[0]
        )


def _sqlite_ro(path: Path):
    import sqlite3

    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    conn.execute("PRAGMA busy_timeout = 30000")
    return conn


def claimed_outbox_rows(data_dir: Path) -> int:
    from kpi_pipeline.adapters.ledger import schema as t

    engine = sa.create_engine(f"sqlite:///{data_dir / 'ledger.db'}")
    try:
        with engine.connect() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count()).where(t.sf_outbox.c.status == "claimed")
                ).scalar_one()
            )
    except sa.exc.OperationalError:
        return 0
    finally:
        engine.dispose()


def channel_leases(data_dir: Path) -> list[tuple[str, str, datetime, datetime]]:
    """The ledger's stream channel leases, expired included: (channel, holder, acquired_at,
    expires_at)."""
    from kpi_pipeline.adapters.ledger import schema as t

    engine = sa.create_engine(f"sqlite:///{data_dir / 'ledger.db'}")
    try:
        with engine.connect() as conn:
            c = t.cdc_channel_leases.c
            rows = conn.execute(sa.select(c.channel, c.holder, c.acquired_at, c.expires_at))
            return [(r.channel, r.holder, r.acquired_at, r.expires_at) for r in rows]
    except sa.exc.OperationalError:  # not migrated yet
        return []
    finally:
        engine.dispose()


def batches_done_by(data_dir: Path) -> Counter[str]:
    """Batches marked done, by the run (``run_id``) that processed them."""
    from kpi_pipeline.adapters.ledger import schema as t

    engine = sa.create_engine(f"sqlite:///{data_dir / 'ledger.db'}")
    try:
        with engine.connect() as conn:
            c = t.cdc_batches.c
            return Counter(
                dict(
                    conn.execute(
                        sa.select(c.run_id, sa.func.count())
                        .where(c.status == "done")
                        .group_by(c.run_id)
                    ).all()
                )
            )
    except sa.exc.OperationalError:
        return Counter()
    finally:
        engine.dispose()


@dataclass
class OrgWrite:
    replay: int
    lead_id: str
    fields: dict[str, Any]
    ours: bool
    user_id: str


@dataclass
class Outcome:
    """What a finished deployment left behind."""

    facts: dict[str, dict[str, Any]]  # ledger lead_facts by lead id
    routed: dict[str, dict[str, Any]]  # routing_decisions by lead id (the decision JSON)
    # flywheel decisions rows of workload lead_route, records of a superseded one left out
    route_decision_counts: Counter[str]
    outbox: dict[str, int]
    org: dict[str, dict[str, Any]]  # sandbox Lead records by id
    lead_updates: list[OrgWrite]  # every Lead UPDATE in the org's change log, replay order
    leads: int  # Lead records created in the org

    @property
    def our_updates(self) -> int:
        return sum(1 for w in self.lead_updates if w.ours)

    @property
    def updates_per_lead(self) -> float:
        return self.our_updates / self.leads if self.leads else 0.0


def read_outcome(data_dir: Path, ledger_url: str | None = None) -> Outcome:
    """``ledger_url``: the ledger when it is not DATA_DIR's SQLite file (PostgreSQL)."""
    from kpi_pipeline.adapters.ledger import schema as t
    from kpi_pipeline.sandbox.store import SandboxStore

    engine = sa.create_engine(ledger_url or f"sqlite:///{data_dir / 'ledger.db'}")
    try:
        with engine.connect() as conn:
            facts = {
                row["Id"]: dict(row)
                for row in conn.execute(sa.select(t.lead_facts)).mappings().all()
            }
            routed = {
                row.lead_id: row.decision for row in conn.execute(sa.select(t.routing_decisions))
            }
            counts = Counter(
                row.lead_id
                for row in conn.execute(
                    sa.select(t.decisions.c.lead_id, t.decisions.c.response).where(
                        t.decisions.c.workload == "lead_route"
                    )
                )
                if not (isinstance(row.response, dict) and row.response.get("superseded"))
            )
            outbox = dict(
                conn.execute(
                    sa.select(t.sf_outbox.c.status, sa.func.count()).group_by(t.sf_outbox.c.status)
                ).all()
            )
    finally:
        engine.dispose()
    store = SandboxStore(data_dir / "sandbox.db")
    try:
        org = {r["Id"]: r for r in store.query_records("Lead", include_deleted=True)}
        writes, leads = [], 0
        for change in store.iter_changes():
            if change.entity != "Lead":
                continue
            header = change.header
            if header["changeType"] == "CREATE":
                leads += 1
            if header["changeType"] != "UPDATE":
                continue
            writes.append(
                OrgWrite(
                    change.replay,
                    header["recordIds"][0],
                    dict(change.fields),
                    f"client={CLIENT_ID}" in (header.get("changeOrigin") or ""),
                    header.get("commitUser") or "",
                )
            )
    finally:
        store.close()
    return Outcome(facts, routed, counts, outbox, org, writes, leads)


# --- checks (each returns the problems found; empty = holds) ------------------------------------


def _same(field_name: str, a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if field_name in DATETIME_FIELDS:
        a = _ms(a) if isinstance(a, datetime) else int(a)
        b = _ms(b) if isinstance(b, datetime) else int(b)
        return abs(a - b) <= 1
    if field_name in FLOAT_FIELDS:
        return abs(float(a) - float(b)) <= 0.01
    return a == b


def check_routed_at_most_once(run: Outcome) -> list[str]:
    """One routing decision per lead in the flywheel (a record that a decision was superseded
    by a person's owner change is not a second routing), and our writes never gave a lead
    two different owners."""
    problems = [
        f"{lead}: {n} lead_route decisions in the flywheel"
        for lead, n in run.route_decision_counts.items()
        if n > 1
    ]
    owners: dict[str, set[str]] = defaultdict(set)
    for write in run.lead_updates:
        if write.ours and write.fields.get("OwnerId"):
            owners[write.lead_id].add(write.fields["OwnerId"])
    problems += [
        f"{lead}: our writes set {len(o)} different owners in the org: {sorted(o)}"
        for lead, o in owners.items()
        if len(o) > 1
    ]
    return problems


def check_same_leads_routed(clean: Outcome, killed: Outcome) -> list[str]:
    only_clean = sorted(set(clean.routed) - set(killed.routed))
    only_killed = sorted(set(killed.routed) - set(clean.routed))
    problems = []
    if only_clean:
        problems.append(f"{len(only_clean)} leads routed only in the clean run: {only_clean[:10]}")
    if only_killed:
        problems.append(
            f"{len(only_killed)} leads routed only in the killed run: {only_killed[:10]}"
        )
    for lead in sorted(set(clean.routed) & set(killed.routed)):
        a, b = clean.routed[lead].get("rule_id"), killed.routed[lead].get("rule_id")
        if a != b:
            problems.append(f"{lead}: rule {b!r} after kills, {a!r} in the clean run")
    return problems


def _decided_at(decision: Mapping[str, Any]) -> datetime:
    return datetime.strptime(decision["decided_at"], "%Y-%m-%dT%H:%M:%S.%f%z")


def check_owners_from_pool(clean: Outcome, killed: Outcome, policy: Any) -> list[str]:
    """Round robin may hand out other members after kills, but from the decision's pool; a
    user or queue target gives the clean run's owner; no member goes over a daily cap.

    Judged on the decisions (``routing_decisions``), not the lead's owner now: a rep who
    took the lead since is not a routing outcome."""
    rules = {rule.id: rule for rule in policy.rules}
    tz = ZoneInfo(policy.timezone)
    per_day: Counter[tuple[str, str]] = Counter()
    problems = []
    for lead, decision in sorted(killed.routed.items()):
        owner, rule_id = decision.get("owner_id"), decision.get("rule_id")
        rule = rules.get(rule_id)
        pool_id = decision.get("pool_id") or (rule.target.pool if rule is not None else None)
        if pool_id:
            pool = policy.pools[pool_id]
            allowed = {m.user_id for m in pool.members if m.available}
            allowed |= {pool.fallback_owner, policy.fallback_owner} - {None}
            if owner not in allowed:
                problems.append(f"{lead}: owner {owner} not in pool {pool_id} (rule {rule_id})")
        else:
            clean_owner = clean.routed.get(lead, {}).get("owner_id")
            if lead in clean.routed and owner != clean_owner:
                problems.append(f"{lead}: owner {owner}, clean run {clean_owner} (rule {rule_id})")
        if owner:
            per_day[(owner, _decided_at(decision).astimezone(tz).date().isoformat())] += 1
    caps = {
        m.user_id: m.daily_cap
        for pool in policy.pools.values()
        for m in pool.members
        if m.daily_cap is not None
    }
    problems += [
        f"{owner} got {n} leads on {day}, cap {caps[owner]}"
        for (owner, day), n in per_day.items()
        if owner in caps and n > caps[owner]
    ]
    return problems


def check_ttfr_equal(clean: Outcome, killed: Outcome) -> list[str]:
    problems = []
    for lead in sorted(set(clean.facts) | set(killed.facts)):
        a, b = clean.facts.get(lead), killed.facts.get(lead)
        if a is None or b is None:
            problems.append(
                f"{lead}: lead facts only in the {'clean' if b is None else 'killed'} run"
            )
            continue
        for name in TTFR_FIELDS:
            if not _same(name, a[name], b[name]):
                problems.append(f"{lead}.{name}: killed {b[name]!r}, clean {a[name]!r}")
    return problems


def check_org_equals_ledger(run: Outcome) -> list[str]:
    problems = []
    for lead, facts in sorted(run.facts.items()):
        record = run.org.get(lead)
        if record is None or record.get("IsDeleted"):
            continue  # deleted in the org: nothing to compare (the simulator deletes a few)
        for name in WRITTEN_FIELDS:
            want, have = facts.get(name), record.get(name)
            if name == "OwnerId" and want is None:
                continue  # the ledger never saw an owner: nothing was ours to write
            if not _same(name, want, have):
                problems.append(f"{lead}.{name}: org {have!r}, ledger {want!r}")
    return problems


def check_outbox_empty(run: Outcome) -> list[str]:
    left = {k: v for k, v in run.outbox.items() if k in ("pending", "claimed") and v}
    return [f"outbox rows left: {left}"] if left else []


def check_first_response_never_later(run: Outcome) -> list[str]:
    """Replaying the org's change log, no write of ours moved a lead's first response later."""
    problems = []
    last: dict[str, int] = {}
    for write in run.lead_updates:
        value = write.fields.get("First_Response_At__c")
        if not write.ours or value is None:
            continue
        before = last.get(write.lead_id)
        if before is not None and value > before:
            problems.append(
                f"{write.lead_id}: First_Response_At__c moved later by {(value - before) / 60000:.2f} "
                f"min at replay {write.replay}"
            )
        last[write.lead_id] = value if before is None else min(before, value)
    return problems


def check_person_owner_kept(run: Outcome, integration_users: Iterable[str]) -> list[str]:
    """After a person changed a lead's owner in the org, no write of ours changed it again."""
    ours_users = set(integration_users)
    problems = []
    person_changed: dict[str, int] = {}
    for write in run.lead_updates:
        if "OwnerId" not in write.fields:
            continue
        if not write.ours and write.user_id not in ours_users:
            person_changed[write.lead_id] = write.replay
        elif write.ours and write.lead_id in person_changed:
            problems.append(
                f"{write.lead_id}: our write at replay {write.replay} replaced the owner a person "
                f"set at replay {person_changed[write.lead_id]}"
            )
    return problems


# --- seeding -----------------------------------------------------------------------------------


def seed_store(path: Path, *, leads: int, days: float, seed: int) -> int:
    """A sandbox store with ``leads`` simulated leads and their activity, ending now; returns
    the change events written. Copy the file to give two deployments the same workload."""
    from kpi_pipeline.sandbox.simulator import simulate
    from kpi_pipeline.sandbox.store import SandboxStore

    store = SandboxStore(path)
    try:
        return simulate(store, leads=leads, days=days, seed=seed).changes
    finally:
        store.close()


def copy_store(template: Path, data_dir: Path) -> None:
    import sqlite3

    data_dir.mkdir(parents=True, exist_ok=True)
    # The backup API copies a consistent snapshot, WAL included.
    with (
        contextlib.closing(sqlite3.connect(template)) as src,
        contextlib.closing(sqlite3.connect(data_dir / "sandbox.db")) as dst,
    ):
        src.backup(dst)


def add_wave(
    data_dir: Path, wave: int, *, leads: int, base_ms: int, reassign_at_ms: int | None = None
) -> list[str]:
    """New org activity while the pipeline runs, the same in every deployment given the same
    arguments: ``leads`` web leads in the inbound queue, each answered by a rep (a call for
    even ones, an email for odd ones); every fourth is taken by a rep from the queue before
    anyone answers (a person's owner change), and every third gets a call logged afterwards
    with an earlier time (its first response moves earlier once it arrives). With
    ``reassign_at_ms``, a rep also takes over every fourth lead (from the second) of the
    previous wave at that time: leads the pipeline has routed and written back by then, so a
    re-send of our owner must not undo it.

    Unlike the simulator, nothing here reads what the pipeline wrote (the simulator answers
    as the lead's current owner), so the records do not depend on routing or timing."""
    from kpi_pipeline.sandbox.store import AUTOMATION_USER_ID, QUEUE_IDS, REPS, SandboxStore

    ui = "com/salesforce/api/soap/64.0;client=SfdcInternalAPI/"
    countries = ("US", "GB", "AU", "DE", "US", "CA")
    minute = 60_000
    store = SandboxStore(data_dir / "sandbox.db")
    created_ids = []
    try:
        if reassign_at_ms is not None and wave > 1:
            by_company = {r.get("Company"): r["Id"] for r in store.query_records("Lead")}
            for i in range(1, leads, 4):
                rep = REPS[(wave + i + 3) % len(REPS)]
                lead = by_company.get(f"Wave {wave - 1} Co {i}")
                if lead is not None:
                    store.update_record(
                        "Lead", lead, {"OwnerId": rep.id}, user_id=rep.id, change_origin=ui,
                        at_ms=reassign_at_ms,
                    )  # fmt: skip
        for i in range(leads):
            created = base_ms + i * 90_000
            rep = REPS[(wave + i) % len(REPS)]
            name = f"Wave{wave} Lead{i}"
            lead = store.create_record(
                "Lead",
                {
                    "Company": f"Wave {wave} Co {i}",
                    "Name": {"FirstName": "Pat", "LastName": name},
                    "Email": f"pat.{wave}.{i}@example.com",
                    "Status": "Open - Not Contacted",
                    "OwnerId": QUEUE_IDS[0],
                    "LeadSource": "Web",
                    "Address": {"CountryCode": countries[i % len(countries)]},
                },
                user_id=AUTOMATION_USER_ID,
                at_ms=created,
            )
            created_ids.append(lead)
            if i % 4 == 0:
                store.update_record(
                    "Lead", lead, {"OwnerId": rep.id}, user_id=rep.id, change_origin=ui,
                    at_ms=created + 3 * minute,
                )  # fmt: skip
            answered = created + (6 + (7 * i) % 50) * minute
            if i % 2 == 0:
                _call(store, lead, rep, answered, ui)
            else:
                _email(store, lead, rep, answered, name, ui)
            if i % 3 == 0:
                _call(store, lead, rep, created + 4 * minute, ui, logged_at=answered + 5 * minute)
    finally:
        store.close()
    return created_ids


def add_wave_to_each(
    deployments: Iterable[Deployment], wave: int, *, leads: int, base_ms: int
) -> None:
    """``add_wave`` into each deployment's org, alike: the wave's leads arrive an hour apart
    per wave from ``base_ms``, and the previous wave's leads are reassigned at one time, now."""
    now_ms = int(time.time() * 1000)
    for dep in deployments:
        add_wave(
            dep.data_dir,
            wave,
            leads=leads,
            base_ms=base_ms + wave * 3_600_000,
            reassign_at_ms=now_ms,
        )


def _call(store, lead, rep, at_ms, origin, *, logged_at=None):
    day = at_ms - at_ms % 86_400_000
    store.create_record(
        "Task",
        {
            "Subject": "Call", "Status": "Completed", "Priority": "High", "IsClosed": True,
            "WhoId": lead, "OwnerId": rep.id, "ActivityDate": day, "CompletedDateTime": at_ms,
            "TaskSubtype": "Call", "Type": "Call",
        },
        user_id=rep.id, at_ms=logged_at or at_ms, change_origin=origin,
    )  # fmt: skip


def _email(store, lead, rep, at_ms, name, origin):
    day = at_ms - at_ms % 86_400_000
    with store.transaction(at_ms=at_ms) as tx:
        task = store.create_record(
            "Task",
            {
                "Subject": "Email: hello", "Status": "Completed", "Priority": "Normal",
                "IsClosed": True, "WhoId": lead, "OwnerId": rep.id, "ActivityDate": day,
                "CompletedDateTime": at_ms, "TaskSubtype": "Email", "Type": "Email",
            },
            user_id=rep.id, transaction=tx, change_origin=origin,
        )  # fmt: skip
        store.create_record(
            "EmailMessage",
            {
                "Subject": "hello", "FromAddress": rep.email, "ToAddress": f"{name}@example.com",
                "Incoming": False, "MessageDate": at_ms, "Status": "3", "RelatedToId": lead,
                "ActivityId": task, "TextBody": f"Hi,\n\nhello.\n\n{rep.name}",
            },
            user_id=rep.id, transaction=tx, change_origin=origin,
        )  # fmt: skip


# --- a deployment ------------------------------------------------------------------------------


@dataclass
class Deployment:
    """One pipeline under a daemon; see the module docstring."""

    root: Path
    extra_env: Mapping[str, str] = field(default_factory=dict)
    daemon: subprocess.Popen | None = None
    groups: set[int] = field(default_factory=set)  # every process group we started
    events: list[tuple[str, float]] = field(default_factory=list)  # (what, time.time())

    @property
    def home(self) -> Path:
        return self.root / "dagster_home"

    @property
    def data_dir(self) -> Path:
        return self.root / "kpi"

    @property
    def log_path(self) -> Path:
        return self.root / "daemon.log"

    @property
    def env(self) -> dict[str, str]:
        return daemon_env(self.home, self.data_dir, **self.extra_env)

    def prepare(self, template_store: Path) -> None:
        write_instance_yaml(self.home)
        copy_store(template_store, self.data_dir)
        # Create the instance storage before the daemon starts: two processes initialising
        # the same fresh SQLite storage at once can both stamp its alembic version table.
        instance_state(self.env)

    def start(self) -> None:
        assert self.daemon is None or self.daemon.poll() is not None
        self.daemon = start_daemon(self.env, self.log_path)
        self.groups.add(self.daemon.pid)
        self.events.append(("start", time.time()))

    def kill_group(self) -> None:
        assert self.daemon is not None
        kill(self.daemon)
        self.events.append(("kill group", time.time()))

    def kill_daemon_only(self) -> None:
        """SIGKILL the daemon process alone: its code server and run workers live on."""
        assert self.daemon is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.daemon.pid, signal.SIGKILL)
        self.daemon.wait(timeout=30)
        self.events.append(("kill daemon", time.time()))

    def kill_run_workers(self) -> list[int]:
        pids = run_worker_pids(self.home)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if pids:
            self.events.append(("kill run workers", time.time()))
        return pids

    def stop(self) -> None:
        """Kill everything we started (every group, orphans included) and the sandbox."""
        from kpi_pipeline.sandbox.runtime import shutdown_sandbox

        for pid in run_worker_pids(self.home):
            if (group := _process_group(pid)) is not None:
                self.groups.add(group)
        for group in self.groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGKILL)
        if self.daemon is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.daemon.wait(timeout=30)
        shutdown_sandbox(self.data_dir)

    def progress(self) -> Progress:
        return read_progress(self.data_dir)

    def wait(self, predicate: Callable[[Progress], bool], timeout: float, what: str) -> float:
        """Poll the ledger until ``predicate``; returns the time.time() it first held."""
        deadline = time.monotonic() + timeout
        progress = None
        while time.monotonic() < deadline:
            progress = self.progress()
            if predicate(progress):
                return time.time()
            time.sleep(0.5)
        raise AssertionError(
            f"{self.root.name}: timed out after {timeout:.0f} s waiting for {what}; last "
            f"{progress}\n--- daemon log tail ---\n{self.log_path.read_text()[-3000:]}"
        )

    def wait_caught_up(self, timeout: float) -> float:
        """Caught up and still so a few seconds later (echoes of the last writes arrive
        after the drain that sent them)."""
        deadline = time.monotonic() + timeout
        while True:
            at = self.wait(
                lambda p: p.caught_up, max(1.0, deadline - time.monotonic()), "caught up"
            )
            before = self.progress()
            time.sleep(6)
            after = self.progress()
            if after.caught_up and after.inbox == before.inbox:
                return at
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.root.name}: did not settle: {after}")

    def wait_claim(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if claimed_outbox_rows(self.data_dir) > 0:
                return True
            time.sleep(0.1)
        return False


def batches_done_after(data_dir: Path, since: float) -> int:
    from kpi_pipeline.adapters.ledger import schema as t

    engine = sa.create_engine(f"sqlite:///{data_dir / 'ledger.db'}")
    try:
        with engine.connect() as conn:
            times = conn.execute(
                sa.select(t.cdc_batches.c.completed_at).where(
                    t.cdc_batches.c.completed_at.is_not(None)
                )
            ).scalars()
            return sum(1 for at in times if at.timestamp() > since)
    finally:
        engine.dispose()


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


# --- the kill scenario ---------------------------------------------------------------------------

KILL_MODES = ("run worker", "group", "daemon")


@dataclass
class Recovery:
    mode: str
    killed_at: float
    restarted_at: float
    claim_held: bool  # outbox rows were claimed when the kill landed
    claimed_rows: int = 0  # how many (their sends are unconfirmed: they may go out again)
    killed_pids: list[int] = field(default_factory=list)
    first_batch_s: float | None = None  # restart -> first batch done after it
    caught_up_s: float | None = None  # restart -> caught up (when measured)
    note: str = ""


def kill_and_recover(
    dep: Deployment,
    mode: str,
    *,
    claim_timeout: float,
    recover_timeout: float,
    settle: bool,
    before: Callable[[], object] = lambda: None,
) -> Recovery:
    """One kill of ``mode`` (KILL_MODES), the restart, and the recovery times.

    The run worker and the group are killed while outbox rows are claimed when that happens
    within ``claim_timeout`` (the sandbox's update delay keeps a drain waiting on the org),
    else while a run worker is alive, else at once; the daemon alone while a run is going.
    ``settle`` also waits until the deployment is caught up again."""
    if mode not in KILL_MODES:
        raise ValueError(f"unknown kill mode {mode!r}; one of {KILL_MODES}")
    before()  # new traffic, so the kill lands on work in progress
    claim = dep.wait_claim(claim_timeout) if mode in ("run worker", "group") else False
    if not claim:
        _wait_worker(dep, claim_timeout)
    if mode == "run worker":
        claimed = claimed_outbox_rows(dep.data_dir)
        pids = dep.kill_run_workers()
        killed_at = restarted_at = time.time()  # the daemon stays up: nothing to restart
    elif mode == "group":
        pids = run_worker_pids(dep.home)
        claimed = claimed_outbox_rows(dep.data_dir)
        dep.kill_group()
        killed_at = time.time()
        dep.start()
        restarted_at = time.time()
    else:
        pids = []
        claimed = 0  # the run workers live on and finish their sends
        dep.kill_daemon_only()
        killed_at = time.time()
        dep.start()
        restarted_at = time.time()
    # Still claimed after the kill: the dead worker held them when it died.
    held = claim and claimed_outbox_rows(dep.data_dir) > 0
    recovery = Recovery(mode, killed_at, restarted_at, held, claimed if held else 0, pids)
    if dep.progress().caught_up:
        recovery.note = "caught up at the kill: no batch left to process"
    else:
        at = dep.wait(
            lambda p: batches_done_after(dep.data_dir, restarted_at) > 0,
            recover_timeout,
            f"a batch done after the {mode} kill",
        )
        recovery.first_batch_s = at - restarted_at
    if settle:
        recovery.caught_up_s = dep.wait_caught_up(recover_timeout) - restarted_at
    return recovery


def _wait_worker(dep: Deployment, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if run_worker_pids(dep.home):
            return True
        time.sleep(0.1)
    return False


def clean_vs_killed_checks(clean: Outcome, killed: Outcome, policy: Any) -> dict[str, list[str]]:
    """Every comparison of a killed deployment with a clean one on the same workload, by
    name; an empty list means the check held."""
    return {
        "routed at most once (clean)": check_routed_at_most_once(clean),
        "routed at most once (killed)": check_routed_at_most_once(killed),
        "routed exactly the leads the clean run routed": check_same_leads_routed(clean, killed),
        "owners from the rule's pool, within caps": check_owners_from_pool(clean, killed, policy),
        "TTFR facts equal": check_ttfr_equal(clean, killed),
        "org equals ledger (clean)": check_org_equals_ledger(clean),
        "org equals ledger (killed)": check_org_equals_ledger(killed),
        "outbox empty (clean)": check_outbox_empty(clean),
        "outbox empty (killed)": check_outbox_empty(killed),
        "first response never moved later (clean)": check_first_response_never_later(clean),
        "first response never moved later (killed)": check_first_response_never_later(killed),
        "a person's owner change kept (clean)": check_person_owner_kept(
            clean, policy.integration_users
        ),
        "a person's owner change kept (killed)": check_person_owner_kept(
            killed, policy.integration_users
        ),
    }


def check_report(checks: dict[str, list[str]]) -> str:
    """One line per check (ok / FAIL) with up to eight of its findings."""
    return "\n".join(
        f"{'ok  ' if not found else 'FAIL'} {name}"
        + "".join(f"\n       {p}" for p in found[:8])
        + (f"\n       ... {len(found) - 8} more" if len(found) > 8 else "")
        for name, found in checks.items()
    )


# Both deployments of a kill suite: a 30 s max_runtime (the setting's minimum) and short
# write-back lease and idle-drain times let Dagster and the write-back notice the dead within
# CI's time. The production values only change how long recovery takes, not what it must
# end with.
RECOVERY_ENV = {
    "KPI_CDC_RUN_MAX_RUNTIME_SECONDS": "30",
    "KPI_WRITEBACK_LEASE_SECONDS": "10",
    "KPI_WRITEBACK_IDLE_DRAIN_SECONDS": "5",
}
# The killed deployment's org answers each update 3 s after applying it, so a drain holds its
# claims long enough to be killed in the middle (the org has the values, the drain does not
# know it).
SLOW_UPDATES_ENV = {"KPI_SANDBOX_REST_UPDATE_DELAY_SECONDS": "3"}
# How long a kill suite's deployment may take to catch up with its org after the last kill,
# then to empty its outbox (finish).
CATCH_UP_TIMEOUT = 150.0
OUTBOX_TIMEOUT = 60.0


@contextlib.contextmanager
def paired_deployments(
    root: Path, env: dict[str, str], *, leads: int, days: float, seed: int
) -> Iterator[tuple[Deployment, Deployment]]:
    """A clean and a to-be-killed deployment on copies of one seeded store, both with ``env``
    on top of RECOVERY_ENV, the killed one's org with SLOW_UPDATES_ENV too; stopped after."""
    template = root / "template.db"
    seed_store(template, leads=leads, days=days, seed=seed)
    clean = Deployment(root / "clean", {**RECOVERY_ENV, **env})
    killed = Deployment(root / "killed", {**RECOVERY_ENV, **env, **SLOW_UPDATES_ENV})
    for dep in (clean, killed):
        dep.prepare(template)
    try:
        yield clean, killed
    finally:
        for dep in (clean, killed):
            dep.stop()


def finish(
    dep: Deployment,
    problems: dict[str, list[str]],
    *,
    catch_up_s: float = CATCH_UP_TIMEOUT,
    outbox_s: float = OUTBOX_TIMEOUT,
) -> None:
    """Wait until the ledger has every org change and no staged batch, then until the outbox
    is empty; a deployment that does not get there is a finding, not the end of the test."""
    try:
        dep.wait(
            lambda p: p.staged == 0 and p.inbox == p.org_changes,
            catch_up_s,
            "every org change processed",
        )
        dep.wait_caught_up(outbox_s)
    except AssertionError as exc:
        problems.setdefault(f"{dep.root.name}: caught up", []).append(str(exc)[:1500])
