"""Drives the PyPI package aiosfpubsub (not written by this project) against a Pub/Sub API
endpoint and prints what it decoded with its own Avro library (Apache ``avro``), one JSON
object per line: ``{"replay_id": "<hex>", "schema_id": ..., "id": ..., "payload": {...},
"schema": {...}}``.

Run as its own process: aiosfpubsub registers its own copy of ``pubsub_api.proto`` in
protobuf's default pool, which would clash with kpi_pipeline's in one process.

Usage: python aiosfpubsub_subscribe.py TOPIC COUNT [REPLAY_ID_HEX]
Environment: PUBSUB_ENDPOINT (host:port), ACCESS_TOKEN, INSTANCE_URL, ORGANIZATION_ID, CA_FILE.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from typing import Any

import grpc
from aiosfpubsub import Client


class _Enough(Exception):
    """Raised from the callback once COUNT events arrived: ends the client's endless stream."""


def _trust(ca_file: str) -> None:
    # The client reads certifi's bundle and has no setting for another CA; this one static
    # method is replaced so it trusts the sandbox's CA. Everything else is the client's own.
    with open(ca_file, "rb") as handle:
        roots = handle.read()
    Client._default_channel_credentials = staticmethod(lambda: grpc.ssl_channel_credentials(roots))


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    topic, count = argv[0], int(argv[1])
    replay_id = bytes.fromhex(argv[2]) if len(argv) == 3 else b""
    _trust(os.environ["CA_FILE"])
    host, port = os.environ["PUBSUB_ENDPOINT"].rsplit(":", 1)
    client = Client(os.environ["INSTANCE_URL"], "", "", host, int(port))
    # What Client.auth() sets after its SOAP login, which the sandbox does not offer; the
    # token comes from elsewhere, as with any pre-obtained session.
    client.metadata = (
        ("accesstoken", os.environ["ACCESS_TOKEN"]),
        ("instanceurl", os.environ["INSTANCE_URL"]),
        ("tenantid", os.environ["ORGANIZATION_ID"]),
    )
    received: list[dict[str, Any]] = []

    def on_response(response: Any, c: Client) -> None:
        for consumer in response.events:
            schema = c.get_schema_json(consumer.event.schema_id)  # GetSchema, cached per id
            received.append(
                {
                    "replay_id": consumer.replay_id.hex(),
                    "schema_id": consumer.event.schema_id,
                    "id": consumer.event.id,
                    "payload": c.decode(schema, consumer.event.payload),
                    "schema": json.loads(schema),  # as GetSchema gave it to the client
                }
            )
        if len(received) >= count:
            raise _Enough

    preset = "CUSTOM" if replay_id else "EARLIEST"
    with contextlib.suppress(_Enough):
        asyncio.run(
            asyncio.wait_for(client.subscribe(topic, preset, replay_id, count, on_response), 60)
        )
    for event in received[:count]:
        print(json.dumps(event))
    return 0 if len(received) >= count else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
