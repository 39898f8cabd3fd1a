"""``dagster dev -w workspace.yaml`` as ``make dev`` runs it, in scratch directories.

The repository's dagster.yaml with its ``.dagster_home/`` paths moved to a scratch
DAGSTER_HOME, a scratch KPI_DATA_DIR (ledger, sandbox org store) and a small sandbox
(``KPI_SANDBOX_LEADS_PER_DAY``); every other KPI_*/DAGSTER_* variable of the caller is
dropped, so the pipeline runs with the defaults ``make dev`` has (stream mode). Started in a
session of its own and stopped by SIGKILL to that process group (webserver, daemon, code
server, run workers); the sandbox org, which the code starts detached, is stopped through
``shutdown_sandbox``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
LOCATION = "kpi_pipeline"  # workspace.yaml's location_name
REPOSITORY = "__repository__"  # the name Dagster gives a Definitions object


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DagsterDev:
    def __init__(self, workdir: Path, *, leads_per_day: int = 20) -> None:
        self.workdir = workdir
        self.home = workdir / "dagster_home"
        self.data_dir = workdir / "kpi"
        self.log_path = workdir / "dagster_dev.log"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.commands: list[DagsterCommand] = []
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("KPI_", "DAGSTER_"))
            and k not in ("PROMETHEUS_MULTIPROC_DIR", "PYTHONPATH")
        }
        self.env.update(
            DAGSTER_HOME=str(self.home),
            KPI_DATA_DIR=str(self.data_dir),
            KPI_SANDBOX_LEADS_PER_DAY=str(leads_per_day),
            PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        )

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        text = (REPO_ROOT / "dagster.yaml").read_text().replace(".dagster_home/", f"{self.home}/")
        (self.home / "dagster.yaml").write_text(text)
        command = [str(BIN / "dagster"), "dev", "-w", "workspace.yaml"]
        command += ["-h", "127.0.0.1", "-p", str(self.port)]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                command,
                cwd=REPO_ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop(self) -> None:
        from kpi_pipeline.sandbox.runtime import shutdown_sandbox

        for command in self.commands:
            command.kill()
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=60)
            self.proc = None
        shutdown_sandbox(self.data_dir)

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    # --- waiting -------------------------------------------------------------------------------

    def wait_for(self, what: str, predicate: Callable[[], Any], timeout: float) -> Any:
        """Polls ``predicate`` every 2 s until it returns something truthy; on timeout fails
        with the last value or error and the tail of the dagster dev log."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(
                    f"dagster dev exited ({self.proc.returncode}) while waiting for {what}\n"
                    f"--- dagster dev log ---\n{self.log_tail()}"
                )
            try:
                value = predicate()
                if value:
                    return value
                last = value
            except Exception as exc:  # not up yet: connection refused, tables not created...
                last = f"{type(exc).__name__}: {exc}"
            time.sleep(2.0)
        raise AssertionError(
            f"timed out after {timeout:.0f} s waiting for {what}; last: {str(last)[:1500]}\n"
            f"--- dagster dev log ---\n{self.log_tail()}"
        )

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        answer = requests.post(
            f"{self.url}/graphql", json={"query": query, "variables": variables or {}}, timeout=60
        )
        answer.raise_for_status()
        body = answer.json()
        if body.get("errors"):
            raise RuntimeError(f"GraphQL errors: {body['errors']}")
        return body["data"]

    def location_loaded(self) -> bool:
        data = self.graphql(
            "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus "
            "locationOrLoadError { __typename } } } } }"
        )
        entries = data["workspaceOrError"]["locationEntries"]
        return any(
            e["name"] == LOCATION
            and e["loadStatus"] == "LOADED"
            and e["locationOrLoadError"]["__typename"] == "RepositoryLocation"
            for e in entries
        )

    def sensor_ticks(self, name: str, limit: int = 5) -> tuple[str, list[dict[str, Any]]]:
        """(status, newest ticks) of a sensor, as the webserver reports them."""
        data = self.graphql(
            "query($s: SensorSelector!, $n: Int) { sensorOrError(sensorSelector: $s) { "
            "__typename ... on Sensor { sensorState { status ticks(limit: $n) { status "
            "timestamp runIds } } } } }",
            {
                "s": {
                    "repositoryLocationName": LOCATION,
                    "repositoryName": REPOSITORY,
                    "sensorName": name,
                },
                "n": limit,
            },
        )
        sensor = data["sensorOrError"]
        assert sensor["__typename"] == "Sensor", sensor
        return sensor["sensorState"]["status"], sensor["sensorState"]["ticks"]

    # --- acting as an operator -----------------------------------------------------------------

    def dagster(self, *args: str, log_name: str) -> DagsterCommand:
        """Starts ``dagster ...`` against this instance (DAGSTER_HOME) and data dir, in a
        session of its own, output to ``log_name`` in the work dir; ``DagsterCommand.result``
        waits for it."""
        log_path = self.workdir / log_name
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                [str(BIN / "dagster"), *args],
                cwd=REPO_ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        command = DagsterCommand(" ".join(args), proc, log_path)
        self.commands.append(command)
        return command


class DagsterCommand:
    def __init__(self, args: str, proc: subprocess.Popen, log_path: Path) -> None:
        self.args, self.proc, self.log_path = args, proc, log_path

    def result(self, timeout: float) -> None:
        """Waits for the command; fails with its output unless it exited 0."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            code = None
        output = self.log_path.read_text(errors="replace")
        assert code == 0, (
            f"dagster {self.args} "
            + (f"exited {code}" if code is not None else f"still running after {timeout:.0f} s")
            + f"\n{output[-4000:]}"
        )

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=60)
