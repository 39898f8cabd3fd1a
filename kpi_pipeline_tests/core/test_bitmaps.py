"""Header bitmaps: the documented example, compound fields, and the encoder's inverse."""

from __future__ import annotations

import fastavro
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kpi_pipeline.adapters.pubsub.schemas import ADDRESS_CHILDREN, CONTACT_SCHEMA, LEAD_SCHEMA
from kpi_pipeline.core.bitmaps import BitmapError, FieldLayout, decode_bitmap, encode_bitmap


def _address(field_name: str, *, defined: bool) -> dict:
    """An Address compound field as real schemas have it: the record (11 children, Xyz before
    GeocodeAccuracy) where first used, a reference by name after that."""
    record = {
        "type": "record",
        "name": "Address",
        "namespace": "com.sforce.eventbus",
        "fields": [{"name": c, "type": ["null", "string"], "default": None} for c in ADDRESS],
    }
    return {"name": field_name, "type": ["null", record if not defined else "Address"]}


ADDRESS = [name for name, _ in ADDRESS_CHILDREN]


def account_like_schema() -> dict:
    """31 fields: header, Name, Type, ParentId, BillingAddress, F5, F6, ShippingAddress (a
    reference to the Address record BillingAddress defined), F8..F30."""
    header = {"type": "record", "name": "ChangeEventHeader", "fields": []}
    fields: list[dict] = [{"name": "ChangeEventHeader", "type": header}]
    fields += [{"name": n, "type": ["null", "string"]} for n in ("Name", "Type", "ParentId")]
    fields.append(_address("BillingAddress", defined=False))
    fields += [{"name": f"F{i}", "type": ["null", "string"]} for i in (5, 6)]
    fields.append(_address("ShippingAddress", defined=True))
    fields += [{"name": f"F{i}", "type": ["null", "string"]} for i in range(8, 31)]
    return {
        "type": "record",
        "name": "AccountChangeEvent",
        "namespace": "com.sforce.eventbus",
        "fields": fields,
    }


def account_like_layout() -> FieldLayout:
    schema = account_like_schema()
    fastavro.parse_schema(schema)  # a valid Avro schema: Address is defined once
    layout = FieldLayout.from_schema(schema)
    assert layout.names[4] == "BillingAddress" and layout.names[7] == "ShippingAddress"
    return layout


def test_documented_example_decodes_to_the_documented_indices() -> None:
    layout = account_like_layout()
    names = decode_bitmap(["0x650004E0", "4-0x10", "7-0x06"], layout)
    # 0x650004E0 flags indices 5, 6, 7, 10, 24, 26, 29, 30 (reference §4).
    expected_top = [layout.names[i] for i in (5, 6, 7, 10, 24, 26, 29, 30)]
    assert names == (
        *expected_top,
        "BillingAddress.Country",  # 0x10 = bit 4 of (Street, City, State, PostalCode, Country)
        # 0x06 = bits 1 and 2 of the Address ShippingAddress refers to by name (Salesforce's
        # Java sample decodes it the same way)
        "ShippingAddress.City",
        "ShippingAddress.State",
    )


def test_real_account_order_5_0x06_is_shipping_city_and_state() -> None:
    """AccountChangeEvent as an org serves it: BillingAddress (index 4) defines Address,
    ShippingAddress (index 5) refers to it by name."""
    header = {"type": "record", "name": "ChangeEventHeader", "fields": []}
    fields: list[dict] = [{"name": "ChangeEventHeader", "type": header}]
    fields += [{"name": n, "type": ["null", "string"]} for n in ("Name", "Type", "ParentId")]
    fields += [_address("BillingAddress", defined=False), _address("ShippingAddress", defined=True)]
    fields += [{"name": n, "type": ["null", "string"]} for n in ("Phone", "Fax", "Website")]
    schema = {"type": "record", "name": "AccountChangeEvent", "namespace": "com.sforce.eventbus",
              "fields": fields}  # fmt: skip
    fastavro.parse_schema(schema)
    layout = FieldLayout.from_schema(schema)
    assert decode_bitmap(["5-0x06"], layout) == ("ShippingAddress.City", "ShippingAddress.State")
    assert decode_bitmap(["4-0x0400", "5-0x01"], layout) == (
        "BillingAddress.GeocodeAccuracy",
        "ShippingAddress.Street",
    )


