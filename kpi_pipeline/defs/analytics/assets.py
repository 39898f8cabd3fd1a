"""Analyst-facing assets: the lead ledger, KPI rollups (daily) and the flywheel log (daily).

Lineage: cdc_events → lead_ledger → kpi_* and flywheel_logs → flywheel_index.

Partitioned assets write their own files (one per day and rollup), so a single run can
materialize a whole date range (backfills) without the pickling IO manager, which cannot
store several partitions in one output (CONTRACTS.md §8.1).
"""

import dataclasses
from datetime import UTC, datetime, timedelta

import dagster as dg
import pandas as pd

from kpi_pipeline.adapters.kpi_files import kpi_partition_path, write_kpi_partition
from kpi_pipeline.core.kpis import rollups
from kpi_pipeline.core.kpis.invariants import reconcile
from kpi_pipeline.core.kpis.markdown import markdown_table
from kpi_pipeline.core.kpis.sla_views import sla_over_days
from kpi_pipeline.defs.asset_keys import CDC_EVENTS_KEY, KPI_KEYS, LEDGER_KEY
from kpi_pipeline.defs.resources import PipelineResource

KPI_GROUP = "kpis"
KPI_DESCRIPTIONS = {
    "ttfr_overall": "Leads, responded, coverage and TTFR p50/p90/p95 (minutes) per day of creation.",
    "ttfr_by_owner": "TTFR per owner and day: leads, responded, coverage, p50/p90/p95 minutes.",
    "sla": "SLA met / breached / pending per day and breach % = breached ÷ (met + breached).",
    "sla_by_owner": "SLA met / breached / pending and breach % per day and current lead owner.",
    "sla_by_rule": "SLA met / breached / pending and breach % per day, policy version and rule.",
    "assignment_latency": "Assignment latency p50/p95 (minutes) by policy version and rule.",
    "template_usage": "Templates recommended, applied and acceptance = applied ÷ recommended.",
}
DAILY_FRESHNESS = dg.FreshnessPolicy.time_window(
    fail_window=timedelta(hours=26), warn_window=timedelta(hours=25)
)


class AsOfConfig(dg.Config):
    """SLA status is evaluated as of this instant (ISO-8601); default: now."""

    as_of: str | None = None


def _as_of(config: AsOfConfig) -> datetime:
    if config.as_of:
        return datetime.fromisoformat(config.as_of.replace("Z", "+00:00")).astimezone(UTC)
    return datetime.now(UTC)


@dg.asset(
    key=LEDGER_KEY,
    deps=[CDC_EVENTS_KEY],
    group_name="ledger",
    kinds={"sql"},
    description=(
        "The lead ledger: merged record states, lead facts (routing, first response, templates), "
        "decisions and the Salesforce outbox, written by process_cdc_batch. Materializing it takes "
        "a snapshot of its counts and runs its data checks."
    ),
    freshness_policy=dg.FreshnessPolicy.time_window(fail_window=timedelta(hours=2)),
)
def lead_ledger(
    context: dg.AssetExecutionContext, pipeline: PipelineResource
) -> dg.MaterializeResult:
    from kpi_pipeline.core.live_health import processing_health

    ledger = pipeline.ledger()
    facts = ledger.lead_facts_frame()
    settings = pipeline.settings()
    live = processing_health(
        ledger, settings.cdc_channels, mode=settings.cdc_mode, now=datetime.now(UTC)
    )
    return dg.MaterializeResult(
        metadata={
            "leads": len(facts),
            "routed": int(facts["Routing_Rule__c"].notna().sum()),
            "responded": int(facts["First_Response_At__c"].notna().sum()),
            "templates_recommended": int(facts["Template_Recommended__c"].notna().sum()),
            "pending_batches": len(ledger.pending_batches()),
            "open_resync_windows": len(ledger.open_resync_windows()),
            "dead_letters": len(ledger.dead_letters(limit=10_000)),
            "policy_versions": ", ".join(
                sorted(facts["Routing_Policy_Version__c"].dropna().unique())
            )
            or "(none)",
            "ledger_url": _redacted(settings.resolved_ledger_url),
            # Per channel: pending batches and the oldest one's wait, the stream lease holder
            # (the live_path_health check judges them; the lag histograms are in /metrics).
            "cdc_mode": settings.cdc_mode,
            "live_path": dg.MetadataValue.json(live.to_metadata()),
            "live_path_problems": "; ".join(
                live.problems(stuck_after_s=settings.cdc_processing_alert_seconds)
            )
            or "(none)",
        }
    )


