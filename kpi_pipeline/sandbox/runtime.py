"""Running the embedded sandbox org: both servers in-process on loopback over one store.

``SandboxRuntime`` starts the Pub/Sub API gRPC server and the REST server (JWT token
endpoint included) over a ``SandboxStore`` file, plus optionally a ``LiveSimulator``
thread so new activity keeps arriving.

``ensure_sandbox(data_dir)`` is the process-wide, idempotent entry point the pipeline's
wiring calls when no real org is configured. Under a file lock it either reuses a live
sandbox that another process started (``DATA_DIR/sandbox.json`` names its endpoints; the
owner process must be alive and both ports must accept a TCP connection) or starts one
in this process: it seeds an empty store with a few days of simulated history, starts the
servers and the live simulator, and writes ``sandbox.json``. The sandbox lives as long
as the process that started it; the next caller after that process exits starts a new
one over the same store.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from kpi_pipeline.config import Settings, get_settings
from kpi_pipeline.metrics import record_error
from kpi_pipeline.sandbox.pubsub_server import RunningPubSubServer, start_pubsub_server
from kpi_pipeline.sandbox.rest_server import ConnectedApp, RunningRestServer, start_rest_server
from kpi_pipeline.sandbox.simulator import LiveSimulator, simulate
from kpi_pipeline.sandbox.store import INTEGRATION_USER, SandboxStore
from kpi_pipeline.sandbox.tokens import TokenRegistry

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
SANDBOX_CONSUMER_KEY = "kpi-sandbox-connected-app"
SEED_HISTORY_DAYS = 2.0  # inside the 72 h retention, so a new subscriber sees all of it
ENDPOINTS_FILE = "sandbox.json"
STORE_FILE = "sandbox.db"
JWT_KEY_FILE = "sandbox_jwt_key.pem"
_PRUNE_EVERY_S = 600.0


@dataclass(frozen=True, slots=True)
class SandboxEndpoints:
    pubsub_target: str  # host:port, plaintext gRPC
    rest_url: str  # login URL and instance URL
    access_token: str
    tenant_id: str


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
    ) -> None:
        if not access_token:
            raise ValueError(
                "SandboxRuntime needs a non-empty access_token (the static token it accepts)"
            )
        self.store_path = Path(store_path)
        self.pubsub_port = pubsub_port
        self.rest_port = rest_port
        self.access_token = access_token
        self.tenant_id = tenant_id
        self.jwt_private_key_pem: bytes | None = None
        if connected_app is None:
            connected_app, self.jwt_private_key_pem = generate_connected_app()
        self.connected_app = connected_app
        self.store: SandboxStore | None = None
        self.tokens = TokenRegistry(static_tokens=[access_token], tenant_id=tenant_id)
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
            self._pubsub = start_pubsub_server(
                self.store,
                host=HOST,
                port=self.pubsub_port,
                token_validator=self.tokens.is_valid,
                tenant_id=self.tenant_id,
            )
            self._rest = start_rest_server(
                self.store,
                host=HOST,
                port=self.rest_port,
                token_registry=self.tokens,
                connected_app=self.connected_app,
                tenant_id=self.tenant_id,
                integration_user_id=INTEGRATION_USER.id,
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
        return SandboxEndpoints(
            self.pubsub_target, self.rest_url, self.access_token, self.tenant_id
        )

    def is_alive(self) -> bool:
        if self._pubsub is None or self._rest is None:
            return False
        return _accepts(self.pubsub_target) and _accepts(self.rest_url)

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


# --- process-wide sandbox for the pipeline ----------------------------------------------------

_lock = threading.Lock()
_owned: dict[Path, tuple[int, SandboxRuntime]] = {}


def ensure_sandbox(
    data_dir: str | os.PathLike[str], *, settings: Settings | None = None, live: bool = True
) -> SandboxEndpoints:
    """Endpoints of this data dir's sandbox, starting it in this process if none is alive.

    Settings (``KPI_SANDBOX_*``) give the token, tenant id, seed and simulation rates."""
    directory = Path(data_dir).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    with _lock:
        owned = _owned.get(directory)
        if owned and owned[0] == os.getpid() and owned[1].is_alive():
            return owned[1].endpoints
        with _file_lock(directory / "sandbox.lock"):
            running = read_endpoints(directory)
            if running is not None:
                return running
            runtime = _start_owned(directory, settings or get_settings(), live=live)
            _owned[directory] = (os.getpid(), runtime)
            return runtime.endpoints


def read_endpoints(data_dir: str | os.PathLike[str]) -> SandboxEndpoints | None:
    """The live sandbox recorded in ``DATA_DIR/sandbox.json``, or None when none answers."""
    path = Path(data_dir) / ENDPOINTS_FILE
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        endpoints = SandboxEndpoints(**{k: info[k] for k in SandboxEndpoints.__slots__})
        pid = int(info["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not _pid_alive(pid) or not (
        _accepts(endpoints.pubsub_target) and _accepts(endpoints.rest_url)
    ):
        return None
    return endpoints


def _start_owned(directory: Path, settings: Settings, *, live: bool) -> SandboxRuntime:
    store_path = directory / STORE_FILE
    seed_store = SandboxStore(store_path)
    try:
        if seed_store.latest_replay() == 0:
            days = SEED_HISTORY_DAYS
            summary = simulate(
                seed_store,
                leads=int(settings.sandbox_leads_per_day * days),
                days=days,
                seed=settings.sandbox_seed,
            )
            log.info(
                "seeded the sandbox store %s with %d change events", store_path, summary.changes
            )
    finally:
        seed_store.close()
    runtime = SandboxRuntime(
        store_path, access_token=settings.sandbox_access_token, tenant_id=settings.sandbox_tenant_id
    ).start()
    if live and settings.sandbox_live_leads_per_hour > 0:
        runtime.start_live(
            seed=settings.sandbox_seed,
            leads_per_hour=settings.sandbox_live_leads_per_hour,
            response_speedup=settings.sandbox_speedup,
        )
    key_file = directory / JWT_KEY_FILE
    if runtime.jwt_private_key_pem is not None:  # lets a user try the JWT flow against the sandbox
        key_file.touch(mode=0o600)
        key_file.write_bytes(runtime.jwt_private_key_pem)
    info = {"pid": os.getpid(), "store": str(store_path), "jwt_private_key_file": str(key_file)}
    info |= {"jwt_consumer_key": SANDBOX_CONSUMER_KEY, "jwt_username": INTEGRATION_USER.email}
    _write_json(directory / ENDPOINTS_FILE, {**info, **asdict(runtime.endpoints)})
    atexit.register(_shutdown, directory)
    log.info("sandbox org started: Pub/Sub %s, REST %s", runtime.pubsub_target, runtime.rest_url)
    return runtime


def _shutdown(directory: Path) -> None:
    with _lock:
        owned = _owned.pop(directory, None)
    if owned is None or owned[0] != os.getpid():
        return
    owned[1].stop()
    with contextlib.suppress(OSError, ValueError):
        path = directory / ENDPOINTS_FILE
        if json.loads(path.read_text(encoding="utf-8")).get("pid") == os.getpid():
            path.unlink()


def shutdown_sandbox(data_dir: str | os.PathLike[str]) -> None:
    """Stop the sandbox this process started for ``data_dir`` (tests; atexit does it otherwise)."""
    _shutdown(Path(data_dir).resolve())


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with path.open("a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
    os.replace(tmp, path)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _accepts(target: str) -> bool:
    """True when a TCP connection to ``host:port`` or ``http://host:port`` succeeds."""
    hostport = target.split("://", 1)[-1].split("/", 1)[0]
    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1.0):
            return True
    except (OSError, ValueError):
        return False
