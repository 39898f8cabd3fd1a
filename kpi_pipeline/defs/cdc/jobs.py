"""process_cdc_batch: the pending staged batches through the workload steps, then write-back.

The graph is built from ``kpi_pipeline.app.processing.steps.STEPS``, the order ``replay`` and
``BatchProcessor.process`` run: one op per step, each taking the summaries of the steps it
follows.

In sensor mode ``cdc_sensor`` requests at most one of these runs at a time; it lists every
pending batch (oldest first, up to ``KPI_CDC_MAX_EVENTS_PER_RUN`` events), so the number of
runs follows the work, not ticks x channels. Ops are thin: each calls the Dagster-free
``kpi_pipeline.app.processing.BatchProcessor``. The job runs in-process (one process per run, no
per-step spawn: see CONTRACTS.md §8.2) and is retried by the run-retry daemon
(``dagster/max_retries`` tag); every step is idempotent, so a retry re-applies safely.

Lead partitions (``KPI_CDC_LEAD_PARTITIONS`` = N > 1): the sensor requests N runs of the same
batches, each tagged with its partition (``kpi/lead_partition``). ``load_batch`` takes the
partition's lease in the ledger and keeps only the partition's events
(``kpi_pipeline.core.lead_partitions``); every op renews the lease before it works; and
``complete_batch`` marks a batch done only once all N partitions have completed it
(``kpi_pipeline.adapters.ledger.partitions``).
"""

from datetime import timedelta

import dagster as dg
from dagster._core.storage.tags import ROOT_RUN_ID_TAG

from kpi_pipeline.adapters.ledger import partitions as lp
from kpi_pipeline.app.processing.steps import STEPS, WorkloadStep, step_inputs
from kpi_pipeline.core.lead_partitions import LeadResolver, check_partition, events_of_partition
from kpi_pipeline.defs.resources import PipelineResource

# Tags of a partitioned run (cdc_sensor sets them; Dagster copies them onto retries). The
# queued run coordinator's tag concurrency limit on PARTITION_TAG (one run per value) keeps
# a partition's runs from being launched together; the ledger lease refuses them anyway.
PARTITION_TAG = "kpi/lead_partition"
PARTITIONS_TAG = "kpi/lead_partitions"


class BatchConfig(dg.Config):
    # Processed in this order (replay order). A batch already done is processed again, which
    # is how an operator replays one from the inbox (every step is idempotent).
    batch_ids: list[str]
    # This run's lead partition of ``partitions`` (1: every event, no lease); the run's tags
    # must say the same (cdc_sensor sets both).
    partition: int = 0
    partitions: int = 1


# Per workload step (app.processing.steps.STEPS): its description in the UI and its label in
# the run's log lines and in complete_batch's summary.
_STEP_UI = {
    "route_leads": (
        "routing",
        "Routes new and re-owned leads by the versioned policy; memoized per lead.",
    ),
    "detect_first_touch": (
        "first_touch",
        "Detects first responses (Task / EmailMessage); only ever moves a first response earlier.",
    ),
    "recommend_templates": (
        "templates",
        "Recommends an outreach template for newly routed leads; detects applied templates.",
    ),
}


@dg.op(
    out={"batches": dg.Out(dict), **{f"{step.name}_input": dg.Out() for step in STEPS}},
    description="Loads the staged batches, decodes them (poison events go to dead_letters), "
    "merges record states, and selects each workload step's input.",
)
def load_batch(context: dg.OpExecutionContext, config: BatchConfig, pipeline: PipelineResource):
    check_partition(config.partition, config.partitions)
    if _run_partition(context) != (config.partition, config.partitions):
        raise dg.Failure(
            f"load_batch config says lead partition {config.partition}/{config.partitions} but "
            f"the run's tags say {_run_partition(context)}: set {PARTITION_TAG} and "
            f"{PARTITIONS_TAG} to match (cdc_sensor does)"
        )
    if config.partitions > 1:
        lp.acquire_partition(
            pipeline.ledger(),
            config.partition,
            config.partitions,
            holder=_holder(context),
            ttl=_lease_ttl(pipeline),
        )
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
    if config.partitions > 1:
        events = _partition_events(pipeline, events, config)
    processor.apply_records(events)
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
    for name, selected in step_inputs(events, processor.client_id).items():
        yield dg.Output(selected, f"{name}_input")


def _partition_events(pipeline: PipelineResource, events: list, config: BatchConfig) -> list:
    """The partition's events: every partition run of a round reads the same batches and
    the same copy of the stored links, so each record lands in exactly one of them."""
    key = lp.round_key(config.batch_ids, config.partitions)
    resolver = LeadResolver.of(events, lp.round_links(pipeline.ledger(), key, events))
    return events_of_partition(events, config.partition, config.partitions, resolver)


