"""``BatchProcessor``: one batch of change events through the ledger and the workload steps.

It composes the steps (``records``, ``routing``, ``first_touch``, ``templates``) over one
``StepContext`` and runs them in the order ``steps.STEPS`` declares. The ops of
``process_cdc_batch``, ``kpi-pipeline replay``, re-sync and the stream worker call it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from datetime import datetime
from typing import Any

from kpi_pipeline.app.processing import steps
from kpi_pipeline.app.processing.collector import cycle_collection_paused
from kpi_pipeline.app.processing.context import StepContext
from kpi_pipeline.app.processing.first_touch import FirstTouchStep
from kpi_pipeline.app.processing.ledger_port import ProcessingLedger
from kpi_pipeline.app.processing.records import DecodedBatch, Decoder, FieldReader, RecordsStep
from kpi_pipeline.app.processing.routing import RoutingStep
from kpi_pipeline.app.processing.templates import TemplateStep
from kpi_pipeline.app.writeback import OwnerRules, Superseded, owner_rules
from kpi_pipeline.core.events import ChangeEvent
from kpi_pipeline.core.ledger_rows import LoadedBatch
from kpi_pipeline.core.policy.load import Condition, RoutingPolicy
from kpi_pipeline.core.workloads.business_hours import policy_clocks
from kpi_pipeline.core.workloads.lead_route import sla_minutes_for
from kpi_pipeline.core.workloads.outreach_templates import TemplateCatalog, TemplateSelector
from kpi_pipeline.core.workloads.records import RecordState
from kpi_pipeline.core.workloads.selection import (
    is_echo,
    select_first_touch,
    select_routing,
    select_templates,
)


class BatchProcessor:
    def __init__(
        self,
        ledger: ProcessingLedger,
        policy: RoutingPolicy,
        *,
        selector: TemplateSelector,
        catalog: TemplateCatalog,
        client_id: str,
        clock: Callable[[], datetime] | None = None,
        integration_user_id: str | None = None,
        field_reader: FieldReader | None = None,
    ) -> None:
        """``field_reader``: the org's REST API, to re-read a field a workload needs when
        an event lists it in diffFields (no value delivered); None leaves such a field with
        the value the ledger already has (``replay`` works offline)."""
        self.ledger = ledger
        self.policy = policy
        self.catalog = catalog
        self.client_id = client_id
        self.owner_rules: OwnerRules = owner_rules(policy, client_id, integration_user_id)
        ctx = StepContext(
            ledger=ledger,
            policy=policy,
            client_id=client_id,
            owner_rules=self.owner_rules,
            clocks=policy_clocks(policy.calendars),
            clock=clock,
        )
        self._ctx = ctx
        routing_inputs = routing_fields(policy)
        self.records = RecordsStep(ctx, routing_inputs=routing_inputs, field_reader=field_reader)
        self.routing = RoutingStep(ctx, routing_inputs=routing_inputs)
        self.first_touch = FirstTouchStep(ctx)
        self.templates = TemplateStep(ctx, selector=selector, catalog=catalog)
        # The template step's entry point itself, not a wrapper repeating its signature.
        self.recommend_templates = self.templates.recommend_templates

    # --- selection (the events each step looks at) --------------------------------------

    def is_echo(self, event: ChangeEvent) -> bool:
        return is_echo(event, self.client_id)

    def select_routing(self, events: Sequence[ChangeEvent]) -> list[ChangeEvent]:
        return select_routing(events, self.client_id)

    def select_first_touch(self, events: Sequence[ChangeEvent]) -> dict[str, Any]:
        return select_first_touch(events, self.client_id)

    def select_templates(self, events: Sequence[ChangeEvent]) -> dict[str, Any]:
        return select_templates(events, self.client_id)

    # --- the steps ----------------------------------------------------------------------

    def decode(self, batch: LoadedBatch, decoder: Decoder) -> DecodedBatch:
        return self.records.decode(batch, decoder)

    def apply_records(self, events: Sequence[ChangeEvent]) -> dict[str, Any]:
        return self.records.apply_records(events)

    def route_leads(self, events: Sequence[ChangeEvent]) -> dict[str, Any]:
        return self.routing.route_leads(events)

    def record_superseded(self, superseded: Sequence[Superseded]) -> None:
        self.routing.record_superseded(superseded)

    def detect_first_touch(
        self, events: Sequence[ChangeEvent], created_lead_ids: Iterable[str] = ()
    ) -> dict[str, Any]:
        return self.first_touch.detect_first_touch(events, created_lead_ids)

    def sla_minutes(self, state: RecordState) -> float:
        return sla_minutes_for(self.policy, state.fields)

    def process(self, events: Sequence[ChangeEvent]) -> dict[str, Any]:
        """The merge, then every workload step in ``steps.STEPS`` order; the record states
        the merge wrote are handed to the steps instead of read back (``handover.py``).

        Where the ledger's write transactions exclude each other (SQLite), the whole batch
        is one transaction (``one_transaction``): one commit instead of one per step, and
        each lead's facts row read and written once. Elsewhere (PostgreSQL, where runs of
        other partitions and re-sync write beside this one) each step commits its own, as
        the ops of ``process_cdc_batch`` do everywhere: a transaction holding one step's
        locks while it waits for the next step's could deadlock with another run.

        The cyclic garbage collector is paused for the batch (``collector.py``)."""
        batch_transaction = (
            self.ledger.one_transaction() if self.ledger.exclusive_writes else nullcontext()
        )
        with cycle_collection_paused(), self._ctx.handover.scope(), batch_transaction:
            records = self.apply_records(events)
            summaries = steps.run_steps(self, events)
        return {
            "records": records,
            "routing": summaries["route_leads"],
            "first_touch": summaries["detect_first_touch"],
            "templates": summaries["recommend_templates"],
        }


def routing_fields(policy: RoutingPolicy) -> tuple[str, ...]:
    """The lead fields routing reads: the owner and every field a rule's condition names."""
    fields: set[str] = {"OwnerId"}
    for rule in policy.rules:
        _condition_fields(rule.when, fields)
    return tuple(sorted(fields))


def _condition_fields(condition: Condition | None, into: set[str]) -> None:
    if condition is not None:
        if condition.field:
            into.add(condition.field)
        for child in condition.children:
            _condition_fields(child, into)
