"""Lead partitions in separate processes on one PostgreSQL ledger.

(a) The shipped stream in rounds, processed by two partition workers in two processes at once,
    leaves the ledger as one process processing every round does. What may differ, and only
    that: *which* member of a round-robin pool a lead got, when two partitions route into
    the pool in the same round (their turns interleave in commit order instead of lead
    creation order), and what follows from the owner: the owner columns of lead facts, the
    routing decisions' assignee, the outbox's OwnerId values and the decision records'
    texts. Each pool still hands out exactly the turns the single process did (the same
    multiset of members, the same pointer): no turn given twice, none skipped.
(b) Two processes taking the same partition at the same moment: exactly one gets it, the
    other is refused with the holder's name.
"""

from __future__ import annotations

import multiprocessing
from collections import Counter
from typing import Any

import pytest
import sqlalchemy as sa

from kpi_pipeline.adapters.ledger import Ledger
from kpi_pipeline.adapters.ledger import partitions as lp
from kpi_pipeline.adapters.ledger import schema as t
from kpi_pipeline_tests.support import partition_worker
from kpi_pipeline_tests.support.paths import REPO_ROOT

pytestmark = [pytest.mark.postgres, pytest.mark.integration]

FIXTURE = REPO_ROOT / "kpi_pipeline" / "fixtures" / "recorded_stream.jsonl"
ROUND = 40  # events per round at most: several rounds, so links cross rounds as well as partitions
SPAWN = multiprocessing.get_context("spawn")


def _run(url: str, partitions: int) -> None:
    Ledger.from_url(url).dispose()  # migrated once, before the workers race for it
    barrier = SPAWN.Barrier(partitions) if partitions > 1 else None
    workers = [
        SPAWN.Process(
            target=partition_worker.process_partition,
            args=(url, p, partitions, str(FIXTURE), ROUND, barrier),
        )
        for p in range(partitions)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)
        assert worker.exitcode == 0, f"partition worker exited with {worker.exitcode}"


def _rows(engine: sa.Engine, table: sa.Table, *drop: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(sa.select(table))]
    kept = [{k: v for k, v in row.items() if k not in drop} for row in rows]
    return sorted(kept, key=repr)


def _state(url: str) -> dict[str, Any]:
    engine = sa.create_engine(url)
    try:
        return {
            "records": _rows(engine, t.records, "updated_at"),
            "candidates": _rows(engine, t.response_candidates),
            "facts": _rows(engine, t.lead_facts, "updated_at"),
            "routing": _rows(engine, t.routing_decisions, "decided_at"),
            "pools": _rows(engine, t.pool_state, "updated_at"),
            "templates": _rows(engine, t.template_recommendations),
            "decisions": _rows(engine, t.decisions),
            "outbox": _rows(engine, t.sf_outbox, "id", "created_at", "dirtied_at", "generation"),
            "dead_letters": _rows(engine, t.dead_letters, "id", "created_at"),
            "resync": _rows(engine, t.resync_windows, "id", "detected_at"),
        }
    finally:
        engine.dispose()


def _turn(row: dict[str, Any]) -> tuple | None:
    """A pool assignment's turn: (pool, day, pointer before, pointer after, member)."""
    decision = row["decision"]
    pool = decision["explanation"].get("pool")
    if pool is None:
        return None
    return (
        decision["pool_id"],
        pool["day"],
        pool["pointer_before"],
        pool["pointer_after"],
        decision["owner_id"],
    )


def _without_turn(row: dict[str, Any]) -> dict[str, Any]:
    decision = dict(row["decision"])
    explanation = dict(decision["explanation"])
    if "pool" in explanation:
        explanation["pool"] = {
            k: v
            for k, v in explanation["pool"].items()
            if k not in ("pointer_before", "pointer_after")
        }
        decision.pop("owner_id")
    return {**row, "decision": {**decision, "explanation": explanation}}


