"""The flywheel log record contract (CONTRACTS.md §5).

One record per workload decision, in the public data-flywheel log convention: top-level
exactly ``timestamp`` (int epoch **seconds**), ``workload_id``, ``client_id``, ``request``
(an OpenAI ``chat.completions.create`` payload) and ``response`` (a ``ChatCompletion``).
The Elasticsearch index maps the top level ``dynamic: strict``, so any other top-level
key would make the insert fail; context (lead id, policy version, rule, replay ids)
travels in ``request.metadata``, limited as OpenAI stored completions limit it
(at most 16 string pairs, keys ≤ 64 characters, values ≤ 512).

Pure: no I/O.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

WorkloadId = Literal["lead_route", "first_touch", "outreach_template"]
WORKLOAD_IDS: tuple[str, ...] = ("lead_route", "first_touch", "outreach_template")
TOP_LEVEL_KEYS: tuple[str, ...] = ("timestamp", "workload_id", "client_id", "request", "response")

METADATA_MAX_KEYS = 16
METADATA_MAX_KEY_CHARS = 64
METADATA_MAX_VALUE_CHARS = 512
# Epoch seconds of 5138-11-16: anything larger is almost surely epoch milliseconds.
_MAX_EPOCH_SECONDS = 100_000_000_000


class FlywheelRecordError(ValueError):
    """A record breaks the contract; the message names the record id, the field and the fix."""

    def __init__(self, record_id: str, problems: list[str]) -> None:
        self.record_id = record_id
        self.problems = problems
        super().__init__(f"flywheel record {record_id} is invalid: " + "; ".join(problems))


def _check_epoch_seconds(value: int) -> int:
    if value >= _MAX_EPOCH_SECONDS:
        raise ValueError(
            f"{value} looks like epoch milliseconds; the contract wants epoch seconds "
            "(divide by 1000)"
        )
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ChatMessage(_Strict):
    """A chat-completions message. ``content`` may be null only beside ``tool_calls``."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _content_or_tool_calls(self) -> ChatMessage:
        if self.content is None and not self.tool_calls:
            raise ValueError("a message needs 'content' (a string) unless it carries 'tool_calls'")
        return self


class AssistantMessage(ChatMessage):
    role: Literal["assistant"] = "assistant"


def _check_metadata(metadata: dict[str, str]) -> dict[str, str]:
    if len(metadata) > METADATA_MAX_KEYS:
        raise ValueError(
            f"has {len(metadata)} keys, at most {METADATA_MAX_KEYS} are allowed: "
            "drop or merge keys (e.g. join replay ids into one value)"
        )
    for key, value in metadata.items():
        if not key or len(key) > METADATA_MAX_KEY_CHARS:
            raise ValueError(f"key {key[:80]!r} must be 1..{METADATA_MAX_KEY_CHARS} characters")
        if len(value) > METADATA_MAX_VALUE_CHARS:
            raise ValueError(
                f"value of {key!r} has {len(value)} characters, at most "
                f"{METADATA_MAX_VALUE_CHARS} are allowed: shorten it"
            )
    if "lead_id" not in metadata:
        raise ValueError("needs 'lead_id' (the Salesforce Lead id the decision is about)")
    return metadata


class ChatRequest(_Strict):
    """The exact ``chat.completions.create`` payload (the decision's input)."""

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float | None = Field(None, ge=0, le=2)
    max_tokens: int | None = Field(None, ge=1)
    tools: list[dict[str, Any]] | None = None
    store: bool | None = None
    metadata: dict[str, str]

    @model_validator(mode="after")
    def _metadata_limits(self) -> ChatRequest:
        try:
            _check_metadata(self.metadata)
        except ValueError as exc:
            raise ValueError(f"metadata {exc}") from None
        return self


class Choice(_Strict):
    index: int = Field(ge=0)
    message: AssistantMessage
    finish_reason: Literal["stop", "length", "tool_calls", "content_filter", "function_call"]
    logprobs: dict[str, Any] | None = None


class Usage(_Strict):
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    total_tokens: int = Field(ge=0)

    @model_validator(mode="after")
    def _total_is_sum(self) -> Usage:
        if self.total_tokens != self.prompt_tokens + self.completion_tokens:
            raise ValueError("total_tokens must equal prompt_tokens + completion_tokens")
        return self


class ChatCompletion(_Strict):
    """The exact ``ChatCompletion`` (the decision as the assistant message)."""

    id: str = Field(min_length=1)
    object: Literal["chat.completion"]
    created: StrictInt = Field(ge=0)
    model: str = Field(min_length=1, description="The policy version or the LLM that decided.")
    choices: list[Choice] = Field(min_length=1)
    usage: Usage
    system_fingerprint: str | None = None

    _created_in_seconds = field_validator("created")(_check_epoch_seconds)


