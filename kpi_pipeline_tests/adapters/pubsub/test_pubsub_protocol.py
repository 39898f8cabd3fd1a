"""Client and sandbox server against each other over real gRPC on loopback."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from operator import methodcaller

import grpc
import pytest

from kpi_pipeline.adapters.pubsub.client import DEFAULT_CHANNEL_OPTIONS, PubSubClient
from kpi_pipeline.adapters.pubsub.decode import EventDecoder
from kpi_pipeline.adapters.pubsub.errors import error_from_rpc
from kpi_pipeline.adapters.pubsub.fetch import FetchResult, Preset
from kpi_pipeline.adapters.pubsub.proto import pubsub_api_pb2 as pb2
from kpi_pipeline.adapters.pubsub.proto import pubsub_api_pb2_grpc as pb2_grpc
from kpi_pipeline.adapters.pubsub.schemas import SCHEMA_IDS_BY_ENTITY
from kpi_pipeline.core.errors import (
    AUTH_ERROR,
    REPLAY_CORRUPTED,
    REPLAY_VALIDATION_FAILED,
    REQUESTED_EVENTS_INVALID,
    PubSubAuthError,
    PubSubError,
    ReplayIdInvalidError,
    ServiceUnavailableError,
    StreamStalledError,
    TopicNotFoundError,
    UnknownSchemaError,
)
from kpi_pipeline.core.events import replay_id_from_int, replay_id_to_int
from kpi_pipeline_tests.support.pubsub import (
    AUTH_METADATA,
    INSTANCE_URL,
    TENANT_ID,
    TOKEN,
    add_lead,
    add_task,
    now_ms,
)

LEADS = "/data/LeadChangeEvent"
HOUR_MS = 3600 * 1000


def replays(result: FetchResult) -> list[int]:
    return [replay_id_to_int(e.replay_id) for e in result.events]


def fill(log, n: int) -> None:
    for i in range(1, n + 1):
        add_lead(log, i)


def raw_stub(server) -> tuple[grpc.Channel, pb2_grpc.PubSubStub]:
    if server.tls is None:
        channel = grpc.insecure_channel(server.target)
    else:
        credentials = grpc.ssl_channel_credentials(server.tls.ca_file.read_bytes())
        channel = grpc.secure_channel(server.target, credentials)
    return channel, pb2_grpc.PubSubStub(channel)


# --- round trips -------------------------------------------------------------------------


def test_subscribe_get_schema_and_decode_all_three_entities(
    change_log, start_server, make_client
) -> None:
    add_lead(change_log, 1, FirstName="Ada", City="Paris")
    add_task(change_log, 2)
    change_log.append(
        "EmailMessage",
        {
            "entityName": "EmailMessage",
            "recordIds": ["02s1"],
            "changeType": "CREATE",
            "commitTimestamp": now_ms(),
        },
        {"Subject": "Hello", "RelatedToId": "00Q1", "Incoming": False},
    )
    client = make_client(start_server(change_log))
    result = client.fetch(
        "/data/SalesKpis__chn", replay_id=None, preset="EARLIEST", max_events=10, max_seconds=5
    )
    decoder = EventDecoder(client.get_schema)
    events = [decoder.decode(raw) for raw in result.events]
    assert [e.entity for e in events] == ["Lead", "Task", "EmailMessage"]
    assert [e.schema_id for e in events] == [
        SCHEMA_IDS_BY_ENTITY[n] for n in ("Lead", "Task", "EmailMessage")
    ]
    assert events[0].fields["Name"] == {"FirstName": "Ada", "LastName": "Lead 1"}
    assert events[0].fields["Address"] == {"City": "Paris"}
    assert events[1].fields["Subject"] == "Call 2" and events[2].fields["Incoming"] is False
    assert all(e.channel == "/data/SalesKpis__chn" for e in events)


def test_entity_channels_carry_only_their_entity(change_log, start_server, make_client) -> None:
    add_lead(change_log, 1)
    add_task(change_log, 2)
    add_lead(change_log, 3)
    client = make_client(start_server(change_log))
    leads = client.fetch(LEADS, replay_id=None, preset="EARLIEST", max_events=10, max_seconds=5)
    tasks = client.fetch(
        "/data/TaskChangeEvent", replay_id=None, preset="EARLIEST", max_events=10, max_seconds=5
    )
    everything = client.fetch(
        "/data/ChangeEvents", replay_id=None, preset="EARLIEST", max_events=10, max_seconds=5
    )
    assert (replays(leads), replays(tasks), replays(everything)) == ([1, 3], [2], [1, 2, 3])


def test_get_topic_and_unknown_topic(change_log, start_server, make_client) -> None:
    client = make_client(start_server(change_log))
    info = client.get_topic(LEADS)
    assert info.can_subscribe and info.tenant_guid == TENANT_ID
    assert info.schema_id == SCHEMA_IDS_BY_ENTITY["Lead"] and info.rpc_id
    with pytest.raises(
        TopicNotFoundError, match="/data/OpportunityChangeEvent not found"
    ) as info_error:
        client.get_topic("/data/OpportunityChangeEvent")
    assert info_error.value.grpc_code == grpc.StatusCode.NOT_FOUND and info_error.value.rpc_id
    with pytest.raises(TopicNotFoundError):
        client.fetch(
            "/data/OpportunityChangeEvent",
            replay_id=None,
            preset="LATEST",
            max_events=1,
            max_seconds=2,
        )


def test_unknown_schema_id_from_get_schema(change_log, start_server, make_client) -> None:
    client = make_client(start_server(change_log))
    with pytest.raises(UnknownSchemaError, match="'AAAAAAAAAAAAAAAAAAAAAA' is unknown") as info:
        client.get_schema("AAAAAAAAAAAAAAAAAAAAAA")
    assert info.value.grpc_code == grpc.StatusCode.NOT_FOUND


# --- presets --------------------------------------------------------------------------------


def test_earliest_custom_latest(change_log, start_server, make_client) -> None:
    fill(change_log, 10)
    server = start_server(change_log)
    client = make_client(server)
    earliest = client.fetch(LEADS, replay_id=None, preset="EARLIEST", max_events=50, max_seconds=5)
    assert replays(earliest) == list(range(1, 11))
    custom = client.fetch(
        LEADS, replay_id=replay_id_from_int(4), preset="CUSTOM", max_events=50, max_seconds=5
    )
    assert replays(custom) == list(range(5, 11))  # strictly after the given id
    assert (
        client.fetch(LEADS, replay_id=None, preset="LATEST", max_events=50, max_seconds=5).events
        == []
    )

    # LATEST starts at the tip: its keepalive position is 10, and what is published
    # afterwards is delivered from there.
    latest = client.fetch(LEADS, replay_id=None, preset="LATEST", max_events=3, max_seconds=5)
    assert latest.events == [] and latest.latest_replay_id == replay_id_from_int(10)
    for i in range(11, 14):
        add_lead(change_log, i)
    after = client.fetch(
        LEADS, replay_id=latest.latest_replay_id, preset="CUSTOM", max_events=3, max_seconds=5
    )
    assert replays(after) == [11, 12, 13]
    assert server.faults.subscribe_calls == 5


def test_max_events_bounds_the_drain_and_resume_continues(
    change_log, start_server, make_client
) -> None:
    fill(change_log, 30)
    client = make_client(start_server(change_log))
    first = client.fetch(LEADS, replay_id=None, preset="EARLIEST", max_events=12, max_seconds=5)
    assert replays(first) == list(range(1, 13)) and first.latest_replay_id == replay_id_from_int(12)
    rest = client.fetch(
        LEADS, replay_id=first.latest_replay_id, preset="CUSTOM", max_events=100, max_seconds=5
    )
    assert replays(rest) == list(range(13, 31))


def test_preset_and_replay_are_read_only_from_the_first_request(change_log, start_server) -> None:
    fill(change_log, 6)
    channel, stub = raw_stub(start_server(change_log))
    requests = [
        pb2.FetchRequest(
            topic_name=LEADS, replay_preset=pb2.ReplayPreset.EARLIEST, num_requested=2
        ),
        # Ignored preset/replay: only num_requested counts on later requests.
        pb2.FetchRequest(
            replay_preset=pb2.ReplayPreset.CUSTOM, replay_id=replay_id_from_int(4), num_requested=3
        ),
    ]
    got: list[int] = []
    call = stub.Subscribe(iter(requests), metadata=AUTH_METADATA)
    for response in call:
        got += [replay_id_to_int(e.replay_id) for e in response.events]
        if len(got) >= 5:
            break
    call.cancel()
    channel.close()
    assert got == [1, 2, 3, 4, 5]


# --- keepalives ---------------------------------------------------------------------------


def test_keepalive_latest_replay_id_is_returned_and_can_be_ahead(
    change_log, start_server, make_client
) -> None:
    for i in range(1, 6):
        add_lead(change_log, i)
    for i in range(6, 9):
        add_task(change_log, i)  # other entities move the bus forward
    client = make_client(start_server(change_log, keepalive_interval_s=0.1))
    result = client.fetch(
        LEADS, replay_id=None, preset="EARLIEST", max_events=100, max_seconds=5, idle_return_s=3
    )
    assert replays(result) == [1, 2, 3, 4, 5]
    assert result.keepalives == 1
    assert result.latest_replay_id == replay_id_from_int(
        8
    )  # from the keepalive, past the last Lead event
    again = client.fetch(
        LEADS, replay_id=result.latest_replay_id, preset="CUSTOM", max_events=100, max_seconds=5
    )
    assert again.events == [] and again.latest_replay_id == replay_id_from_int(8)


def _timed_fetch_between_keepalives(
    change_log,
    start_server,
    make_client,
    events: int,
    *,
    preset: Preset,
    max_events: int,
    idle_return_s: float,
) -> tuple[FetchResult, float]:
    """A fetch with no replay id from a log of ``events`` Lead events, served with keepalives
    30 s apart (so none comes unless the server sends one at once); also its wall seconds."""
    fill(change_log, events)
    client = make_client(start_server(change_log, keepalive_interval_s=30))
    started = time.monotonic()
    result = client.fetch(
        LEADS,
        replay_id=None,
        preset=preset,
        max_events=max_events,
        max_seconds=10,
        idle_return_s=idle_return_s,
    )
    return result, time.monotonic() - started


def test_quiet_channel_returns_after_idle_return_when_no_keepalive(
    change_log, start_server, make_client
) -> None:
    result, seconds = _timed_fetch_between_keepalives(
        change_log,
        start_server,
        make_client,
        3,
        preset="EARLIEST",
        max_events=100,
        idle_return_s=0.3,
    )
    assert replays(result) == [1, 2, 3] and result.keepalives == 0
    assert seconds < 3


# --- flow control ---------------------------------------------------------------------------


def test_flow_control_never_exceeds_100_outstanding(change_log, start_server, make_client) -> None:
    fill(change_log, 1000)
    server = start_server(change_log)
    result = make_client(server).fetch(
        LEADS, replay_id=None, preset="EARLIEST", max_events=1000, max_seconds=20
    )
    assert replays(result) == list(range(1, 1001))
    assert 0 < server.faults.max_outstanding_seen <= 100


def test_server_caps_and_rejects_num_requested(change_log, start_server) -> None:
    fill(change_log, 250)
    server = start_server(change_log, idle_timeout_s=0.5)
    channel, stub = raw_stub(server)
    call = stub.Subscribe(
        iter(
            [
                pb2.FetchRequest(
                    topic_name=LEADS, replay_preset=pb2.ReplayPreset.EARLIEST, num_requested=500
                )
            ]
        ),
        metadata=AUTH_METADATA,
    )
    # The stream ends by idle close once the 100 granted events are out; 250 were available.
    responses = list(call)
    assert sum(len(r.events) for r in responses) == 100
    assert responses[-1].pending_num_requested == 0
    assert server.faults.max_outstanding_seen == 500  # asked for 500, treated as 100

    call = stub.Subscribe(
        iter([pb2.FetchRequest(topic_name=LEADS, num_requested=0)]), metadata=AUTH_METADATA
    )
    with pytest.raises(grpc.RpcError) as info:
        list(call)
    error = error_from_rpc(info.value)
    assert type(error) is PubSubError and error.error_code == REQUESTED_EVENTS_INVALID
    assert error.grpc_code == grpc.StatusCode.INVALID_ARGUMENT
    channel.close()


def test_server_closes_a_stream_idle_at_pending_zero(change_log, start_server) -> None:
    fill(change_log, 1)
    channel, stub = raw_stub(start_server(change_log, idle_timeout_s=0.3))
    requests_done = threading.Event()

    def requests():
        yield pb2.FetchRequest(
            topic_name=LEADS, replay_preset=pb2.ReplayPreset.EARLIEST, num_requested=1
        )
        requests_done.wait(5)  # keep the request side open, send nothing more

    started = time.monotonic()
    responses = list(stub.Subscribe(requests(), metadata=AUTH_METADATA))
    requests_done.set()
    channel.close()
    assert [len(r.events) for r in responses] == [1] and responses[0].pending_num_requested == 0
    assert time.monotonic() - started < 3


# --- failures and resumption ------------------------------------------------------------------


RESUMABLE_FAULTS = [
    pytest.param(400, methodcaller("reset_stream_after", 150), 20, 1, id="network-reset"),
    pytest.param(300, methodcaller("close_stream_after", 77), 20, 1, id="server-closed-stream"),
    pytest.param(5, methodcaller("service_unavailable_next", 2), 10, 2, id="unavailable-retried"),
]


@pytest.mark.parametrize(("events", "inject", "max_seconds", "reconnects"), RESUMABLE_FAULTS)
def test_a_fetch_resumes_after_a_fault_without_loss_or_duplicates(
    change_log,
    start_server,
    make_client,
    events: int,
    inject: Callable[[object], None],
    max_seconds: float,
    reconnects: int,
) -> None:
    """A reset, a server-closed stream, UNAVAILABLE (retried with backoff) mid-fetch."""
    fill(change_log, events)
    server = start_server(change_log)
    inject(server.faults)
    result = make_client(server).fetch(
        LEADS, replay_id=None, preset="EARLIEST", max_events=events, max_seconds=max_seconds
    )
    assert replays(result) == list(range(1, events + 1))
    assert result.reconnects == reconnects and server.faults.subscribe_calls == reconnects + 1


def test_service_unavailable_beyond_the_retry_budget_raises(
    change_log, start_server, make_client
) -> None:
    server = start_server(change_log)
    server.faults.service_unavailable_next(10)
    client = make_client(server, max_reconnects=2)
    with pytest.raises(ServiceUnavailableError, match="service is unavailable") as info:
        client.fetch(LEADS, replay_id=None, preset="EARLIEST", max_events=5, max_seconds=10)
    assert info.value.grpc_code == grpc.StatusCode.INTERNAL and info.value.transient
    assert info.value.error_code.endswith("grpc.service.unavailable") and info.value.rpc_id


def test_stalled_stream_raises_after_reconnects(change_log, start_server, make_client) -> None:
    server = start_server(change_log)
    server.faults.silence_streams()  # like a half-open TCP connection: not even keepalives
    client = make_client(server, stall_timeout_s=0.3, max_reconnects=1)
    with pytest.raises(StreamStalledError, match="no response on /data/LeadChangeEvent"):
        client.fetch(
            LEADS, replay_id=None, preset="LATEST", max_events=5, max_seconds=10, idle_return_s=5
        )
    assert server.faults.subscribe_calls == 2


def test_expired_replay_id_is_invalid(change_log, start_server, make_client) -> None:
    old = now_ms() - 73 * HOUR_MS
    for i in range(1, 4):
        add_lead(change_log, i, ts=old)
    for i in range(4, 7):
        add_lead(change_log, i)
    client = make_client(start_server(change_log))
    with pytest.raises(ReplayIdInvalidError, match="The Replay ID validation failed") as info:
        client.fetch(
            LEADS, replay_id=replay_id_from_int(2), preset="CUSTOM", max_events=5, max_seconds=5
        )
    assert info.value.error_code == REPLAY_CORRUPTED and info.value.rpc_id in str(info.value)
    # EARLIEST starts at the oldest retained event.
    earliest = client.fetch(LEADS, replay_id=None, preset="EARLIEST", max_events=50, max_seconds=5)
    assert replays(earliest) == [4, 5, 6]


def test_server_retention_window_applies(change_log, start_server, make_client) -> None:
    for i in range(1, 4):
        add_lead(change_log, i, ts=now_ms() - 2 * HOUR_MS)
    add_lead(change_log, 4)
    client = make_client(start_server(change_log, retention_ms=HOUR_MS))
    with pytest.raises(ReplayIdInvalidError):
        client.fetch(
            LEADS, replay_id=replay_id_from_int(2), preset="CUSTOM", max_events=5, max_seconds=5
        )
    assert replays(
        client.fetch(LEADS, replay_id=None, preset="EARLIEST", max_events=9, max_seconds=5)
    ) == [4]


@pytest.mark.parametrize("replay_id", [b"\x00\x01", b"12907414", replay_id_from_int(99)])
def test_corrupted_or_unknown_replay_id_is_invalid(
    change_log, start_server, make_client, replay_id
) -> None:
    fill(change_log, 3)
    client = make_client(start_server(change_log))
    with pytest.raises(ReplayIdInvalidError) as info:
        client.fetch(LEADS, replay_id=replay_id, preset="CUSTOM", max_events=5, max_seconds=5)
    assert info.value.error_code == REPLAY_CORRUPTED
    assert info.value.grpc_code == grpc.StatusCode.INVALID_ARGUMENT


def test_custom_without_replay_id(change_log, start_server, make_client) -> None:
    server = start_server(change_log)
    with pytest.raises(ValueError, match="CUSTOM needs a replay_id"):
        make_client(server).fetch(
            LEADS, replay_id=None, preset="CUSTOM", max_events=1, max_seconds=1
        )
    channel, stub = raw_stub(server)  # what the server says to a client that sends it anyway
    request = pb2.FetchRequest(
        topic_name=LEADS, replay_preset=pb2.ReplayPreset.CUSTOM, num_requested=1
    )
    with pytest.raises(grpc.RpcError) as info:
        list(stub.Subscribe(iter([request]), metadata=AUTH_METADATA))
    channel.close()
    error = error_from_rpc(info.value)
    assert isinstance(error, ReplayIdInvalidError) and error.error_code == REPLAY_VALIDATION_FAILED


# --- auth -----------------------------------------------------------------------------------


@pytest.mark.parametrize("drop", ["accesstoken", "instanceurl", "tenantid"])
def test_missing_auth_header_is_unauthenticated(change_log, start_server, drop) -> None:
    channel, stub = raw_stub(start_server(change_log))
    metadata = tuple(item for item in AUTH_METADATA if item[0] != drop)
    with pytest.raises(grpc.RpcError) as info:
        stub.GetTopic(pb2.TopicRequest(topic_name=LEADS), metadata=metadata)
    channel.close()
    error = error_from_rpc(info.value)
    assert isinstance(error, PubSubAuthError) and error.error_code == AUTH_ERROR
    assert (
        drop in error.message
        and error.rpc_id
        and error.grpc_code == grpc.StatusCode.UNAUTHENTICATED
    )


class RotatingAuth:
    """First hands out an expired token; after invalidate() a valid one (like a JWT cache)."""

    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.invalidations = 0

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (
            ("accesstoken", self.tokens[0]),
            ("instanceurl", INSTANCE_URL),
            ("tenantid", TENANT_ID),
        )

    def invalidate(self) -> None:
        self.invalidations += 1
        if len(self.tokens) > 1:
            self.tokens.pop(0)


def test_expired_token_is_invalidated_and_retried_once(
    change_log, start_server, make_client
) -> None:
    fill(change_log, 2)
    server = start_server(change_log)
    auth = RotatingAuth(["expired", TOKEN])
    result = make_client(server, auth=auth).fetch(
        LEADS, replay_id=None, preset="EARLIEST", max_events=5, max_seconds=5
    )
    assert replays(result) == [1, 2] and auth.invalidations == 1
    unary_auth = RotatingAuth(["expired", TOKEN])
    assert make_client(server, auth=unary_auth).get_topic(LEADS).topic_name == LEADS
    assert unary_auth.invalidations == 1


def test_rejected_token_raises_after_one_retry(change_log, start_server, make_client) -> None:
    auth = RotatingAuth(["bad"])
    client = make_client(start_server(change_log), auth=auth)
    with pytest.raises(PubSubAuthError, match="session is invalid"):
        client.fetch(LEADS, replay_id=None, preset="LATEST", max_events=1, max_seconds=5)
    with pytest.raises(PubSubAuthError):
        client.get_schema(SCHEMA_IDS_BY_ENTITY["Lead"])
    assert auth.invalidations == 2


def test_client_rejects_bad_arguments(change_log, start_server) -> None:
    client = PubSubClient(
        start_server(change_log, tls=None).target, RotatingAuth([TOKEN]), tls=False
    )
    with pytest.raises(ValueError, match="preset must be"):
        client.fetch(LEADS, replay_id=None, preset="latest", max_events=1, max_seconds=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must be bytes"):
        client.fetch(LEADS, replay_id=12, preset="CUSTOM", max_events=1, max_seconds=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_events"):
        client.fetch(LEADS, replay_id=None, preset="LATEST", max_events=0, max_seconds=1)
    client.close()
    with pytest.raises(ValueError, match="stall_timeout_s must be > 0, got 0"):
        PubSubClient(client.target, RotatingAuth([TOKEN]), tls=False, stall_timeout_s=0)


def test_caught_up_subscriber_gets_the_bus_position_at_once(
    change_log, start_server, make_client
) -> None:
    result, seconds = _timed_fetch_between_keepalives(
        change_log, start_server, make_client, 4, preset="LATEST", max_events=10, idle_return_s=5
    )
    assert result.events == [] and result.keepalives == 1
    assert result.latest_replay_id == replay_id_from_int(4)  # safe CUSTOM start for the next tick
    assert seconds < 2


def test_open_stream_delivers_events_published_while_it_waits(change_log, start_server) -> None:
    channel, stub = raw_stub(start_server(change_log, keepalive_interval_s=30))
    request = pb2.FetchRequest(
        topic_name=LEADS, replay_preset=pb2.ReplayPreset.LATEST, num_requested=5
    )
    call = stub.Subscribe(iter([request]), metadata=AUTH_METADATA)
    first = next(call)
    assert list(first.events) == [] and first.pending_num_requested == 5  # immediate keepalive
    fill(change_log, 2)  # published while the stream is open and owed events
    got: list[int] = []
    while len(got) < 2:
        got += [replay_id_to_int(e.replay_id) for e in next(call).events]
    call.cancel()
    channel.close()
    assert got == [1, 2]


@pytest.mark.slow
def test_transport_keepalive_pings_are_accepted_on_a_quiet_stream(
    change_log, start_server, make_client
) -> None:
    server = start_server(change_log)
    server.faults.silence_streams()  # nothing flows, so only HTTP/2 pings cross the connection
    fast_pings = {"grpc.keepalive_time_ms": 100, "grpc.keepalive_timeout_ms": 1000}
    # grpc reads the first occurrence of an option, so replace rather than append.
    options = [o for o in DEFAULT_CHANNEL_OPTIONS if o[0] not in fast_pings] + list(
        fast_pings.items()
    )
    client = make_client(server, channel_options=options, max_reconnects=0)
    result = client.fetch(
        LEADS, replay_id=None, preset="LATEST", max_events=1, max_seconds=10, idle_return_s=6
    )
    # grpc-core's default server policy sends GOAWAY "too_many_pings" after ~4.5 s here.
    assert result.events == [] and result.reconnects == 0


def test_earliest_skips_more_expired_events_than_one_batch(
    change_log, start_server, make_client
) -> None:
    for i in range(1, 251):
        add_lead(
            change_log, i, ts=now_ms() - 2 * HOUR_MS
        )  # inside the log's 72 h, outside the server's 1 h
    for i in range(251, 301):
        add_lead(change_log, i)
    client = make_client(start_server(change_log, retention_ms=HOUR_MS))
    result = client.fetch(LEADS, replay_id=None, preset="EARLIEST", max_events=500, max_seconds=10)
    assert replays(result) == list(range(251, 301))


def test_empty_bus_keepalive_has_no_position_and_earliest_still_works(
    change_log, start_server, make_client
) -> None:
    client = make_client(start_server(change_log))
    empty = client.fetch(LEADS, replay_id=None, preset="EARLIEST", max_events=5, max_seconds=5)
    assert empty.events == [] and empty.keepalives == 1 and empty.latest_replay_id is None
    fill(change_log, 2)
    again = client.fetch(LEADS, replay_id=None, preset="EARLIEST", max_events=5, max_seconds=5)
    assert replays(again) == [1, 2]
