"""Routing policy as data: load, validate and fingerprint ``routing_policy.json``.

Validation runs in two passes and reports **every** fault, each with the JSON path of the
offending value (``$.rules[2].target.pool``) so an operator can fix a file in one go:

1. the JSON Schema (``policy.schema.json``, Draft 2020-12): shapes and types;
2. semantic checks the schema cannot express: unique rule ids, referenced pools exist,
   weighted pools have weights > 0, no member twice in a pool, valid timezone, range
   bounds of one kind with min <= max, and business-hours calendars (known timezone,
   intervals that close after they open and do not overlap, real holiday dates, every
   calendar a rule or the default names defined: ``kpi_pipeline.core.policy.calendars``).

Reading the file is the only I/O here; everything downstream gets a ``RoutingPolicy``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jsonschema
from pydantic import BaseModel, ConfigDict, Field, model_validator

from kpi_pipeline.core.events import EventFormatError, parse_sf_datetime
from kpi_pipeline.core.policy.calendars import (
    Calendar,
    calendar_faults,
    calendar_reference_faults,
)

POLICY_DIR = Path(__file__).resolve().parent
SCHEMA_PATH = POLICY_DIR / "policy.schema.json"
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


def default_policy_path() -> Path:
    return POLICY_DIR / "routing_policy.json"


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


# --- models --------------------------------------------------------------------------


class Condition(BaseModel):
    """One node of a rule's ``when`` tree: a leaf test on a field or an any/all/not group."""

    model_config = ConfigDict(frozen=True)

    op: Literal["equals", "in", "range", "exists", "prefix", "any", "all", "not"]
    field: str | None = None
    value: Any = None
    children: tuple[Condition, ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _from_policy_json(cls, data: Any) -> Any:
        if not isinstance(data, Mapping) or "op" in data:
            return data
        for op in GROUP_OPS:
            if op in data:
                inner = data[op]
                children = [inner] if op == "not" else list(inner)
                return {"op": op, "children": children}
        for op in LEAF_OPS:
            if op in data:
                return {"op": op, "field": data.get("field"), "value": data[op]}
        raise ValueError(f"condition {dict(data)!r} names none of {LEAF_OPS + GROUP_OPS}")

    def to_raw(self) -> dict[str, Any]:
        if self.op == "not":
            return {"not": self.children[0].to_raw()}
        if self.op in ("any", "all"):
            return {self.op: [child.to_raw() for child in self.children]}
        return {"field": self.field, self.op: self.value}


class PoolMember(BaseModel):
    model_config = ConfigDict(frozen=True)

    user_id: str
    name: str | None = None
    weight: float = 1.0
    daily_cap: int | None = None
    available: bool = True


class Pool(BaseModel):
    model_config = ConfigDict(frozen=True)

    strategy: Literal["round_robin", "weighted_round_robin"]
    members: tuple[PoolMember, ...]
    fallback_owner: str | None = None
    description: str | None = None


class Target(BaseModel):
    model_config = ConfigDict(frozen=True)

    user: str | None = None
    queue: str | None = None
    pool: str | None = None

    @property
    def kind(self) -> Literal["user", "queue", "pool"]:
        if self.user:
            return "user"
        return "queue" if self.queue else "pool"


class Rule(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    target: Target
    when: Condition | None = None
    sla_minutes: float | None = None
    calendar: str | None = None
    description: str | None = None


class RoutingPolicy(BaseModel):
    model_config = ConfigDict(frozen=True)

    version: str
    timezone: str
    default_sla_minutes: float
    fallback_owner: str
    pools: dict[str, Pool] = Field(default_factory=dict)
    rules: tuple[Rule, ...]
    automation_users: frozenset[str] = frozenset()
    integration_users: frozenset[str] = frozenset()
    calendars: dict[str, Calendar] = Field(default_factory=dict)
    default_calendar: str | None = None
    description: str | None = None

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def rule(self, rule_id: str) -> Rule | None:
        return next((r for r in self.rules if r.id == rule_id), None)

    def calendar_name(self, rule_id: str | None) -> str | None:
        """The calendar whose open time a lead of ``rule_id`` is measured in: the rule's,
        else the default; None means 24x7. An unknown rule id (the fallback, or a rule a
        later version removed) gets the default."""
        rule = self.rule(rule_id) if rule_id is not None else None
        if rule is not None and rule.calendar is not None:
            return rule.calendar
        return self.default_calendar

    def to_raw(self) -> dict[str, Any]:
        """Canonical JSON form (what the fingerprint hashes)."""
        # No calendars is left out, so a policy without them keeps the fingerprint it had
        # before calendars existed.
        exclude = {"rules"} | ({"calendars"} if not self.calendars else set())
        raw = self.model_dump(mode="json", exclude_none=True, exclude=exclude)
        raw["automation_users"] = sorted(self.automation_users)
        raw["integration_users"] = sorted(self.integration_users)
        raw["rules"] = []
        for rule in self.rules:
            item = rule.model_dump(mode="json", exclude_none=True, exclude={"when"})
            if rule.when is not None:
                item["when"] = rule.when.to_raw()
            raw["rules"].append(item)
        return raw


# --- validation ----------------------------------------------------------------------


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


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise PolicyError([PolicyFault("$", f"file not found: {path}")], str(path)) from exc
    except json.JSONDecodeError as exc:
        raise PolicyError(
            [
                PolicyFault(
                    "$", f"not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
                )
            ],
            str(path),
        ) from exc


def load_policy(path_or_dict: str | Path | Mapping[str, Any] | None = None) -> RoutingPolicy:
    """A validated ``RoutingPolicy`` from a file path or an already-parsed dict.

    None loads the packaged default. Raises ``PolicyError`` listing every fault.
    """
    if path_or_dict is None:
        path_or_dict = default_policy_path()
    if isinstance(path_or_dict, Mapping):
        raw, source = dict(path_or_dict), "policy"
    else:
        source = str(path_or_dict)
        raw = _read(Path(path_or_dict))
    faults = policy_faults(raw)
    if faults:
        raise PolicyError(faults, source)
    raw = {k: v for k, v in raw.items() if k != "$schema"}
    return RoutingPolicy.model_validate(raw)


def validate_policy_file(path: str | Path) -> list[PolicyFault]:
    """Every fault of the policy file (empty list: valid). Never raises for bad content."""
    try:
        raw = _read(Path(path))
    except PolicyError as exc:
        return exc.faults
    return policy_faults(raw)


def policy_fingerprint(policy: RoutingPolicy) -> str:
    """Stable short hash of the policy's content (changes whenever any rule or pool does)."""
    canonical = json.dumps(policy.to_raw(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]
