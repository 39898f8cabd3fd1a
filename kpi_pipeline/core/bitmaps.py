"""CDC header field bitmaps (pure): ``changedFields``/``nulledFields``/``diffFields``.

Algorithm shared by the three Salesforce sample decoders:

* ``"0x<HEX>"``: HEX is an unsigned integer v; top-level schema field *i* (0-based over
  ``schema.fields``, ChangeEventHeader at index 0) is flagged when ``(v >> i) & 1``.
* ``"<P>-0x<HEX>"``: same rule over the fields of the *record branch* of field P's union,
  emitting ``Parent.Child``. That record may be a reference by name to a record defined
  earlier in the schema (Avro forbids defining a name twice, so Account's ShippingAddress
  refers to the ``Address`` its BillingAddress defined).

Each element is handled on its own (never assuming element 0 is the top-level one). Like
the reference decoders, decoding is lenient: bits beyond the fields there are ignored, and an
element that maps to nothing in the schema (a parent that is not a compound, malformed text)
is skipped and reported through ``on_skip`` instead of failing the event. Encoding emits
uppercase hex in whole bytes, as the real bus does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
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
        named = _named_records(schema, schema.get("namespace"))
        names = tuple(f["name"] for f in fields)
        compounds: dict[int, tuple[str, ...]] = {}
        for index, f in enumerate(fields):
            record = _record_branch(f["type"], named, schema.get("namespace"))
            if record is not None and index > 0:  # index 0 is the header, not a compound
                compounds[index] = tuple(child["name"] for child in record["fields"])
        positions = {name: index for index, name in enumerate(names)}
        return cls(names=names, compounds=compounds, positions=positions)

    def index_of(self, name: str) -> int:
        try:
            return self.positions[name]
        except KeyError:
            raise BitmapError(f"field {name!r} is not in the schema") from None


def _full_name(name: str, namespace: str | None) -> str:
    return name if "." in name or not namespace else f"{namespace}.{name}"


def _named_records(node: Any, namespace: str | None) -> dict[str, Mapping[str, Any]]:
    """Every record defined anywhere in ``node``, by full name and by short name."""
    out: dict[str, Mapping[str, Any]] = {}
    if isinstance(node, list):
        for branch in node:
            out.update(_named_records(branch, namespace))
    elif isinstance(node, Mapping):
        kind = node.get("type")
        if kind == "record" and isinstance(node.get("name"), str):
            namespace = node.get("namespace", namespace)
            out[_full_name(node["name"], namespace)] = node
            out.setdefault(node["name"].rsplit(".", 1)[-1], node)
            for field in node.get("fields") or ():
                out.update(_named_records(field.get("type"), namespace))
        elif kind in ("array", "map"):
            out.update(_named_records(node.get("items") or node.get("values"), namespace))
        elif isinstance(kind, list | Mapping):
            out.update(_named_records(kind, namespace))
    return out


def _record_branch(
    avro_type: Any, named: Mapping[str, Mapping[str, Any]], namespace: str | None
) -> Mapping[str, Any] | None:
    """The record type inside a field type or union, following references by name
    (null/string branches are skipped)."""
    branches = avro_type if isinstance(avro_type, list) else [avro_type]
    for branch in branches:
        if isinstance(branch, Mapping) and branch.get("type") == "record":
            return branch
        if isinstance(branch, str):
            record = named.get(_full_name(branch, namespace)) or named.get(branch)
            if record is not None:
                return record
    return None


SkipHandler = Callable[[str, str], None]  # (element, reason)


def _flagged(hex_text: str, names: Sequence[str]) -> list[str]:
    """Names flagged by ``0x<HEX>``; bits beyond ``names`` are ignored (reference decoders)."""
    if not hex_text.lower().startswith("0x"):
        raise BitmapError("must look like '0x<HEX>' or '<index>-0x<HEX>'")
    try:
        value = int(hex_text[2:], 16)
    except ValueError:
        raise BitmapError("has invalid hex digits") from None
    return [name for index, name in enumerate(names) if (value >> index) & 1]


def decode_bitmap(
    elements: Iterable[str], layout: FieldLayout, *, on_skip: SkipHandler | None = None
) -> tuple[str, ...]:
    """Field names flagged by a header bitmap array (compound children as ``Parent.Child``).

    An element that maps to nothing in ``layout`` is left out and passed to ``on_skip``
    with the reason; the rest of the array still decodes."""
    out: list[str] = []
    for element in elements:
        try:
            out.extend(_decode_element(element, layout))
        except BitmapError as exc:
            if on_skip is not None:
                on_skip(element, f"bitmap element {element!r} {exc}")
    return tuple(out)


def _decode_element(element: str, layout: FieldLayout) -> list[str]:
    if "-" not in element:
        return _flagged(element, layout.names)
    parent_text, hex_text = element.split("-", 1)
    try:
        parent = int(parent_text)
    except ValueError:
        raise BitmapError("has a non-decimal parent index") from None
    children = layout.compounds.get(parent)
    if children is None:
        raise BitmapError(
            f"points at field index {parent}, which is not a compound (record) field of this "
            f"schema ({len(layout.names)} fields)"
        )
    parent_name = layout.names[parent]
    return [f"{parent_name}.{child}" for child in _flagged(hex_text, children)]


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
