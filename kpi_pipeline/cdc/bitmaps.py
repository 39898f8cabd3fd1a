"""CDC header field bitmaps (pure): ``changedFields``/``nulledFields``/``diffFields``.

Algorithm of reference §4 "Bitmap decoding", shared by the three Salesforce sample decoders:

* ``"0x<HEX>"``: HEX is an unsigned integer v; top-level schema field *i* (0-based over
  ``schema.fields``, ChangeEventHeader at index 0) is flagged when ``(v >> i) & 1``.
* ``"<P>-0x<HEX>"``: same rule over the fields of the *record branch* of field P's union,
  emitting ``Parent.Child``.

Each element is handled on its own (never assuming element 0 is the top-level one).
Encoding emits uppercase hex in whole bytes, as the real bus does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


class BitmapError(ValueError):
    """A bitmap element or field name does not match the schema."""


@dataclass(frozen=True, slots=True)
class FieldLayout:
    """Field names of a parsed ``<Object>ChangeEvent`` schema, in bitmap order."""

    names: tuple[str, ...]
    # top-level index -> child names of its record branch (compound fields only)
    compounds: Mapping[int, tuple[str, ...]]
    positions: Mapping[str, int]

    @classmethod
    def from_schema(cls, schema: Mapping[str, Any]) -> FieldLayout:
        """Layout of an Avro record schema given as parsed JSON (a dict)."""
        try:
            fields = schema["fields"]
        except (KeyError, TypeError) as exc:
            raise BitmapError("schema must be an Avro record (a dict with 'fields')") from exc
        names = tuple(f["name"] for f in fields)
        compounds: dict[int, tuple[str, ...]] = {}
        for index, f in enumerate(fields):
            record = _record_branch(f["type"])
            if record is not None and index > 0:  # index 0 is the header, not a compound
                compounds[index] = tuple(child["name"] for child in record["fields"])
        positions = {name: index for index, name in enumerate(names)}
        return cls(names=names, compounds=compounds, positions=positions)

    def index_of(self, name: str) -> int:
        try:
            return self.positions[name]
        except KeyError:
            raise BitmapError(f"field {name!r} is not in the schema") from None


def _record_branch(avro_type: Any) -> Mapping[str, Any] | None:
    """The record type inside a field type or union (null/string branches are skipped)."""
    branches = avro_type if isinstance(avro_type, list) else [avro_type]
    for branch in branches:
        if isinstance(branch, dict) and branch.get("type") == "record":
            return branch
    return None


def _flagged(hex_text: str, names: Sequence[str], element: str) -> list[str]:
    if not hex_text.lower().startswith("0x"):
        raise BitmapError(
            f"bitmap element {element!r} must look like '0x<HEX>' or '<index>-0x<HEX>'"
        )
    try:
        value = int(hex_text[2:], 16)
    except ValueError:
        raise BitmapError(f"bitmap element {element!r} has invalid hex digits") from None
    if value >> len(names):
        raise BitmapError(
            f"bitmap element {element!r} flags bit {value.bit_length() - 1} but the schema has "
            f"only {len(names)} fields there; decode with the event's own writer schema"
        )
    out = []
    index = 0
    while value:
        if value & 1:
            out.append(names[index])
        value >>= 1
        index += 1
    return out


def decode_bitmap(elements: Iterable[str], layout: FieldLayout) -> tuple[str, ...]:
    """Field names flagged by a header bitmap array (compound children as ``Parent.Child``)."""
    out: list[str] = []
    for element in elements:
        if "-" not in element:
            out.extend(_flagged(element, layout.names, element))
            continue
        parent_text, hex_text = element.split("-", 1)
        try:
            parent = int(parent_text)
        except ValueError:
            raise BitmapError(
                f"bitmap element {element!r} has a non-decimal parent index"
            ) from None
        children = layout.compounds.get(parent)
        if children is None:
            raise BitmapError(
                f"bitmap element {element!r} points at field index {parent}, which is not a "
                "compound (record) field of this schema"
            )
        parent_name = layout.names[parent]
        out.extend(f"{parent_name}.{child}" for child in _flagged(hex_text, children, element))
    return tuple(out)


def _hex_bytes(value: int) -> str:
    """Uppercase hex in whole bytes (``0x10``, ``0x650004E0``)."""
    digits = f"{value:X}"
    if len(digits) % 2:
        digits = "0" + digits
    return "0x" + digits


def encode_bitmap(names: Iterable[str], layout: FieldLayout) -> list[str]:
    """Inverse of ``decode_bitmap``: top-level element first (if any), then ``P-0x..`` by index.

    A bare compound name (``Address``) flags every child, as Salesforce reports compound
    changes only through their children.
    """
    top = 0
    children: dict[int, int] = {}
    for name in names:
        parent_name, _, child = name.partition(".")
        index = layout.index_of(parent_name)
        compound = layout.compounds.get(index)
        if compound is None:
            if child:
                raise BitmapError(f"field {name!r}: {parent_name!r} is not a compound field")
            top |= 1 << index
            continue
        if child:
            if child not in compound:
                raise BitmapError(f"field {name!r}: {parent_name!r} has no child {child!r}")
            children[index] = children.get(index, 0) | (1 << compound.index(child))
        else:
            children[index] = children.get(index, 0) | ((1 << len(compound)) - 1)
    out = [_hex_bytes(top)] if top else []
    out.extend(f"{index}-{_hex_bytes(bits)}" for index, bits in sorted(children.items()))
    return out
