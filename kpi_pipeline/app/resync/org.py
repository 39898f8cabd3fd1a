"""What the re-sync knows of the org, from the org itself: each entity's fields (the
GetSchema answers staged in the ledger with the events, else sObject describe over REST),
the entities a channel carries, and the owner history of re-read leads."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kpi_pipeline.app.resync.errors import ResyncError
from kpi_pipeline.app.resync.owner_history import OwnerChange, owner_changes_from_history
from kpi_pipeline.app.resync.ports import StagedSchemas
from kpi_pipeline.core.schema_types import sf_type_of
from kpi_pipeline.telemetry import metrics

log = logging.getLogger(__name__)

# --- the org's description: entities and their fields --------------------------------

# Fields REST has and change events do not (describe lists them; CDC schemas never do).
_REST_ONLY_FIELDS = frozenset(
    {"Id", "IsDeleted", "SystemModstamp", "LastViewedDate", "LastReferencedDate"}
)
# The entities the workloads read, in the order a re-read applies them (Leads before the
# activities that answer them); the other entities a channel carries come after.
WORKLOAD_ENTITIES = ("Lead", "Task", "EmailMessage")


def _rest_prefix(parent: str) -> str:
    """REST flattens a compound's children under a prefix: BillingAddress -> BillingCity;
    Lead's Address and the person Name have none (City, FirstName)."""
    return parent.removesuffix("Address") if parent.endswith("Address") else ""


@dataclass(frozen=True)
class EntityFields:
    """An entity's CDC body fields, and how REST names them (compound children flattened)."""

    plain: tuple[str, ...]
    compounds: Mapping[str, tuple[str, ...]]  # parent -> its children as CDC names them
    datetimes: frozenset[str]

    @staticmethod
    def rest_name(parent: str, child: str) -> str:
        return _rest_prefix(parent) + child

    @property
    def select(self) -> tuple[str, ...]:
        children = [self.rest_name(p, c) for p, parts in self.compounds.items() for c in parts]
        # LastModifiedById names the last writer (commitUser); not every schema carries it.
        return tuple(dict.fromkeys([*self.plain, *children, "LastModifiedById"]))

    @classmethod
    def from_schema(cls, schema: Mapping[str, Any]) -> EntityFields:
        """From a change-event schema as GetSchema serves it (field 0 is the header; a
        repeated compound type is a reference by name to the record defined first)."""
        plain: list[str] = []
        compounds: dict[str, tuple[str, ...]] = {}
        datetimes: set[str] = set()
        named: dict[str, Mapping[str, Any]] = {}
        for spec in schema["fields"][1:]:
            branches = spec["type"] if isinstance(spec["type"], list) else [spec["type"]]
            record = None
            for branch in branches:
                if isinstance(branch, Mapping) and branch.get("type") == "record":
                    record = branch
                    named[str(branch["name"]).rsplit(".", 1)[-1]] = branch
                elif isinstance(branch, str) and branch.rsplit(".", 1)[-1] in named:
                    record = named[branch.rsplit(".", 1)[-1]]
            if record is not None:
                # Address's Xyz is in CDC schemas only; REST (and so SOQL) does not know it.
                children = [c["name"] for c in record["fields"] if c["name"] != "Xyz"]
                compounds[spec["name"]] = tuple(children)
                continue
            plain.append(spec["name"])
            if sf_type_of(spec) in ("DateTime", "Date"):
                datetimes.add(spec["name"])
        return cls(tuple(plain), compounds, frozenset(datetimes))

    @classmethod
    def from_describe(cls, describe: Mapping[str, Any]) -> EntityFields:
        """From ``sobjects/<Type>/describe``: compound children carry ``compoundFieldName``;
        formula fields and the fields CDC never carries are left out."""
        fields = [f for f in describe.get("fields") or () if isinstance(f, Mapping)]
        parents = {f.get("compoundFieldName") for f in fields} - {None}
        plain: list[str] = []
        compounds: dict[str, list[str]] = {}
        datetimes: set[str] = set()
        for spec in fields:
            name = str(spec.get("name") or "")
            if not name or name in _REST_ONLY_FIELDS or spec.get("calculated"):
                continue
            parent = spec.get("compoundFieldName")
            if parent:
                prefix = _rest_prefix(parent)
                child = name[len(prefix) :] if name.startswith(prefix) else name
                compounds.setdefault(parent, []).append(child)
            elif name not in parents and spec.get("type") not in ("address", "location"):
                plain.append(name)
                if spec.get("type") in ("datetime", "date"):
                    datetimes.add(name)
        return cls(tuple(plain), {p: tuple(c) for p, c in compounds.items()}, frozenset(datetimes))


