"""The REST server's HTTP plumbing: a threaded HTTP(S) server on loopback around ``RestApp``."""

from __future__ import annotations

import json
import logging
import ssl
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from kpi_pipeline.sandbox.changelog import RecordStore
from kpi_pipeline.sandbox.rest_server.app import RestApp
from kpi_pipeline.sandbox.rest_server.connected_app import ConnectedApp
from kpi_pipeline.sandbox.rest_server.faults import RestFaults
from kpi_pipeline.sandbox.rest_server.responses import RecordedRequest
from kpi_pipeline.sandbox.stoppable import Stoppable
from kpi_pipeline.sandbox.tls import TlsFiles
from kpi_pipeline.sandbox.tokens import TokenRegistry

# The package's name, as before the split: log lines keep their logger name.
log = logging.getLogger(__package__)

DEFAULT_INTEGRATION_USER_ID = "005000000000001AAA"


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; without this, Nagle plus the client's delayed
    # ACK add ~40 ms to every response.
    disable_nagle_algorithm = True

    def _dispatch(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        response = self.server.app.handle(self.command, self.path, self.headers, body)
        if response.drop:
            self.close_connection = True  # the client sees the connection reset mid-request
            return
        payload = b"" if response.body is None else json.dumps(response.body).encode()
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        if payload:
            self.send_header("Content-Type", "application/json;charset=UTF-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if payload:
            self.wfile.write(payload)

    do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _dispatch

    def log_message(
        self, format: str, *args: Any
    ) -> None:  # quiet; never log request lines at INFO
        log.debug("rest %s - %s", self.address_string(), format % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # The default backlog of 5 overflows when several run workers connect at once.
    request_queue_size = 128
    app: RestApp

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Liveness checks (a bare TCP connect) and clients that do not trust the CA end in a
        # failed handshake: the client sees that failure; it is no server error.
        if isinstance(sys.exc_info()[1], ssl.SSLError | ConnectionError):
            return
        super().handle_error(request, client_address)


@dataclass
class RunningRestServer(Stoppable):
    """A started server. ``url`` is both the login URL and the instance URL."""

    port: int
    url: str
    app: RestApp
    _server: _Server = field(repr=False)
    _thread: threading.Thread = field(repr=False)

    @property
    def faults(self) -> RestFaults:
        return self.app.faults

    @property
    def registry(self) -> TokenRegistry:
        return self.app.registry

    @property
    def received(self) -> list[RecordedRequest]:
        """The most recent requests (up to ``keep_requests``), oldest first."""
        return list(self.app.received)

    @property
    def sent_emails(self) -> list[dict[str, Any]]:
        return list(self.app.sent_emails)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def start_rest_server(
    store: RecordStore,
    *,
    token_registry: TokenRegistry,
    connected_app: ConnectedApp,
    host: str = "127.0.0.1",
    port: int = 0,
    instance_url: str | None = None,
    tenant_id: str = "00D000000000001AAA",
    integration_user_id: str = DEFAULT_INTEGRATION_USER_ID,
    query_batch_size: int = 2000,
    api_daily_limit: int = 100_000,
    clock: Callable[[], float] = time.time,
    keep_requests: int = 10_000,
    tls: TlsFiles | None = None,
    field_history: bool = True,
) -> RunningRestServer:
    """Serve ``store`` over the REST API on ``host:port`` (0: an ephemeral port) in a thread,
    over HTTPS when ``tls`` is given; ``field_history=False`` answers history-object queries
    with INVALID_TYPE (an org where they are not available to the API user)."""
    if query_batch_size < 1:
        raise ValueError(f"query_batch_size must be at least 1, got {query_batch_size}")
    app = RestApp(
        store,
        token_registry,
        connected_app,
        tenant_id=tenant_id,
        integration_user_id=integration_user_id,
        query_batch_size=query_batch_size,
        api_daily_limit=api_daily_limit,
        clock=clock,
        keep_requests=keep_requests,
        field_history=field_history,
    )
    try:
        server = _Server((host, port), _Handler)
    except OSError as exc:
        raise OSError(
            f"cannot listen on {host}:{port} for the sandbox REST server: {exc.strerror}"
        ) from exc
    server.app = app
    bound_port = server.server_address[1]
    scheme = "http"
    if tls is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(tls.cert_file, tls.key_file)
        # The handshake runs in the request's own thread (on its first read), so a client
        # that connects and never speaks TLS cannot hold up the accept loop.
        server.socket = context.wrap_socket(
            server.socket, server_side=True, do_handshake_on_connect=False
        )
        scheme = "https"
    app.url = f"{scheme}://{host}:{bound_port}"
    app.instance_url = (instance_url or app.url).rstrip("/")
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.05},  # stop() returns within 50 ms
        name=f"sandbox-rest-{bound_port}",
        daemon=True,
    )
    thread.start()
    return RunningRestServer(bound_port, app.url, app, server, thread)
