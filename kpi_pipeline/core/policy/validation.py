"""Validating a routing policy document (pure but for reading the JSON Schema file), in two
passes that report **every** fault, each with the JSON path of the offending value
(``$.rules[2].target.pool``) so an operator can fix a file in one go:

1. the JSON Schema (``policy.schema.json``, Draft 2020-12): shapes and types;
2. semantic checks the schema cannot express: unique rule ids, referenced pools exist,
   weighted pools have weights > 0, no member twice in a pool, valid timezone, range
   bounds of one kind with min <= max, and business-hours calendars (known timezone,
   intervals that close after they open and do not overlap, real holiday dates, every
   calendar a rule or the default names defined: ``kpi_pipeline.core.policy.calendars``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jsonschema

from kpi_pipeline.core.events import EventFormatError, parse_sf_datetime
from kpi_pipeline.core.policy.calendars import calendar_faults, calendar_reference_faults

SCHEMA_PATH = Path(__file__).resolve().parent / "policy.schema.json"
# The condition operators of a rule's ``when`` tree: tests on a field, and combinators.
LEAF_OPS = ("equals", "in", "range", "exists", "prefix")
GROUP_OPS = ("any", "all", "not")
MAX_CYCLE = 10_000  # longest weighted round-robin cycle a pool may need


def integer_weights(weights: list[float]) -> list[int]:
    """Smallest integers in the same ratio (weights read to 3 decimals): 2, 1, 0.5 -> 4, 2, 1."""
    fractions = [Fraction(str(w)).limit_denominator(1000) for w in weights]
    scale = math.lcm(*(f.denominator for f in fractions))
    integers = [int(f * scale) for f in fractions]
    divisor = math.gcd(*integers)
    return [i // divisor for i in integers]


@dataclass(frozen=True, slots=True)
class PolicyFault:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class PolicyError(ValueError):
    """A policy failed validation; ``faults`` lists every problem found."""

    def __init__(self, faults: list[PolicyFault], source: str = "policy") -> None:
        self.faults = faults
        self.source = source
        lines = "\n".join(f"  {fault}" for fault in faults)
        super().__init__(f"{source} has {len(faults)} fault(s):\n{lines}")


@lru_cache(maxsize=1)
def _validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


CONDITION_HINT = (
    f"use {{'field': NAME, OP: VALUE}} with one OP of {list(LEAF_OPS)}, "
    "or one of {'any': [...]}, {'all': [...]}, {'not': {...}}"
)


def _condition_fault(error: jsonschema.ValidationError) -> PolicyFault:
    """A failed condition (``oneOf``) explained by the branch its operator selects, descending
    into nested any/all/not so the fault points at the innermost broken condition."""
    instance = error.instance
    ops = [op for op in LEAF_OPS + GROUP_OPS if op in instance]
    if len(ops) > 1:
        return PolicyFault(
            error.json_path, f"condition has several operators {ops}; {CONDITION_HINT}"
        )
    if not ops:
        return PolicyFault(
            error.json_path,
            f"condition with keys {sorted(instance)} names no operator; {CONDITION_HINT}",
        )
    branches = error.schema["oneOf"]
    chosen = next(i for i, branch in enumerate(branches) if ops[0] in branch.get("required", ()))
    branch_errors = [e for e in error.context or () if e.relative_schema_path[0] == chosen]
    if not branch_errors:
        return PolicyFault(error.json_path, f"condition is not valid; {CONDITION_HINT}")
    deepest = max(branch_errors, key=lambda e: len(e.absolute_path))
    if deepest.validator == "oneOf" and isinstance(deepest.instance, dict):
        return _condition_fault(deepest)
    return PolicyFault(deepest.json_path, deepest.message)


def _schema_fault(error: jsonschema.ValidationError) -> PolicyFault:
    if error.validator == "oneOf" and isinstance(error.instance, dict):
        return _condition_fault(error)
    return PolicyFault(error.json_path, error.message)


def schema_faults(raw: Any) -> list[PolicyFault]:
    errors = sorted(_validator().iter_errors(raw), key=lambda e: (e.json_path, e.message))
    return [_schema_fault(error) for error in errors]


def semantic_faults(raw: Mapping[str, Any]) -> list[PolicyFault]:
    """Checks beyond the schema; assumes ``raw`` passed the schema."""
    faults: list[PolicyFault] = []
    try:
        ZoneInfo(raw["timezone"])
    except (ZoneInfoNotFoundError, ValueError):
        faults.append(PolicyFault("$.timezone", f"unknown IANA timezone {raw['timezone']!r}"))
    pools = raw.get("pools") or {}
    for pool_id, pool in pools.items():
        faults.extend(_pool_faults(f"$.pools.{pool_id}", pool))
    seen: dict[str, int] = {}
    for index, rule in enumerate(raw["rules"]):
        path = f"$.rules[{index}]"
        if rule["id"] in seen:
            faults.append(
                PolicyFault(
                    f"{path}.id",
                    f"rule id {rule['id']!r} already used by $.rules[{seen[rule['id']]}]",
                )
            )
        seen.setdefault(rule["id"], index)
        pool_ref = rule["target"].get("pool")
        if pool_ref is not None and pool_ref not in pools:
            known = ", ".join(sorted(pools)) or "none defined"
            faults.append(
                PolicyFault(
                    f"{path}.target.pool", f"pool {pool_ref!r} is not defined in $.pools ({known})"
                )
            )
        if "when" in rule:
            faults.extend(_condition_faults(f"{path}.when", rule["when"]))
    for name, calendar in (raw.get("calendars") or {}).items():
        faults += [PolicyFault(p, m) for p, m in calendar_faults(f"$.calendars.{name}", calendar)]
    faults += [PolicyFault(p, m) for p, m in calendar_reference_faults(raw)]
    return faults


def _pool_faults(path: str, pool: Mapping[str, Any]) -> list[PolicyFault]:
    faults = []
    seen: set[str] = set()
    for index, member in enumerate(pool["members"]):
        member_path = f"{path}.members[{index}]"
        if member["user_id"] in seen:
            faults.append(
                PolicyFault(f"{member_path}.user_id", f"{member['user_id']} is listed twice")
            )
        seen.add(member["user_id"])
        weight = member.get("weight", 1)
        if weight <= 0:
            faults.append(PolicyFault(f"{member_path}.weight", f"weight must be > 0, got {weight}"))
        elif pool["strategy"] == "weighted_round_robin" and "weight" not in member:
            faults.append(
                PolicyFault(
                    f"{member_path}.weight", "weighted_round_robin needs a weight per member"
                )
            )
    weights = [m.get("weight", 1) for m in pool["members"]]
    weighted = pool["strategy"] == "weighted_round_robin"
    if weighted and not faults and sum(integer_weights(weights)) > MAX_CYCLE:
        faults.append(
            PolicyFault(
                f"{path}.members",
                f"weights {weights} need a round-robin cycle longer than {MAX_CYCLE} leads; "
                "use simpler ratios (e.g. 2, 1, 0.5)",
            )
        )
    return faults


def _condition_faults(path: str, condition: Mapping[str, Any]) -> list[PolicyFault]:
    if "any" in condition or "all" in condition:
        op = "any" if "any" in condition else "all"
        faults = []
        for index, child in enumerate(condition[op]):
            faults.extend(_condition_faults(f"{path}.{op}[{index}]", child))
        return faults
    if "not" in condition:
        return _condition_faults(f"{path}.not", condition["not"])
    if "range" in condition:
        return _range_faults(f"{path}.range", condition["range"])
    return []


def _range_faults(path: str, bounds: Mapping[str, Any]) -> list[PolicyFault]:
    parsed = {}
    for key, value in bounds.items():
        if isinstance(value, str):
            try:
                parsed[key] = parse_sf_datetime(value)
            except EventFormatError:
                return [
                    PolicyFault(
                        f"{path}.{key}", f"{value!r} is neither a number nor an ISO-8601 date"
                    )
                ]
        else:
            parsed[key] = value
    if len(parsed) == 2:
        if type(parsed["min"]) is not type(parsed["max"]) and not all(
            isinstance(v, int | float) for v in parsed.values()
        ):
            return [PolicyFault(path, "min and max must both be numbers or both be dates")]
        if parsed["min"] > parsed["max"]:
            return [
                PolicyFault(path, f"min {bounds['min']!r} is greater than max {bounds['max']!r}")
            ]
    return []


def policy_faults(raw: Any) -> list[PolicyFault]:
    """Every fault of a raw policy document (empty list: valid)."""
    faults = schema_faults(raw)
    if faults:
        return faults  # semantic checks need the shapes the schema guarantees
    return semantic_faults(raw)
