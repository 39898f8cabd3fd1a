"""Pub/Sub clients this project did not write, against `kpi-pipeline sandbox serve --tls`.

* the npm package ``salesforce-pubsub-api-client`` (pinned in ``node/package.json``, installed
  by ``make tools``), driven by ``node/subscribe.mjs``: its own gRPC (grpc-js), GetSchema,
  Avro (avro-js) and header-bitmap decoding;
* the PyPI package ``aiosfpubsub`` (pinned in pyproject's dev extras), driven by
  ``support/aiosfpubsub_subscribe.py``: its own gRPC channel, GetSchema and Avro (Apache ``avro``).

Each one subscribes from EARLIEST and resumes after a replay id from the middle of the
stream, on ``/data/ChangeEvents`` (every object with change events: the pipeline's, and
Contact and Account, each with two Address fields, the second a reference to the first's
named type) and on ``/data/Contacts__chn`` (Contact only). What
each decoded must equal, event for event, what our own client decoded from the same store.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import fastavro
import pytest

from kpi_pipeline.adapters.auth.tokens import StaticTokenProvider
from kpi_pipeline.adapters.pubsub.client import PubSubClient
from kpi_pipeline.adapters.pubsub.decode import EventDecoder
from kpi_pipeline.core.bitmaps import FieldLayout, decode_bitmap
from kpi_pipeline.core.events import ChangeEvent
from kpi_pipeline.core.raw import RawEvent
from kpi_pipeline.sandbox.simulator import simulate
from kpi_pipeline.sandbox.store import INTEGRATION_USER_ID, SandboxStore
from kpi_pipeline_tests.support.paths import SUPPORT_DIR
from kpi_pipeline_tests.support.serve_process import ServedOrg, serve

HERE = Path(__file__).resolve().parent
NODE_DIR = HERE / "node"
CHANNELS = ("/data/ChangeEvents", "/data/Contacts__chn")
HEADER_SCALARS = {
    "entityName": "entity_name",
    "changeType": "change_type",
    "changeOrigin": "change_origin",
    "transactionKey": "transaction_key",
    "sequenceNumber": "sequence_number",
    "commitTimestamp": "commit_timestamp",
    "commitNumber": "commit_number",
    "commitUser": "commit_user",
}
BITMAPS = {
    "changedFields": "changed_fields",
    "nulledFields": "nulled_fields",
    "diffFields": "diff_fields",
}
# The environment the clients read, by the served org's attribute behind each ("" for none).
CLIENT_ENV = {
    "PUBSUB_ENDPOINT": "pubsub_target",
    "ACCESS_TOKEN": "access_token",
    "INSTANCE_URL": "rest_url",
    "ORGANIZATION_ID": "tenant_id",
    "CA_FILE": "ca_file",
}


def _add_contacts(store: SandboxStore) -> None:
    """Contacts whose changes touch both addresses, the second one a named-type reference."""
    for n in range(3):
        contact = store.create_record(
            "Contact",
            {
                "Name": {"FirstName": f"Ada{n}", "LastName": "Lovelace", "MiddleName": "K"},
                "Email": f"ada{n}@example.com",
                "MailingAddress": {"Street": f"{n} Main St", "City": "Paris", "Xyz": "x"},
                "OtherAddress": {"City": "Lyon", "GeocodeAccuracy": "Zip"},
            },
            user_id=INTEGRATION_USER_ID,
        )
        store.update_record(
            "Contact",
            contact,
            {"OtherAddress": {"City": "Nantes", "State": "Loire"}, "Title": "CFO"},
            user_id=INTEGRATION_USER_ID,
        )
        store.update_record(
            "Contact",
            contact,
            {"MailingAddress": {"City": None}, "OtherAddress": {"Country": "FR"}},
            user_id=INTEGRATION_USER_ID,
        )


def _add_accounts(store: SandboxStore) -> None:
    """Accounts: BillingAddress defines Address, ShippingAddress refers to it by name; the
    update below is reference §4's bitmap example (``5-0x06``: ShippingAddress City, State)."""
    for n in range(2):
        account = store.create_record(
            "Account",
            {
                "Name": f"Acme {n}",
                "BillingAddress": {"Street": f"{n} Rue Haute", "City": "Lille", "Xyz": "b"},
                "ShippingAddress": {"City": "Lens", "PostalCode": "62300"},
                "AnnualRevenue": 1.5e6,
            },
            user_id=INTEGRATION_USER_ID,
        )
        store.update_record(
            "Account",
            account,
            {"ShippingAddress": {"City": "Arras", "State": "Pas-de-Calais"}},
            user_id=INTEGRATION_USER_ID,
        )


