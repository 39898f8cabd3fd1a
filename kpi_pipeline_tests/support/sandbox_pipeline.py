"""The Dagster shell's pipeline resource over a small embedded sandbox org, for the tests
that drive cdc_sensor, process_cdc_batch, cdc_stream or writeback_drain in one process."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from kpi_pipeline import wiring
from kpi_pipeline.definitions import defs
from kpi_pipeline.defs.resources import PipelineResource
from kpi_pipeline.sandbox.runtime import shutdown_sandbox

# 30 seeded leads, no live simulation (only what a test commits changes the org), one seed.
SMALL_SANDBOX_ENV = {
    "KPI_SANDBOX_LEADS_PER_DAY": "30",
    "KPI_SANDBOX_LIVE_LEADS_PER_HOUR": "0",
    "KPI_SANDBOX_SEED": "5",
    # A tick's fetch stops once the stream is idle (KPI_CDC_IDLE_RETURN_SECONDS), so this
    # budget only matters when the machine is slow: a test's first tick also starts and seeds
    # the sandbox org, which beside another test worker has taken longer than the default 8 s.
    "KPI_CDC_FETCH_TIMEOUT_SECONDS": "30",
}


@contextlib.contextmanager
def small_sandbox_pipeline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **env: str
) -> Iterator[PipelineResource]:
    """A PipelineResource whose data directory is under ``tmp_path`` and whose org is a small
    sandbox, with ``env`` set on top of SMALL_SANDBOX_ENV; the sandbox is shut down after."""
    for name, value in {**SMALL_SANDBOX_ENV, **env}.items():
        monkeypatch.setenv(name, value)
    wiring.reset_cache()  # settings are read again, with this environment
    data_dir = tmp_path / "kpi"
    try:
        yield PipelineResource(data_dir=str(data_dir))
    finally:
        wiring.reset_cache()
        shutdown_sandbox(data_dir)


def run_processing(
    pipeline: PipelineResource,
    instance: dg.DagsterInstance,
    run_config: dict,
    *,
    tags: dict[str, str] | None = None,
    raise_on_error: bool = True,
) -> dg.ExecuteInProcessResult:
    """process_cdc_batch in this process, as the sensor's run request asks (config and tags)."""
    return (
        defs()
        .resolve_job_def("process_cdc_batch")
        .execute_in_process(
            run_config=run_config,
            instance=instance,
            resources={"pipeline": pipeline},
            tags=tags,
            raise_on_error=raise_on_error,
        )
    )
