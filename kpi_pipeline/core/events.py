"""The core change-event model (pure: no Dagster, no I/O).

One ``ChangeEvent`` is one CDC message as Salesforce delivers it: a header and the
changed fields of one entity type, possibly for several record ids. Events come from
two places and meet here:

* the Pub/Sub API (Avro payloads, decoded by ``kpi_pipeline.adapters.pubsub.decode``), and
* recorded JSON Lines in the shape of CONTRACTS.md §2 (fixtures, ``kpi-pipeline replay``).

Replay ids are opaque bytes of any length on the wire, and stay so everywhere here (cursor,
ledger, run keys, display). The recorded format writes an 8-byte id as an integer (what
Salesforce's JSON delivery does: the big-endian reading of the same bytes) and an id of any
other length as a base64 string, so nothing is lost or padded; ``replay_id_from_int`` /
``replay_id_to_int`` convert between 8-byte ids and integers.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

# In the order of the Avro enum symbols of ChangeEventHeader.changeType.
CHANGE_TYPE_SYMBOLS = (
    "CREATE",
    "UPDATE",
    "DELETE",
    "UNDELETE",
    "GAP_CREATE",
    "GAP_UPDATE",
    "GAP_DELETE",
    "GAP_UNDELETE",
    "GAP_OVERFLOW",
    "SNAPSHOT",
)
CHANGE_TYPES = frozenset(CHANGE_TYPE_SYMBOLS)
OVERFLOW_RECORD_ID = "000000000000000AAA"


class EventFormatError(ValueError):
    """A recorded or decoded event does not have the shape of CONTRACTS.md §2."""


# --- replay ids ----------------------------------------------------------------------


REPLAY_ID_INT_BYTES = 8  # the only length whose recorded form is an integer


def replay_id_from_int(value: int, length: int = REPLAY_ID_INT_BYTES) -> bytes:
    """The big-endian form of ``value`` in ``length`` bytes (8: what the recorded integer
    form and the sandbox's default ids mean)."""
    if value < 0:
        raise EventFormatError(f"replay id {value} is negative; replay ids are unsigned")
    try:
        return value.to_bytes(length, "big")
    except OverflowError:
        raise EventFormatError(
            f"replay id {value} does not fit in {length} bytes; write a longer id as base64"
        ) from None


def replay_id_to_int(replay_id: bytes) -> int:
    """Big-endian integer reading of a replay id (any length), for display and the sandbox's
    own ordering only: real replay ids are opaque."""
    return int.from_bytes(replay_id, "big")


def replay_id_to_recorded(replay_id: bytes) -> int | str:
    """The recorded-JSON form: an integer for an 8-byte id, base64 text for any other."""
    if len(replay_id) == REPLAY_ID_INT_BYTES:
        return replay_id_to_int(replay_id)
    return replay_id_to_b64(replay_id)


def replay_id_to_b64(replay_id: bytes) -> str:
    return base64.b64encode(replay_id).decode("ascii")


def replay_id_from_b64(text: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError) as exc:
        raise EventFormatError(f"replay id {text!r} is not valid base64") from exc


def replay_id_hex(replay_id: bytes) -> str:
    """Stable, key-safe text form ([0-9a-f]) used in run keys and database keys."""
    return replay_id.hex()


# --- time ----------------------------------------------------------------------------


def parse_sf_datetime(value: Any) -> datetime | None:
    """A Salesforce DateTime as an aware UTC datetime.

    Accepts epoch milliseconds (int/float, as Avro delivers them), ISO-8601 strings with
    ``Z``, ``+00:00`` or ``+0000`` offsets (as REST and JSON delivery do), or None.
    """
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, bool):
        raise EventFormatError(f"DateTime value {value!r} is a boolean")
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value / 1000.0, tz=UTC)
    if isinstance(value, str):
        text = value.strip()
        if text.endswith("Z"):
            text = text[:-1] + "+00:00"
        elif len(text) > 5 and text[-5] in "+-" and text[-4:].isdigit() and ":" not in text[-5:]:
            text = f"{text[:-2]}:{text[-2:]}"  # +0000 -> +00:00
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError as exc:
            raise EventFormatError(
                f"DateTime value {value!r} is neither ISO-8601 nor epoch milliseconds"
            ) from exc
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    raise EventFormatError(f"DateTime value {value!r} has unsupported type {type(value).__name__}")


