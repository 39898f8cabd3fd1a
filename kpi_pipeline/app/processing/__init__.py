"""The batch processor: one batch of change events through the ledger and the workloads.

No Dagster here: the ops of ``process_cdc_batch`` and ``kpi-pipeline replay`` call the
same methods. Each method is idempotent (delivery is at-least-once) and returns a small
JSON-able summary.

Clock. ``clock=None`` is the *event clock*: a decision is timestamped from the events
that caused it (a lead is routed at its creation, or when it was moved to a queue; a
first response at its own time), which makes ``replay`` deterministic. The live job
passes the wall clock instead.

Order independence. Record states merge per field (last writer wins), leads of a batch
are routed in (creation time, id) order on the fields they were created with (event
clock), first responses, assignment times and applied templates only move earlier,
responses and emails that arrive before their lead wait for it, an email linked to its
lead only through its ``ActivityId`` Task is evaluated again when that Task arrives or
changes (the ledger keeps an email→activity index), and routing is memoized per lead;
so duplicated deliveries, channels drifting apart and shuffled batches leave the same
lead facts (tested on the shipped stream, and on sampled channel interleavings of a
small one). One order does matter: round-robin pools hand out owners in the order lead
creations reach the processor across batches.

Failures. An event that cannot be decoded or merged, or a lead whose workload code
raises, is dead-lettered with its reason (the lead's writes roll back to a savepoint) and
the rest of the batch proceeds; database errors fail the step so the run is retried.

Modules: ``processor`` (the facade), ``steps`` (their order), ``context`` (what the steps
share), ``records`` (decode and merge), ``routing``, ``first_touch``, ``templates``, ``clocks``
(recomputing business-hours values after a calendar change).
"""

from kpi_pipeline.app.processing.clocks import RecomputeReport, recompute_clocks
from kpi_pipeline.app.processing.processor import BatchProcessor
from kpi_pipeline.app.processing.records import DecodedBatch, Decoder, FieldReader

__all__ = [
    "BatchProcessor",
    "DecodedBatch",
    "Decoder",
    "FieldReader",
    "RecomputeReport",
    "recompute_clocks",
]
