"""cdc_sensor: drains Change Data Capture into durable batches, cursor = replay ids.

The sensor body is ``kpi_pipeline.ingest.drain_tick``; this file only translates its
outcome into Dagster terms (run requests, cursor, observations of ``cdc_events``).
"""

import json

import dagster as dg

from kpi_pipeline.cdc.cursor import SensorCursor
from kpi_pipeline.config import get_settings
from kpi_pipeline.defs.assets import CDC_EVENTS_KEY
from kpi_pipeline.defs.jobs import process_cdc_batch
from kpi_pipeline.defs.resources import PipelineResource
from kpi_pipeline.ingest import DrainLimits, TickOutcome, drain_tick, run_key_for


def _is_invalid_replay(exc: Exception) -> bool:
    from kpi_pipeline.cdc.errors import ReplayIdInvalidError

    return isinstance(exc, ReplayIdInvalidError)


def _run_requests(outcome: TickOutcome) -> list[dg.RunRequest]:
    return [
        dg.RunRequest(
            run_key=run_key_for(batch.batch_id),
            # Only the batch id travels in run config; the events stay in the ledger inbox.
            run_config={"ops": {"load_batch": {"config": {"batch_id": batch.batch_id}}}},
            tags={
                "kpi/channel": batch.channel,
                "kpi/events": str(batch.event_count),
                "kpi/replay_range": f"{batch.first_replay_hex}-{batch.last_replay_hex}",
            },
        )
        for batch in outcome.batches
    ]


def _observations(outcome: TickOutcome) -> list[dg.AssetObservation]:
    observations = []
    for report in outcome.reports:
        metadata: dict = {
            "channel": report.channel,
            "replay_id": report.replay_id_hex or "",
            "events": report.events,
            "caught_up": report.caught_up,
            "by_change_type": dg.MetadataValue.json(report.by_change_type),
        }
        if report.lag_seconds is not None:
            metadata["lag_seconds"] = round(report.lag_seconds, 3)
        if report.undecodable:
            metadata["undecodable"] = report.undecodable
        if report.resync_window_id is not None:
            metadata["resync_window_id"] = report.resync_window_id
        observations.append(dg.AssetObservation(asset_key=CDC_EVENTS_KEY, metadata=metadata))
    return observations


@dg.sensor(
    name="cdc_sensor",
    job=process_cdc_batch,
    minimum_interval_seconds=get_settings().sensor_interval_seconds,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Drains Salesforce CDC (Pub/Sub API) per channel into staged batches; cursor = replay ids.",
)
def cdc_sensor(context: dg.SensorEvaluationContext, pipeline: PipelineResource) -> dg.SensorResult:
    settings = pipeline.settings()
    decoder = pipeline.decoder()
    outcome = drain_tick(
        channels=settings.cdc_channels,
        cursor=SensorCursor.from_json(context.cursor),
        fetcher=pipeline.pubsub(),
        ledger=pipeline.ledger(),
        decode=decoder.decode,
        limits=DrainLimits(
            max_events=settings.cdc_max_events_per_tick,
            max_seconds=settings.cdc_fetch_timeout_seconds,
            initial_preset=settings.cdc_initial_preset,
            on_invalid_replay=settings.cdc_on_invalid_replay,
        ),
        is_invalid_replay=_is_invalid_replay,
    )
    run_requests = _run_requests(outcome)
    new_cursor = outcome.cursor.to_json()
    if not run_requests:
        summary = json.dumps({r.channel: r.replay_id_hex for r in outcome.reports})
        return dg.SensorResult(
            skip_reason=f"no new change events (replay ids: {summary})",
            cursor=new_cursor,
            asset_events=_observations(outcome),
        )
    return dg.SensorResult(
        run_requests=run_requests, cursor=new_cursor, asset_events=_observations(outcome)
    )
