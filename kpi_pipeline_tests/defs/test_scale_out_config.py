"""The opt-in scale-out: KPI_EXECUTOR picks the executor of the jobs that fan out and nothing
else; the shipped instance and worker files pass Dagster's and dagster-celery's schemas and
agree with the executor's Celery settings."""

from pathlib import Path

import pytest
import yaml
from dagster._config import validate_config
from dagster._core.instance.config import dagster_instance_config_schema

from kpi_pipeline.config import Settings, get_settings
from kpi_pipeline.definitions import defs
from kpi_pipeline.defs.executors import CELERY_CONFIG_SOURCE, CELERY_QUEUE_TAG

REPO_ROOT = Path(__file__).resolve().parents[2]
FANNING_OUT = ("kpi_backfill", "cdc_resync")
LIVE_PATH = ("process_cdc_batch", "cdc_stream")


@pytest.fixture(autouse=True)
def _fresh_settings():
    # The code location reads settings once per process; these tests change them.
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def _executor_names(monkeypatch: pytest.MonkeyPatch, **env: str) -> dict[str, str]:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    loaded = defs()
    return {job: loaded.resolve_job_def(job).executor_def.name for job in FANNING_OUT + LIVE_PATH}


def test_in_process_by_default_as_make_dev_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KPI_EXECUTOR", raising=False)
    assert Settings().executor == "in_process"
    assert set(_executor_names(monkeypatch).values()) == {"in_process"}


def test_celery_for_the_jobs_that_fan_out_and_never_the_live_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    names = _executor_names(monkeypatch, KPI_EXECUTOR="celery", KPI_CELERY_QUEUE_PREFIX="prod.")
    # The broker and backend come from the environment when a run starts, not at load.
    assert {job: names[job] for job in FANNING_OUT} == dict.fromkeys(FANNING_OUT, "celery")
    assert {job: names[job] for job in LIVE_PATH} == dict.fromkeys(LIVE_PATH, "in_process")
    loaded = defs()
    for job, queue in (("kpi_backfill", "prod.kpi"), ("cdc_resync", "prod.resync")):
        nodes = loaded.resolve_job_def(job).graph.node_dict.values()
        assert {node.tags.get(CELERY_QUEUE_TAG) for node in nodes} == {queue}


def test_an_unknown_executor_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KPI_EXECUTOR", "dask")
    with pytest.raises(ValueError, match="executor"):
        Settings()


def test_the_scale_out_instance_file_passes_the_instance_schema() -> None:
    config = yaml.safe_load((REPO_ROOT / "deploy" / "dagster.celery.yaml").read_text())
    result = validate_config(dagster_instance_config_schema(), config)
    assert result.success, result.errors
    limits = config["run_coordinator"]["config"]["tag_concurrency_limits"]
    assert {(lim["key"], str(lim["value"])) for lim in limits} >= {
        ("kpi/workload", "kpi_backfill"),
        ("kpi/workload", "cdc_resync"),
    }
    assert defs().resolve_job_def("kpi_backfill").tags["kpi/workload"] == "kpi_backfill"
    assert defs().resolve_job_def("cdc_resync").tags["kpi/workload"] == "cdc_resync"


def test_the_worker_file_passes_dagster_celery_and_matches_the_executor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dagster_celery.cli import get_validated_config

    monkeypatch.setenv("DAGSTER_CELERY_BROKER_URL", "pyamqp://guest:guest@127.0.0.1:5672//")
    monkeypatch.setenv("DAGSTER_CELERY_BACKEND_URL", "redis://127.0.0.1:6379/0")
    worker = get_validated_config(str(REPO_ROOT / "deploy" / "celery_worker.yaml"))
    assert worker["broker"] == "pyamqp://guest:guest@127.0.0.1:5672//"
    assert worker["backend"] == "redis://127.0.0.1:6379/0"
    # Both sides must agree: acks_late is applied by the consumer, the rest by both.
    assert worker["config_source"] == CELERY_CONFIG_SOURCE