def test_a_compound_referring_to_a_named_type_decodes_like_the_defined_one() -> None:
    layout = account_like_layout()
    assert layout.compounds[7] == layout.compounds[4] == tuple(ADDRESS)
    assert decode_bitmap(["7-0x06"], layout) == ("ShippingAddress.City", "ShippingAddress.State")
    # Contact's OtherAddress refers to the Address its MailingAddress defined.
    contact = FieldLayout.from_schema(CONTACT_SCHEMA)
    other = contact.index_of("OtherAddress")
    assert isinstance(CONTACT_SCHEMA["fields"][other]["type"][1], str)
    assert decode_bitmap([f"{other}-0x0600"], contact) == (
        "OtherAddress.Xyz",
        "OtherAddress.GeocodeAccuracy",
    )


def test_each_element_is_decoded_on_its_own_whatever_its_position() -> None:
    layout = account_like_layout()
    assert decode_bitmap(["4-0x10", "0x02"], layout) == ("BillingAddress.Country", "Name")
    assert decode_bitmap(["4-0x01"], layout) == ("BillingAddress.Street",)
    assert decode_bitmap([], layout) == ()


def test_byte_reversal_is_not_applied() -> None:
    # 0x0100 is bit 8 (F8). Reversing byte order (the old node bug) would give bit 0 (the header).
    assert decode_bitmap(["0x0100"], account_like_layout()) == ("F8",)


def test_lead_name_and_address_compounds() -> None:
    layout = FieldLayout.from_schema(LEAD_SCHEMA)
    assert layout.names[1] == "Name" and layout.names[12] == "Address"
    # Name is ["null", "string", record]: the string branch is skipped, the record's children count.
    assert layout.compounds[1] == (
        "Salutation", "FirstName", "LastName", "MiddleName", "InformalName", "Suffix"
    )  # fmt: skip
    assert decode_bitmap(["1-0x06"], layout) == ("Name.FirstName", "Name.LastName")
    assert decode_bitmap(["1-0x38"], layout) == (
        "Name.MiddleName", "Name.InformalName", "Name.Suffix"
    )  # fmt: skip
    # Address children in order: Street 0 .. Country 4, StateCode 5, CountryCode 6, Latitude 7,
    # Longitude 8, Xyz 9, GeocodeAccuracy 10; 0x0500 = bits 8 and 10.
    assert decode_bitmap(["12-0x0500"], layout) == ("Address.Longitude", "Address.GeocodeAccuracy")
    assert decode_bitmap(["0x40", "12-0x02"], layout) == ("Status", "Address.City")


def test_encoder_emits_uppercase_whole_bytes() -> None:
    layout = FieldLayout.from_schema(LEAD_SCHEMA)
    # Status is index 6 -> 0x40; Rating index 9 -> 0x0200 (two whole bytes, not 0x200).
    assert encode_bitmap(["Status"], layout) == ["0x40"]
    assert encode_bitmap(["Rating"], layout) == ["0x0200"]
    assert encode_bitmap(["Name.LastName", "Address.City", "Company"], layout) == [
        "0x04",
        "1-0x04",
        "12-0x02",
    ]
    assert encode_bitmap(["Address"], layout) == ["12-0x07FF"]  # a bare compound flags every child
    assert encode_bitmap([], layout) == []
    assert encode_bitmap(["LastModifiedById"], layout) == ["0x400000"]  # index 22
    assert encode_bitmap(["Routing_Rule__c"], layout) == ["0x0100000000"]  # index 32
    assert encode_bitmap(["Address.Street", "Address.Latitude"], layout) == ["12-0x81"]


@given(st.data())
def test_encode_then_decode_round_trips(data: st.DataObject) -> None:
    layout = FieldLayout.from_schema(LEAD_SCHEMA)
    plain = [n for i, n in enumerate(layout.names) if i > 0 and i not in layout.compounds]
    children = [f"{layout.names[i]}.{c}" for i, cs in layout.compounds.items() for c in cs]
    chosen = data.draw(st.sets(st.sampled_from(plain + children)))
    decoded = decode_bitmap(encode_bitmap(chosen, layout), layout)
    assert set(decoded) == chosen and len(decoded) == len(chosen)


@pytest.mark.parametrize(
    ("element", "reason"),
    [
        ("0xZZ", "invalid hex"),
        ("650004E0", "must look like"),
        ("x-0x01", "non-decimal parent"),
        ("2-0x01", "not a compound"),
        ("99-0x01", "not a compound"),
    ],
)
def test_an_unmappable_element_is_skipped_and_reported_the_rest_decodes(
    element: str, reason: str
) -> None:
    skipped: list[tuple[str, str]] = []
    layout = FieldLayout.from_schema(LEAD_SCHEMA)
    names = decode_bitmap(
        ["0x40", element, "12-0x02"], layout, on_skip=lambda e, why: skipped.append((e, why))
    )
    assert names == ("Status", "Address.City")
    assert len(skipped) == 1 and skipped[0][0] == element and reason in skipped[0][1]


