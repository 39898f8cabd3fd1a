"""Recovery from a killed run worker under ``dagster-daemon run`` (LocalProcessRunLauncher).

Starts ``dagster-daemon run -w workspace.yaml`` on a fresh DAGSTER_HOME with the repository's
dagster.yaml (run launcher, run monitoring and retries as committed; storage moved into a
scratch directory) against the embedded sandbox org, waits for a ``process_cdc_batch`` run
to be STARTED, then SIGKILLs:

* ``--kill worker``: the run worker alone (its code server lives and fails the run itself);
* ``--kill group``: the daemon's whole process group (daemon, code server, run worker) and
  starts the daemon again at once: only the launcher's worker health check can fail the run
  before its ``dagster/max_runtime``.

Prints seconds from the kill to the run FAILED and to its automatic retry SUCCESS.

    python bench/bench_killed_worker.py [--kill group|worker]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _instance_yaml(home: Path) -> None:
    config = yaml.safe_load((REPO_ROOT / "dagster.yaml").read_text())
    config["storage"] = {"sqlite": {"base_dir": str(home / "storage")}}
    for key, sub in (("local_artifact_storage", "artifacts"), ("compute_logs", "compute_logs")):
        config[key]["config"]["base_dir"] = str(home / sub)
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def _start_daemon(env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("ab") as out:
        return subprocess.Popen(
            [str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, killed as one
        )


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kill", choices=("group", "worker"), default="group")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench_killed_worker_"))
    home, data_dir = root / "dagster_home", root / "kpi"
    _instance_yaml(home)
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "KPI_DATA_DIR": str(data_dir),
        "KPI_SANDBOX_SEED": "11",
        "KPI_SANDBOX_LEADS_PER_DAY": "40",
        "KPI_SANDBOX_LIVE_LEADS_PER_HOUR": "0",
        "KPI_CDC_MODE": "sensor",  # it kills a process_cdc_batch run's worker
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    # This process reads the same instance; set before Dagster is imported.
    os.environ.update(env)
    import dagster as dg
    from dagster._core.storage.dagster_run import RunsFilter
    from dagster._core.storage.tags import PARENT_RUN_ID_TAG

    from kpi_pipeline.sandbox.runtime import shutdown_sandbox

    instance = dg.DagsterInstance.get()  # creates the storage before the daemon starts
    log = root / "daemon.log"
    daemon = _start_daemon(env, log)
    try:
        victim: tuple[dg.DagsterRun, int] | None = None
        deadline = time.monotonic() + 300
        while victim is None and time.monotonic() < deadline:
            started = dg.DagsterRunStatus.STARTED
            for run in instance.get_runs(
                RunsFilter(job_name="process_cdc_batch", statuses=[started])
            ):
                health = instance.run_launcher.check_run_worker_health(run)
                if health.run_worker_id:
                    victim = (run, int(health.run_worker_id))
                    break
            time.sleep(0.1)
        if victim is None:
            raise SystemExit(f"no process_cdc_batch run caught while STARTED; see {log}")
        run, pid = victim
        if args.kill == "group":
            _kill_group(daemon)
            killed_at = time.time()
            daemon = _start_daemon(env, log)
        else:
            os.kill(pid, signal.SIGKILL)
            killed_at = time.time()

        failed_s = retry_s = None
        message = ""
        while time.time() - killed_at < 700 and retry_s is None:
            if (
                failed_s is None
                and instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
            ):
                failed_s = time.time() - killed_at
            if failed_s is not None:
                retries = instance.get_runs(RunsFilter(tags={PARENT_RUN_ID_TAG: run.run_id}))
                if retries and retries[0].status == dg.DagsterRunStatus.SUCCESS:
                    retry_s = time.time() - killed_at
            time.sleep(0.5)
        for entry in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE):
            message = entry.message
        print(
            json.dumps(
                {
                    "kill": args.kill,
                    "run_failed_s": failed_s and round(failed_s, 1),
                    "retry_succeeded_s": retry_s and round(retry_s, 1),
                    "failure_message": message,
                }
            )
        )
    finally:
        _kill_group(daemon)
        shutdown_sandbox(data_dir)


if __name__ == "__main__":
    main()
