"""`kpi-pipeline policy validate FILE`, `kpi-pipeline policy simulate ...` (what-if) and
`kpi-pipeline policy recompute` (business-hours values of past leads after a calendar change).

``validate`` prints every fault with its JSON path and exits 1 when there is any.
``simulate`` routes every lead of a recorded CDC stream (CONTRACTS.md §2) with a policy, and
with a baseline policy (default: the packaged one), in creation order on the event clock,
and prints how owners and rules would change, and the SLA breach % each policy gives those
leads on the wall clock and in business hours (each lead's calendar under that policy), so
a what-if on a calendar shows its effect on past leads.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from kpi_pipeline.cli.replay import parse_as_of
from kpi_pipeline.core.events import (
    ChangeEvent,
    EventFormatError,
    format_sf_datetime,
    read_recorded_lines,
)
from kpi_pipeline.core.kpis.sla_views import SlaCounts, sla_in_both_clocks
from kpi_pipeline.core.policy.load import (
    PolicyError,
    RoutingPolicy,
    default_policy_path,
    load_policy,
    policy_fingerprint,
    validate_policy_file,
)
from kpi_pipeline.core.workloads.business_hours import policy_clocks
from kpi_pipeline.core.workloads.first_touch import (
    ResponseCandidate,
    email_candidate,
    first_response,
    task_candidate,
)
from kpi_pipeline.core.workloads.lead_route import (
    RoutingDecision,
    first_matching_rule,
    lead_created_at,
    needs_routing,
    route_in_order,
    sla_minutes_for,
)
from kpi_pipeline.core.workloads.records import RecordState, merge_event


def register(subparsers: argparse._SubParsersAction) -> None:
    policy = subparsers.add_parser(
        "policy", help="validate a routing policy or simulate it on recorded events"
    )
    commands = policy.add_subparsers(dest="policy_command", required=True, metavar="SUBCOMMAND")

    validate = commands.add_parser(
        "validate", help="check a policy file; every fault with its JSON path"
    )
    validate.add_argument("file", type=Path, help="routing policy JSON")
    validate.set_defaults(func=_validate)

    simulate = commands.add_parser(
        "simulate",
        help="what-if: route every lead of a recorded stream, or every lead the ledger routed, "
        "and compare with a baseline policy or with the decisions actually made",
    )
    simulate.add_argument("--policy", type=Path, required=True, help="policy to try")
    source = simulate.add_mutually_exclusive_group(required=True)
    source.add_argument("--events", type=Path, help="recorded CDC events (JSON Lines)")
    source.add_argument(
        "--ledger-url",
        help="SQLAlchemy URL of a lead ledger: re-route the leads it routed and compare with "
        "the stored decisions (or with --baseline if given)",
    )
    simulate.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="policy to compare with (default: the packaged policy)",
    )
    simulate.add_argument(
        "--as-of",
        type=parse_as_of,
        default=None,
        metavar="ISO",
        help="SLA as of this time (default: the last commit in --events; now for --ledger-url)",
    )
    simulate.set_defaults(func=_simulate)

    recompute = commands.add_parser(
        "recompute",
        help="after a calendar change: recompute every lead's SLA due time and business-minute "
        "TTFR in the ledger under the policy, and queue what changed for write-back",
        description="Recompute each lead's SLA calendar, SLA due time (SLA_Due_At__c) and "
        "Time_to_First_Response_Business_Minutes__c from the ledger under the policy, store "
        "the changed values and mark them for the write-back outbox. Creation times, SLA "
        "minutes and first responses are never changed. Idempotent: a second run changes "
        "nothing. Prints one JSON line of counts.",
    )
    recompute.add_argument(
        "--policy",
        type=Path,
        default=None,
        help="policy whose calendars to use (default: KPI_POLICY_FILE, else the packaged one)",
    )
    recompute.add_argument(
        "--ledger-url", default=None, help="SQLAlchemy URL of the ledger (default: KPI_LEDGER_URL)"
    )
    recompute.add_argument(
        "--dry-run", action="store_true", help="count what would change; write nothing"
    )
    recompute.set_defaults(func=_recompute)


def _validate(args: argparse.Namespace) -> int:
    faults = validate_policy_file(args.file)
    if not faults:
        policy = load_policy(args.file)
        print(
            f"{args.file}: valid (version {policy.version}, {len(policy.rules)} rules, "
            f"{len(policy.pools)} pools, fingerprint {policy_fingerprint(policy)})"
        )
        return 0
    print(f"{args.file}: {len(faults)} fault(s)")
    for fault in faults:
        print(f"  {fault.path}: {fault.message}")
    return 1


def leads_at_creation(lines: list[str], source: str) -> list[RecordState]:
    """Each lead's state right after its CREATE event(s): what routing sees on arrival."""
    return _leads_at_creation(list(read_recorded_lines(lines, source=source)))


