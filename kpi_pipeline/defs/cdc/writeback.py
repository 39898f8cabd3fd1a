"""writeback_drain + writeback_sensor: the outbox is drained even when no traffic arrives.

Batch and re-sync runs drain the outbox after their own ledger writes. When changes stop
coming, nothing would send what they left behind (rows their drain could not confirm, or
claims of a run worker that died), so this sensor watches the outbox and requests a drain
run once rows have waited ``KPI_WRITEBACK_IDLE_DRAIN_SECONDS`` or a claim's lease ran out.
The work is ``kpi_pipeline.app.writeback``; this file only translates it into Dagster terms.
"""

from typing import Any

import dagster as dg

from kpi_pipeline.defs.resources import PipelineResource

WRITEBACK_JOB = "writeback_drain"
# Rows left behind wait at most about this much on top of KPI_WRITEBACK_IDLE_DRAIN_SECONDS;
# an evaluation is a few indexed aggregates on the ledger, cheap at this rate.
WRITEBACK_SENSOR_INTERVAL_S = 15
# A drain run that is queued or going will send what the sensor sees; a second one would only
# compete for the same rows.
_IN_PROGRESS = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


@dg.op(description="Sends the outbox's pending and expired-claim rows to Salesforce.")
def drain_outbox(context: dg.OpExecutionContext, pipeline: PipelineResource) -> dict[str, Any]:
    settings = pipeline.settings()
    if not settings.writeback_enabled:
        context.log.info("write-back is disabled (KPI_WRITEBACK_ENABLED=false); nothing sent")
        summary: dict[str, Any] = {"enabled": False}
    else:
        # The same drain batch and re-sync runs use (kpi_pipeline.app.writeback.drain_writeback
        # with this process's ledger, org, owner rules and lease setting).
        summary = pipeline.drain_writeback().summary()
        if summary.get("failed"):
            context.log.warning(f"write-back failed for good on {summary['failed']} row(s)")
    context.add_output_metadata({"write_back": dg.MetadataValue.json(summary)})
    return summary


@dg.job(
    # One op: separate processes per step would only add start-up time.
    executor_def=dg.in_process_executor,
    tags={
        # Rows a failed drain could not send stay in the outbox, and the sensor requests a new
        # drain while they wait: a Dagster retry would only duplicate that.
        "dagster/max_retries": 0,
    },
    description="Drains the write-back outbox to Salesforce when no batch run has (idle drain).",
)
def writeback_drain() -> None:
    drain_outbox()


def _drain_in_progress(instance: dg.DagsterInstance) -> bool:
    runs = instance.get_run_records(
        filters=dg.RunsFilter(job_name=WRITEBACK_JOB, statuses=_IN_PROGRESS), limit=1
    )
    return bool(runs)


def _needs_drain(health: Any, idle_seconds: float) -> str | None:
    """Why a drain is due, or None."""
    if health.expired_claims:
        return f"{health.expired_claims} claim(s) outlived their lease"
    age = health.oldest_pending_age_s
    if age is not None and age >= idle_seconds:
        return f"oldest pending row waited {age:.0f} s"
    return None


@dg.sensor(
    name="writeback_sensor",
    job=writeback_drain,
    minimum_interval_seconds=WRITEBACK_SENSOR_INTERVAL_S,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Requests writeback_drain when outbox rows wait longer than "
    "KPI_WRITEBACK_IDLE_DRAIN_SECONDS or a claim's lease ran out, unless a drain is under way.",
)
def writeback_sensor(
    context: dg.SensorEvaluationContext, pipeline: PipelineResource
) -> dg.SensorResult:
    settings = pipeline.settings()
    if not settings.writeback_enabled:
        return dg.SensorResult(skip_reason="write-back is disabled (KPI_WRITEBACK_ENABLED=false)")
    health = pipeline.ledger().outbox_health()
    reason = _needs_drain(health, settings.writeback_idle_drain_seconds)
    if reason is None:
        return dg.SensorResult(skip_reason=f"outbox keeps up (backlog {health.backlog})")
    if _drain_in_progress(context.instance):
        return dg.SensorResult(skip_reason=f"{reason}; a writeback_drain run is under way")
    # No run key: the in-progress guard above is what keeps drains from piling up, and a key
    # would stop the next drain once this one ended with rows still waiting.
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=None,
                tags={"kpi/reason": reason[:200], "kpi/backlog": str(health.backlog)},
            )
        ]
    )
