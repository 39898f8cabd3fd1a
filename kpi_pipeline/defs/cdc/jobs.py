"""process_cdc_batch: the pending staged batches through the three workloads, then write-back.

In sensor mode ``cdc_sensor`` requests at most one of these runs at a time; it lists every
pending batch (oldest first, up to ``KPI_CDC_MAX_EVENTS_PER_RUN`` events), so the number of
runs follows the work, not ticks x channels. Ops are thin: each calls the Dagster-free
``kpi_pipeline.app.processing.BatchProcessor``. The job runs in-process (one process per run, no
per-step spawn: see CONTRACTS.md §8.2) and is retried by the run-retry daemon
(``dagster/max_retries`` tag); every step is idempotent, so a retry re-applies safely.
"""

import dagster as dg

from kpi_pipeline.defs.resources import PipelineResource


class BatchConfig(dg.Config):
    # Processed in this order (replay order). A batch already done is processed again, which
    # is how an operator replays one from the inbox (every step is idempotent).
    batch_ids: list[str]


@dg.op(
    out={
        "batches": dg.Out(dict),
        "routing_events": dg.Out(list),
        "first_touch_input": dg.Out(dict),
        "template_input": dg.Out(dict),
    },
    description="Loads the staged batches, decodes them (poison events go to dead_letters), "
    "merges record states.",
)
def load_batch(context: dg.OpExecutionContext, config: BatchConfig, pipeline: PipelineResource):
    ledger = pipeline.ledger()
    processor = pipeline.processor()
    decoder = pipeline.batch_decoder()  # each batch is read with the schemas staged with it
    batches: dict[str, dict] = {}
    events: list = []
    dead_lettered = 0
    for batch_id in config.batch_ids:
        batch = ledger.load_batch(batch_id)
        decoded = processor.decode(batch, decoder)
        events += decoded.events
        dead_lettered += decoded.dead_lettered
        # Commit times travel to complete_batch, which observes commit -> processed.
        batches[batch_id] = {
            "channel": batch.channel,
            "commit_ms": [e.header.commit_timestamp for e in decoded.events],
        }
    processor.apply_records(events)
    routing = processor.select_routing(events)
    context.add_output_metadata(
        {
            "batches": len(batches),
            "events": len(events),
            "dead_lettered": dead_lettered,
            "channels": sorted({b["channel"] for b in batches.values()}),
        },
        output_name="batches",
    )
    yield dg.Output(batches, "batches")
    yield dg.Output(routing, "routing_events", metadata={"events": len(routing)})
    yield dg.Output(processor.select_first_touch(events), "first_touch_input")
    yield dg.Output(processor.select_templates(events), "template_input")


@dg.op(description="Routes new and re-owned leads by the versioned policy; memoized per lead.")
def route_leads(
    context: dg.OpExecutionContext, pipeline: PipelineResource, routing_events: list
) -> dict:
    summary = pipeline.processor().route_leads(routing_events)
    context.log.info(f"routing: {summary}")
    return summary


@dg.op(
    description="Detects first responses (Task / EmailMessage); only ever moves a first response earlier."
)
def detect_first_touch(
    context: dg.OpExecutionContext, pipeline: PipelineResource, first_touch_input: dict
) -> dict:
    summary = pipeline.processor().detect_first_touch(**first_touch_input)
    context.log.info(f"first touch: {summary}")
    return summary


@dg.op(
    description="Recommends an outreach template for newly routed leads; detects applied templates."
)
def recommend_templates(
    context: dg.OpExecutionContext,
    pipeline: PipelineResource,
    routing_summary: dict,
    template_input: dict,
) -> dict:
    summary = pipeline.processor().recommend_templates(
        routing_summary=routing_summary, **template_input
    )
    context.log.info(f"templates: {summary}")
    return summary


@dg.op(
    description="Writes the Lead updates to Salesforce (outbox drain) and marks the batches done."
)
def complete_batch(
    context: dg.OpExecutionContext,
    pipeline: PipelineResource,
    batches: dict,
    routing_summary: dict,
    first_touch_summary: dict,
    template_summary: dict,
) -> dict:
    settings = pipeline.settings()
    write_back = None
    if settings.writeback_enabled:
        # The ledger is the outbox: only values Salesforce confirmed are marked sent. What
        # this drain could not confirm stays pending (or claimed until its lease runs out)
        # and the next drain, or writeback_sensor's idle drain, sends the current values.
        result = pipeline.drain_writeback()
        write_back = result.summary()
        if result.report.failed:
            context.log.warning(
                f"write-back failed for good on outbox items: {dict(list(result.report.failed.items())[:10])}"
            )
    summary = {
        "routing": routing_summary,
        "first_touch": first_touch_summary,
        "templates": template_summary,
        "write_back": write_back,
        "email_send": _send_emails(context, pipeline) if settings.send_email else None,
    }
    _mark_done(pipeline, context.run_id, batches, summary)
    context.add_output_metadata(
        {"batches": len(batches), "summary": dg.MetadataValue.json(summary)}
    )
    return summary


def _mark_done(pipeline: PipelineResource, run_id: str, batches: dict, summary: dict) -> None:
    """Mark each batch done; the run that completes a batch observes its processing lag
    (commit in the org -> processed), so a retried run never observes it twice."""
    from kpi_pipeline.app.stream_worker import observe_processing_lag

    ledger = pipeline.ledger()
    for batch_id, batch in batches.items():
        if ledger.mark_batch_done(batch_id, run_id=run_id, summary=summary):
            observe_processing_lag(batch["channel"], batch["commit_ms"])


def _send_emails(context: dg.OpExecutionContext, pipeline: PipelineResource) -> dict:
    """KPI_SEND_EMAIL: email the recommended templates, at most once per lead (after the
    drain, so the lead's routing fields are in Salesforce first)."""
    from kpi_pipeline.app.outreach_send import send_recommended_emails

    report = send_recommended_emails(
        pipeline.ledger(),
        pipeline.salesforce_rest(),
        pipeline.processor().catalog,
        sender_name=pipeline.settings().email_sender_name,
    )
    if report.unconfirmed or report.stopped:
        context.log.warning(
            f"outreach send: stopped={report.stopped!r} unconfirmed={report.unconfirmed}"
        )
    return report.to_dict()


@dg.job(
    executor_def=dg.in_process_executor,
    tags={
        "dagster/max_retries": 3,
        "dagster/retry_strategy": "FROM_FAILURE",
        # dagster/max_runtime comes from Settings.cdc_run_max_runtime_seconds on each run
        # request (cdc_sensor): settings are read at tick time, never at import.
    },
    description="Pending staged CDC batches through routing, first touch and templates, then "
    "write-back.",
)
def process_cdc_batch():
    batches, routing_events, first_touch_input, template_input = load_batch()
    routing_summary = route_leads(routing_events)
    first_touch_summary = detect_first_touch(first_touch_input)
    template_summary = recommend_templates(routing_summary, template_input)
    complete_batch(batches, routing_summary, first_touch_summary, template_summary)
