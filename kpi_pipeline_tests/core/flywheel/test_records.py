"""Record builders: deterministic ids, decision serialisation, ledger rows."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from kpi_pipeline.core.flywheel.records import (
    build_flywheel_record,
    join_replay_ids,
    record_from_decision,
    record_id,
)
from kpi_pipeline.core.flywheel.schema import FlywheelRecordError, validate_record
from kpi_pipeline.core.ledger_rows import DecisionRow

AT = datetime(2026, 3, 2, 9, 30, 15, 750000, tzinfo=UTC)
MESSAGES = [{"role": "user", "content": '{"Id":"00Q1","Country":"DE"}'}]


def _build(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "workload_id": "lead_route",
        "client_id": "kpi_pipeline",
        "decided_at": AT,
        "model": "policy:2026-03",
        "messages": MESSAGES,
        "decision": {"rule_id": "emea", "owner_id": "005A"},
        "metadata": {"lead_id": "00Q1", "policy_version": "2026-03", "rule": "emea"},
    }
    values.update(overrides)
    return build_flywheel_record(**values).to_dict()


def test_built_record_validates_and_has_the_contract_shape() -> None:
    record = _build()
    validate_record(record)
    assert record["timestamp"] == int(AT.timestamp()) == record["response"]["created"]
    assert record["response"]["model"] == record["request"]["model"] == "policy:2026-03"
    assert record["request"]["metadata"]["lead_id"] == "00Q1"
    assert record["response"]["usage"] == {
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "total_tokens": 0,
    }


def test_decision_is_assistant_content_as_sorted_json() -> None:
    content = _build()["response"]["choices"][0]["message"]["content"]
    assert content == '{"owner_id":"005A","rule_id":"emea"}'
    assert json.loads(content) == {"rule_id": "emea", "owner_id": "005A"}


def test_id_is_deterministic_and_ignores_time_and_output() -> None:
    first = _build()
    later = _build(decided_at=AT + timedelta(days=1), decision={"owner_id": "005B"})
    assert record_id(first) == record_id(later)
    assert record_id(first).startswith("fw-") and len(record_id(first)) == 3 + 64


@pytest.mark.parametrize(
    "change",
    [
        {"workload_id": "first_touch"},
        {"client_id": "other-deployment"},
        {"model": "policy:2026-04"},
        {"messages": [{"role": "user", "content": '{"Id":"00Q1","Country":"FR"}'}]},
        {"metadata": {"lead_id": "00Q2"}},
    ],
)
def test_id_changes_with_each_input(change: dict[str, Any]) -> None:
    assert record_id(_build(**change)) != record_id(_build())


def test_id_does_not_depend_on_dict_key_order() -> None:
    reordered = [{"content": MESSAGES[0]["content"], "role": "user"}]
    assert record_id(_build(messages=reordered)) == record_id(_build())


def test_timestamp_is_epoch_seconds_of_any_timezone() -> None:
    local = AT.astimezone(timezone(timedelta(hours=-5)))
    assert _build(decided_at=local)["timestamp"] == _build()["timestamp"] == 1772443815


def test_naive_datetime_is_refused_with_the_fix() -> None:
    with pytest.raises(ValueError, match="has no timezone; pass an aware datetime"):
        _build(decided_at=datetime(2026, 3, 2, 9, 30))


def test_metadata_without_lead_id_is_refused() -> None:
    with pytest.raises(ValueError, match="needs 'lead_id'"):
        _build(metadata={"policy_version": "2026-03"})


def test_contract_violations_surface_as_record_errors() -> None:
    with pytest.raises(FlywheelRecordError, match="workload_id: 'routing' is not one of"):
        _build(workload_id="routing")
    with pytest.raises(FlywheelRecordError, match=r"request\.messages"):
        _build(messages=[])


def test_llm_usage_is_kept() -> None:
    usage = {"prompt_tokens": 120, "completion_tokens": 8, "total_tokens": 128}
    assert _build(model="gpt-4o-mini", usage=usage)["response"]["usage"] == usage


def test_record_id_of_a_record_without_one_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"has no response\.id; build records with"):
        record_id({"response": {}})


def test_replay_ids_fit_the_metadata_limit() -> None:
    assert join_replay_ids(["00a1", "00a2"]) == "00a1,00a2"
    many = [f"{i:016x}" for i in range(100)]
    joined = join_replay_ids(many)
    assert len(joined) <= 512
    kept, more = joined.rsplit(",+", 1)
    assert kept.split(",") == many[: len(kept.split(","))]
    assert int(more) == 100 - len(kept.split(","))


def _row(**overrides: Any) -> DecisionRow:
    values: dict[str, Any] = {
        "id": "dec-1",
        "workload": "lead_route",
        "lead_id": "00Q1",
        "decided_at": AT,
        "policy_version": "2026-03",
        "rule_id": "emea",
        "model": "policy:2026-03",
        "request": {"messages": MESSAGES, "metadata": {"lead_id": "00Q1"}},
        "response": {"owner_id": "005A", "rule_id": "emea"},
        "replay_ids": ["00000000000000a1", "00000000000000a2"],
    }
    values.update(overrides)
    return DecisionRow(**values)


def test_decision_row_becomes_the_same_record_as_build_flywheel_record() -> None:
    record = record_from_decision(_row(), client_id="kpi_pipeline")
    assert record_id(record) == record_id(_build())
    assert record["request"]["metadata"] == {
        "lead_id": "00Q1",
        "policy_version": "2026-03",
        "rule": "emea",
        "replay_ids": "00000000000000a1,00000000000000a2",
        "decision_id": "dec-1",
    }
    assert json.loads(record["response"]["choices"][0]["message"]["content"]) == _row().response


def test_decision_row_with_a_chat_completion_response_is_kept_as_is() -> None:
    completion = _build(model="gpt-4o-mini")["response"]
    record = record_from_decision(_row(model="gpt-4o-mini", response=completion), client_id="c")
    assert record["response"] == completion
    assert record["request"]["metadata"]["decision_id"] == "dec-1"


def test_complete_record_passes_through() -> None:
    record = _build()
    assert record_from_decision(record, client_id="ignored") == record


def test_decision_row_missing_fields_is_named() -> None:
    with pytest.raises(
        ValueError, match="decision dec-1 cannot become a flywheel record: missing model"
    ):
        record_from_decision(
            {
                "id": "dec-1",
                "workload": "lead_route",
                "decided_at": AT,
                "request": {},
                "response": {},
            },
            client_id="c",
        )
