"""Routing policy as data: load and fingerprint ``routing_policy.json`` into a ``RoutingPolicy``.

``load_policy`` accepts a policy only when it has no fault; the two validation passes (JSON
Schema, then semantic checks), which report every fault with its JSON path, are in
``kpi_pipeline.core.policy.validation``.

Reading the file is the only I/O here; everything downstream gets a ``RoutingPolicy``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, model_validator

from kpi_pipeline.core.policy.calendars import Calendar
from kpi_pipeline.core.policy.validation import (
    GROUP_OPS,
    LEAF_OPS,
    PolicyError,
    PolicyFault,
    policy_faults,
)

POLICY_DIR = Path(__file__).resolve().parent


def default_policy_path() -> Path:
    return POLICY_DIR / "routing_policy.json"


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
