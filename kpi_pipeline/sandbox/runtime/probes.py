"""Is a sandbox alive? Process and port probes that need no cooperation from it."""

from __future__ import annotations

import os
import socket
from pathlib import Path


def pid_alive(pid: int) -> bool:
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


def is_sandbox_process(pid: int) -> bool:
    """Alive and a `sandbox serve` process, so a recycled pid is never signalled."""
    if not pid_alive(pid):
        return False
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True  # no procfs: the pid in sandbox.json is all we know
    return b"sandbox" in argv and b"serve" in argv


def accepts(target: str, timeout_s: float = 0.5) -> bool:
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
