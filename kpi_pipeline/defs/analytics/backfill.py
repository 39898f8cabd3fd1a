"""kpi_backfill: the KPI rollups of a date range with a step per day, so an executor that
spreads steps (KPI_EXECUTOR=celery) computes the days on different workers at once.

Why a job with dynamic outputs rather than a backfill of the partitioned assets: the assets keep
``BackfillPolicy.single_run`` (one query and one rollup for a whole range: the cheapest way on
one machine). A multi-run backfill would fan out too, but costs a run launch per day (2-7 s
measured, DEPLOYMENT.md §10) and the backfill daemon's pacing; a step per day in one run costs
a Celery task. Each step writes the same CSV files the assets write (``write_kpi_window``) and
records an asset materialization for every KPI key and day, so the asset catalog shows the
partitions as materialized either way.
"""

from datetime import UTC, datetime

import dagster as dg

from kpi_pipeline.core.kpis.invariants import reconcile
from kpi_pipeline.defs.analytics.assets import daily_partitions, write_kpi_window
from kpi_pipeline.defs.asset_keys import KPI_KEYS
from kpi_pipeline.defs.executors import fanout_job
from kpi_pipeline.defs.resources import PipelineResource


class KpiBackfillConfig(dg.Config):
    start: str  # first day, YYYY-MM-DD (a KPI partition key)
    end: str  # last day, inclusive
    as_of: str | None = (
        None  # SLA status as of this instant (ISO-8601); default: when the run starts
    )


@dg.op(
    out=dg.DynamicOut(dict),
    description="The days from start to end (inclusive) as KPI partitions, one output each.",
)
def kpi_backfill_days(config: KpiBackfillConfig, pipeline: PipelineResource):
    partitions = daily_partitions(pipeline.settings().timezone)
    try:
        days = partitions.get_partition_keys_in_range(
            dg.PartitionKeyRange(config.start, config.end)
        )
    except Exception as exc:
        raise dg.Failure(
            description=f"kpi_backfill config start={config.start!r} end={config.end!r} is not a "
            f"range of KPI days (YYYY-MM-DD, from {partitions.start:%Y-%m-%d}, start <= end): {exc}"
        ) from exc
    if not days:
        raise dg.Failure(description=f"kpi_backfill: no day from {config.start} to {config.end}")
    # One as-of for every day, fixed here: steps that start at different times must not judge
    # SLAs against different clocks.
    as_of = config.as_of or datetime.now(UTC).isoformat()
    for day in days:
        yield dg.DynamicOutput({"day": day, "as_of": as_of}, mapping_key=day.replace("-", "_"))


@dg.op(
    retry_policy=dg.RetryPolicy(max_retries=2, delay=1),
    description="Every KPI rollup of one day, written as that day's CSV partitions.",
)
def kpi_rollup_day(context: dg.OpExecutionContext, item: dict, pipeline: PipelineResource) -> dict:
    settings = pipeline.settings()
    day = item["day"]
    window = daily_partitions(settings.timezone).time_window_for_partition_key(day)
    as_of = datetime.fromisoformat(item["as_of"].replace("Z", "+00:00")).astimezone(UTC)
    frame, computed = write_kpi_window(pipeline, window, [day], as_of=as_of)
    for name, table in computed.items():
        context.log_event(
            dg.AssetMaterialization(
                asset_key=KPI_KEYS[name],
                partition=day,
                metadata={"rows": len(table), "leads_in_window": len(frame)},
            )
        )
    problems = reconcile(frame, computed, tz=settings.timezone)
    return {"day": day, "leads": len(frame), "problems": problems[:50]}


@dg.op(
    description="Totals of the backfill; fails if a day's rollups do not reconcile with the ledger."
)
def kpi_backfill_summary(context: dg.OpExecutionContext, results: list[dict]) -> dict:
    results = sorted(results, key=lambda r: r["day"])
    problems = {r["day"]: r["problems"] for r in results if r["problems"]}
    summary = {
        "days": len(results),
        "first_day": results[0]["day"],
        "last_day": results[-1]["day"],
        "leads": sum(r["leads"] for r in results),
    }
    if problems:
        raise dg.Failure(
            description=f"KPI rollups do not reconcile with the ledger on {len(problems)} day(s)",
            metadata={**summary, "problems": dg.MetadataValue.json(problems)},
        )
    context.add_output_metadata(summary)
    return summary


def build_kpi_backfill(
    executor: dg.ExecutorDefinition, tags: dict[str, str] | None = None
) -> dg.JobDefinition:
    """``tags``: step tags (the Celery queue, ``executors.step_tags``)."""
    return fanout_job(
        name="kpi_backfill",
        description="KPI rollups of a date range, a step per day (fans out with KPI_EXECUTOR=celery).",
        executor=executor,
        tags=tags,
        plan=kpi_backfill_days,
        each=kpi_rollup_day,
        collect=kpi_backfill_summary,
    )