def _leads_at_creation(events: Iterable[ChangeEvent]) -> list[RecordState]:
    states: dict[str, RecordState] = {}
    for event in events:
        if event.entity != "Lead" or event.change_type != "CREATE":
            continue
        for record_id in event.record_ids:
            states[record_id] = merge_event(states.get(record_id), event, record_id)
    return list(states.values())


def response_candidates(events: Iterable[ChangeEvent]) -> dict[str, list[ResponseCandidate]]:
    """Per lead, every completed Task and outbound email of the stream (CONTRACTS.md §4),
    from the records as the whole stream leaves them."""
    states: dict[tuple[str, str], RecordState] = {}
    for event in events:
        if event.entity not in ("Task", "EmailMessage") or event.is_gap:
            continue
        for record_id in event.record_ids:
            key = (event.entity, record_id)
            states[key] = merge_event(states.get(key), event, record_id)

    def task(task_id: str) -> RecordState | None:
        return states.get(("Task", task_id))

    found: dict[str, list[ResponseCandidate]] = {}
    for (entity, _), state in sorted(states.items()):
        candidate = task_candidate(state) if entity == "Task" else email_candidate(state, task)
        if candidate is not None:
            found.setdefault(candidate.lead_id, []).append(candidate)
    return found


def sla_frame(
    leads: list[RecordState],
    decisions: Mapping[str, RoutingDecision],
    candidates: Mapping[str, list[ResponseCandidate]],
    policy: RoutingPolicy,
) -> pd.DataFrame:
    """One row per lead as ``policy`` would measure its SLA: creation, first response (its
    automation users do not count), SLA minutes and calendar of the routing decision's
    rule, or for a lead it does not route, of the first rule it matches."""
    rows = []
    for lead in leads:
        created = lead_created_at(lead)
        decision = decisions.get(lead.record_id)
        if decision is not None:
            rule_id, minutes = decision.rule_id, decision.sla_minutes
        else:
            rule = first_matching_rule(policy, lead.fields)
            rule_id = rule.id if rule is not None else None
            minutes = sla_minutes_for(policy, lead.fields)
        response = first_response(
            candidates.get(lead.record_id, []),
            lead_created=created,
            automation_users=frozenset(policy.automation_users),
        )
        rows.append(
            {
                "CreatedDate": created,
                "First_Response_At__c": response.at if response is not None else None,
                "SLA_Minutes": minutes,
                "SLA_Calendar": policy.calendar_name(rule_id),
            }
        )
    return _typed(pd.DataFrame(rows, columns=list(_SLA_COLUMNS)))


_SLA_COLUMNS = ("CreatedDate", "First_Response_At__c", "SLA_Minutes", "SLA_Calendar")


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    for column in ("CreatedDate", "First_Response_At__c"):
        frame[column] = pd.to_datetime(frame[column], utc=True).astype("datetime64[ns, UTC]")
    frame["SLA_Minutes"] = frame["SLA_Minutes"].astype("float64")
    frame["SLA_Calendar"] = frame["SLA_Calendar"].astype(object)
    return frame


def policy_sla(frame: pd.DataFrame, policy: RoutingPolicy, as_of: datetime) -> dict[str, SlaCounts]:
    """SLA counts of ``frame`` in both clocks, due times from ``policy``'s calendars."""
    return sla_in_both_clocks(frame, as_of=as_of, clocks=policy_clocks(policy.calendars))


