"""``SandboxRuntime``: the sandbox org's two servers over one store, in the calling process.

The Pub/Sub API gRPC server and the REST server (JWT token endpoint included) on loopback,
TLS by default, plus optionally a ``LiveSimulator`` thread so new activity keeps arriving.
Tests that want the servers (and their fault injection) in-process use it directly; the
serve process (``kpi-pipeline sandbox serve``) runs one too."""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from kpi_pipeline.sandbox.pubsub_server import (
    KEEPALIVE_INTERVAL_S,
    RunningPubSubServer,
    start_pubsub_server,
)
from kpi_pipeline.sandbox.rest_server import ConnectedApp, RunningRestServer, start_rest_server
from kpi_pipeline.sandbox.runtime.probes import accepts
from kpi_pipeline.sandbox.simulator import LiveSimulator
from kpi_pipeline.sandbox.store import INTEGRATION_USER, SandboxStore
from kpi_pipeline.sandbox.tls import TlsFiles, ensure_tls_files
from kpi_pipeline.sandbox.tokens import TokenRegistry
from kpi_pipeline.telemetry.metrics import record_error

# The package's name, as before the split: log lines keep their logger name.
log = logging.getLogger(__package__)


HOST = "127.0.0.1"
SANDBOX_CONSUMER_KEY = "kpi-sandbox-connected-app"


_PRUNE_EVERY_S = 600.0


@dataclass(frozen=True, slots=True)
class SandboxEndpoints:
    pubsub_target: str  # host:port of the gRPC server (TLS when ca_file is set)
    rest_url: str  # login URL and instance URL (https:// when ca_file is set)
    access_token: str
    tenant_id: str
    ca_file: str | None = None  # PEM CA that signed the servers' certificate; None: plaintext


def generate_connected_app(username: str = INTEGRATION_USER.email) -> tuple[ConnectedApp, bytes]:
    """A connected app with a fresh RSA key pair, pre-authorizing the integration user.

    Returns the app and the PEM private key that signs valid JWT assertions for it."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    app = ConnectedApp(
        SANDBOX_CONSUMER_KEY,
        public_key_pem=public_pem,
        allowed_usernames={username: INTEGRATION_USER.id},
    )
    return app, private_pem


class _ActivityTokens(TokenRegistry):
    """The runtime's token registry, noting when a server last checked or issued a token.

    Every Pub/Sub call and every authenticated REST request checks one, so this is the
    sandbox's "last request" clock for the idle shutdown, kept without touching the servers.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.last_activity = time.monotonic()

    def is_valid(self, token: str) -> bool:
        self.last_activity = time.monotonic()
        return super().is_valid(token)

    def issue(self, username: str) -> str:
        self.last_activity = time.monotonic()
        return super().issue(username)


