"""Benchmark: KPI rollups (kpi_pipeline.core.kpis) on a synthetic 1,000,000-lead facts frame.

Measures ``compute_all`` on one day and on all 90 days of a seeded synthetic ledger, and,
when the ledger's ``lead_facts_frame`` exists, load + rollup from a SQLite ledger and a
PostgreSQL ledger holding the same leads (load and rollup timed separately).

``--business-hours`` also times the rollup with business-hours clocks on: every lead gets
one of the packaged policy's calendars (NA, EMEA, APAC) and ``compute_all(...,
clocks=...)`` recomputes all 1,000,000 SLA due times and business-minute TTFRs from the
calendars, beside the calendar-only (24x7) rollup of the same frame (target: under 2x).

    source .venv/bin/activate
    python bench/bench_kpis.py                      # frame only
    python bench/bench_kpis.py --business-hours     # plus business-hours clocks
    python bench/bench_kpis.py --ledger sqlite --ledger postgres
    python bench/bench_kpis.py --ledger sqlite --ledger postgres --ledger-only --compare

Not part of the test suite. Results are recorded in bench/RESULTS.md (## KPI rollups).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from kpi_pipeline.core.kpis import compute_all, lead_facts_columns, reconcile
from kpi_pipeline.core.kpis.lead_facts import DATETIME_COLUMNS
from kpi_pipeline.core.kpis.per_lead import business_clocks
from kpi_pipeline.core.policy import load_policy
from kpi_pipeline.core.workloads.business_hours import policy_clocks

START = datetime(2026, 1, 1, tzinfo=UTC)


def synthetic_lead_facts(leads: int, days: int, seed: int = 42) -> pd.DataFrame:
    """A seeded lead-facts frame: shapes of CONTRACTS.md §3, distributions loosely realistic."""
    rng = np.random.default_rng(seed)
    start_ns = pd.Timestamp(START).value
    created = pd.to_datetime(
        np.sort(start_ns + rng.integers(0, days * 86_400, leads) * 1_000_000_000), utc=True
    )
    owners = np.array([f"005{i:015d}" for i in range(200)], dtype=object)
    templates = np.array([f"tmpl_{i:02d}" for i in range(12)], dtype=object)
    versions = np.array(["2026.01", "2026.02"], dtype=object)
    rules = np.array(["enterprise", "mid_market", "smb", "partner", "default"], dtype=object)

    assigned = rng.random(leads) < 0.97
    latency = np.round(rng.exponential(3.0, leads), 2)
    responded = rng.random(leads) < 0.8
    ttfr = np.round(rng.lognormal(3.5, 1.2, leads), 2)  # median ≈ 33 min, long tail
    recommended = rng.random(leads) < 0.9
    applied_same = rng.random(leads) < 0.6
    template_idx = rng.integers(0, len(templates), leads)

    def minutes_after(mask: np.ndarray, minutes: np.ndarray) -> pd.DatetimeIndex:
        times = created + pd.to_timedelta(minutes, unit="min")
        return times.where(mask, pd.NaT)

    return pd.DataFrame(
        {
            "Id": np.char.add("00Q", np.char.zfill(np.arange(leads).astype(str), 15)).astype(
                object
            ),
            "CreatedDate": created,
            "OwnerId": owners[rng.integers(0, len(owners), leads)],
            "Owner_Assigned_At__c": minutes_after(assigned, latency),
            "Assignment_Latency_Minutes__c": np.where(assigned, latency, np.nan),
            "First_Response_At__c": minutes_after(responded, ttfr),
            "First_Response_User__c": np.where(
                responded, owners[rng.integers(0, 200, leads)], None
            ),
            "First_Response_Source__c": np.where(
                responded, np.where(rng.random(leads) < 0.7, "EmailMessage", "Task"), None
            ),
            "Time_to_First_Response__c": np.where(responded, ttfr, np.nan),
            "Template_Recommended__c": np.where(recommended, templates[template_idx], None),
            "Template_Applied__c": np.where(
                recommended & responded & applied_same, templates[template_idx], None
            ),
            "Routing_Policy_Version__c": np.where(
                assigned, versions[rng.integers(0, 2, leads)], None
            ),
            "Routing_Rule__c": np.where(assigned, rules[rng.integers(0, len(rules), leads)], None),
            "SLA_Minutes": rng.choice(np.array([15.0, 60.0, 240.0, np.nan]), leads),
            # Calendar-only (24x7), as migration 0008 leaves older leads: business minutes
            # are the wall-clock minutes, the due time is created + SLA.
            "Time_to_First_Response_Business_Minutes__c": np.where(responded, ttfr, np.nan),
            "SLA_Calendar": None,
            "SLA_Due_At": pd.Series(pd.NaT, index=range(leads), dtype="datetime64[ns, UTC]"),
        }
    )[list(lead_facts_columns())]


def timed(fn: Callable[[], object], repeats: int) -> tuple[list[float], object]:
    seconds = []
    result = None
    for _ in range(repeats):
        began = time.perf_counter()
        result = fn()
        seconds.append(time.perf_counter() - began)
    return seconds, result


def report(label: str, seconds: list[float]) -> None:
    print(
        f"{label:<56} median {statistics.median(seconds):7.3f} s  "
        f"min {min(seconds):7.3f} s  (n={len(seconds)})",
        flush=True,
    )


def bench_business_hours(frame: pd.DataFrame, days: int, repeats: int, seed: int) -> None:
    """The rollup with business-hours clocks on against the calendar-only rollup."""
    as_of = START + timedelta(days=days + 1)
    policy = load_policy()
    names = np.array(sorted(policy.calendars), dtype=object)  # apac, emea, na
    rng = np.random.default_rng(seed + 1)
    with_calendars = frame.assign(
        SLA_Calendar=names[rng.choice(len(names), len(frame), p=[0.2, 0.3, 0.5])]
    )

    def clocks_on() -> dict[str, pd.DataFrame]:
        # Fresh clocks each time: building the calendars' interval tables is part of the cost.
        return compute_all(with_calendars, as_of=as_of, clocks=policy_clocks(policy.calendars))

    # Alternate the two so that load from other processes falls on both alike, and keep this
    # process's CPU time beside the wall time: on a shared machine it varies far less.
    calendar_only: list[float] = []
    business_on: list[float] = []
    cpu: dict[str, list[float]] = {"calendar-only": [], "business-hours": []}
    rollups: dict[str, pd.DataFrame] = {}
    for _ in range(repeats):
        began = time.process_time()
        calendar_only += timed(lambda: compute_all(frame, as_of=as_of), 1)[0]
        cpu["calendar-only"].append(time.process_time() - began)
        began = time.process_time()
        seconds, rollups = timed(clocks_on, 1)  # type: ignore[assignment]
        cpu["business-hours"].append(time.process_time() - began)
        business_on += seconds
    report(f"calendar-only (24x7) compute_all, {days} days", calendar_only)
    report(f"business-hours clocks on ({len(names)} calendars), {days} days", business_on)
    ratio = statistics.median(business_on) / statistics.median(calendar_only)
    print(f"ratio business-hours / calendar-only (medians): {ratio:.2f}x")
    report("  CPU time, calendar-only", cpu["calendar-only"])
    report("  CPU time, business-hours clocks on", cpu["business-hours"])
    cpu_ratio = statistics.median(cpu["business-hours"]) / statistics.median(cpu["calendar-only"])
    print(f"ratio of CPU time (medians): {cpu_ratio:.2f}x")
    seconds, (due, business) = timed(
        lambda: business_clocks(with_calendars, policy_clocks(policy.calendars)), repeats
    )
    report(f"of which due times + business minutes, {len(frame):,} leads", seconds)
    stored = with_calendars.assign(
        SLA_Due_At=due, Time_to_First_Response_Business_Minutes__c=business
    )
    began = time.process_time()
    seconds, from_stored = timed(lambda: compute_all(stored, as_of=as_of), repeats)
    report(f"compute_all on stored business clocks (what the assets do), {days} days", seconds)
    print(
        f"  CPU time per run, stored business clocks: {(time.process_time() - began) / repeats:.3f} s"
    )
    for name, table in rollups.items():
        pd.testing.assert_frame_equal(from_stored[name], table, check_exact=False, rtol=1e-9)
    wall = frame["Time_to_First_Response__c"]
    if (business > wall + 1e-9).any():
        sys.exit("business minutes exceed wall-clock minutes on some lead")
    overall = rollups["sla"][["met", "breached"]].sum()
    calendar_only = compute_all(frame, as_of=as_of)["sla"][["met", "breached"]].sum()
    print(
        "SLA breach %: calendar-only "
        f"{100 * calendar_only['breached'] / calendar_only.sum():.1f}, business hours "
        f"{100 * overall['breached'] / overall.sum():.1f}; TTFR p50 over all days: wall "
        f"{wall.median():.1f} min, business {business.median():.1f} min"
    )


def bench_frame(frame: pd.DataFrame, days: int, repeats: int) -> None:
    as_of = START + timedelta(days=days + 1)
    day_one = frame[frame["CreatedDate"] < pd.Timestamp(START + timedelta(days=1))]
    seconds, _ = timed(lambda: compute_all(day_one, as_of=as_of), repeats)
    report(f"compute_all, 1 day ({len(day_one):,} leads)", seconds)
    seconds, rollups = timed(lambda: compute_all(frame, as_of=as_of), repeats)
    report(f"compute_all, {days} days ({len(frame):,} leads)", seconds)
    seconds, _ = timed(lambda: compute_all(frame, as_of=as_of, tz="America/New_York"), repeats)
    report(f"compute_all, {days} days, tz=America/New_York", seconds)
    seconds, problems = timed(lambda: reconcile(frame, rollups), repeats)
    report(f"reconcile, {days} days", seconds)
    if problems:
        sys.exit(f"reconcile found problems on the synthetic frame: {problems[:3]}")
    print("rollup rows: " + ", ".join(f"{name}={len(df)}" for name, df in rollups.items()))


# --- load + rollup from a real ledger ------------------------------------------------------

PG_ADMIN_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
BULK_STAMP = "2026-06-01 00:00:00.000000"  # updated_at of the bulk-loaded rows


def _ledger_rows(frame: pd.DataFrame, timestamp_format: str) -> pd.DataFrame:
    """The facts as text/number columns of the ledger's ``lead_facts`` table."""
    rows = frame.copy()
    for column in DATETIME_COLUMNS:
        rows[column] = rows[column].dt.strftime(timestamp_format).astype(object)
        rows.loc[frame[column].isna(), column] = None
    rows["updated_at"] = BULK_STAMP
    return rows


