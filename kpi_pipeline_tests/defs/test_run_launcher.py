"""LocalProcessRunLauncher with real processes: a real instance launches a real run through a
real code server; the run worker and its code server are SIGKILLed and run monitoring must
fail the run at its next poll instead of waiting for dagster/max_runtime."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.events import EngineEventData
from dagster._core.launcher import CheckRunHealthResult, WorkerStatus
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import PythonFileTarget
from dagster._daemon.monitoring.run_monitoring import execute_run_monitoring_iteration

from kpi_pipeline.defs.run_launcher import LocalProcessRunLauncher
from kpi_pipeline_tests.support import napping_job as napping_job_module
from kpi_pipeline_tests.support.waiting import poll

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="the check reads /proc"),
]

LAUNCHER = {"module": "kpi_pipeline.defs.run_launcher", "class": "LocalProcessRunLauncher"}


def _wait(predicate: Callable[[], object], timeout: float, what: str) -> object:
    value = poll(predicate, timeout, 0.25)
    if value:
        return value
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test(overrides={"run_launcher": LAUNCHER}) as inst:
        yield inst


def _failed_health(instance: dg.DagsterInstance, run_id: str) -> CheckRunHealthResult | None:
    result = instance.run_launcher.check_run_worker_health(instance.get_run_by_id(run_id))
    return result if result.status == WorkerStatus.FAILED else None


def _parent_pid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def _worker_pid(instance: dg.DagsterInstance, run_id: str) -> int:
    result = instance.run_launcher.check_run_worker_health(instance.get_run_by_id(run_id))
    assert result.run_worker_id, result
    return int(result.run_worker_id)


def test_killed_worker_fails_the_run_at_the_next_monitoring_poll(
    instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    assert isinstance(instance.run_launcher, LocalProcessRunLauncher)
    assert instance.run_launcher.supports_check_run_worker_health
    target = PythonFileTarget(
        python_file=napping_job_module.__file__,
        attribute=None,
        working_directory=str(tmp_path),
        location_name="napping",
    )
    with WorkspaceProcessContext(instance, target) as process_context:
        workspace = process_context.create_request_context()
        location = workspace.get_code_location("napping")
        remote_job = location.get_repository("__repository__").get_full_job("napping_job")
        run = instance.create_run_for_job(
            job_def=napping_job_module.napping_job,
            remote_job_origin=remote_job.get_remote_origin(),
            job_code_origin=remote_job.get_python_origin(),
        )
        instance.launch_run(run.run_id, workspace)
        _wait(
            lambda: instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED,
            45,
            "the run to start",
        )

        health = instance.run_launcher.check_run_worker_health(instance.get_run_by_id(run.run_id))
        assert health.status == WorkerStatus.RUNNING, health
        pid = _worker_pid(instance, run.run_id)
        assert pid != os.getpid()

        # The code server fails a run whose worker dies while the server lives (its cleanup
        # thread watches its children). What nothing else notices is the worker dying with
        # its code server, as when the daemon's process group is killed: kill both.
        code_server = _parent_pid(pid)
        assert code_server != os.getpid()
        os.kill(code_server, signal.SIGKILL)
        os.kill(pid, signal.SIGKILL)
        health = _wait(
            lambda: _failed_health(instance, run.run_id),
            10,
            "the health check to notice the killed worker",
        )
        assert f"process {pid} is no longer running" in health.msg
        # Neither the worker nor its code server could report anything: only the health
        # check can end this run before its max_runtime.
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED

        # One pass of Dagster's own run monitoring (what dagster-daemon runs every
        # poll_interval_seconds) now fails the run.
        list(execute_run_monitoring_iteration(process_context, logging.getLogger("test")))
        failed = instance.get_run_by_id(run.run_id)
        assert failed.status == dg.DagsterRunStatus.FAILURE


def test_a_reused_pid_is_not_mistaken_for_the_worker(instance: dg.DagsterInstance) -> None:
    """A pid logged an hour ago that now belongs to a process started seconds ago is not the
    worker: the check compares the process's start time with when the pid was logged."""
    run = instance.create_run_for_job(
        job_def=napping_job_module.napping_job, status=dg.DagsterRunStatus.STARTED
    )
    newcomer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _wait(lambda: Path(f"/proc/{newcomer.pid}/stat").exists(), 5, "the process")
        hour_ago = time.time() - 3600
        instance.handle_new_event(
            dg.EventLogEntry(
                error_info=None,
                level=logging.DEBUG,
                user_message="",
                run_id=run.run_id,
                timestamp=hour_ago,
                dagster_event=dg.DagsterEvent(
                    event_type_value=dg.DagsterEventType.ENGINE_EVENT.value,
                    job_name=run.job_name,
                    message=f"Started process for run (pid: {newcomer.pid}).",
                    event_specific_data=EngineEventData.in_process(newcomer.pid),
                ),
            )
        )
        # The entry's message (what the check matches) is the DagsterEvent's message.
        health = instance.run_launcher.check_run_worker_health(instance.get_run_by_id(run.run_id))
        assert health.status == WorkerStatus.FAILED, health
        assert "newer process" in health.msg
    finally:
        newcomer.kill()
        newcomer.wait()


def test_no_pid_yet_is_not_a_failure(instance: dg.DagsterInstance) -> None:
    """Run monitoring fails a run on any answer but RUNNING/SUCCESS, so 'cannot tell' must
    stay RUNNING (max_runtime still applies)."""
    run = instance.create_run_for_job(
        job_def=napping_job_module.napping_job, status=dg.DagsterRunStatus.STARTED
    )
    health = instance.run_launcher.check_run_worker_health(run)
    assert health.status == WorkerStatus.RUNNING
    assert "not logged its pid" in health.msg
