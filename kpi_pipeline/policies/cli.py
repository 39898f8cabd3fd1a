"""`kpi-pipeline policy validate FILE` and `kpi-pipeline policy simulate ...` (what-if).

``validate`` prints every fault with its JSON path and exits 1 when there is any.
``simulate`` routes every lead of a recorded CDC stream (CONTRACTS.md §2) with a policy, and
with a baseline policy (default: the packaged one), in creation order on the event clock,
and prints how owners and rules would change.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from kpi_pipeline.cdc.events import EventFormatError, read_recorded_lines
from kpi_pipeline.policies.load import (
    PolicyError,
    RoutingPolicy,
    default_policy_path,
    load_policy,
    policy_fingerprint,
    validate_policy_file,
)
from kpi_pipeline.workloads.lead_route import (
    RoutingDecision,
    lead_created_at,
    needs_routing,
    route_in_order,
)
from kpi_pipeline.workloads.records import RecordState, merge_event


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
    simulate.set_defaults(func=_simulate)


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
    states: dict[str, RecordState] = {}
    for event in read_recorded_lines(lines, source=source):
        if event.entity != "Lead" or event.change_type != "CREATE":
            continue
        for record_id in event.record_ids:
            states[record_id] = merge_event(states.get(record_id), event, record_id)
    return list(states.values())


def _load_or_report(path: Path) -> RoutingPolicy | None:
    try:
        return load_policy(path)
    except PolicyError as exc:
        print(str(exc), file=sys.stderr)
        print(f"fix it, then check with: kpi-pipeline policy validate {path}", file=sys.stderr)
        return None


def _simulate_ledger(args: argparse.Namespace, candidate: RoutingPolicy) -> int:
    from kpi_pipeline.ledger.store import Ledger

    ledger = Ledger.from_url(args.ledger_url)
    try:
        routed = ledger.routed_leads()
    finally:
        ledger.dispose()
    # route_in_order walks leads by creation; keep the stored decisions in the same order so
    # the comparison pairs each lead with itself.
    routed.sort(key=lambda pair: (lead_created_at(pair[0]), pair[0].record_id))
    leads = [state for state, _ in routed]
    new, _ = route_in_order(leads, candidate)
    if args.baseline:
        baseline = _load_or_report(args.baseline)
        if baseline is None:
            return 1
        old, _ = route_in_order(leads, baseline)
    else:
        old = [decision for _, decision in routed]
        baseline = candidate.model_copy(update={"version": "decisions in the ledger"})
    print(format_comparison(new, old, candidate, baseline, total_leads=len(leads)))
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
        leads = leads_at_creation(lines, str(args.events))
    except FileNotFoundError:
        print(f"events file not found: {args.events}", file=sys.stderr)
        return 1
    except (EventFormatError, ValueError) as exc:
        print(f"cannot read events: {exc}", file=sys.stderr)
        return 1
    routable = [lead for lead in leads if needs_routing(lead, candidate)]
    new, _ = route_in_order(routable, candidate)
    old, _ = route_in_order(routable, baseline)
    print(format_comparison(new, old, candidate, baseline, total_leads=len(leads)))
    return 0


def format_comparison(
    new: list[RoutingDecision],
    old: list[RoutingDecision],
    candidate: RoutingPolicy,
    baseline: RoutingPolicy,
    *,
    total_leads: int,
) -> str:
    """The what-if report: owner and rule distributions side by side, plus leads that move."""
    moved = sum(1 for a, b in zip(new, old, strict=True) if a.owner_id != b.owner_id)
    lines = [
        f"leads in stream: {total_leads}; routed: {len(new)}; owner changes vs baseline: {moved}",
        f"policy {candidate.version} vs baseline {baseline.version}",
        "",
    ]
    lines += _table("owner", Counter(d.owner_id for d in new), Counter(d.owner_id for d in old))
    lines.append("")
    lines += _table("rule", Counter(d.rule_id for d in new), Counter(d.rule_id for d in old))
    return "\n".join(lines)


def _table(label: str, new: Counter[str], old: Counter[str]) -> list[str]:
    keys = sorted(set(new) | set(old), key=lambda k: (-new.get(k, 0), k))
    width = max([len(label), *(len(k) for k in keys)])
    rows = [f"{label:<{width}}  {'policy':>7}  {'baseline':>8}  {'delta':>6}"]
    for key in keys:
        delta = new.get(key, 0) - old.get(key, 0)
        rows.append(f"{key:<{width}}  {new.get(key, 0):>7}  {old.get(key, 0):>8}  {delta:>+6}")
    return rows