def _bulk_load_sqlite(engine: object, frame: pd.DataFrame) -> None:
    # SQLAlchemy's SQLite DateTime text form (what UTCDateTime stores: naive UTC).
    rows = _ledger_rows(frame, "%Y-%m-%d %H:%M:%S.%f")
    columns = list(rows.columns)
    quoted = ", ".join(f'"{column}"' for column in columns)
    sql = f"INSERT INTO lead_facts ({quoted}) VALUES ({', '.join('?' for _ in columns)})"
    values = rows.astype(object).where(rows.notna(), None).itertuples(index=False, name=None)
    raw = engine.raw_connection()  # type: ignore[attr-defined]
    try:
        cursor = raw.cursor()
        cursor.execute("BEGIN")
        cursor.executemany(sql, values)
        cursor.execute("COMMIT")
    finally:
        raw.close()


def _bulk_load_postgres(engine: object, frame: pd.DataFrame) -> None:
    import io

    rows = _ledger_rows(frame, "%Y-%m-%d %H:%M:%S.%f+00")
    rows["updated_at"] = BULK_STAMP + "+00"
    buffer = io.StringIO()
    rows.to_csv(buffer, index=False, header=False, na_rep="\\N")
    buffer.seek(0)
    columns = ", ".join(f'"{c}"' for c in rows.columns)
    raw = engine.raw_connection()  # type: ignore[attr-defined]
    try:
        cursor = raw.cursor()
        cursor.copy_expert(
            f"COPY lead_facts ({columns}) FROM STDIN WITH (FORMAT csv, NULL '\\N')", buffer
        )
        raw.commit()
        # Statistics, as autovacuum gives a live ledger within a minute of such a load. Without
        # them the planner expects a few hundred rows and sorts all 1M on disk (an external
        # merge, several seconds) instead of walking the primary key in Id order; which of the
        # two a run got depended on whether autovacuum had come by yet.
        cursor.execute("ANALYZE lead_facts")
        raw.commit()
    finally:
        raw.close()


