"""`kpi-pipeline sandbox serve` as a child process, with the endpoints it prints parsed."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ServedOrg:
    pubsub_target: str
    rest_url: str
    access_token: str
    tenant_id: str
    ca_file: str | None
    banner: str
    process: subprocess.Popen


@contextmanager
def serve(
    store: Path, *, args: Sequence[str] = (), token: str = "tok-123", timeout_s: float = 30.0
) -> Iterator[ServedOrg]:
    """Run ``sandbox serve --store STORE ARGS...`` until the block ends (SIGTERM, then kill)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "kpi_pipeline.cli.main", "sandbox", "serve", "--store", str(store),
         "--access-token", token, *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=store.parent,
        env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True,
    )  # fmt: skip
    try:
        lines: list[str] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not any(
            line.startswith("  tenant id") for line in lines
        ):
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
        if any(a == "--tls" for a in args):  # the CA line follows the tenant id
            lines.append(proc.stdout.readline())
        text = "".join(lines)
        pubsub = re.search(r"pubsub: (127\.0\.0\.1:\d+)", text)
        rest = re.search(r"rest: (https?://127\.0\.0\.1:\d+)", text)
        tenant = re.search(r"tenant id: (\S+)", text)
        if not (pubsub and rest and tenant):
            err = proc.stderr.read() if proc.poll() is not None else ""
            raise AssertionError(f"sandbox serve did not print its endpoints:\n{text}{err}")
        ca = re.search(r"CA file: (\S+)", text)
        yield ServedOrg(
            pubsub.group(1), rest.group(1), token, tenant.group(1),
            ca.group(1) if ca else None, text, proc,
        )  # fmt: skip
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        proc.stdout.close()
        proc.stderr.close()
