"""The serve process's side: seeding the store and registering in ``sandbox.json``.

``sandbox.json`` names the live sandbox of a data dir (its pid and endpoints); it is written
and removed under ``sandbox.lock``, so a second serve process over the same store refuses to
start and two never seed one store. ``idle_exit_due`` tells the serve process when to stop on
its own (its starter gone and no request for a while)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from kpi_pipeline.sandbox.runtime.in_process import SandboxEndpoints, SandboxRuntime
from kpi_pipeline.sandbox.runtime.probes import accepts, pid_alive
from kpi_pipeline.sandbox.simulator import simulate
from kpi_pipeline.sandbox.store import SandboxStore

# The package's name, as before the split: log lines keep their logger name.
log = logging.getLogger(__package__)


SEED_HISTORY_DAYS = 2.0  # inside the 72 h retention, so a new subscriber sees all of it
ENDPOINTS_FILE = "sandbox.json"


LOCK_FILE = "sandbox.lock"  # guards sandbox.json


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
    with file_lock(path.with_name(LOCK_FILE)):
        running = live_registration(path)
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
    with file_lock(path.with_name(LOCK_FILE)):
        registered = registration(path)
        if registered is not None and registered[0] == os.getpid():
            path.unlink(missing_ok=True)


def idle_exit_due(runtime: SandboxRuntime, *, parent_pid: int, idle_exit_seconds: float) -> bool:
    """True when the process that started the sandbox is gone and no request arrived for
    ``idle_exit_seconds`` (0: never)."""
    return (
        idle_exit_seconds > 0
        and runtime.idle_seconds() >= idle_exit_seconds
        and not pid_alive(parent_pid)
    )


def registration(path: Path) -> tuple[int, SandboxEndpoints] | None:
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


def live_registration(path: Path) -> tuple[int, SandboxEndpoints] | None:
    """As ``registration``, when its process runs and both of its ports accept."""
    registered = registration(path)
    if registered is None:
        return None
    pid, endpoints = registered
    if not pid_alive(pid) or not (accepts(endpoints.pubsub_target) and accepts(endpoints.rest_url)):
        return None
    return registered


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
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
