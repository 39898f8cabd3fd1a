"""Build flywheel records from plain decision values (pure: no I/O).

Callers pass plain values (the workloads' decision types live elsewhere), so the
flywheel stays independent of how a decision was computed.

The record id (``response.id``) is deterministic: ``"fw-"`` + sha256 over the workload,
client, lead id, model and the input messages. Time and the decision itself are left
out on purpose: re-delivering or replaying the same input later (a Pub/Sub replay, a
retried run, live mode's wall clock) yields the same id, so sinks drop the repeat
instead of logging the decision twice. Different inputs or a different policy version
(``model``) give a different id.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from kpi_pipeline.core.canonical import canonical_json
from kpi_pipeline.core.flywheel.schema import (
    METADATA_MAX_VALUE_CHARS,
    TOP_LEVEL_KEYS,
    FlywheelRecord,
    validate_record,
)

RECORD_ID_PREFIX = "fw-"


def compute_record_id(
    *,
    workload_id: str,
    client_id: str,
    lead_id: str,
    model: str,
    messages: Sequence[Mapping[str, Any]],
) -> str:
    """The deterministic record id of a decision's inputs (see module docstring)."""
    inputs = {
        "client_id": client_id,
        "lead_id": lead_id,
        "messages": list(messages),
        "model": model,
        "workload_id": workload_id,
    }
    return RECORD_ID_PREFIX + hashlib.sha256(canonical_json(inputs).encode("utf-8")).hexdigest()


def _epoch_seconds(decided_at: datetime) -> int:
    if not isinstance(decided_at, datetime):
        raise TypeError(f"decided_at must be a datetime, got {type(decided_at).__name__}")
    if decided_at.tzinfo is None or decided_at.utcoffset() is None:
        raise ValueError(
            f"decided_at={decided_at.isoformat()} has no timezone; pass an aware datetime "
            "(e.g. datetime(..., tzinfo=timezone.utc)) so the epoch seconds are unambiguous"
        )
    return int(decided_at.timestamp() // 1)


def build_flywheel_record(
    *,
    workload_id: str,
    client_id: str,
    decided_at: datetime,
    model: str,
    messages: list[dict[str, Any]],
    decision: dict[str, Any],
    metadata: dict[str, str],
    usage: dict[str, int] | None = None,
) -> FlywheelRecord:
    """One validated flywheel record for a decision.

    ``model`` names the policy version (rule-based decisions) or the LLM; ``messages`` are
    the decision's inputs as chat messages; ``decision`` becomes the assistant message
    content as JSON with sorted keys; ``metadata`` must carry ``lead_id`` (plus policy
    version, rule, replay ids, decision id as strings). ``usage`` defaults to zero tokens,
    which is the truth for rule-based decisions; pass the LLM's usage for LLM calls.
    Raises ``FlywheelRecordError`` when the result would break the contract.
    """
    if "lead_id" not in metadata:
        raise ValueError(
            f"metadata for a {workload_id} record needs 'lead_id' (got keys {sorted(metadata)})"
        )
    created = _epoch_seconds(decided_at)
    tokens = usage or {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    record = {
        "timestamp": created,
        "workload_id": workload_id,
        "client_id": client_id,
        "request": {"model": model, "messages": messages, "metadata": dict(metadata)},
        "response": {
            "id": compute_record_id(
                workload_id=workload_id,
                client_id=client_id,
                lead_id=metadata["lead_id"],
                model=model,
                messages=messages,
            ),
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": canonical_json(decision)},
                    "finish_reason": "stop",
                }
            ],
            "usage": dict(tokens),
        },
    }
    return validate_record(record)


def record_id(record: Mapping[str, Any]) -> str:
    """The record's id (``response.id``); a clear error when the record has none."""
    response = record.get("response") if isinstance(record, Mapping) else None
    rid = response.get("id") if isinstance(response, Mapping) else None
    if not isinstance(rid, str) or not rid:
        raise ValueError(
            "flywheel record has no response.id; build records with "
            "kpi_pipeline.core.flywheel.records.build_flywheel_record so they carry a deterministic id"
        )
    return rid