@pytest.fixture(scope="module")
def org(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedOrg]:
    directory = tmp_path_factory.mktemp("conformance")
    store = SandboxStore(directory / "sandbox.db")
    # Two days ending now (inside the 72 h retention): reps answer in working hours, so a
    # shorter window may hold no Task or EmailMessage yet.
    simulate(store, leads=16, days=2, seed=5)
    _add_contacts(store)
    _add_accounts(store)
    store.close()
    with serve(directory / "sandbox.db", args=["--tls"]) as served:
        assert served.ca_file and served.rest_url.startswith("https://")
        yield served


@pytest.fixture(scope="module")
def ours(org: ServedOrg) -> dict[str, list[ChangeEvent]]:
    """Our client's decode of every channel (TLS, trusting the sandbox's CA file)."""
    auth = StaticTokenProvider(org.access_token, org.rest_url, org.tenant_id)
    out: dict[str, list[ChangeEvent]] = {}
    with PubSubClient(org.pubsub_target, auth, tls=True, ca_file=org.ca_file) as client:
        decoder = EventDecoder(client.get_schema)
        for channel in CHANNELS:
            fetched = client.fetch(
                channel, replay_id=None, preset="EARLIEST", max_events=1000, max_seconds=20,
                idle_return_s=1.0,
            )  # fmt: skip
            out[channel] = [decoder.decode(raw) for raw in fetched.events]
            for raw in fetched.events:
                RAW_BITMAPS[raw.replay_id] = _raw_bitmaps(raw, client.get_schema(raw.schema_id))
    everything = out["/data/ChangeEvents"]
    assert len(everything) > 15
    assert {e.header.entity_name for e in everything} == {
        "Lead", "Task", "EmailMessage", "Contact", "Account"
    }  # fmt: skip
    accounts = [e for e in everything if e.entity == "Account"]
    assert len(accounts) == 4
    # The documented example: the second Address (a named-type reference) decodes by name.
    assert RAW_BITMAPS[accounts[1].replay_id]["changedFields"][-1] == "5-0x06"
    assert {"ShippingAddress.City", "ShippingAddress.State"} <= set(
        accounts[1].header.changed_fields
    )
    assert accounts[1].fields["ShippingAddress"] == {"City": "Arras", "State": "Pas-de-Calais"}
    contacts = out["/data/Contacts__chn"]
    assert len(contacts) == 9
    # The second address's children arrive through the named-type reference.
    assert "OtherAddress.State" in contacts[1].header.changed_fields
    return out


# replay id -> the header's bitmap arrays as sent (hex elements), filled by ``ours``
RAW_BITMAPS: dict[bytes, dict[str, list[str]]] = {}


def _raw_bitmaps(raw: RawEvent, schema_json: str) -> dict[str, list[str]]:
    schema = fastavro.parse_schema(json.loads(schema_json))
    header = fastavro.schemaless_reader(io.BytesIO(raw.payload), schema, None)["ChangeEventHeader"]
    return {key: header[key] for key in BITMAPS}


def _as_node_reads_it(view: dict[str, Any], replay_id: bytes) -> dict[str, Any]:
    """Our decode, less what salesforce-pubsub-api-client 5.5.2 cannot read: its
    parseFieldBitmaps only looks at ``<P>-0x..`` elements when the array has more than one
    element, so an array that is one compound element (``["13-0x02"]``: only a compound
    child was nulled) decodes to no field at all there. Every other name must match."""
    out = {**view, "bitmaps": dict(view["bitmaps"])}
    for key, elements in RAW_BITMAPS[replay_id].items():
        if len(elements) == 1 and "-" in elements[0]:
            out["bitmaps"][key] = []
    return out


def _strip_nulls(value: Any) -> Any:
    if isinstance(value, Mapping):
        out = {k: _strip_nulls(v) for k, v in value.items() if v is not None}
        return {k: v for k, v in out.items() if v != {}}
    return value


def _ours_view(event: ChangeEvent) -> dict[str, Any]:
    header = {key: getattr(event.header, attr) for key, attr in HEADER_SCALARS.items()}
    header["recordIds"] = list(event.header.record_ids)
    return {
        "replay": int.from_bytes(event.replay_id, "big"),
        "schema_id": event.schema_id,
        "id": event.event_id,
        "header": header,
        "bitmaps": {key: sorted(getattr(event.header, attr)) for key, attr in BITMAPS.items()},
        "body": _strip_nulls(event.fields),
    }