class FlywheelRecord(_Strict):
    """One flywheel log record: exactly the five top-level keys of the convention."""

    timestamp: StrictInt = Field(
        ge=0, description="When the decision was requested, epoch seconds."
    )
    workload_id: WorkloadId
    client_id: str = Field(min_length=1)
    request: ChatRequest
    response: ChatCompletion

    _timestamp_in_seconds = field_validator("timestamp")(_check_epoch_seconds)

    def to_dict(self) -> dict[str, Any]:
        """The record as plain JSON-able data, optional fields that are unset left out."""
        return self.model_dump(mode="json", exclude_none=True)


def describe_record(record: object) -> str:
    """The record's id for error messages, whatever shape it is in."""
    if isinstance(record, dict):
        response = record.get("response")
        if isinstance(response, dict) and isinstance(response.get("id"), str) and response["id"]:
            return response["id"]
        return "<without response.id>"
    return f"<not a dict: {type(record).__name__}>"


def _format_error(error: dict[str, Any]) -> str:
    location = ".".join(str(part) for part in error["loc"]) or "<record>"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        if len(error["loc"]) == 1:
            return (
                f"{location}: unexpected top-level key; the top level is exactly "
                f"{', '.join(TOP_LEVEL_KEYS)} (put extra context in request.metadata)"
            )
        return f"{location}: unexpected key (not part of the chat-completions shape)"
    if error["type"] == "literal_error" and error["loc"] == ("workload_id",):
        return f"workload_id: {error['input']!r} is not one of {', '.join(WORKLOAD_IDS)}"
    if error["type"] == "int_type" and location in ("timestamp", "response.created"):
        return f"{location}: must be an integer of epoch seconds, got {error['input']!r}"
    return f"{location}: {message}"


def validate_record(record: object) -> FlywheelRecord:
    """Parse ``record`` against the contract, or raise ``FlywheelRecordError`` naming the fields."""
    record_id = describe_record(record)
    if not isinstance(record, dict):
        raise FlywheelRecordError(record_id, ["a flywheel record must be a JSON object (dict)"])
    try:
        return FlywheelRecord.model_validate(record)
    except ValidationError as exc:
        raise FlywheelRecordError(record_id, [_format_error(err) for err in exc.errors()]) from None


# Every example decides about the same lead under the same routing policy.
_EXAMPLE_METADATA = {"lead_id": "00Q000000000001AAA", "policy_version": "2026-01"}


def _example(
    workload_id: str, record_id: str, system: str, user: str, decision: str, model: str, **meta: str
) -> dict[str, Any]:
    return {
        "timestamp": 1767261600,
        "workload_id": workload_id,
        "client_id": "kpi_pipeline",
        "request": {
            "model": model,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
            "metadata": {**_EXAMPLE_METADATA, **meta},
        },
        "response": {
            "id": record_id,
            "object": "chat.completion",
            "created": 1767261600,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": decision},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        },
    }


EXAMPLES: dict[str, dict[str, Any]] = {
    example["workload_id"]: example
    for example in (
        _example(
            "lead_route",
            "fw-" + "1" * 64,
            "Route the lead to an owner with routing policy 2026-01.",
            '{"Country":"DE","Id":"00Q000000000001AAA","LeadSource":"Web"}',
            '{"owner_id":"005000000000001AAA","pool_id":"emea","rule_id":"emea-web"}',
            "policy:2026-01",
            rule="emea-web",
            replay_ids="4711",
        ),
        _example(
            "first_touch",
            "fw-" + "2" * 64,
            "Decide the lead's first qualifying response (CONTRACTS.md §4).",
            '{"candidates":[{"at":"2026-01-01T10:05:00Z","record_id":"02s000000000001AAA",'
            '"source":"EmailMessage"}],"lead_created_at":"2026-01-01T10:00:00Z"}',
            '{"at":"2026-01-01T10:05:00Z","minutes":5.0,"source":"EmailMessage",'
            '"user_id":"005000000000001AAA"}',
            "policy:2026-01",
            replay_ids="4712,4713",
        ),
        _example(
            "outreach_template",
            "fw-" + "3" * 64,
            "Pick the best outreach template id from the catalog for this lead.",
            '{"catalog":["welcome-de","welcome-en"],"lead":{"Country":"DE","Industry":"Retail"}}',
            '{"template_id":"welcome-de"}',
            "gpt-4o-mini",
            candidates="welcome-de,welcome-en",
        ),
    )
}
