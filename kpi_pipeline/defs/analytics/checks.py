"""Asset checks: data invariants of the ledger (blocking), the write-back's backlog (a warning)
and freshness checks CI can assert on.

Runtime health comes from the ``FreshnessPolicy`` on every asset (evaluated by Dagster's
freshness daemon). Those are not check results, so every materialized asset also gets a
real freshness *check* (the superseded-but-working builders): ``lead_ledger`` by its last
update, each daily asset by its partition being there by 03:00. ``freshness_checks_sensor``
(running by default) evaluates them; they also run with ``dagster asset materialize`` and in
tests with a controlled clock.
"""

import warnings
from datetime import UTC, datetime, timedelta

import dagster as dg

from kpi_pipeline.core.kpis import invariants
from kpi_pipeline.defs.analytics.assets import KPI_KEYS, LEDGER_KEY
from kpi_pipeline.defs.resources import PipelineResource


def _result(broken: list[str], what: str) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        passed=not broken,
        description=f"{len(broken)} lead(s) {what}" if broken else None,
        metadata={"violations": len(broken), "examples": dg.MetadataValue.json(broken[:20])},
    )


@dg.asset_check(
    asset=LEDGER_KEY,
    blocking=True,
    description="TTFR ≥ 0 and first response ≥ created, for every lead.",
)
def ttfr_non_negative(pipeline: PipelineResource) -> dg.AssetCheckResult:
    frame = pipeline.ledger().lead_facts_frame()
    return _result(
        invariants.negative_or_early_first_response(frame),
        "have a negative TTFR or a response before creation",
    )


@dg.asset_check(
    asset=LEDGER_KEY,
    blocking=True,
    description="No lead has a first response without its source, user or minutes.",
)
def first_response_complete(pipeline: PipelineResource) -> dg.AssetCheckResult:
    frame = pipeline.ledger().lead_facts_frame()
    return _result(invariants.incomplete_first_response(frame), "have a partial first response")


@dg.asset_check(
    asset=LEDGER_KEY,
    blocking=True,
    description="Every routing decision carries its policy version.",
)
def decisions_carry_policy_version(pipeline: PipelineResource) -> dg.AssetCheckResult:
    frame = pipeline.ledger().lead_facts_frame()
    return _result(
        invariants.routed_without_policy_version(frame), "were routed without a policy version"
    )


@dg.asset_check(
    asset=LEDGER_KEY,
    # Not blocking: a slow or stuck write-back does not make the ledger's facts wrong, so
    # KPIs built from them should still materialize; the warning is for whoever runs the org.
    blocking=False,
    description="The write-back keeps up: no row waits or is held longer than "
    "KPI_WRITEBACK_BACKLOG_ALERT_SECONDS, no claim outlived its lease, no row failed for good.",
)
def outbox_backlog(pipeline: PipelineResource) -> dg.AssetCheckResult:
    limit = pipeline.settings().writeback_backlog_alert_seconds
    health = pipeline.ledger().outbox_health()
    problems = []
    if (health.oldest_pending_age_s or 0.0) > limit:
        problems.append(f"oldest pending row waited {health.oldest_pending_age_s:.0f} s")
    if (health.oldest_claimed_age_s or 0.0) > limit:
        problems.append(f"oldest claim held {health.oldest_claimed_age_s:.0f} s")
    if health.expired_claims:
        problems.append(f"{health.expired_claims} claim(s) outlived their lease")
    failed = health.by_status.get("failed", 0)
    if failed:
        problems.append(f"{failed} row(s) failed for good")
    return dg.AssetCheckResult(
        passed=not problems,
        # WARN: the fix is operational (a drain, an org-side rejection), not bad data.
        severity=dg.AssetCheckSeverity.WARN,
        description="; ".join(problems) + f" (limit {limit:.0f} s)" if problems else None,
        metadata={
            "by_status": dg.MetadataValue.json(health.by_status),
            "backlog": health.backlog,
            "oldest_pending_age_seconds": round(health.oldest_pending_age_s or 0.0, 1),
            "oldest_claimed_age_seconds": round(health.oldest_claimed_age_s or 0.0, 1),
            "expired_claims": health.expired_claims,
            "alert_after_seconds": limit,
        },
    )


DAILY_DEADLINE_CRON = "0 3 * * *"

with warnings.catch_warnings():
    # The builders are superseded by FreshnessPolicy, but they are the only freshness form
    # that produces check results (CONTRACTS.md §8.1); silence only their own warning here.
    warnings.simplefilter("ignore")
    ledger_freshness_checks = dg.build_last_update_freshness_checks(
        assets=[LEDGER_KEY], lower_bound_delta=timedelta(hours=2)
    )
    # Every daily asset: daily_kpis (01:15) builds yesterday's partition, so it is due by
    # 03:00; lead_ledger is snapshotted every 30 minutes, so 2 hours without one is stale.
    kpi_freshness_checks = dg.build_time_partition_freshness_checks(
        assets=[*KPI_KEYS.values(), dg.AssetKey("flywheel_logs"), dg.AssetKey("flywheel_index")],
        deadline_cron=DAILY_DEADLINE_CRON,
    )
    # Running by default: freshness checks stand in for health, so they must be evaluated
    # without anyone switching the sensor on in the UI.
    freshness_checks_sensor = dg.build_sensor_for_freshness_checks(
        freshness_checks=[*ledger_freshness_checks, *kpi_freshness_checks],
        minimum_interval_seconds=600,
        name="freshness_checks_sensor",
        default_status=dg.DefaultSensorStatus.RUNNING,
    )

LEDGER_CHECKS = [ttfr_non_negative, first_response_complete, decisions_carry_policy_version]


# Operational health of the ledger's write-back, kept apart from the data invariants above.
@dg.asset_check(
    asset=LEDGER_KEY,
    # Not blocking, for the same reason as outbox_backlog: the facts already in the ledger
    # are right; what is late is the newest work.
    blocking=False,
    description="The live path keeps up: no staged batch waits longer than "
    "KPI_CDC_PROCESSING_ALERT_SECONDS, and in stream mode a live cdc_stream run holds every "
    "channel (a holder whose run failed or was canceled counts as none).",
)
def live_path_health(
    context: dg.AssetCheckExecutionContext, pipeline: PipelineResource
) -> dg.AssetCheckResult:
    from kpi_pipeline.core.live_health import processing_health

    settings = pipeline.settings()
    instance = context.instance

    def run_ended_badly(run_id: str) -> bool:
        run = instance.get_run_by_id(run_id)
        return run is not None and run.status in _ENDED_BADLY

    health = processing_health(
        pipeline.ledger(),
        settings.cdc_channels,
        mode=settings.cdc_mode,
        now=datetime.now(UTC),
        run_ended_badly=run_ended_badly,
    )
    problems = health.problems(stuck_after_s=settings.cdc_processing_alert_seconds)
    return dg.AssetCheckResult(
        passed=not problems,
        severity=dg.AssetCheckSeverity.WARN,
        description="; ".join(problems) if problems else None,
        metadata={
            "mode": settings.cdc_mode,
            "channels": dg.MetadataValue.json(health.to_metadata()),
            "alert_after_seconds": settings.cdc_processing_alert_seconds,
        },
    )


# A lease holder whose run ended so is dead, whatever its lease says.
_ENDED_BADLY = {dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}


WRITEBACK_CHECKS = [outbox_backlog, live_path_health]
FRESHNESS_CHECKS = [*ledger_freshness_checks, *kpi_freshness_checks]
