"""Asset checks: data invariants of the ledger (blocking) and freshness checks CI can assert on.
The live path's health checks are in ``kpi_pipeline.defs.cdc.checks``.

Runtime health comes from the ``FreshnessPolicy`` on every asset (evaluated by Dagster's
freshness daemon). Those are not check results, so every materialized asset also gets a
real freshness *check* (the superseded-but-working builders): ``lead_ledger`` by its last
update, each daily asset by its partition being there by 03:00. ``freshness_checks_sensor``
(running by default) evaluates them; they also run with ``dagster asset materialize`` and in
tests with a controlled clock.
"""

import warnings
from collections.abc import Callable
from datetime import timedelta

import dagster as dg
import pandas as pd

from kpi_pipeline.core.kpis import invariants
from kpi_pipeline.defs.asset_keys import KPI_KEYS, LEDGER_KEY
from kpi_pipeline.defs.resources import PipelineResource


def _result(broken: list[str], what: str) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        passed=not broken,
        description=f"{len(broken)} lead(s) {what}" if broken else None,
        metadata={"violations": len(broken), "examples": dg.MetadataValue.json(broken[:20])},
    )


# The ledger's data invariants: (check name, description, the invariant, what its violators did).
_LEDGER_INVARIANTS = (
    (
        "ttfr_non_negative",
        "TTFR ≥ 0 and first response ≥ created, for every lead.",
        invariants.negative_or_early_first_response,
        "have a negative TTFR or a response before creation",
    ),
    (
        "first_response_complete",
        "No lead has a first response without its source, user or minutes.",
        invariants.incomplete_first_response,
        "have a partial first response",
    ),
    (
        "decisions_carry_policy_version",
        "Every routing decision carries its policy version.",
        invariants.routed_without_policy_version,
        "were routed without a policy version",
    ),
)


def _ledger_check(
    name: str, description: str, violators: Callable[[pd.DataFrame], list[str]], what: str
) -> dg.AssetChecksDefinition:
    @dg.asset_check(name=name, asset=LEDGER_KEY, blocking=True, description=description)
    def check(pipeline: PipelineResource) -> dg.AssetCheckResult:
        return _result(violators(pipeline.ledger().lead_facts_frame()), what)

    return check


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

LEDGER_CHECKS = [_ledger_check(*invariant) for invariant in _LEDGER_INVARIANTS]


FRESHNESS_CHECKS = [*ledger_freshness_checks, *kpi_freshness_checks]
