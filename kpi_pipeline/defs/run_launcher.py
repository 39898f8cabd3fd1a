"""A run launcher that can tell run monitoring when a local run worker has died.

Dagster's ``DefaultRunLauncher`` starts each run worker as a child process of the code
server but cannot say whether that worker is still alive (``supports_check_run_worker_health``
is False). The code server fails the run of a worker that dies while the server lives, but
when both go (the daemon's process group killed, ``dagster dev`` going down, a restart that
starts a new code server) nothing is left that knows the worker: its run stays STARTED,
holding a run slot, until the run's ``dagster/max_runtime`` fails it. This subclass
launches runs exactly like the default launcher and adds the health check: the worker logs
its pid in the "Started process for run (pid: N)." engine event, and the check looks that pid
up in ``/proc``. Run monitoring then fails a run whose worker is gone within one poll
interval, and the retry daemon re-executes it.

Single host only: the pid is only meaningful on the machine that runs the code server, which
for this launcher is the daemon's machine (code servers the daemon or ``dagster dev`` starts
itself listen on localhost). Where that cannot be established the check answers RUNNING, so
the run falls back to ``dagster/max_runtime`` rather than being failed on a guess.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from dagster import DagsterEventType, DagsterInstance
from dagster._core.launcher import CheckRunHealthResult, DefaultRunLauncher, WorkerStatus
from dagster._core.storage.dagster_run import DagsterRun
from dagster._core.storage.tags import GRPC_INFO_TAG

# The run worker's first engine event (dagster/_grpc/impl.py and dagster/_cli/api.py both
# word it this way, with the pid in its metadata).
_STARTED_MESSAGE_PREFIX = "Started process for run"
# The worker logs its pid among its first few engine events; scanning a bounded prefix keeps
# a check cheap on a run that has logged thousands of events.
_ENGINE_EVENTS_SCANNED = 50
# /proc start times have clock-tick resolution and the boot time whole seconds, so a live
# worker can appear to have started up to ~1 s after it logged its pid.
_START_TIME_SLACK_SECONDS = 2.0
_LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "0.0.0.0"})
_PROC = Path("/proc")


def _boot_time() -> float:
    for line in (_PROC / "stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    raise RuntimeError("/proc/stat has no btime line")


def _process_state(pid: int) -> tuple[str, float] | None:
    """(state letter, start time as epoch seconds) of a live pid, or None if it is gone."""
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) is in parentheses and may itself contain spaces or ")".
    fields = stat[stat.rindex(")") + 2 :].split()
    state = fields[0]
    start_ticks = int(fields[19])  # field 22 of proc(5), counted from field 3
    return state, _boot_time() + start_ticks / os.sysconf("SC_CLK_TCK")


class LocalProcessRunLauncher(DefaultRunLauncher):
    """``DefaultRunLauncher`` plus a run worker health check by pid, for a single host."""

    @property
    def supports_check_run_worker_health(self) -> bool:
        # Without /proc (macOS, Windows) there is no cheap pid-reuse-safe check: keep
        # Dagster's behaviour there (max_runtime only) instead of guessing.
        return _PROC.joinpath("self", "stat").exists()

    @staticmethod
    def _worker_pid(instance: DagsterInstance, run_id: str) -> tuple[int, float] | None:
        """(pid, time it was logged) of the run's worker, from the run's event log.

        Read on every check rather than cached: the query is one indexed, bounded read per
        STARTED run per poll, and a cache in the long-lived daemon would only grow.
        """
        records = instance.get_records_for_run(
            run_id, of_type=DagsterEventType.ENGINE_EVENT, limit=_ENGINE_EVENTS_SCANNED
        ).records
        found: tuple[int, float] | None = None
        for record in records:
            entry = record.event_log_entry
            event = entry.dagster_event
            if event is None or not (entry.message or "").startswith(_STARTED_MESSAGE_PREFIX):
                continue
            pid = event.engine_event_data.metadata.get("pid")
            if pid is not None:
                # Keep the last one: a resumed run logs a new worker after the old one.
                found = (int(str(pid.value)), entry.timestamp)
        return found

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        grpc_info = json.loads(run.tags.get(GRPC_INFO_TAG) or "{}")
        if grpc_info.get("host") and grpc_info["host"] not in _LOCAL_HOSTS:
            # Run monitoring fails a run on any answer but RUNNING/SUCCESS, UNKNOWN included,
            # so "cannot tell" must be RUNNING: max_runtime still ends a truly lost run.
            return CheckRunHealthResult(
                WorkerStatus.RUNNING,
                f"run worker is on code server host {grpc_info['host']}, not checked locally",
            )
        worker = self._worker_pid(self._instance, run.run_id)
        if worker is None:
            return CheckRunHealthResult(
                WorkerStatus.RUNNING, "run worker has not logged its pid yet"
            )
        pid, logged_at = worker
        state = _process_state(pid)
        if state is None or state[0] in ("Z", "X"):
            # Gone, or dead and waiting for the code server to reap it.
            return CheckRunHealthResult(
                WorkerStatus.FAILED,
                f"run worker process {pid} is no longer running (killed or crashed without "
                "reporting the run's end)",
                run_worker_id=str(pid),
            )
        if state[1] > logged_at + _START_TIME_SLACK_SECONDS:
            # The pid was reused by a process started after the worker logged it.
            return CheckRunHealthResult(
                WorkerStatus.FAILED,
                f"run worker process {pid} is gone (its pid now belongs to a newer process)",
                run_worker_id=str(pid),
            )
        return CheckRunHealthResult(WorkerStatus.RUNNING, run_worker_id=str(pid))
