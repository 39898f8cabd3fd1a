"""cdc_resync: close re-sync windows (gap events, overflow, refused replay ids) over REST.

The work is ``kpi_pipeline.app.resync``; this file only translates it into Dagster terms. The
sensor requests a run while windows are open and due, with a run key made of the window
ids and their attempt counts: re-evaluating never launches the same work twice, and a
failed attempt (which bumps its count in the window's detail) is retried after a backoff.
"""

from datetime import UTC, datetime

import dagster as dg

from kpi_pipeline.adapters.ledger.resync_windows import LedgerResyncWindows
from kpi_pipeline.app.resync import ResyncReport, resync_open_windows, run_key_for, windows_due
from kpi_pipeline.defs.executors import fanout_job
from kpi_pipeline.defs.resources import PipelineResource

RESYNC_SENSOR_INTERVAL_S = 60


class ResyncConfig(dg.Config):
    window_ids: list[int] = []  # empty: every open window


def _metadata(reports: list[ResyncReport]) -> dict:
    metadata: dict = {
        "windows": len(reports),
        "closed": sum(r.status == "closed" for r in reports),
        "failed": sum(r.status == "failed" for r in reports),
        "records_read": sum(r.records_read for r in reports),
    }
    for report in reports:
        metadata[f"window_{report.window_id}"] = dg.MetadataValue.json(report.to_json())
    return metadata


@dg.op(
    out=dg.DynamicOut(int),
    description="The open re-sync windows to close (config window_ids; empty: every open one).",
)
def resync_plan(config: ResyncConfig, pipeline: PipelineResource):
    wanted = set(config.window_ids)
    for window in LedgerResyncWindows(pipeline.ledger()).open_resync_windows():
        if not wanted or window.id in wanted:
            yield dg.DynamicOutput(window.id, mapping_key=f"w{window.id}")


@dg.op(description="Re-reads one window's records over REST and applies them (a step per window).")
def resync_window(window_id: int, pipeline: PipelineResource) -> dict:
    # A window another step (or a redelivered task) already closed gives no report: nothing to do.
    reports = resync_open_windows(
        LedgerResyncWindows(pipeline.ledger()),
        pipeline.salesforce_rest(),
        pipeline.processor(),
        now=datetime.now(UTC),
        window_ids=[window_id],
    )
    return {"window_id": window_id, "reports": [r.to_json() for r in reports]}


@dg.op(
    description="Drains the write-back the windows produced and reports them; fails if one failed."
)
def resync_windows(
    context: dg.OpExecutionContext, results: list[dict], pipeline: PipelineResource
) -> dict:
    reports = [ResyncReport(**r) for result in results for r in result["reports"]]
    reports.sort(key=lambda r: r.window_id)
    write_back = _drain(context, pipeline) if any(r.status == "closed" for r in reports) else None
    metadata = _metadata(reports)
    failed = [r for r in reports if r.status == "failed"]
    if failed:
        # The windows stay open with their error; the sensor retries them after a backoff.
        raise dg.Failure(
            description=f"{len(failed)} re-sync window(s) failed: "
            + "; ".join(f"{r.window_id}: {r.error}" for r in failed)[:2000],
            metadata=metadata,
        )
    context.add_output_metadata(metadata)
    return {"windows": [r.to_json() for r in reports], "write_back": write_back}


def _drain(context: dg.OpExecutionContext, pipeline: PipelineResource) -> dict | None:
    """Routing and first-response fields the re-sync produced go out like a batch's do."""
    if not pipeline.settings().writeback_enabled:
        return None
    result = pipeline.drain_writeback()
    if result.report.failed:
        context.log.warning(f"write-back failed for good on outbox items: {result.report.failed}")
    return result.summary()


def build_cdc_resync(
    executor: dg.ExecutorDefinition, tags: dict[str, str] | None = None
) -> dg.JobDefinition:
    """One step per window (dynamic outputs): with the celery executor the windows of one run
    are re-read on different workers at once; the ledger's per-lead isolation keeps two windows
    that touch the same lead safe. ``tags``: step tags (the Celery queue)."""
    return fanout_job(
        name="cdc_resync",
        description="Closes re-sync windows: REST re-read of the records CDC could not deliver.",
        executor=executor,
        tags=tags,
        plan=resync_plan,
        each=resync_window,
        collect=resync_windows,
    )


# The single-process job (tests, and KPI_EXECUTOR=in_process); build_defs builds the one the
# settings ask for.
cdc_resync = build_cdc_resync(dg.in_process_executor)


@dg.sensor(
    name="resync_sensor",
    job_name="cdc_resync",
    minimum_interval_seconds=RESYNC_SENSOR_INTERVAL_S,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Requests a cdc_resync run while re-sync windows are open (and not backing off).",
)
def resync_sensor(context: dg.SensorEvaluationContext, pipeline: PipelineResource):
    open_windows = LedgerResyncWindows(pipeline.ledger()).open_resync_windows()
    due = windows_due(open_windows, datetime.now(UTC))
    if not due:
        waiting = len(open_windows)
        return dg.SkipReason(
            f"{waiting} open re-sync window(s) backing off after failures"
            if waiting
            else "no open re-sync windows"
        )
    return dg.RunRequest(
        run_key=run_key_for(due),
        run_config={"ops": {"resync_plan": {"config": {"window_ids": [w.id for w in due]}}}},
        tags={"kpi/resync_windows": ",".join(str(w.id) for w in due)[:200]},
    )