def _long(key: str, value: Any) -> Any:
    """Avro longs past 2^53 come back from the Node client as decimal strings."""
    return int(value) if key in ("commitTimestamp", "commitNumber") else value


def _long(key: str, value: Any) -> Any:
    return int(value) if key in ("commitTimestamp", "commitNumber") else value


def _their_view(replay: int, schema_id: str, event_id: str, payload: dict, bitmaps: dict) -> dict:
    header = dict(payload["ChangeEventHeader"])
    body = {k: v for k, v in payload.items() if k != "ChangeEventHeader"}
    return {
        "replay": replay,
        "schema_id": schema_id,
        "id": event_id,
        # Avro longs past 2^53 come back from the Node client as decimal strings.
        "header": {k: _long(k, header[k]) for k in [*HEADER_SCALARS, "recordIds"]},
        "bitmaps": {key: sorted(names) for key, names in bitmaps.items()},
        "body": _strip_nulls(body),
    }


def _env(org: ServedOrg) -> dict[str, str]:
    return {**os.environ, **{name: getattr(org, attr) or "" for name, attr in CLIENT_ENV.items()}}


def _run(command: list[str], org: ServedOrg, cwd: Path) -> list[dict]:
    done = subprocess.run(
        command, cwd=cwd, env=_env(org), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"{command} failed ({done.returncode}):\n{done.stderr}"
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def _node(org: ServedOrg, channel: str, count: int, after: int | None = None) -> list[dict]:
    if not (NODE_DIR / "node_modules" / "salesforce-pubsub-api-client").is_dir():
        pytest.fail(
            f"salesforce-pubsub-api-client is not installed in {NODE_DIR}; run `make tools` "
            "(npm ci there)"
        )
    node = shutil.which("node")
    assert node, "node is not on PATH; `make tools` needs Node.js and npm"
    args = [node, "subscribe.mjs", channel, str(count), *([str(after)] if after else [])]
    events = _run(args, org, NODE_DIR)
    views = []
    for e in events:
        bitmaps = {key: e["payload"]["ChangeEventHeader"][key] for key in BITMAPS}
        views.append(_their_view(e["replayId"], e["schemaId"], e["id"], e["payload"], bitmaps))
    return views


def _aiosfpubsub(
    org: ServedOrg, channel: str, count: int, after: bytes | None = None
) -> list[dict]:
    script = SUPPORT_DIR / "aiosfpubsub_subscribe.py"  # run as its own process
    args = [sys.executable, str(script), channel, str(count), *([after.hex()] if after else [])]
    events = _run(args, org, HERE)
    layouts: dict[str, FieldLayout] = {}
    views = []
    for e in events:
        # aiosfpubsub hands over the bitmaps as the raw hex arrays; they are read against the
        # schema it fetched itself (what it would hand to its user), not ours.
        layout = layouts.setdefault(e["schema_id"], FieldLayout.from_schema(e["schema"]))
        header = e["payload"]["ChangeEventHeader"]
        bitmaps = {key: decode_bitmap(header[key], layout) for key in BITMAPS}
        replay = int(e["replay_id"], 16)
        views.append(_their_view(replay, e["schema_id"], e["id"], e["payload"], bitmaps))
    return views


def _mid(events: list[ChangeEvent]) -> ChangeEvent:
    return events[len(events) // 2]


@pytest.mark.integration
@pytest.mark.parametrize("channel", CHANNELS)
def test_node_client_decodes_what_our_client_decodes(
    org: ServedOrg, ours: dict[str, list[ChangeEvent]], channel: str
) -> None:
    expected = [_as_node_reads_it(_ours_view(e), e.replay_id) for e in ours[channel]]
    assert _node(org, channel, len(expected)) == expected
    mid = _mid(ours[channel])
    after = [v for v in expected if v["replay"] > int.from_bytes(mid.replay_id, "big")]
    resumed = _node(org, channel, len(after), after=int.from_bytes(mid.replay_id, "big"))
    assert resumed == after and resumed


@pytest.mark.integration
@pytest.mark.parametrize("channel", CHANNELS)
def test_aiosfpubsub_decodes_what_our_client_decodes(
    org: ServedOrg, ours: dict[str, list[ChangeEvent]], channel: str
) -> None:
    expected = [_ours_view(e) for e in ours[channel]]
    assert _aiosfpubsub(org, channel, len(expected)) == expected
    mid = _mid(ours[channel])
    after = [v for v in expected if v["replay"] > int.from_bytes(mid.replay_id, "big")]
    resumed = _aiosfpubsub(org, channel, len(after), after=mid.replay_id)
    assert resumed == after and resumed