def format_sf_datetime(value: datetime | None) -> str:
    """ISO-8601 UTC with milliseconds and ``Z`` (what Salesforce REST accepts); '' for None."""
    if value is None:
        return ""
    utc = value.astimezone(UTC)
    if utc.year < 1000:  # strftime's %Y does not pad these; isoformat would
        return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"
    # The same text as the strftime above, at a third of its cost (outputs format many).
    return utc.replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


def to_epoch_ms(value: datetime) -> int:
    return round(value.timestamp() * 1000)


# --- the model -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChangeEventHeader:
    entity_name: str
    record_ids: tuple[str, ...]
    change_type: str
    change_origin: str = ""
    transaction_key: str = ""
    sequence_number: int = 0
    commit_timestamp: int = 0  # epoch milliseconds
    commit_number: int = 0
    commit_user: str = ""
    nulled_fields: tuple[str, ...] = ()
    diff_fields: tuple[str, ...] = ()
    changed_fields: tuple[str, ...] = ()

    @property
    def commit_time(self) -> datetime:
        return datetime.fromtimestamp(self.commit_timestamp / 1000.0, tz=UTC)

    def to_recorded(self) -> dict[str, Any]:
        return {
            "entityName": self.entity_name,
            "recordIds": list(self.record_ids),
            "changeType": self.change_type,
            "changeOrigin": self.change_origin,
            "transactionKey": self.transaction_key,
            "sequenceNumber": self.sequence_number,
            "commitTimestamp": self.commit_timestamp,
            "commitNumber": self.commit_number,
            "commitUser": self.commit_user,
            "nulledFields": list(self.nulled_fields),
            "diffFields": list(self.diff_fields),
            "changedFields": list(self.changed_fields),
        }

    @classmethod
    def from_recorded(cls, header: Mapping[str, Any]) -> ChangeEventHeader:
        """Build from the JSON header of §4.1 (field lists already decoded to names)."""
        try:
            entity = header["entityName"]
            record_ids = header["recordIds"]
            change_type = header["changeType"]
        except KeyError as exc:
            raise EventFormatError(
                f"ChangeEventHeader lacks {exc.args[0]!r}; it needs entityName, recordIds and changeType"
            ) from exc
        if not isinstance(record_ids, list | tuple) or not all(
            isinstance(r, str) for r in record_ids
        ):
            raise EventFormatError(
                f"ChangeEventHeader.recordIds must be a list of ids, got {record_ids!r}"
            )
        commit = header.get("commitTimestamp") or 0
        if isinstance(commit, str):
            parsed = parse_sf_datetime(commit)
            commit = to_epoch_ms(parsed) if parsed else 0
        return cls(
            entity_name=str(entity),
            record_ids=tuple(record_ids),
            change_type=str(change_type),
            change_origin=header.get("changeOrigin") or "",
            transaction_key=header.get("transactionKey") or "",
            sequence_number=int(header.get("sequenceNumber") or 0),
            commit_timestamp=int(commit),
            commit_number=int(header.get("commitNumber") or 0),
            commit_user=header.get("commitUser") or "",
            nulled_fields=tuple(header.get("nulledFields") or ()),
            diff_fields=tuple(header.get("diffFields") or ()),
            changed_fields=tuple(header.get("changedFields") or ()),
        )


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    """One CDC message. ``fields`` holds the payload fields the event says something about:

    every non-null body field, plus an explicit ``None`` for each field in ``nulledFields``
    (on UPDATE, absence means "unchanged", ``None`` means "set to null").
    """

    channel: str
    replay_id: bytes
    header: ChangeEventHeader
    fields: Mapping[str, Any] = field(default_factory=dict)
    schema_id: str = ""
    event_id: str = ""

    # -- convenience -------------------------------------------------------------------
    @property
    def entity(self) -> str:
        return self.header.entity_name

    @property
    def change_type(self) -> str:
        return self.header.change_type

    @property
    def record_ids(self) -> tuple[str, ...]:
        return self.header.record_ids

    @property
    def commit_time(self) -> datetime:
        return self.header.commit_time

    @property
    def is_gap(self) -> bool:
        return self.change_type.startswith("GAP_")

    @property
    def is_overflow(self) -> bool:
        return self.change_type == "GAP_OVERFLOW"

    @property
    def replay_int(self) -> int:
        return replay_id_to_int(self.replay_id)

    def datetime_field(self, name: str) -> datetime | None:
        return parse_sf_datetime(self.fields.get(name))

    def origin_client(self) -> str | None:
        """The ``client=`` part of changeOrigin, used to recognise echoes of our own writes."""
        origin = self.header.change_origin
        marker = "client="
        if marker not in origin:
            return None
        return origin.split(marker, 1)[1].split(";", 1)[0] or None

    # -- recorded JSON (CONTRACTS.md §2) --------------------------------------------------
    def to_recorded(self) -> dict[str, Any]:
        payload: dict[str, Any] = {"ChangeEventHeader": self.header.to_recorded()}
        payload.update(self.fields)
        return {
            "channel": self.channel,
            "data": {
                "schema": self.schema_id,
                "event": {"replayId": replay_id_to_recorded(self.replay_id)},
                "payload": payload,
            },
        }

    @classmethod
    def from_recorded(cls, message: Mapping[str, Any]) -> ChangeEvent:
        try:
            channel = message["channel"]
            data = message["data"]
            payload = dict(data["payload"])
            header = payload.pop("ChangeEventHeader")
            replay = data["event"]["replayId"]
        except (KeyError, TypeError) as exc:
            raise EventFormatError(
                "recorded event must look like {'channel': ..., 'data': {'schema': ..., "
                f"'event': {{'replayId': N}}, 'payload': {{'ChangeEventHeader': ...}}}}; missing {exc}"
            ) from exc
        if isinstance(replay, str):
            # Digits are an integer in text form; anything else is base64 (an id whose length
            # is not 8, written by replay_id_to_recorded).
            replay_bytes = (
                replay_id_from_int(int(replay)) if replay.isdigit() else replay_id_from_b64(replay)
            )
        elif isinstance(replay, int) and not isinstance(replay, bool):
            replay_bytes = replay_id_from_int(replay)
        else:
            raise EventFormatError(
                f"replayId {replay!r} must be an integer (8-byte id) or base64 text (any length)"
            )
        if not replay_bytes:
            raise EventFormatError("replayId is empty; a delivered event always has one")
        parsed_header = ChangeEventHeader.from_recorded(header)
        fields = {k: v for k, v in payload.items() if v is not None}
        for nulled in parsed_header.nulled_fields:
            fields.setdefault(nulled, None)
        return cls(
            channel=str(channel),
            replay_id=replay_bytes,
            header=parsed_header,
            fields=fields,
            schema_id=str(data.get("schema") or ""),
            event_id=str(data["event"].get("EventUuid") or ""),
        )


def read_recorded_lines(lines: Iterable[str], *, source: str = "<input>") -> Iterator[ChangeEvent]:
    """Parse JSON Lines of recorded events; errors name the source and line number.

    Lines are parsed with orjson (three times the standard library's speed: a replay parses
    every line of its input); its ``JSONDecodeError`` is the standard library's subclass."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield ChangeEvent.from_recorded(orjson.loads(line))
        except (json.JSONDecodeError, EventFormatError) as exc:
            raise EventFormatError(f"{source}:{number}: {exc}") from exc