def _redacted(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def write_kpi_window(
    pipeline: PipelineResource, window: dg.TimeWindow, days: list[str], *, as_of: datetime
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """Rollups of the leads created in ``window`` (its ``days``), one CSV per rollup and day.

    Shared by the partitioned assets (one run for a range) and kpi_backfill (a step per day),
    so both write the same files."""
    settings = pipeline.settings()
    frame = pipeline.ledger().lead_facts_frame(
        window.start.astimezone(UTC), window.end.astimezone(UTC)
    )
    computed = rollups.compute_all(frame, as_of=as_of, tz=settings.timezone)
    for name, table in computed.items():
        for day in days:
            write_kpi_partition(settings.data_dir, name, day, table[table["day"] == day])
    return frame, computed


def kpi_rollups(context: dg.AssetExecutionContext, config: AsOfConfig, pipeline: PipelineResource):
    """All KPI rollups of CONTRACTS.md §4 for the selected day(s), computed once from the ledger."""
    settings = pipeline.settings()
    days = list(context.partition_keys)
    frame, computed = write_kpi_window(
        pipeline, context.partition_time_window, days, as_of=_as_of(config)
    )
    for name, table in computed.items():
        yield dg.MaterializeResult(
            asset_key=KPI_KEYS[name],
            metadata={
                "rows": len(table),
                "days": len(days),
                "leads_in_window": len(frame),
                "policy_versions": ", ".join(
                    sorted(frame["Routing_Policy_Version__c"].dropna().unique())
                )
                or "(none)",
                "preview": dg.MetadataValue.md(markdown_table(table, max_rows=20)),
                "path": str(kpi_partition_path(settings.data_dir, name, days[-1]).parent),
                **_sla_breakdown_metadata(name, table),
            },
        )
    problems = reconcile(frame, computed, tz=settings.timezone)
    yield dg.AssetCheckResult(
        check_name="reconciles_with_ledger",
        asset_key=KPI_KEYS["ttfr_overall"],
        passed=not problems,
        metadata={"problems": dg.MetadataValue.json(problems[:50]), "leads": len(frame)},
    )


# The group columns of each SLA breakdown: its metadata shows where breaches concentrate.
_SLA_BREAKDOWN_KEYS = {"sla_by_owner": ["owner_id"], "sla_by_rule": ["policy_version", "rule"]}


def _sla_breakdown_metadata(name: str, table: pd.DataFrame) -> dict[str, object]:
    """Totals, group count and the most-breached groups of an SLA breakdown; {} for other rollups."""
    keys = _SLA_BREAKDOWN_KEYS.get(name)
    if keys is None:
        return {}
    groups = sla_over_days(table, keys)
    return {
        "met": int(table["met"].sum()),
        "breached": int(table["breached"].sum()),
        "pending": int(table["pending"].sum()),
        "groups": len(groups),
        "most_breached": dg.MetadataValue.md(markdown_table(groups, max_rows=10)),
    }


def flywheel_logs(context: dg.AssetExecutionContext, pipeline: PipelineResource):
    from kpi_pipeline.adapters.flywheel.export import validate_flywheel_days, write_flywheel_days

    settings = pipeline.settings()
    window = context.partition_time_window
    report = write_flywheel_days(
        pipeline.ledger(),
        settings.data_dir / "flywheel",
        start=window.start.astimezone(UTC),
        end=window.end.astimezone(UTC),
        client_id=settings.client_id,
    )
    yield dg.MaterializeResult(
        metadata={**dataclasses.asdict(report), "directory": str(settings.data_dir / "flywheel")}
    )
    problems, checked = validate_flywheel_days(
        settings.data_dir / "flywheel",
        start=window.start.astimezone(UTC),
        end=window.end.astimezone(UTC),
    )
    yield dg.AssetCheckResult(
        check_name="records_validate",
        passed=not problems,
        metadata={"records_checked": checked, "problems": dg.MetadataValue.json(problems[:50])},
    )


def flywheel_index(context: dg.AssetExecutionContext, pipeline: PipelineResource):
    from kpi_pipeline.adapters.flywheel.export import load_flywheel_days_to_elastic

    settings = pipeline.settings()
    if not settings.elasticsearch_url:
        context.log.warning(
            "flywheel_index skipped: KPI_ELASTICSEARCH_URL is not set (set it to load the index)"
        )
        return
    window = context.partition_time_window
    report = load_flywheel_days_to_elastic(
        settings.data_dir / "flywheel",
        settings.elasticsearch_url,
        settings.flywheel_index,
        start=window.start.astimezone(UTC),
        end=window.end.astimezone(UTC),
    )
    yield dg.MaterializeResult(metadata=report)


def daily_partitions(timezone: str) -> dg.DailyPartitionsDefinition:
    """Days in the KPI timezone (``KPI_TIMEZONE``). Complete days only (end_offset 0): the newest
    partition is yesterday, which the nightly schedule builds and the partition freshness checks
    expect by 03:00. Built when the definitions load, never at import."""
    return dg.DailyPartitionsDefinition(start_date="2025-01-01", timezone=timezone)


def build_daily_assets(daily: dg.PartitionsDefinition) -> list[dg.AssetsDefinition]:
    """The daily-partitioned assets: KPI rollups, the flywheel log and its index."""
    return [build_kpi_rollups(daily), build_flywheel_logs(daily), build_flywheel_index(daily)]


def build_kpi_rollups(daily: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    return dg.multi_asset(
        name="kpi_rollups",
        specs=[
            dg.AssetSpec(
                key,
                deps=[LEDGER_KEY],
                group_name=KPI_GROUP,
                description=KPI_DESCRIPTIONS[name],
                partitions_def=daily,
                kinds={"pandas", "csv"},
                freshness_policy=DAILY_FRESHNESS,
                skippable=False,
            )
            for name, key in KPI_KEYS.items()
        ],
        check_specs=[
            dg.AssetCheckSpec(
                "reconciles_with_ledger",
                asset=KPI_KEYS["ttfr_overall"],
                description="Every rollup's counts add up to the ledger's lead, responded, assigned and recommended counts.",
            )
        ],
        partitions_def=daily,
        backfill_policy=dg.BackfillPolicy.single_run(),
        can_subset=False,
    )(kpi_rollups)


def build_flywheel_logs(daily: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    return dg.asset(
        name="flywheel_logs",
        deps=[LEDGER_KEY],
        group_name="flywheel",
        partitions_def=daily,
        backfill_policy=dg.BackfillPolicy.single_run(),
        kinds={"jsonl"},
        freshness_policy=DAILY_FRESHNESS,
        check_specs=[
            dg.AssetCheckSpec(
                "records_validate",
                asset="flywheel_logs",
                blocking=True,
                description="Every record in the day's files validates against the flywheel contract; ids are unique.",
            )
        ],
        description=(
            "Every workload decision of the day as a flywheel record (OpenAI-compatible contract, "
            "CONTRACTS.md §5), JSONL per workload and day under DATA_DIR/flywheel. Deterministic record ids: "
            "re-materializing never duplicates."
        ),
    )(flywheel_logs)


def build_flywheel_index(daily: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    return dg.asset(
        name="flywheel_index",
        deps=[dg.AssetKey("flywheel_logs")],
        group_name="flywheel",
        partitions_def=daily,
        backfill_policy=dg.BackfillPolicy.single_run(),
        kinds={"elasticsearch"},
        freshness_policy=DAILY_FRESHNESS,
        description=(
            "The day's flywheel records loaded into Elasticsearch (KPI_ELASTICSEARCH_URL, index "
            "KPI_FLYWHEEL_INDEX) with deterministic _ids. Skipped, with the reason, when no URL is set."
        ),
        output_required=False,
    )(flywheel_index)