def _run_partition(context: dg.OpExecutionContext) -> tuple[int, int]:
    """(partition, partitions) from the run's tags; (0, 1) for an unpartitioned run."""
    tags = context.run.tags
    if PARTITIONS_TAG not in tags:
        return (0, 1)
    return (int(tags.get(PARTITION_TAG, "0")), int(tags[PARTITIONS_TAG]))


def _holder(context: dg.OpExecutionContext) -> str:
    """The lease holder: the root run, so Dagster's retries of a failed run keep its lease."""
    return context.run.tags.get(ROOT_RUN_ID_TAG, context.run_id)


def _lease_ttl(pipeline: PipelineResource) -> timedelta:
    # Run monitoring fails a run still going after its max runtime; its lease ends then too.
    return timedelta(seconds=pipeline.settings().cdc_run_max_runtime_seconds)


def _hold_partition(context: dg.OpExecutionContext, pipeline: PipelineResource) -> None:
    """A partitioned run's op works only while its run holds the partition's lease."""
    partition, partitions = _run_partition(context)
    if partitions > 1:
        lp.hold_partition(
            pipeline.ledger(),
            partition,
            partitions,
            holder=_holder(context),
            ttl=_lease_ttl(pipeline),
        )


def _step_op(step: WorkloadStep) -> dg.OpDefinition:
    """The op of one workload step: its input from load_batch, then the summaries of the
    steps it follows (``step.after``), as the processor's ``process`` passes them."""
    label, description = _STEP_UI[step.name]
    ins = {"step_input": dg.In(), **{f"{name}_summary": dg.In(dict) for name in step.after}}

    @dg.op(name=step.name, ins=ins, description=description)
    def run_step(
        context: dg.OpExecutionContext, pipeline: PipelineResource, step_input, **summaries
    ) -> dict:
        upstream = [summaries[f"{name}_summary"] for name in step.after]
        _hold_partition(context, pipeline)
        summary = step.run(pipeline.processor(), step_input, *upstream)
        context.log.info(f"{label.replace('_', ' ')}: {summary}")
        return summary

    return run_step


STEP_OPS = {step.name: _step_op(step) for step in STEPS}


@dg.op(
    ins={"batches": dg.In(dict), **{f"{step.name}_summary": dg.In(dict) for step in STEPS}},
    description="Writes the Lead updates to Salesforce (outbox drain) and marks the batches done.",
)
def complete_batch(
    context: dg.OpExecutionContext, pipeline: PipelineResource, batches: dict, **summaries
) -> dict:
    _hold_partition(context, pipeline)
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
        **{_STEP_UI[step.name][0]: summaries[f"{step.name}_summary"] for step in STEPS},
        "write_back": write_back,
        "email_send": _send_emails(context, pipeline) if settings.send_email else None,
    }
    _mark_done(context, pipeline, batches, summary)
    context.add_output_metadata(
        {"batches": len(batches), "summary": dg.MetadataValue.json(summary)}
    )
    return summary


def _mark_done(
    context: dg.OpExecutionContext, pipeline: PipelineResource, batches: dict, summary: dict
) -> None:
    """Mark each batch done; the run that completes a batch observes its processing lag
    (commit in the org -> processed), so a retried run never observes it twice. A partition
    run marks done only the batches every partition has now completed, then gives its
    partition back."""
    from kpi_pipeline.app.stream_worker import observe_processing_lag

    ledger = pipeline.ledger()
    done = list(batches)
    partition, partitions = _run_partition(context)
    if partitions > 1:
        done = lp.complete_partition(ledger, done, partition, partitions, run_id=context.run_id)
        summary = {**summary, "lead_partition": f"{partition}/{partitions}"}
    for batch_id in done:
        batch = batches[batch_id]
        if ledger.mark_batch_done(batch_id, run_id=context.run_id, summary=summary):
            observe_processing_lag(batch["channel"], batch["commit_ms"])
    if partitions > 1:
        lp.release_partition(ledger, partition, holder=_holder(context))


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
    batches, *inputs = load_batch()
    summaries: dict = {}
    for step, step_input in zip(STEPS, inputs, strict=True):
        upstream = {f"{name}_summary": summaries[name] for name in step.after}
        summaries[step.name] = STEP_OPS[step.name](step_input=step_input, **upstream)
    complete_batch(
        batches=batches, **{f"{step.name}_summary": summaries[step.name] for step in STEPS}
    )