class SandboxRuntime:
    """The sandbox org's servers over one store file, on loopback ports (0: ephemeral)."""

    def __init__(
        self,
        store_path: str | os.PathLike[str],
        *,
        pubsub_port: int = 0,
        rest_port: int = 0,
        access_token: str,
        tenant_id: str,
        connected_app: ConnectedApp | None = None,
        tls_dir: str | os.PathLike[str] | None = None,
        plaintext: bool = False,
        replay_id_bytes: int = 8,
        keepalive_interval_s: float = KEEPALIVE_INTERVAL_S,
    ) -> None:
        """TLS by default, as a real org (and ``sandbox serve --tls``): gRPC and REST are
        served with the CA and certificate kept in ``tls_dir`` (default: the store's
        directory; generated when missing, ``kpi_pipeline.sandbox.tls``), so whatever talks
        to the runtime goes through the production TLS code path. ``plaintext=True`` serves
        without TLS; only for callers that need a plaintext server (``sandbox serve``
        without ``--tls``, a benchmark comparable with earlier plaintext figures).
        ``replay_id_bytes``: length of the (opaque) replay ids the Pub/Sub server issues.
        ``keepalive_interval_s``: how often a quiet stream gets a keepalive (270 s, as a
        real org)."""
        if not access_token:
            raise ValueError(
                "SandboxRuntime needs a non-empty access_token (the static token it accepts)"
            )
        self.store_path = Path(store_path)
        if plaintext and tls_dir is not None:
            raise ValueError("SandboxRuntime: tls_dir only applies without plaintext=True")
        self.tls_dir: Path | None = None
        if not plaintext:
            self.tls_dir = Path(tls_dir) if tls_dir is not None else self.store_path.parent
        self.tls: TlsFiles | None = None
        self.replay_id_bytes = replay_id_bytes
        self.keepalive_interval_s = keepalive_interval_s
        self.pubsub_port = pubsub_port
        self.rest_port = rest_port
        self.access_token = access_token
        self.tenant_id = tenant_id
        self.jwt_private_key_pem: bytes | None = None
        if connected_app is None:
            connected_app, self.jwt_private_key_pem = generate_connected_app()
        self.connected_app = connected_app
        self.store: SandboxStore | None = None
        self.tokens = _ActivityTokens(static_tokens=[access_token], tenant_id=tenant_id)
        self._pubsub: RunningPubSubServer | None = None
        self._rest: RunningRestServer | None = None
        self._live_thread: threading.Thread | None = None
        self._stop = threading.Event()

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> SandboxRuntime:
        if self.store is not None:
            return self
        self.store = SandboxStore(self.store_path)
        self._stop.clear()
        try:
            if self.tls_dir is not None:
                self.tls = ensure_tls_files(self.tls_dir)
            self._pubsub = start_pubsub_server(
                self.store,
                host=HOST,
                port=self.pubsub_port,
                token_validator=self.tokens.is_valid,
                tenant_id=self.tenant_id,
                tls=self.tls,
                replay_id_bytes=self.replay_id_bytes,
                keepalive_interval_s=self.keepalive_interval_s,
            )
            self._rest = start_rest_server(
                self.store,
                host=HOST,
                port=self.rest_port,
                token_registry=self.tokens,
                connected_app=self.connected_app,
                tenant_id=self.tenant_id,
                integration_user_id=INTEGRATION_USER.id,
                tls=self.tls,
            )
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the live simulator and both servers; safe to call twice."""
        self._stop.set()
        if self._live_thread is not None:
            self._live_thread.join(timeout=10)
            self._live_thread = None
        if self._rest is not None:
            self._rest.stop()
            self._rest = None
        if self._pubsub is not None:
            self._pubsub.stop()
            self._pubsub = None
        if self.store is not None:
            self.store.close()
            self.store = None

    def __enter__(self) -> SandboxRuntime:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- endpoints ----------------------------------------------------------------------------
    def _running(self) -> tuple[RunningPubSubServer, RunningRestServer]:
        if self._pubsub is None or self._rest is None:
            raise RuntimeError("the sandbox is not running; call start() first")
        return self._pubsub, self._rest

    @property
    def pubsub_target(self) -> str:
        return f"{HOST}:{self._running()[0].port}"

    @property
    def rest_url(self) -> str:
        return self._running()[1].url

    @property
    def pubsub_server(self) -> RunningPubSubServer:
        """The running gRPC server (its ``faults`` inject stream resets and the like)."""
        return self._running()[0]

    @property
    def rest_server(self) -> RunningRestServer:
        return self._running()[1]

    @property
    def endpoints(self) -> SandboxEndpoints:
        ca_file = str(self.tls.ca_file.resolve()) if self.tls is not None else None
        return SandboxEndpoints(
            self.pubsub_target, self.rest_url, self.access_token, self.tenant_id, ca_file
        )

    def is_alive(self) -> bool:
        if self._pubsub is None or self._rest is None:
            return False
        return accepts(self.pubsub_target) and accepts(self.rest_url)

    def idle_seconds(self) -> float:
        """Seconds since a Pub/Sub call or REST request last arrived (or since creation)."""
        return time.monotonic() - self.tokens.last_activity

    # -- live activity --------------------------------------------------------------------------
    def start_live(
        self, *, seed: int, leads_per_hour: float, response_speedup: float, interval_s: float = 1.0
    ) -> LiveSimulator:
        """Keep simulating in a daemon thread (one ``step`` per ``interval_s``), and drop
        change events older than the retention window every 10 minutes."""
        if self.store is None:
            raise RuntimeError("start() the sandbox before start_live()")
        if self._live_thread is not None:
            raise RuntimeError("the live simulator is already running")
        live = LiveSimulator(
            self.store, seed=seed, leads_per_hour=leads_per_hour, response_speedup=response_speedup
        )
        thread = threading.Thread(
            target=self._live_loop, args=(live, interval_s), name="sandbox-live", daemon=True
        )
        self._live_thread = thread
        thread.start()
        return live

    def _live_loop(self, live: LiveSimulator, interval_s: float) -> None:
        store = live.store
        last_prune = 0.0
        while not self._stop.wait(interval_s):
            try:
                live.step(store.clock())
                if time.monotonic() - last_prune > _PRUNE_EVERY_S:
                    store.prune()
                    last_prune = time.monotonic()
            except Exception:  # keep the servers up; the next step retries
                log.exception("sandbox live simulation step failed")
                record_error("sandbox")
