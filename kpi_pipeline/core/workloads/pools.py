"""Routing pools (pure): smooth weighted round robin with availability and daily caps.

A pool's members are laid out in a fixed *cycle* by smooth weighted round robin (nginx's
interleaving: with weights 2:1:1 the cycle is A B C A, not A A B C); ``round_robin`` is the same
with all weights 1. The pool pointer is the position in that cycle. Members that are unavailable
or at their daily cap are skipped by moving to the next slot, which removes their slots from the
cycle and keeps the remaining members' shares proportional to their weights. ``PoolState`` is
the durable per-pool state the ledger keeps."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from kpi_pipeline.core.policy.load import Pool
from kpi_pipeline.core.policy.validation import integer_weights


@dataclass(frozen=True, slots=True)
class PoolState:
    pool_id: str
    pointer: int = 0
    day: str = ""
    assigned_today: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "pool_id": self.pool_id,
            "pointer": self.pointer,
            "day": self.day,
            "assigned_today": dict(self.assigned_today),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PoolState:
        return cls(
            pool_id=data["pool_id"],
            pointer=int(data.get("pointer", 0)),
            day=data.get("day", ""),
            assigned_today={k: int(v) for k, v in (data.get("assigned_today") or {}).items()},
        )


@lru_cache(maxsize=256)
def pool_cycle(members: tuple[tuple[str, str], ...]) -> tuple[str, ...]:
    """Smooth weighted round-robin order of one full cycle; members as (user_id, weight text).

    Each step every member gains its weight and the richest one (first on ties) is picked
    and pays the total: over a cycle each member gets exactly its weight in slots, spread
    out as evenly as possible.
    """
    weights = integer_weights([float(weight) for _, weight in members])
    total = sum(weights)
    credit = [0] * len(weights)
    order = []
    for _ in range(total):
        credit = [c + w for c, w in zip(credit, weights, strict=True)]
        best = max(range(len(credit)), key=lambda i: (credit[i], -i))
        credit[best] -= total
        order.append(members[best][0])
    return tuple(order)


def _cycle_for(pool: Pool) -> tuple[str, ...]:
    weighted = pool.strategy == "weighted_round_robin"
    key = tuple((m.user_id, str(m.weight) if weighted else "1") for m in pool.members)
    return pool_cycle(key)


def _skip_reason(
    member_id: str, pool: Pool, counts: Mapping[str, int], member_status: Mapping[str, bool]
) -> str | None:
    member = next(m for m in pool.members if m.user_id == member_id)
    if not member.available:
        return "unavailable (policy)"
    if member_status.get(member_id) is False:
        return "unavailable (status)"
    if member.daily_cap is not None and counts.get(member_id, 0) >= member.daily_cap:
        return f"daily cap reached ({counts.get(member_id, 0)}/{member.daily_cap})"
    return None


def pick_from_pool(
    pool_id: str,
    pool: Pool,
    state: PoolState,
    *,
    day: str,
    member_status: Mapping[str, bool],
) -> tuple[str | None, PoolState, dict[str, Any]]:
    """Next eligible member from the pointer on; (None, unchanged pointer) if nobody is eligible."""
    cycle = _cycle_for(pool)
    # Caps count per local day: a decision on a later day (normally the next one) starts
    # from zero. One stamped on an earlier day than the pool's (two hosts' clocks a moment
    # apart at midnight) is judged on that day's counts, which the pool no longer holds, so on
    # none; and it leaves the pool on its later day, whose counts it must not reset.
    # The pointer survives policy edits; it is read modulo the new cycle.
    if state.day > day:
        return _pick_for_an_earlier_day(pool_id, pool, state, day, member_status)
    counts = dict(state.assigned_today) if state.day == day else {}
    start = state.pointer % len(cycle)
    skipped: list[dict[str, Any]] = []
    reported: set[str] = set()
    for offset in range(len(cycle)):
        slot = (start + offset) % len(cycle)
        member_id = cycle[slot]
        reason = _skip_reason(member_id, pool, counts, member_status)
        if reason is None:
            counts[member_id] = counts.get(member_id, 0) + 1
            new_state = PoolState(pool_id, (slot + 1) % len(cycle), day, counts)
            return member_id, new_state, _pool_explanation(pool, start, new_state.pointer, skipped)
        if member_id not in reported:
            reported.add(member_id)
            skipped.append({"user_id": member_id, "reason": reason})
    unchanged = PoolState(pool_id, start, day, counts)
    return None, unchanged, _pool_explanation(pool, start, start, skipped)


def _pick_for_an_earlier_day(
    pool_id: str, pool: Pool, state: PoolState, day: str, member_status: Mapping[str, bool]
) -> tuple[str | None, PoolState, dict[str, Any]]:
    member_id, moved, explanation = pick_from_pool(
        pool_id, pool, PoolState(pool_id, state.pointer), day=day, member_status=member_status
    )
    kept = PoolState(pool_id, moved.pointer, state.day, dict(state.assigned_today))
    return member_id, kept, explanation


def _pool_explanation(
    pool: Pool, before: int, after: int, skipped: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "strategy": pool.strategy,
        "pointer_before": before,
        "pointer_after": after,
        "skipped": skipped,
    }
