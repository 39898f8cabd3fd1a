"""`kpi-pipeline policy validate FILE`, `kpi-pipeline policy simulate ...` (what-if) and
`kpi-pipeline policy recompute` (business-hours values of past leads after a calendar change).

``validate`` prints every fault with its JSON path and exits 1 when there is any.
``simulate`` routes every lead of a recorded CDC stream (CONTRACTS.md §2) with a policy, and
with a baseline policy (default: the packaged one), in creation order on the event clock,
and prints how owners and rules would change, and the SLA breach % each policy gives those
leads on the wall clock and in business hours (each lead's calendar under that policy), so
a what-if on a calendar shows its effect on past leads.

What a simulation measures is built in ``policy_whatif``, the report it prints in
``policy_report``.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

from kpi_pipeline.cli.policy_report import format_comparison
from kpi_pipeline.cli.policy_whatif import (
    leads_at_creation,
    ledger_sla_frame,
    policy_sla,
    response_candidates,
    sla_frame,
)
from kpi_pipeline.cli.replay import parse_as_of
from kpi_pipeline.core.events import EventFormatError, read_recorded_lines
from kpi_pipeline.core.kpis.sla_views import sla_in_both_clocks
from kpi_pipeline.core.policy.load import (
    RoutingPolicy,
    default_policy_path,
    load_policy,
    policy_fingerprint,
    validate_policy_file,
)
from kpi_pipeline.core.policy.validation import PolicyError
from kpi_pipeline.core.workloads.lead_route import lead_created_at, needs_routing, route_in_order


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
    new_sla = policy_sla(ledger_sla_frame(leads, new, facts, candidate), candidate, as_of)
    if args.baseline:
        baseline = _load_or_report(args.baseline)
        if baseline is None:
            return 1
        old, _ = route_in_order(leads, baseline)
        old_sla = policy_sla(ledger_sla_frame(leads, old, facts, baseline), baseline, as_of)
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
    leads = leads_at_creation(events)
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