def test_bits_beyond_the_schema_are_ignored_like_the_reference_decoders() -> None:
    layout = FieldLayout.from_schema(LEAD_SCHEMA)
    skipped: list[str] = []
    beyond = 1 << len(layout.names) | 1 << 6  # Status plus a bit past the last field
    names = decode_bitmap(
        [f"0x{beyond:X}", "1-0xC2"], layout, on_skip=lambda e, why: skipped.append(e)
    )
    # 0xC2 = FirstName plus bits 6 and 7, past Name's six children.
    assert names == ("Status", "Name.FirstName") and skipped == []


# --- property: random schemas with nested and repeated compound types -----------------------

_NAMES = st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz", min_size=1, max_size=8)


@st.composite
def schemas_with_compounds(draw: st.DrawFn) -> dict:
    """An Avro ChangeEvent-like schema whose compound fields define record types (some with a
    record nested among their children, defined there), and whose later compound fields
    refer to any type defined before them, by short or full name, inside a union."""
    namespace = "com.sforce.eventbus"
    defined: list[str] = []  # record type names, in definition order
    counter = iter(range(10_000))

    def new_record(depth: int) -> dict:
        name = f"T{next(counter)}"
        children = draw(st.lists(_NAMES, min_size=1, max_size=12, unique=True))
        fields = []
        for child in children:
            nested = depth == 0 and draw(st.integers(0, 5)) == 0
            child_type = new_record(depth + 1) if nested else "string"
            fields.append({"name": child, "type": ["null", child_type], "default": None})
        defined.append(name)
        return {"type": "record", "name": name, "namespace": namespace, "fields": fields}

    header = {"type": "record", "name": "ChangeEventHeader", "fields": []}
    fields: list[dict] = [{"name": "ChangeEventHeader", "type": header}]
    for name in draw(st.lists(_NAMES, min_size=1, max_size=40, unique=True)):
        kind = draw(
            st.sampled_from(["plain", "plain", "new", "ref"] if defined else ["plain", "new"])
        )
        if kind == "plain":
            field_type: object = "string"
        elif kind == "new":
            field_type = new_record(0)
        else:
            ref = draw(st.sampled_from(defined))
            field_type = draw(st.sampled_from([ref, f"{namespace}.{ref}"]))
        union = ["null", "string", field_type] if kind != "plain" and draw(st.booleans()) else [
            "null", field_type
        ]  # fmt: skip
        fields.append({"name": name, "type": union, "default": None})
    return {"type": "record", "name": "XChangeEvent", "namespace": namespace, "fields": fields}


@given(st.data())
def test_random_schemas_round_trip_changed_field_names(data: st.DataObject) -> None:
    schema = data.draw(schemas_with_compounds())
    fastavro.parse_schema(schema)  # valid Avro: every named type is defined exactly once
    layout = FieldLayout.from_schema(schema)
    plain = [n for i, n in enumerate(layout.names) if i > 0 and i not in layout.compounds]
    children = [f"{layout.names[i]}.{c}" for i, cs in layout.compounds.items() for c in cs]
    # every compound field, referenced or defined, exposes its record's children
    assert len(layout.compounds) == sum(
        1 for f in schema["fields"][1:] if f["type"][-1] != "string"
    )
    chosen = data.draw(st.sets(st.sampled_from(plain + children))) if plain + children else set()
    skipped: list[str] = []
    decoded = decode_bitmap(
        encode_bitmap(chosen, layout), layout, on_skip=lambda e, w: skipped.append(w)
    )
    assert set(decoded) == chosen and len(decoded) == len(chosen) and not skipped


def test_encoder_rejects_unknown_fields() -> None:
    layout = FieldLayout.from_schema(LEAD_SCHEMA)
    with pytest.raises(BitmapError, match="'Nope' is not in the schema"):
        encode_bitmap(["Nope"], layout)
    with pytest.raises(BitmapError, match="has no child 'Planet'"):
        encode_bitmap(["Address.Planet"], layout)
    with pytest.raises(BitmapError, match="not a compound"):
        encode_bitmap(["Status.Child"], layout)