def record_day(record: Mapping[str, Any]) -> str:
    """The record's UTC day (``YYYY-MM-DD``) from its epoch-seconds timestamp."""
    return datetime.fromtimestamp(int(record["timestamp"]), tz=UTC).strftime("%Y-%m-%d")


def sort_key(record: Mapping[str, Any]) -> tuple[int, str, str]:
    """Stable order for exports: time, then workload, then id."""
    return (int(record["timestamp"]), str(record["workload_id"]), record_id(record))


def join_replay_ids(replay_ids: Sequence[str]) -> str:
    """Replay ids as one metadata value (comma-separated), kept within the 512-character limit.

    When they do not fit, the first ones are kept and ``+N`` says how many were left out.
    """
    joined = ",".join(replay_ids)
    if len(joined) <= METADATA_MAX_VALUE_CHARS:
        return joined
    kept: list[str] = []
    for position, rid in enumerate(replay_ids):
        suffix = f",+{len(replay_ids) - position - 1}"
        if len(",".join([*kept, rid])) + len(suffix) > METADATA_MAX_VALUE_CHARS:
            break
        kept.append(rid)
    return ",".join(kept) + f",+{len(replay_ids) - len(kept)}"


def record_from_decision(decision: Any, *, client_id: str) -> dict[str, Any]:
    """``flywheel_record_from_decision`` as plain JSON-able data."""
    return flywheel_record_from_decision(decision, client_id=client_id).to_dict()


def flywheel_record_from_decision(decision: Any, *, client_id: str) -> FlywheelRecord:
    """A validated flywheel record from a stored decision (a ledger ``decisions`` row or the
    like); ``write_jsonl`` takes it as it is instead of validating it again.

    Accepts a complete flywheel record (returned validated as is), or a mapping / object
    with ``workload`` (or ``workload_id``), ``decided_at`` (aware datetime), ``model``,
    ``request`` (``{"messages": [...], "metadata": {...}}``) and ``response`` (the decision
    dict, or a full chat completion), plus optional ``lead_id``, ``policy_version``,
    ``rule_id``, ``replay_ids`` and ``id``, which fill the metadata keys not already set.
    """
    row = decision if isinstance(decision, Mapping) else _attributes(decision)
    if all(key in row for key in TOP_LEVEL_KEYS):
        return validate_record(dict(row))
    missing = [k for k in ("decided_at", "model", "request", "response") if row.get(k) is None]
    workload_id = row.get("workload_id") or row.get("workload")
    if missing or not workload_id:
        raise ValueError(
            f"decision {row.get('id', '<no id>')} cannot become a flywheel record: missing "
            f"{', '.join(missing + ([] if workload_id else ['workload']))}"
        )
    request, response = row["request"], row["response"]
    metadata = {str(k): _metadata_value(v) for k, v in (request.get("metadata") or {}).items()}
    extras = {
        "lead_id": row.get("lead_id"),
        "policy_version": row.get("policy_version"),
        "rule": row.get("rule_id"),
        "replay_ids": join_replay_ids(list(row["replay_ids"])) if row.get("replay_ids") else None,
        "decision_id": row.get("id"),
    }
    for key, value in extras.items():
        if value is not None and key not in metadata:
            metadata[key] = str(value)
    if isinstance(response, Mapping) and response.get("object") == "chat.completion":
        record = {
            "timestamp": _epoch_seconds(row["decided_at"]),
            "workload_id": workload_id,
            "client_id": client_id,
            "request": {"model": row["model"], **request, "metadata": metadata},
            "response": dict(response),
        }
        return validate_record(record)
    return build_flywheel_record(
        workload_id=workload_id,
        client_id=client_id,
        decided_at=row["decided_at"],
        model=row["model"],
        messages=list(request.get("messages") or []),
        decision=dict(response),
        metadata=metadata,
    )


def _metadata_value(value: Any) -> str:
    """Metadata values are strings: lists become comma-joined, other values canonical JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return join_replay_ids(list(value))
    return canonical_json(value)


def _attributes(value: Any) -> dict[str, Any]:
    names = (
        "id", "workload", "workload_id", "lead_id", "decided_at", "policy_version", "rule_id",
        "model", "request", "response", "replay_ids",
    )  # fmt: skip
    return {name: getattr(value, name) for name in names if hasattr(value, name)}
