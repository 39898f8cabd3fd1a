"""Throughput of the pure workload core: routing decisions/s, record merges/s, first touch/s.

Synthetic, seeded inputs; single process; no I/O inside the timed loops.

    python bench/bench_workloads.py [--leads 20000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from kpi_pipeline.core.events import ChangeEvent, ChangeEventHeader, replay_id_from_int, to_epoch_ms
from kpi_pipeline.core.policy.load import load_policy
from kpi_pipeline.core.workloads.first_touch import (
    email_candidate,
    improves,
    qualifies,
    task_candidate,
    to_first_response,
)
from kpi_pipeline.core.workloads.lead_route import route
from kpi_pipeline.core.workloads.outreach_templates import LocalRanker, load_catalog
from kpi_pipeline.core.workloads.pools import PoolState
from kpi_pipeline.core.workloads.records import RecordState, merge_event

START = datetime(2026, 11, 2, 13, 0, tzinfo=UTC)
SOURCES = ["Web", "Web", "Phone Inquiry", "Partner Referral", "Trade Show", "Webinar", "Other"]
COUNTRY_CODES = ["US", "US", "US", "CA", "DE", "FR", "GB", "BR", "JP", "IN"]
SPACING_S = 216  # 400 leads a day, the sandbox default, so daily caps bind only sometimes
REPS = ["0055g0000000003AAA", "0055g0000000004AAA", "0055g0000000005AAA"]  # sandbox reps


def synthetic_leads(count: int, rng: random.Random) -> list[RecordState]:
    leads = []
    for i in range(count):
        fields = {
            "LeadSource": rng.choice(SOURCES),
            "Address": {"City": "Springfield", "CountryCode": rng.choice(COUNTRY_CODES)},
            "Email": f"lead{i}@example.com",
            "NumberOfEmployees": int(rng.lognormvariate(5, 1.6)),
            "AnnualRevenue": int(rng.lognormvariate(15, 2)),
            "Company": rng.choice(["Acme", "Initech", "Umbrella", "Hooli", "Globex"]) + f" {i}",
            "FirstName": "Pat",
            "Industry": rng.choice(["Technology", "Healthcare", "Retail"]),
            "OwnerId": "00G5g0000000001EAA",
        }
        created = START + timedelta(seconds=i * SPACING_S)
        leads.append(RecordState("Lead", f"00Q{i:015d}", fields, created_ms=to_epoch_ms(created)))
    return leads


def _event(
    entity: str, record_id: str, change: str, at: datetime, number: int, fields: dict
) -> ChangeEvent:
    header = ChangeEventHeader(
        entity_name=entity,
        record_ids=(record_id,),
        change_type=change,
        commit_timestamp=to_epoch_ms(at),
        commit_number=number,
        sequence_number=1,
        commit_user=REPS[number % len(REPS)],
    )
    return ChangeEvent(f"/data/{entity}ChangeEvent", replay_id_from_int(number), header, fields)


def synthetic_activity(count: int, rng: random.Random) -> list[ChangeEvent]:
    """Per lead: a task created open then completed, and an email send (email + task)."""
    events = []
    number = 0
    for i in range(count):
        lead_id = f"00Q{i:015d}"
        created = START + timedelta(seconds=i * SPACING_S)
        first = created + timedelta(minutes=rng.lognormvariate(3.5, 1))
        task_id, pair_id, email_id = f"00T{i:015d}", f"00T{i + count:015d}", f"02s{i:015d}"
        user = REPS[i % len(REPS)]
        for entity, record_id, change, at, fields in (
            (
                "Task",
                task_id,
                "CREATE",
                created,
                {"WhoId": lead_id, "Status": "Not Started", "CreatedById": user},
            ),
            ("Task", task_id, "UPDATE", first, {"Status": "Completed", "IsClosed": True}),
            (
                "Task",
                pair_id,
                "CREATE",
                first,
                {"WhoId": lead_id, "Status": "Completed", "CompletedDateTime": to_epoch_ms(first)},
            ),
            (
                "EmailMessage",
                email_id,
                "CREATE",
                first,
                {
                    "ActivityId": pair_id,
                    "Incoming": False,
                    "MessageDate": to_epoch_ms(first),
                    "CreatedById": user,
                },
            ),
        ):
            number += 1
            events.append(_event(entity, record_id, change, at, number, fields))
    rng.shuffle(events)  # delivery order is not commit order
    return events


def bench_routing(leads: list[RecordState]) -> None:
    policy = load_policy()
    pools: dict[str, PoolState] = {}
    for n, lead in enumerate(leads):
        outcome = route(lead, policy, pools, decided_at=START + timedelta(seconds=n * SPACING_S))
        if outcome.pool_state is not None:
            pools[outcome.pool_state.pool_id] = outcome.pool_state


def bench_first_touch(events: list[ChangeEvent]) -> None:
    """Merge every event, derive its candidate, apply the only-earlier rule (processor path)."""
    states: dict[str, RecordState] = {}
    stored: dict[str, object] = {}
    automation = frozenset({"0055g0000000002AAA"})
    for event in events:
        record_id = event.record_ids[0]
        state = merge_event(states.get(record_id), event, record_id)
        states[record_id] = state
        if state.sobject == "Task":
            candidate = task_candidate(state)
        else:
            candidate = email_candidate(state, states.get)
        if candidate is None:
            continue
        lead_created = START + timedelta(seconds=int(candidate.lead_id[3:]) * SPACING_S)
        if qualifies(
            candidate, lead_created=lead_created, automation_users=automation
        ) and improves(stored.get(candidate.lead_id), candidate):
            stored[candidate.lead_id] = to_first_response(candidate, lead_created=lead_created)


def bench_templates(leads: list[RecordState]) -> None:
    ranker, catalog = LocalRanker(), load_catalog()
    for lead in leads:
        ranker.select(lead.fields, catalog)


def timed(fn: Callable[[], None], repeats: int) -> float:
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - started)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--leads", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    leads = synthetic_leads(args.leads, rng)
    events = synthetic_activity(args.leads, rng)

    print(
        f"python {platform.python_version()} on {platform.machine()}; {args.leads} leads, median of {args.repeats}"
    )
    routing = timed(lambda: bench_routing(leads), args.repeats)
    print(
        f"route (default policy, pools, caps):  {len(leads) / routing:>10,.0f} decisions/s ({routing:.3f} s)"
    )
    touch = timed(lambda: bench_first_touch(events), args.repeats)
    print(
        f"merge + first-touch per event:        {len(events) / touch:>10,.0f} events/s   ({touch:.3f} s, {len(events)} events)"
    )
    ranking = timed(lambda: bench_templates(leads), args.repeats)
    print(
        f"local ranker template selection:      {len(leads) / ranking:>10,.0f} selections/s ({ranking:.3f} s)"
    )


if __name__ == "__main__":
    main()