def entity_of_schema(schema: Mapping[str, Any]) -> str | None:
    """``LeadChangeEvent`` -> Lead, ``Foo__ChangeEvent`` -> Foo__c; None for other records."""
    name = str(schema.get("name") or "").rsplit(".", 1)[-1]
    if not name.endswith("ChangeEvent") or name == "ChangeEvent":
        return None
    entity = name[: -len("ChangeEvent")]
    return entity + "c" if entity.endswith("__") else entity


def entity_of_channel(channel: str) -> str | None:
    """The one entity of a standard channel ``/data/<Entity>ChangeEvent``, else None."""
    if not channel.startswith("/data/") or not channel.endswith("ChangeEvent"):
        return None
    return entity_of_schema({"name": channel[len("/data/") :]})


class OrgDescription:
    """What the re-sync knows of the org, from the org itself: the GetSchema answers staged
    in the ledger with the events (the most recent per entity), else sObject describe over
    REST; and which entities a channel carries, from the events staged on it.

    One per re-sync pass: the staged schemas are read once."""

    def __init__(self, ledger: StagedSchemas, rest: Any = None) -> None:
        self._ledger = ledger
        self._describe = getattr(rest, "describe", None)
        self._staged: list[tuple[str, dict[str, Any]]] | None = None
        self._fields: dict[str, EntityFields] = {}
        self._history = getattr(rest, "field_history", None)
        self._no_history = "" if self._history else "the REST reader cannot read field history"

    def _schemas(self, channel: str | None = None) -> list[dict[str, Any]]:
        if channel is not None:
            return [json.loads(text) for _, text in self._ledger.staged_schemas(channel)]
        if self._staged is None:
            self._staged = [
                (schema_id, json.loads(text)) for schema_id, text in self._ledger.staged_schemas()
            ]
        return [schema for _, schema in self._staged]

    def fields(self, entity: str) -> EntityFields:
        cached = self._fields.get(entity)
        if cached is not None:
            return cached
        schema = next((s for s in self._schemas() if entity_of_schema(s) == entity), None)
        if schema is not None:
            found = EntityFields.from_schema(schema)
        elif self._describe is not None:
            found = EntityFields.from_describe(self._describe(entity))
        else:
            raise ResyncError(
                f"the ledger holds no {entity}ChangeEvent schema (no {entity} event was staged "
                "yet) and the REST reader cannot describe sObjects, so the re-sync does not "
                f"know {entity}'s fields; pass a reader with describe() (SalesforceRest)"
            )
        self._fields[entity] = found
        return found

    def entities_for_channel(self, channel: str) -> tuple[str, ...]:
        """``/data/<Entity>ChangeEvent``: that entity. Other channels (``/data/ChangeEvents``,
        custom ``__chn`` ones): the entities of the events staged on it, or, before any
        was staged, the entities the workloads read."""
        single = entity_of_channel(channel)
        if single is not None:
            return (single,)
        multi = channel == "/data/ChangeEvents" or (
            channel.startswith("/data/") and channel.endswith("__chn")
        )
        if not multi:
            raise ResyncError(
                f"cannot tell which entities channel {channel!r} carries; use "
                "/data/<Entity>ChangeEvent, /data/ChangeEvents or a custom /data/<Name>__chn, "
                "or pass entities_for_channel="
            )
        carried = {entity_of_schema(s) for s in self._schemas(channel)} - {None}
        if not carried:
            log.info(
                "no event of %s is staged yet; re-reading the entities the workloads read %s",
                channel,
                WORKLOAD_ENTITIES,
            )
            return WORKLOAD_ENTITIES
        first = [e for e in WORKLOAD_ENTITIES if e in carried]
        return (*first, *sorted(e for e in carried if e not in WORKLOAD_ENTITIES))

    def owner_changes(self, lead_ids: Sequence[str]) -> dict[str, list[OwnerChange]] | None:
        """Each lead's owner changes from ``LeadHistory``, oldest first (a lead without any
        is left out); None when the org has no history object (INVALID_TYPE) or the reader
        cannot read history. ``warn_no_owner_history`` says so, once a window."""
        if not lead_ids:
            return {}
        if self._history is None:
            return None
        try:
            rows = self._history("Lead", "Owner", lead_ids)
        except Exception as exc:
            if getattr(exc, "error_code", None) != "INVALID_TYPE":
                raise  # transient or unexpected: the window fails and is retried
            self._history = None  # not there for this pass's other windows either
            self._no_history = str(exc)
            return None
        return owner_changes_from_history(rows)

    def warn_no_owner_history(self, leads: int) -> None:
        """A window re-read ``leads`` Leads and found no owner history for any of them: its
        owners are dated at LastModifiedDate. Logged and counted."""
        reason = self._no_history or (
            f"LeadHistory has no Owner row for any of the {leads} re-read lead(s); field "
            "history tracking for Lead Owner may be off"
        )
        metrics.record_error("resync_owner_history")
        log.warning(
            "re-sync: no owner history (%s); re-read owners are dated at LastModifiedDate, "
            "so an assignment may be dated later than the real hand-over",
            reason,
        )
