"""The flywheel record contract (CONTRACTS.md §5)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kpi_pipeline.core.flywheel.schema import (
    EXAMPLES,
    TOP_LEVEL_KEYS,
    WORKLOAD_IDS,
    FlywheelRecordError,
    validate_record,
)


def _example(workload: str = "lead_route") -> dict[str, Any]:
    return copy.deepcopy(EXAMPLES[workload])


def _error(record: object) -> FlywheelRecordError:
    with pytest.raises(FlywheelRecordError) as caught:
        validate_record(record)
    return caught.value


@pytest.mark.parametrize("workload", WORKLOAD_IDS)
def test_every_workload_has_a_valid_example(workload: str) -> None:
    record = validate_record(EXAMPLES[workload])
    assert record.workload_id == workload
    assert tuple(record.to_dict()) == TOP_LEVEL_KEYS


def test_examples_cover_exactly_the_three_workloads() -> None:
    assert set(EXAMPLES) == set(WORKLOAD_IDS) == {"lead_route", "first_touch", "outreach_template"}


def test_extra_top_level_key_is_rejected_naming_record_and_fix() -> None:
    record = _example()
    record["policy_version"] = "2026-01"
    error = _error(record)
    assert error.record_id == record["response"]["id"]
    assert "policy_version: unexpected top-level key" in str(error)
    assert "request.metadata" in str(error)


DELETED = object()  # the key is removed from the record
# (test id, the key's path in the record, the value put there or DELETED, what the error says)
ONE_WRONG_FIELD = [
    ("missing_top_level_key_is_named", ("client_id",), DELETED, "client_id: Field required"),
    (
        "created_in_milliseconds_is_rejected",
        ("response", "created"),
        1767261600000,
        "response.created: 1767261600000 looks like epoch milliseconds",
    ),
    (
        "usage_total_must_add_up",
        ("response", "usage"),
        {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 8},
        "total_tokens must equal",
    ),
    (
        "metadata_needs_lead_id",
        ("request", "metadata", "lead_id"),
        DELETED,
        "metadata needs 'lead_id'",
    ),
    (
        "metadata_values_must_be_strings",
        ("request", "metadata", "replay_ids"),
        [4711],
        "request.metadata.replay_ids",
    ),
    (
        "unexpected_key_inside_request_is_rejected",
        ("request", "temprature"),
        0.2,
        "request.temprature: unexpected key",
    ),
]


@pytest.mark.parametrize(
    ("path", "value", "message"), [pytest.param(*row[1:], id=row[0]) for row in ONE_WRONG_FIELD]
)
def test_one_wrong_field_is_named(path: tuple[str, ...], value: object, message: str) -> None:
    record = _example()
    *parents, key = path
    holder = record
    for name in parents:
        holder = holder[name]
    if value is DELETED:
        del holder[key]
    else:
        holder[key] = value
    assert message in str(_error(record))


def test_unknown_workload_is_rejected_listing_the_allowed_ones() -> None:
    record = _example()
    record["workload_id"] = "outreach_template_recommendation"
    message = str(_error(record))
    assert (
        "'outreach_template_recommendation' is not one of lead_route, first_touch, outreach_template"
        in message
    )


@pytest.mark.parametrize("value", [1767261600000, 1767261600.5, "1767261600", True])
def test_timestamp_must_be_integer_epoch_seconds(value: object) -> None:
    record = _example()
    record["timestamp"] = value
    error = _error(record)
    assert error.problems and error.problems[0].startswith("timestamp:")
    if value == 1767261600000:
        assert "epoch milliseconds" in error.problems[0]


def test_messages_and_choices_must_not_be_empty() -> None:
    record = _example()
    record["request"]["messages"] = []
    record["response"]["choices"] = []
    message = str(_error(record))
    assert "request.messages" in message and "response.choices" in message


def test_response_must_be_a_chat_completion_with_assistant_message() -> None:
    record = _example()
    record["response"]["object"] = "text_completion"
    record["response"]["choices"][0]["message"]["role"] = "user"
    message = str(_error(record))
    assert "response.object" in message
    assert "response.choices.0.message.role" in message


def test_metadata_limits_of_stored_completions() -> None:
    too_many = _example()
    too_many["request"]["metadata"].update({f"k{i}": "v" for i in range(16)})
    assert "at most 16 are allowed" in str(_error(too_many))

    long_key = _example()
    long_key["request"]["metadata"]["k" * 65] = "v"
    assert "must be 1..64 characters" in str(_error(long_key))

    long_value = _example()
    long_value["request"]["metadata"]["rule"] = "r" * 513
    assert "at most 512 are allowed" in str(_error(long_value))

    at_limits = _example()
    at_limits["request"]["metadata"] = {
        "lead_id": "00Q1",
        **{f"{i:064d}": "v" * 512 for i in range(15)},
    }
    validate_record(at_limits)


def test_optional_request_fields_are_kept() -> None:
    record = _example()
    record["request"].update(
        {"temperature": 0.2, "max_tokens": 64, "tools": [{"type": "function"}]}
    )
    dumped = validate_record(record).to_dict()
    assert dumped["request"]["temperature"] == 0.2
    assert dumped["request"]["max_tokens"] == 64


def test_not_a_dict_is_named() -> None:
    error = _error(["not", "a", "record"])
    assert error.record_id == "<not a dict: list>"
    assert "must be a JSON object" in str(error)


def test_error_without_response_id_says_so() -> None:
    record = _example()
    del record["response"]["id"]
    error = _error(record)
    assert error.record_id == "<without response.id>"
    assert "response.id: Field required" in str(error)