def bench_ledger(
    backend: str,
    frame: pd.DataFrame,
    days: int,
    workdir: str,
    repeats: int = 3,
    compare: bool = False,
) -> None:
    """Bulk-load ``frame`` into a fresh ledger, then time lead_facts_frame and compute_all."""
    import uuid
    from pathlib import Path

    import sqlalchemy as sa

    from kpi_pipeline.adapters.ledger.store import Ledger

    if not hasattr(Ledger, "lead_facts_frame"):
        print(f"{backend}: skipped, Ledger.lead_facts_frame does not exist yet")
        return
    admin = None
    if backend == "sqlite":
        path = Path(workdir) / "ledger.db"
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob("ledger.db*"):
            stale.unlink()
        url = f"sqlite:///{path}"
    else:
        name = f"bench_kpis_{uuid.uuid4().hex[:8]}"
        admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        ledger = Ledger.from_url(url)
        began = time.perf_counter()
        (_bulk_load_sqlite if backend == "sqlite" else _bulk_load_postgres)(ledger.engine, frame)
        print(
            f"{backend}: bulk insert of {len(frame):,} leads took {time.perf_counter() - began:.1f} s"
        )
        _time_ledger_rollups(backend, ledger, frame, days, repeats, compare)
        ledger.dispose()
    finally:
        if admin is not None:
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()