def _load_or_report(path: Path) -> RoutingPolicy | None:
    try:
        return load_policy(path)
    except PolicyError as exc:
        print(str(exc), file=sys.stderr)
        print(f"fix it, then check with: kpi-pipeline policy validate {path}", file=sys.stderr)
        return None


def _simulate_ledger(args: argparse.Namespace, candidate: RoutingPolicy) -> int:
    from kpi_pipeline.adapters.ledger.store import Ledger

    ledger = Ledger.from_url(args.ledger_url)
    try:
        routed = ledger.routed_leads()
        facts = ledger.lead_facts_frame()
    finally:
        ledger.dispose()
    # route_in_order walks leads by creation; keep the stored decisions in the same order so
    # the comparison pairs each lead with itself.
    routed.sort(key=lambda pair: (lead_created_at(pair[0]), pair[0].record_id))
    leads = [state for state, _ in routed]
    as_of = args.as_of or datetime.now(UTC)
    facts = facts.set_index("Id", drop=False)
    new, _ = route_in_order(leads, candidate)
    new_sla = policy_sla(_ledger_sla_frame(leads, new, facts, candidate), candidate, as_of)
    if args.baseline:
        baseline = _load_or_report(args.baseline)
        if baseline is None:
            return 1
        old, _ = route_in_order(leads, baseline)
        old_sla = policy_sla(_ledger_sla_frame(leads, old, facts, baseline), baseline, as_of)
    else:
        old = [decision for _, decision in routed]
        baseline = candidate.model_copy(update={"version": "decisions in the ledger"})
        # As measured: the SLA, calendar and due time the ledger stored for each lead.
        stored = facts.reindex([lead.record_id for lead in leads]).reset_index(drop=True)
        old_sla = sla_in_both_clocks(stored.dropna(subset=["CreatedDate"]), as_of=as_of)
    print(
        format_comparison(
            new, old, candidate, baseline, total_leads=len(leads), sla=(new_sla, old_sla, as_of)
        )
    )
    return 0


def _ledger_sla_frame(
    leads: list[RecordState],
    decisions: list[RoutingDecision],
    facts: pd.DataFrame,
    policy: RoutingPolicy,
) -> pd.DataFrame:
    """The ledger's leads with their stored first response, SLA by ``policy``'s decisions."""
    rows = []
    for lead, decision in zip(leads, decisions, strict=True):
        responded = facts["First_Response_At__c"].get(lead.record_id, pd.NaT)
        rows.append(
            {
                "CreatedDate": lead_created_at(lead),
                "First_Response_At__c": None if pd.isna(responded) else responded,
                "SLA_Minutes": decision.sla_minutes,
                "SLA_Calendar": policy.calendar_name(decision.rule_id),
            }
        )
    return _typed(pd.DataFrame(rows, columns=list(_SLA_COLUMNS)))


def _recompute(args: argparse.Namespace) -> int:
    from kpi_pipeline.adapters.ledger.store import Ledger
    from kpi_pipeline.app.processing import recompute_clocks
    from kpi_pipeline.config import get_settings

    settings = get_settings() if args.policy is None or args.ledger_url is None else None
    path = args.policy or (settings.policy_file if settings else None) or default_policy_path()
    policy = _load_or_report(path)
    if policy is None:
        return 1
    url = args.ledger_url or (settings.resolved_ledger_url if settings else "")
    ledger = Ledger.from_url(url)
    try:
        report = recompute_clocks(ledger, policy, dry_run=args.dry_run)
    finally:
        ledger.dispose()
    print(json.dumps({"policy_version": policy.version, **report.summary()}, sort_keys=True))
    return 0


