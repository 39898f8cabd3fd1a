"""The pipeline's sandbox: one detached serve process per data dir.

``ensure_sandbox`` starts ``kpi-pipeline sandbox serve`` as its own session (output appended
to ``DATA_DIR/sandbox.log``) unless ``sandbox.json`` names a live one, and waits until it
serves; ``shutdown_sandbox`` stops it on purpose, whoever started it; ``read_endpoints``
reads a live one's endpoints."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import site
import subprocess
import sys
import threading
import time
from pathlib import Path

from kpi_pipeline.config import Settings, get_settings
from kpi_pipeline.sandbox.runtime.in_process import SandboxEndpoints
from kpi_pipeline.sandbox.runtime.probes import is_sandbox_process, pid_alive
from kpi_pipeline.sandbox.runtime.registration import (
    ENDPOINTS_FILE,
    LOCK_FILE,
    file_lock,
    live_registration,
    registration,
)

ACCESS_TOKEN_ENV = "KPI_SANDBOX_ACCESS_TOKEN"  # keeps the token off the command line

# The package's name, as before the split: log lines keep their logger name.
log = logging.getLogger(__package__)


STORE_FILE = "sandbox.db"
JWT_KEY_FILE = "sandbox_jwt_key.pem"


START_LOCK_FILE = "sandbox.start.lock"  # one starter at a time per data dir
LOG_FILE = "sandbox.log"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0


_LOG_ROTATE_BYTES = 5_000_000


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
    running = live_registration(endpoints_file)
    if running is not None:
        return running[1]
    with _lock, file_lock(directory / START_LOCK_FILE):
        running = live_registration(endpoints_file)  # another process may have started it
        if running is not None:
            return running[1]
        _reap_children()
        process = _spawn(directory, settings or get_settings(), live=live)
        _children[directory] = process
        return _wait_until_serving(process, directory, start_timeout_s)


def read_endpoints(data_dir: str | os.PathLike[str]) -> SandboxEndpoints | None:
    """The live sandbox recorded in ``DATA_DIR/sandbox.json``, or None when none answers."""
    running = live_registration(Path(data_dir) / ENDPOINTS_FILE)
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
    registered = registration(endpoints_file)
    stopped = False
    if registered is not None and is_sandbox_process(registered[0]):
        own = child if child is not None and child.pid == registered[0] else None
        _stop_process(registered[0], own, timeout_s)
        stopped = True
    if child is not None and child.poll() is None:  # started here but never registered
        _stop_process(child.pid, child, timeout_s)
        stopped = True
    if registered is not None and not pid_alive(registered[0]):
        # A process that was killed (not terminated) leaves its file behind.
        with file_lock(directory / LOCK_FILE):
            if registration(endpoints_file) == registered:
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
    # This file is kpi_pipeline/sandbox/runtime/detached.py: the root is three levels up.
    package_root = Path(__file__).resolve().parents[3]
    site_dirs = {Path(d).resolve() for d in [*site.getsitepackages(), site.getusersitepackages()]}
    entries = [] if package_root in site_dirs else [str(package_root)]
    return os.pathsep.join([*entries, *filter(None, [python_path])])


def _wait_until_serving(
    process: subprocess.Popen, directory: Path, timeout_s: float
) -> SandboxEndpoints:
    endpoints_file, log_path = directory / ENDPOINTS_FILE, directory / LOG_FILE
    deadline = time.monotonic() + timeout_s
    while True:
        running = live_registration(endpoints_file)
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
    while pid_alive(pid):
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
