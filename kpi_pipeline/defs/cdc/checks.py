"""Health checks of the live path on ``lead_ledger``: the write-back's backlog and whether the
stream or sensor is making progress (warnings: the facts already in the ledger stay valid)."""

from datetime import UTC, datetime

import dagster as dg

from kpi_pipeline.defs.asset_keys import LEDGER_KEY
from kpi_pipeline.defs.resources import PipelineResource


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