def _row_by_row_frame(ledger: object, created_from: datetime, created_to: datetime) -> pd.DataFrame:
    """``lead_facts_frame`` as it read before the columnar path: SQLAlchemy rows, one
    Python object per cell, then the same dtype conversion."""
    import sqlalchemy as sa

    from kpi_pipeline.adapters.ledger import facts_frame
    from kpi_pipeline.adapters.ledger import schema as t

    c = t.lead_facts.c
    query = (
        sa.select(*(c[name] for name in facts_frame.COLUMNS))
        .where(
            c.CreatedDate.is_not(None), c.CreatedDate >= created_from, c.CreatedDate < created_to
        )
        .order_by(c.Id)
    )
    with ledger.engine.connect() as conn:  # type: ignore[attr-defined]
        rows = conn.execute(query).all()
    return facts_frame.typed(
        pd.DataFrame([tuple(r) for r in rows], columns=list(facts_frame.COLUMNS))
    )


def _time_ledger_rollups(
    backend: str, ledger: object, frame: pd.DataFrame, days: int, repeats: int, compare: bool
) -> None:
    as_of = START + timedelta(days=days + 1)
    windows = {
        "1 day": (START, START + timedelta(days=1)),
        f"{days} days": (START, START + timedelta(days=days)),
    }
    for label, (created_from, created_to) in windows.items():
        load_average = _load_average()
        cpu_began, children_began = time.process_time(), _children_cpu()
        seconds, loaded = timed(
            lambda created_from=created_from, created_to=created_to: ledger.lead_facts_frame(  # type: ignore[attr-defined]
                created_from, created_to
            ),
            repeats,
        )
        report(f"{backend}: lead_facts_frame, {label} ({len(loaded):,} leads)", seconds)
        # This process's CPU only (the PostgreSQL server's is not in it): on a shared
        # machine it varies far less than the wall time.
        print(
            f"  CPU time per load, this process: {(time.process_time() - cpu_began) / repeats:.3f} s"
            f", its child processes (SQLite's ADBC readers): "
            f"{(_children_cpu() - children_began) / repeats:.3f} s"
            f"; load average before / after: {load_average} / {_load_average()}"
        )
        if compare:  # the row-by-row read it replaced, on the same ledger, right after
            old_seconds, old = timed(
                lambda created_from=created_from, created_to=created_to: _row_by_row_frame(
                    ledger, created_from, created_to
                ),
                repeats,
            )
            pd.testing.assert_frame_equal(loaded, old)  # type: ignore[arg-type]
            report(f"{backend}: row-by-row read (before), {label}", old_seconds)
        began = time.perf_counter()
        rollups = compute_all(loaded, as_of=as_of)
        report(f"{backend}: compute_all on it, {label}", [time.perf_counter() - began])
        # The round trip through the ledger must not change a single KPI.
        created = frame["CreatedDate"]
        within = frame[(created >= created_from) & (created < created_to)]
        for name, table in compute_all(within, as_of=as_of).items():
            pd.testing.assert_frame_equal(rollups[name], table, check_exact=False, rtol=1e-9)
    print(f"{backend}: rollups from the ledger equal rollups from the frame")


def _children_cpu() -> float:
    """CPU seconds of this process's finished child processes (user + system)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _load_average() -> str:
    """The 1-minute load average: on a shared machine it says how much wall times mean."""
    return f"{os.getloadavg()[0]:.2f}"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leads", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--ledger",
        action="append",
        choices=["sqlite", "postgres"],
        default=[],
        help="also measure load + rollup from this ledger backend (repeatable)",
    )
    parser.add_argument("--workdir", default="/tmp/bench_kpis", help="where the SQLite file goes")
    parser.add_argument(
        "--ledger-only", action="store_true", help="skip the in-memory rollup timings"
    )
    parser.add_argument(
        "--compare",
        action="store_true",
        help="also time the row-by-row read the columnar lead_facts_frame replaced",
    )
    parser.add_argument(
        "--business-hours",
        action="store_true",
        help="also time the rollup with business-hours clocks on (packaged calendars)",
    )
    args = parser.parse_args(argv)

    print(
        f"machine: {_cpu_model()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"pandas {pd.__version__}, numpy {np.__version__}"
    )
    began = time.perf_counter()
    frame = synthetic_lead_facts(args.leads, args.days, args.seed)
    print(
        f"generated {len(frame):,} leads over {args.days} days in {time.perf_counter() - began:.2f} s"
    )
    if not args.ledger_only:
        bench_frame(frame, args.days, args.repeats)
    if args.business_hours:
        bench_business_hours(frame, args.days, args.repeats, args.seed)
    for backend in args.ledger:
        bench_ledger(backend, frame, args.days, args.workdir, args.repeats, args.compare)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process: {peak_mib:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
