"""`kpi-pipeline replay EVENTS.jsonl --out DIR`: the whole processing path, offline (CONTRACTS.md §7).

Recorded change events (§4.1) go through the same ``BatchProcessor`` the Dagster job
uses, over a temporary SQLite ledger, with the event clock. Outputs:

* ``DIR/lead_facts.csv``: ``Id``, ``CreatedDate``, ``OwnerId`` and the §4.2 fields, one
  row per lead with a known creation time, sorted by Id; times ISO-8601 UTC with ``Z``,
  minutes with two decimals, an empty cell for none;
* ``DIR/kpis/<rollup>.csv``: every KPI rollup as of ``--as-of`` (default: the newest
  commit time in the input);
* ``DIR/flywheel/<workload>.jsonl``: one flywheel record per decision, canonical JSON,
  in (timestamp, workload, id) order.

Deterministic: nothing reads the wall clock, outputs are sorted and floats have a fixed
format, so the same input gives byte-identical files.

The ledger, the KPI CSV rendering and the JSONL writer come in as ``ReplayPorts``
(``kpi_pipeline.wiring.replay_ports`` builds them: a scratch SQLite ledger, ``kpi_files``,
the flywheel JSONL loader), so this use case imports no adapter.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from kpi_pipeline.app.processing import BatchProcessor
from kpi_pipeline.app.processing.collector import cycle_collection_paused
from kpi_pipeline.config import get_settings
from kpi_pipeline.core.events import (
    ChangeEvent,
    format_sf_datetime,
    read_recorded_lines,
)
from kpi_pipeline.core.flywheel.records import flywheel_record_from_decision
from kpi_pipeline.core.flywheel.schema import WORKLOAD_IDS, FlywheelRecord
from kpi_pipeline.core.kpis import compute_all
from kpi_pipeline.core.policy.load import RoutingPolicy, load_policy
from kpi_pipeline.core.salesforce_fields import OWNER_FIELD, WRITTEN_FIELD_NAMES
from kpi_pipeline.core.workloads.outreach_templates import LocalRanker, load_catalog

LEAD_FACTS_CSV_COLUMNS: tuple[str, ...] = ("Id", "CreatedDate", OWNER_FIELD, *WRITTEN_FIELD_NAMES)
# Written fields the ledger keeps under another column name.
_FRAME_COLUMN = {"SLA_Due_At__c": "SLA_Due_At"}
DEFAULT_BATCH_SIZE = 500  # the sensor's default events per channel and tick
# Flywheel files written in this process and beside it (``write_outputs``): about as much
# work on each side, measured in bench/RESULTS.md (Replay).
_WRITTEN_HERE: tuple[str, ...] = ("lead_route",)
_WRITTEN_BESIDE: tuple[str, ...] = ("first_touch", "outreach_template")


class ReplayLedger(Protocol):
    """What replay reads back from the ledger the processor wrote (``Ledger``); the
    processor itself needs the rest of a ledger (``kpi_pipeline.app.processing``)."""

    def lead_facts_frame(self) -> pd.DataFrame: ...

    def decisions_between(self) -> Sequence[Any]: ...


@dataclass(frozen=True)
class ReplayPorts:
    """What replay writes with, injected by the composition root (``wiring.replay_ports``).

    ``scratch_ledger(clock)``: a new, empty ledger with its bookkeeping clock pinned,
    removed when the context ends; ``kpi_csv_text``: a rollup as CSV text, as the daily KPI
    assets render it; ``write_jsonl(records, path)``: the flywheel JSONL writer;
    ``run_beside(background, foreground)``: runs ``background`` in another process while
    ``foreground`` runs in this one, and returns ``foreground``'s result once both are done
    (``kpi_pipeline.adapters.beside``)."""

    scratch_ledger: Callable[[Callable[[], datetime]], AbstractContextManager[ReplayLedger]]
    kpi_csv_text: Callable[[pd.DataFrame], str]
    write_jsonl: Callable[[Iterable[Mapping[str, Any] | FlywheelRecord], Path], Any]
    run_beside: Callable[[Callable[[], None], Callable[[], list[Path]]], list[Path]]


class ReplayError(ValueError):
    """Bad replay input (the message names it and the fix)."""


@dataclass(frozen=True)
class ReplayResult:
    events: int
    leads: int
    decisions: dict[str, int]
    as_of: datetime
    files: list[Path]


def read_events(path: Path) -> list[ChangeEvent]:
    if not path.is_file():
        raise ReplayError(
            f"events file {path} does not exist; pass a JSON Lines file of recorded events"
        )
    with path.open(encoding="utf-8") as handle:
        events = list(read_recorded_lines(handle, source=str(path)))
    if not events:
        raise ReplayError(f"events file {path} holds no events; nothing to replay")
    return events


def replay_processor(ledger: Any, policy: RoutingPolicy, client_id: str) -> BatchProcessor:
    """The processor a replay runs: the packaged template catalog, the local ranker (no LLM)
    and the event clock (decisions are stamped from the events, so a replay is reproducible)."""
    return BatchProcessor(
        ledger,
        policy,
        selector=LocalRanker(),
        catalog=load_catalog(),
        client_id=client_id,
        clock=None,
    )


def replay(
    events_path: Path,
    out_dir: Path,
    *,
    ports: ReplayPorts,
    policy_path: Path | None = None,
    as_of: datetime | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    client_id: str | None = None,
    tz: str | None = None,
) -> ReplayResult:
    """Replay recorded events and write the three outputs into ``out_dir``."""
    if batch_size < 1:
        raise ReplayError(f"--batch-size {batch_size} must be at least 1")
    # A replay holds every parsed event, and later every decision, alive: hundreds of
    # thousands of containers that each full collection would walk again, for nothing.
    with cycle_collection_paused():
        return _replay(events_path, out_dir, ports, policy_path, as_of, batch_size, client_id, tz)


def _replay(
    events_path: Path,
    out_dir: Path,
    ports: ReplayPorts,
    policy_path: Path | None,
    as_of: datetime | None,
    batch_size: int,
    client_id: str | None,
    tz: str | None,
) -> ReplayResult:
    events = read_events(events_path)
    settings = get_settings()
    policy = load_policy(policy_path or settings.policy_file)
    as_of = as_of or max(e.commit_time for e in events)
    # The ledger's bookkeeping clock is pinned too: nothing in a replay reads the wall clock.
    with ports.scratch_ledger(lambda: as_of) as ledger:
        processor = replay_processor(ledger, policy, client_id or settings.client_id)
        for start in range(0, len(events), batch_size):
            processor.process(events[start : start + batch_size])
        frame = ledger.lead_facts_frame()
        decisions = ledger.decisions_between()
    files = write_outputs(
        frame,
        decisions,
        out_dir,
        as_of=as_of,
        tz=tz or settings.timezone,
        client_id=client_id or settings.client_id,
        ports=ports,
    )
    counts = {w: sum(1 for d in decisions if d.workload == w) for w in WORKLOAD_IDS}
    return ReplayResult(len(events), len(frame), counts, as_of, files)


# --- outputs ----------------------------------------------------------------------------


def write_outputs(
    frame: pd.DataFrame,
    decisions: Sequence[Any],
    out_dir: Path,
    *,
    as_of: datetime,
    tz: str,
    client_id: str,
    ports: ReplayPorts,
) -> list[Path]:
    """The lead facts, KPI and flywheel files, about half of the work in a second process
    (``ReplayPorts.run_beside``): the first-touch and template records are built and written
    there while this one writes the lead facts, the KPIs and the routing records."""
    flywheel = out_dir / "flywheel"
    flywheel.mkdir(parents=True, exist_ok=True)

    def flywheel_files(workloads: Sequence[str]) -> None:
        chosen = [d for d in decisions if d.workload in workloads]
        write_flywheel(chosen, flywheel, workloads, client_id=client_id, ports=ports)

    def tables_and_routing() -> list[Path]:
        tables = [write_lead_facts(frame, out_dir / "lead_facts.csv")]
        tables += write_kpis(frame, out_dir / "kpis", as_of=as_of, tz=tz, ports=ports)
        flywheel_files(_WRITTEN_HERE)
        return tables

    files = ports.run_beside(lambda: flywheel_files(_WRITTEN_BESIDE), tables_and_routing)
    return files + [flywheel / f"{workload}.jsonl" for workload in sorted(WORKLOAD_IDS)]


def _cell(value: Any, column: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NaT:
        return ""
    if isinstance(value, pd.Timestamp | datetime):
        return format_sf_datetime(pd.Timestamp(value).to_pydatetime())
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def write_lead_facts(frame: pd.DataFrame, path: Path) -> Path:
    rows = frame.sort_values("Id", kind="stable")
    out = pd.DataFrame(
        {
            column: [_cell(v, column) for v in rows[_FRAME_COLUMN.get(column, column)]]
            for column in LEAD_FACTS_CSV_COLUMNS
        },
        columns=list(LEAD_FACTS_CSV_COLUMNS),
    )
    out.to_csv(path, index=False, lineterminator="\n")
    return path


def write_kpis(
    frame: pd.DataFrame, folder: Path, *, as_of: datetime, tz: str, ports: ReplayPorts
) -> list[Path]:
    """Every rollup as ``<rollup>.csv``, rendered as the daily KPI assets render them."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, table in sorted(compute_all(frame, as_of=as_of, tz=tz).items()):
        path = folder / f"{name}.csv"
        path.write_text(ports.kpi_csv_text(table), encoding="utf-8", newline="\n")
        written.append(path)
    return written


def write_flywheel(
    decisions: Sequence[Any],
    folder: Path,
    workloads: Sequence[str] = WORKLOAD_IDS,
    *,
    client_id: str,
    ports: ReplayPorts,
) -> list[Path]:
    """One ``<workload>.jsonl`` per workload of ``workloads`` (empty when it decided
    nothing), built and written as the flywheel export does (records from decisions,
    stable order)."""
    by_workload: dict[str, list[FlywheelRecord]] = {w: [] for w in workloads}
    for decision in decisions:
        record = flywheel_record_from_decision(decision, client_id=client_id)
        by_workload[decision.workload].append(record)
    written = []
    for workload, records in sorted(by_workload.items()):
        path = folder / f"{workload}.jsonl"
        ports.write_jsonl(records, path)
        written.append(path)
    return written


# --- command line -----------------------------------------------------------------------
