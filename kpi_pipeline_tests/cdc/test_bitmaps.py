"""Header bitmaps: the documented example, compound fields, and the encoder's inverse."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kpi_pipeline.cdc.bitmaps import BitmapError, FieldLayout, decode_bitmap, encode_bitmap
from kpi_pipeline.cdc.schemas import LEAD_SCHEMA


def _address(name: str) -> dict:
    children = ["Street", "City", "State", "PostalCode", "Country"]
    record = {
        "type": "record",
        "name": name,
        "fields": [{"name": c, "type": ["null", "string"]} for c in children],
    }
    return {"name": name, "type": ["null", record]}


def account_like_layout() -> FieldLayout:
    """31 fields: header, Name, Type, ParentId, BillingAddress (4), F5, F6, ShippingAddress (7), F8..F30."""
    fields = [{"name": "ChangeEventHeader", "type": {"type": "record", "name": "H", "fields": []}}]
    fields += [{"name": n, "type": ["null", "string"]} for n in ("Name", "Type", "ParentId")]
    fields.append(_address("BillingAddress"))
    fields += [{"name": f"F{i}", "type": ["null", "string"]} for i in (5, 6)]
    fields.append(_address("ShippingAddress"))
    fields += [{"name": f"F{i}", "type": ["null", "string"]} for i in range(8, 31)]
    layout = FieldLayout.from_schema(
        {"type": "record", "name": "AccountChangeEvent", "fields": fields}
    )
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
        "ShippingAddress.City",  # 0x06 = bits 1 and 2
        "ShippingAddress.State",
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
    assert layout.compounds[1] == ("Salutation", "FirstName", "LastName")
    assert decode_bitmap(["1-0x06"], layout) == ("Name.FirstName", "Name.LastName")
    # Address children in order: Street 0 .. Country 4, StateCode 5, CountryCode 6, Latitude 7,
    # Longitude 8, GeocodeAccuracy 9; 0x0300 = bits 8 and 9.
    assert decode_bitmap(["12-0x0300"], layout) == ("Address.Longitude", "Address.GeocodeAccuracy")
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
    assert encode_bitmap(["Address"], layout) == ["12-0x03FF"]  # a bare compound flags every child
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
    ("element", "message"),
    [
        ("0xZZ", "invalid hex"),
        ("650004E0", "must look like"),
        ("x-0x01", "non-decimal parent"),
        ("2-0x01", "not a compound"),
        ("0x" + "F" * 20, "only 33 fields"),
        ("1-0x08", "only 3 fields"),
    ],
)
def test_bad_elements_name_the_problem(element: str, message: str) -> None:
    with pytest.raises(BitmapError, match=message):
        decode_bitmap([element], FieldLayout.from_schema(LEAD_SCHEMA))


def test_encoder_rejects_unknown_fields() -> None:
    layout = FieldLayout.from_schema(LEAD_SCHEMA)
    with pytest.raises(BitmapError, match="'Nope' is not in the schema"):
        encode_bitmap(["Nope"], layout)
    with pytest.raises(BitmapError, match="has no child 'Planet'"):
        encode_bitmap(["Address.Planet"], layout)
    with pytest.raises(BitmapError, match="not a compound"):
        encode_bitmap(["Status.Child"], layout)
