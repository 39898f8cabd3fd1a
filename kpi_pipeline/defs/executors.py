"""The executor of the jobs that fan out (``kpi_backfill``, ``cdc_resync``), chosen by
``KPI_EXECUTOR`` when the code location loads.

``in_process`` (the default, ``make dev``): every step in the run's own process, as before.
``celery``: every step becomes a Celery task on the broker; ``dagster-celery worker start``
processes on any host run them (DEPLOYMENT.md §4). The live path never uses it: a batch of a
few events would pay a broker round trip and a worker's step start per op.
"""

from typing import Any

import dagster as dg

from kpi_pipeline.config import Settings

# Celery settings both sides need: the executor's app (which publishes) and the workers
# (deploy/celery_worker.yaml, which consume). acks_late + reject_on_worker_lost: a task is
# acknowledged only after its step ran, so a worker killed mid-step leaves the message on the
# broker and another worker runs the step again (steps are idempotent against the ledger).
# prefetch 1: a worker holds one task at a time, so a slow step does not hide queued ones.
CELERY_CONFIG_SOURCE: dict[str, Any] = {
    "task_acks_late": True,
    "task_reject_on_worker_lost": True,
    "worker_prefetch_multiplier": 1,
    "result_expires": 86_400,
}
BROKER_ENV = "DAGSTER_CELERY_BROKER_URL"
BACKEND_ENV = "DAGSTER_CELERY_BACKEND_URL"


CELERY_QUEUE_TAG = "dagster-celery/queue"


def step_tags(settings: Settings, workload: str) -> dict[str, str]:
    """The Celery queue of a workload's steps: KPI steps are CPU-bound (pandas), re-sync steps
    wait on REST, so their workers are sized differently (DEPLOYMENT.md §4)."""
    if settings.executor != "celery":
        return {}
    return {CELERY_QUEUE_TAG: f"{settings.celery_queue_prefix}{workload}"}


def fanout_executor(settings: Settings) -> dg.ExecutorDefinition:
    if settings.executor == "in_process":
        return dg.in_process_executor
    try:
        from dagster_celery import celery_executor
    except ImportError as exc:
        raise RuntimeError(
            "KPI_EXECUTOR=celery needs dagster-celery: install the package with its celery "
            "extra (pip install 'kpi_pipeline[celery]'), or unset KPI_EXECUTOR"
        ) from exc
    return celery_executor.configured(
        {
            "broker": {"env": BROKER_ENV},
            "backend": {"env": BACKEND_ENV},
            "config_source": CELERY_CONFIG_SOURCE,
        },
        name="celery",
    )


def fanout_job(
    *,
    name: str,
    description: str,
    executor: dg.ExecutorDefinition,
    tags: dict[str, str] | None,
    plan: dg.OpDefinition,
    each: dg.OpDefinition,
    collect: dg.OpDefinition,
) -> dg.JobDefinition:
    """The shape of every job that fans out: ``plan`` yields dynamic outputs, ``each`` runs
    once per output (a step each, so the Celery executor spreads them over workers) and
    ``collect`` gets all their results. ``tags``: step tags (the Celery queue, ``step_tags``)."""
    tags = tags or {}

    @dg.job(
        name=name,
        executor_def=executor,
        tags={"kpi/workload": name},
        description=description,
    )
    def fanned_out():
        items = plan.tag(tags)()
        collect.tag(tags)(items.map(each.tag(tags)).collect())

    return fanned_out