def _simulate(args: argparse.Namespace) -> int:
    candidate = _load_or_report(args.policy)
    if candidate is not None and args.ledger_url:
        return _simulate_ledger(args, candidate)
    baseline = _load_or_report(args.baseline or default_policy_path())
    if candidate is None or baseline is None:
        return 1
    try:
        lines = args.events.read_text(encoding="utf-8").splitlines()
        events = list(read_recorded_lines(lines, source=str(args.events)))
    except FileNotFoundError:
        print(f"events file not found: {args.events}", file=sys.stderr)
        return 1
    except (EventFormatError, ValueError) as exc:
        print(f"cannot read events: {exc}", file=sys.stderr)
        return 1
    leads = _leads_at_creation(events)
    routable = [lead for lead in leads if needs_routing(lead, candidate)]
    new, _ = route_in_order(routable, candidate)
    old, _ = route_in_order(routable, baseline)
    sla = None
    if leads:
        as_of = args.as_of or max(e.commit_time for e in events)
        candidates = response_candidates(events)
        by_lead = {d.lead_id: d for d in new}
        new_sla = policy_sla(sla_frame(leads, by_lead, candidates, candidate), candidate, as_of)
        by_lead = {d.lead_id: d for d in old}
        old_sla = policy_sla(sla_frame(leads, by_lead, candidates, baseline), baseline, as_of)
        sla = (new_sla, old_sla, as_of)
    print(format_comparison(new, old, candidate, baseline, total_leads=len(leads), sla=sla))
    return 0


def format_comparison(
    new: list[RoutingDecision],
    old: list[RoutingDecision],
    candidate: RoutingPolicy,
    baseline: RoutingPolicy,
    *,
    total_leads: int,
    sla: tuple[dict[str, SlaCounts], dict[str, SlaCounts], datetime] | None = None,
) -> str:
    """The what-if report: owner and rule distributions side by side, plus leads that move,
    and the SLA breach % of each side in both clocks."""
    moved = sum(1 for a, b in zip(new, old, strict=True) if a.owner_id != b.owner_id)
    lines = [
        f"leads in stream: {total_leads}; routed: {len(new)}; owner changes vs baseline: {moved}",
        f"policy {candidate.version} vs baseline {baseline.version}",
        "",
    ]
    lines += _table("owner", Counter(d.owner_id for d in new), Counter(d.owner_id for d in old))
    lines.append("")
    lines += _table("rule", Counter(d.rule_id for d in new), Counter(d.rule_id for d in old))
    if sla is not None:
        lines.append("")
        lines += _sla_table(*sla)
    return "\n".join(lines)


_CLOCK_LABELS = {"wall_clock": "wall clock", "business_hours": "business hours"}


def _sla_table(new: dict[str, SlaCounts], old: dict[str, SlaCounts], as_of: datetime) -> list[str]:
    """Breach % = breached / (met + breached), with met/breached/pending behind it."""
    rows = [
        f"SLA as of {format_sf_datetime(as_of)}: breach % (met/breached/pending)",
        f"{'clock':<14}  {'policy':>22}  {'baseline':>22}  {'delta':>7}",
    ]
    for key, label in _CLOCK_LABELS.items():
        a, b = new[key], old[key]
        delta = (
            f"{a.breach_pct - b.breach_pct:+.1f}"
            if a.breach_pct is not None and b.breach_pct is not None
            else "n/a"
        )
        rows.append(f"{label:<14}  {_cell(a):>22}  {_cell(b):>22}  {delta:>7}")
    return rows


def _cell(counts: SlaCounts) -> str:
    pct = "n/a" if counts.breach_pct is None else f"{counts.breach_pct:.1f}%"
    return f"{pct} ({counts.met}/{counts.breached}/{counts.pending})"


def _table(label: str, new: Counter[str], old: Counter[str]) -> list[str]:
    keys = sorted(set(new) | set(old), key=lambda k: (-new.get(k, 0), k))
    width = max([len(label), *(len(k) for k in keys)])
    rows = [f"{label:<{width}}  {'policy':>7}  {'baseline':>8}  {'delta':>6}"]
    for key in keys:
        delta = new.get(key, 0) - old.get(key, 0)
        rows.append(f"{key:<{width}}  {new.get(key, 0):>7}  {old.get(key, 0):>8}  {delta:>+6}")
    return rows
