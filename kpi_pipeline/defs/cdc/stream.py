"""cdc_stream: the stream-mode live path as one long-running Dagster run per generation.

The op runs ``kpi_pipeline.app.stream_worker.StreamWorker`` (subscribe, stage with the durable
replay id, process, write back) until the generation's lifetime
(``KPI_CDC_STREAM_GENERATION_SECONDS``) has passed, then ends cleanly; ``cdc_sensor`` (in
stream mode) starts the next generation whenever no ``cdc_stream`` run is queued or going.
Its progress is logged to the run's event log every ``PROGRESS_LOG_SECONDS``.
"""

import threading
import time
from typing import Any

import dagster as dg

from kpi_pipeline import wiring
from kpi_pipeline.defs.resources import PipelineResource

PROGRESS_LOG_SECONDS = 30.0
STREAM_JOB = "cdc_stream"


class StreamConfig(dg.Config):
    lifetime_seconds: float | None = None  # None: KPI_CDC_STREAM_GENERATION_SECONDS


@dg.op(
    description="Subscribes to every CDC channel and processes each response as it arrives "
    "(staged with the durable replay id, routed, first touch, templates, written back)."
)
def stream_cdc(
    context: dg.OpExecutionContext, config: StreamConfig, pipeline: PipelineResource
) -> dict[str, Any]:
    settings = pipeline.settings()
    if config.lifetime_seconds is not None:
        settings = settings.model_copy(
            update={"cdc_stream_generation_seconds": config.lifetime_seconds}
        )
    last_log = [time.monotonic()]

    def log_progress(progress: Any) -> None:
        if time.monotonic() - last_log[0] >= PROGRESS_LOG_SECONDS:
            last_log[0] = time.monotonic()
            context.log.info(f"stream progress: {progress.to_dict()}")

    worker = wiring.stream_worker(settings, holder=context.run_id, on_progress=log_progress)
    stop = threading.Event()
    try:
        progress = worker.run(stop)
    finally:
        stop.set()  # a cancel (KeyboardInterrupt) ends the subscription before we unwind
    summary = progress.to_dict()
    context.log.info(f"stream generation ended: {summary}")
    context.add_output_metadata({"progress": dg.MetadataValue.json(summary)})
    return summary


@dg.job(
    executor_def=dg.in_process_executor,
    description="Stream mode: one long-lived subscriber run per generation (see cdc_sensor).",
)
def cdc_stream():
    stream_cdc()
