"""Running the embedded sandbox org: both servers on loopback over one store.

``SandboxRuntime`` starts the Pub/Sub API gRPC server and the REST server (JWT token
endpoint included) over a ``SandboxStore`` file *in the calling process*, plus optionally a
``LiveSimulator`` thread so new activity keeps arriving. Tests that want the servers (and
their fault injection) in-process use it directly.

``ensure_sandbox(data_dir)`` is the entry point the pipeline's wiring calls when no real
org is configured. It runs the sandbox as its **own detached process**
(``kpi-pipeline sandbox serve --endpoints-file DATA_DIR/sandbox.json ...``, output appended
to ``DATA_DIR/sandbox.log``), because none of the processes that need it lives long: the
dagster-daemon replaces its code server about every minute and each run is a process of
its own; a sandbox living inside one of them died with it. The first caller starts it;
every later caller, in any process, reuses it while it is alive (the pid named in
``sandbox.json`` runs and neither of its ports refuses a TCP connection). Starters take
``sandbox.start.lock`` so concurrent callers end up with one sandbox.

The serve process seeds an empty store, registers itself in ``sandbox.json`` under
``sandbox.lock`` (refusing to start when a live sandbox is registered there), removes the
file on exit, and stops on SIGTERM/SIGINT. It also stops on its own once the process that
started it is gone and no Pub/Sub or REST request arrived for ``--idle-exit-seconds``
(``KPI_SANDBOX_IDLE_EXIT_SECONDS``, default 900; 0 never), so it does not linger after
``dagster dev`` stops. ``shutdown_sandbox(data_dir)`` stops it on purpose (tests).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import site
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from kpi_pipeline.config import Settings, get_settings
from kpi_pipeline.sandbox.pubsub_server import (
    KEEPALIVE_INTERVAL_S,
    RunningPubSubServer,
    start_pubsub_server,
)
from kpi_pipeline.sandbox.rest_server import ConnectedApp, RunningRestServer, start_rest_server
from kpi_pipeline.sandbox.simulator import LiveSimulator, simulate
from kpi_pipeline.sandbox.store import INTEGRATION_USER, SandboxStore
from kpi_pipeline.sandbox.tls import TlsFiles, ensure_tls_files
from kpi_pipeline.sandbox.tokens import TokenRegistry
from kpi_pipeline.telemetry.metrics import record_error

ACCESS_TOKEN_ENV = "KPI_SANDBOX_ACCESS_TOKEN"  # keeps the token off the command line

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
SANDBOX_CONSUMER_KEY = "kpi-sandbox-connected-app"
SEED_HISTORY_DAYS = 2.0  # inside the 72 h retention, so a new subscriber sees all of it
ENDPOINTS_FILE = "sandbox.json"
STORE_FILE = "sandbox.db"
JWT_KEY_FILE = "sandbox_jwt_key.pem"
LOCK_FILE = "sandbox.lock"  # guards sandbox.json
START_LOCK_FILE = "sandbox.start.lock"  # one starter at a time per data dir
LOG_FILE = "sandbox.log"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0
_PRUNE_EVERY_S = 600.0
_LOG_ROTATE_BYTES = 5_000_000


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
        return _accepts(self.pubsub_target) and _accepts(self.rest_url)

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


# --- seeding and registration (the serve process) ---------------------------------------------


def seed_if_empty(store_path: str | os.PathLike[str], *, leads_per_day: int, seed: int) -> int:
    """Seed an empty store with ``SEED_HISTORY_DAYS`` of simulated history.

    Returns the change events written (0 when the store already had some)."""
    store = SandboxStore(store_path)
    try:
        if store.latest_replay() != 0:
            return 0
        summary = simulate(
            store,
            leads=int(leads_per_day * SEED_HISTORY_DAYS),
            days=SEED_HISTORY_DAYS,
            seed=seed,
        )
    finally:
        store.close()
    log.info("seeded the sandbox store %s with %d change events", store_path, summary.changes)
    return summary.changes


class SandboxAlreadyRunning(RuntimeError):
    """The endpoints file names another live sandbox: serving the store twice would run two
    live simulators over it."""

    def __init__(self, endpoints_file: Path, pid: int, endpoints: SandboxEndpoints) -> None:
        super().__init__(
            f"{endpoints_file} names a live sandbox (pid {pid}, Pub/Sub "
            f"{endpoints.pubsub_target}, REST {endpoints.rest_url}); use that one, or stop it "
            f"first (kill {pid})"
        )
        self.pid = pid
        self.endpoints = endpoints


def start_registered(
    runtime: SandboxRuntime,
    endpoints_file: str | os.PathLike[str],
    *,
    prepare: Callable[[], object] = lambda: None,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Start ``runtime`` and record it in ``endpoints_file``, atomically under its lock.

    ``prepare`` (seeding the store, writing the JWT key) runs under the lock first, so two
    serve processes never seed one store. Raises ``SandboxAlreadyRunning`` (nothing started)
    when the file names another live sandbox."""
    path = Path(endpoints_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(path.with_name(LOCK_FILE)):
        running = _live_registration(path)
        if running is not None and running[0] != os.getpid():
            raise SandboxAlreadyRunning(path, *running)
        prepare()
        runtime.start()
        try:
            info = {"pid": os.getpid(), "store": str(runtime.store_path), **(extra or {})}
            _write_json(path, {**info, **asdict(runtime.endpoints)})
        except BaseException:
            runtime.stop()
            raise
    log.info("sandbox org serving: Pub/Sub %s, REST %s", runtime.pubsub_target, runtime.rest_url)


def unregister(endpoints_file: str | os.PathLike[str]) -> None:
    """Remove ``endpoints_file`` if it names this process (the serve process, on exit)."""
    path = Path(endpoints_file)
    with _file_lock(path.with_name(LOCK_FILE)):
        registered = _registration(path)
        if registered is not None and registered[0] == os.getpid():
            path.unlink(missing_ok=True)


def idle_exit_due(runtime: SandboxRuntime, *, parent_pid: int, idle_exit_seconds: float) -> bool:
    """True when the process that started the sandbox is gone and no request arrived for
    ``idle_exit_seconds`` (0: never)."""
    return (
        idle_exit_seconds > 0
        and runtime.idle_seconds() >= idle_exit_seconds
        and not _pid_alive(parent_pid)
    )


# --- the pipeline's sandbox: one detached process per data dir --------------------------------


class SandboxStartError(RuntimeError):
    """The sandbox process did not come up; the message names its log file."""


_lock = threading.Lock()
_children: dict[Path, subprocess.Popen] = {}  # sandboxes this process started, to reap them


def ensure_sandbox(
    data_dir: str | os.PathLike[str],
    *,
    settings: Settings | None = None,
    live: bool = True,
    start_timeout_s: float = START_TIMEOUT_S,
) -> SandboxEndpoints:
    """Endpoints of this data dir's sandbox, starting its serve process if none is alive.

    Settings (``KPI_SANDBOX_*``) give the token, tenant id, seed, simulation rates and the
    idle exit of a sandbox started here; a running one is reused as it is. Raises
    ``SandboxStartError`` naming ``DATA_DIR/sandbox.log`` when it does not come up within
    ``start_timeout_s``."""
    directory = Path(data_dir).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    endpoints_file = directory / ENDPOINTS_FILE
    running = _live_registration(endpoints_file)
    if running is not None:
        return running[1]
    with _lock, _file_lock(directory / START_LOCK_FILE):
        running = _live_registration(endpoints_file)  # another process may have started it
        if running is not None:
            return running[1]
        _reap_children()
        process = _spawn(directory, settings or get_settings(), live=live)
        _children[directory] = process
        return _wait_until_serving(process, directory, start_timeout_s)


def read_endpoints(data_dir: str | os.PathLike[str]) -> SandboxEndpoints | None:
    """The live sandbox recorded in ``DATA_DIR/sandbox.json``, or None when none answers."""
    running = _live_registration(Path(data_dir) / ENDPOINTS_FILE)
    return running[1] if running is not None else None


def shutdown_sandbox(
    data_dir: str | os.PathLike[str], *, timeout_s: float = STOP_TIMEOUT_S
) -> bool:
    """Stop the sandbox serving ``data_dir``, whoever started it: SIGTERM to the pid in
    ``sandbox.json`` (SIGKILL after ``timeout_s``), then wait for it to exit. Returns
    whether a sandbox process was stopped."""
    directory = Path(data_dir).resolve()
    endpoints_file = directory / ENDPOINTS_FILE
    with _lock:
        child = _children.pop(directory, None)
    registered = _registration(endpoints_file)
    stopped = False
    if registered is not None and _is_sandbox_process(registered[0]):
        own = child if child is not None and child.pid == registered[0] else None
        _stop_process(registered[0], own, timeout_s)
        stopped = True
    if child is not None and child.poll() is None:  # started here but never registered
        _stop_process(child.pid, child, timeout_s)
        stopped = True
    if registered is not None and not _pid_alive(registered[0]):
        # A process that was killed (not terminated) leaves its file behind.
        with _file_lock(directory / LOCK_FILE):
            if _registration(endpoints_file) == registered:
                endpoints_file.unlink(missing_ok=True)
    return stopped


def _serve_command(directory: Path, settings: Settings, *, live: bool) -> list[str]:
    live_rate = settings.sandbox_live_leads_per_hour if live else 0.0
    return [
        sys.executable, "-m", "kpi_pipeline.cli.main", "sandbox", "serve",
        "--store", str(directory / STORE_FILE),
        "--endpoints-file", str(directory / ENDPOINTS_FILE),
        "--jwt-key-out", str(directory / JWT_KEY_FILE),
        "--pubsub-port", "0", "--rest-port", "0",
        "--tenant-id", settings.sandbox_tenant_id,
        "--seed", str(settings.sandbox_seed),
        "--seed-leads-per-day", str(settings.sandbox_leads_per_day),
        "--live-leads-per-hour", repr(live_rate),
        "--speedup", repr(settings.sandbox_speedup),
        "--parent-pid", str(os.getpid()),
        "--idle-exit-seconds", repr(settings.sandbox_idle_exit_seconds),
        "--keepalive-seconds", repr(settings.sandbox_keepalive_seconds),
        # TLS like a real org, so the pipeline's TLS path is the one exercised.
        "--tls",
    ]  # fmt: skip


def _spawn(directory: Path, settings: Settings, *, live: bool) -> subprocess.Popen:
    log_path = directory / LOG_FILE
    _rotate(log_path)
    # The token travels in the environment, not on the command line `ps` shows.
    env = {**os.environ, ACCESS_TOKEN_ENV: settings.sandbox_access_token, "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = _python_path_with_package(env.get("PYTHONPATH"))
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            _serve_command(directory, settings, live=live),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # outlives this process and its process group
        )
    log.info("started the sandbox org process %d for %s (log %s)", process.pid, directory, log_path)
    return process


def _python_path_with_package(python_path: str | None) -> str:
    """PYTHONPATH that finds this package: a code server may import it from its working
    directory (workspace.yaml) rather than from an installed copy. Site dirs are left out
    (putting them on PYTHONPATH would rank them above the standard library)."""
    package_root = Path(__file__).resolve().parents[2]
    site_dirs = {Path(d).resolve() for d in [*site.getsitepackages(), site.getusersitepackages()]}
    entries = [] if package_root in site_dirs else [str(package_root)]
    return os.pathsep.join([*entries, *filter(None, [python_path])])


def _wait_until_serving(
    process: subprocess.Popen, directory: Path, timeout_s: float
) -> SandboxEndpoints:
    endpoints_file, log_path = directory / ENDPOINTS_FILE, directory / LOG_FILE
    deadline = time.monotonic() + timeout_s
    while True:
        running = _live_registration(endpoints_file)
        if running is not None:  # ours, or one that won a race with it
            return running[1]
        code = process.poll()
        if code is not None:
            raise SandboxStartError(
                f"the sandbox org process exited with code {code} before serving; "
                f"see {log_path}:\n{_tail(log_path)}"
            )
        if time.monotonic() > deadline:
            _stop_process(process.pid, process, STOP_TIMEOUT_S)
            raise SandboxStartError(
                f"the sandbox org process did not serve within {timeout_s:g} s (stopped it); "
                f"see {log_path}:\n{_tail(log_path)}"
            )
        time.sleep(0.05)


def _stop_process(pid: int, own: subprocess.Popen | None, timeout_s: float) -> None:
    """SIGTERM, wait, SIGKILL. ``own`` is our Popen for it (waiting on it reaps it)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        if own is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                own.wait(timeout=timeout_s)
                return
        elif _wait_gone(pid, timeout_s):
            return
    log.warning("sandbox process %d did not exit after SIGKILL", pid)


def _wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while _pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _reap_children() -> None:
    """Forget (and reap) sandbox processes of ours that have exited."""
    for directory, process in list(_children.items()):
        if process.poll() is not None:
            del _children[directory]


def _rotate(log_path: Path) -> None:
    """Appending across restarts keeps earlier failures readable; rotate when it grows big."""
    with contextlib.suppress(OSError):
        if log_path.stat().st_size > _LOG_ROTATE_BYTES:
            os.replace(log_path, log_path.with_name(log_path.name + ".1"))


def _tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-chars:]
    except OSError as exc:
        return f"(cannot read {path}: {exc.strerror})"


# --- sandbox.json --------------------------------------------------------------------------------


def _registration(path: Path) -> tuple[int, SandboxEndpoints] | None:
    """The pid and endpoints ``path`` records, alive or not (None: no readable file)."""
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        required = ("pubsub_target", "rest_url", "access_token", "tenant_id")
        endpoints = SandboxEndpoints(
            **{k: info[k] for k in required}, ca_file=info.get("ca_file") or None
        )
        return int(info["pid"]), endpoints
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _live_registration(path: Path) -> tuple[int, SandboxEndpoints] | None:
    """As ``_registration``, when its process runs and both of its ports accept."""
    registered = _registration(path)
    if registered is None:
        return None
    pid, endpoints = registered
    if not _pid_alive(pid) or not (
        _accepts(endpoints.pubsub_target) and _accepts(endpoints.rest_url)
    ):
        return None
    return registered


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


def write_private_file(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` readable by the owner only (the sandbox's JWT signing key)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _pid_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (exited, not yet reaped by its parent) is gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no procfs: trust kill(0)
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def _is_sandbox_process(pid: int) -> bool:
    """Alive and a `sandbox serve` process, so a recycled pid is never signalled."""
    if not _pid_alive(pid):
        return False
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True  # no procfs: the pid in sandbox.json is all we know
    return b"sandbox" in argv and b"serve" in argv


def _accepts(target: str, timeout_s: float = 0.5) -> bool:
    """True when something listens on ``host:port`` or ``http://host:port``.

    A refused connection means nothing listens (a dead process's ports refuse at once). A
    timeout counts as listening: on loopback it means a full accept queue (the REST server's
    backlog is 5, and a burst of connections overflows it), not a dead server."""
    hostport = target.split("://", 1)[-1].split("/", 1)[0]
    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return True
    except TimeoutError:
        return True
    except (OSError, ValueError):
        return False