def _assert_same_modulo_pool_turns(one: dict[str, Any], two: dict[str, Any]) -> None:
    """Routing may differ only in which turn of its pool a lead got; each pool hands out
    the same turns (no turn twice, none skipped), and only owners follow from that."""
    assert [_without_turn(r) for r in two["routing"]] == [_without_turn(r) for r in one["routing"]]
    turns_one = Counter(_turn(r) for r in one["routing"])
    assert Counter(_turn(r) for r in two["routing"]) == turns_one
    pooled = {r["lead_id"]: r for r in one["routing"] if _turn(r)}
    assert pooled, "the stream routes no lead into a pool: the turns are not exercised"
    pooled_two = {r["lead_id"]: r["decision"]["owner_id"] for r in two["routing"] if _turn(r)}
    # Lead facts: the owner of a pooled lead is its own run's turn, all else is equal.
    for fact_one, fact_two in zip(one["facts"], two["facts"], strict=True):
        lead = fact_one["Id"]
        if fact_one["OwnerId"] != fact_two["OwnerId"]:
            assert fact_one["OwnerId"] == pooled[lead]["decision"]["owner_id"]
            assert fact_two["OwnerId"] == pooled_two[lead]
        assert {**fact_two, "OwnerId": None} == {**fact_one, "OwnerId": None}
    # Decision records: the routing ones name the owner (their id hashes their text).
    for workload in {d["workload"] for d in one["decisions"]} | {"lead_route"}:
        mine = [d for d in one["decisions"] if d["workload"] == workload]
        theirs = [d for d in two["decisions"] if d["workload"] == workload]
        if workload == "lead_route":
            assert sorted((d["lead_id"], d["rule_id"]) for d in theirs) == sorted(
                (d["lead_id"], d["rule_id"]) for d in mine
            )
        else:
            assert theirs == mine, workload


def test_two_partitions_in_two_processes_give_the_single_process_ledger(make_postgres_db) -> None:
    single, split = make_postgres_db(), make_postgres_db()
    _run(single, 1)
    _run(split, 2)
    one, two = _state(single), _state(split)
    assert one["records"] and one["candidates"] and one["routing"] and one["templates"]
    for key in ("records", "candidates", "pools", "templates", "outbox", "dead_letters"):
        assert two[key] == one[key], key
    assert two["resync"] == one["resync"]
    _assert_same_modulo_pool_turns(one, two)
    ledger = Ledger.from_url(split)
    try:
        with ledger.engine.connect() as conn:
            rounds = conn.execute(
                sa.select(t.cdc_batch_partitions.c.batch_id, sa.func.count()).group_by(
                    t.cdc_batch_partitions.c.batch_id
                )
            ).all()
    finally:
        ledger.dispose()
    expected = len(partition_worker.read_rounds(FIXTURE, ROUND))
    assert expected > 6  # the 40-event rounds, cut again at each UTC midnight
    assert sorted(count for _, count in rounds) == [2] * expected


def test_two_processes_cannot_both_take_one_partition(postgres_url: str) -> None:
    Ledger.from_url(postgres_url).dispose()
    barrier, out = SPAWN.Barrier(2), SPAWN.Queue()
    contenders = [
        SPAWN.Process(
            target=partition_worker.contend,
            args=(postgres_url, 1, f"run-{n}", barrier, out),
        )
        for n in range(2)
    ]
    for process in contenders:
        process.start()
    results = sorted(out.get(timeout=120) for _ in contenders)
    for process in contenders:
        process.join(timeout=60)
        assert process.exitcode == 0
    outcomes = sorted(outcome for _, outcome, _ in results)
    assert outcomes == ["holds", "refused"]
    winner = next(holder for holder, outcome, _ in results if outcome == "holds")
    (message,) = [text for _, outcome, text in results if outcome == "refused"]
    assert f"run {winner} holds partition 1/2" in message
    ledger = Ledger.from_url(postgres_url)
    try:
        (lease,) = lp.partition_leases(ledger)
        assert lease.holder == winner and lease.partition == 1
    finally:
        ledger.dispose()
