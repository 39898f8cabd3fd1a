"""Outreach templates: one recommendation per routed lead (memoized), and the template each
lead's first outbound email actually used (Template_Applied__c)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from kpi_pipeline.app.processing.batch_port import BatchWork
from kpi_pipeline.app.processing.context import StepContext
from kpi_pipeline.core.events import ChangeEvent
from kpi_pipeline.core.ledger_rows import TemplateRecommendation
from kpi_pipeline.core.workloads.first_touch import ResponseCandidate, email_candidate
from kpi_pipeline.core.workloads.lead_route import RoutingDecision, routing_basis
from kpi_pipeline.core.workloads.outreach_templates import (
    TemplateCatalog,
    TemplateSelection,
    TemplateSelector,
    applied_template,
    selection_messages,
)
from kpi_pipeline.core.workloads.records import RecordState
from kpi_pipeline.core.workloads.selection import EMAIL, LEAD, events_by_record, is_wildcard
from kpi_pipeline.telemetry import metrics

WORKLOAD_TEMPLATE = "outreach_template"


class TemplateStep:
    def __init__(
        self, ctx: StepContext, *, selector: TemplateSelector, catalog: TemplateCatalog
    ) -> None:
        self.ctx = ctx
        self.ledger = ctx.ledger
        self.policy = ctx.policy
        self.clock = ctx.clock
        self.selector = selector
        self.catalog = catalog

    def recommend_templates(
        self,
        lead_ids: Iterable[str] = (),
        email_events: Sequence[ChangeEvent] = (),
        lead_events: Sequence[ChangeEvent] = (),
        task_ids: Iterable[str] = (),
        *,
        routing_summary: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Recommend a template once per routed lead; record the template each lead's first
        outbound email used (Template_Applied__c). ``task_ids``: Tasks that changed in the
        batch; the emails logged by them are checked again (their lead may be known now)."""
        wanted = set(lead_ids) | set((routing_summary or {}).get("routed_lead_ids", []))
        summary = {
            "recommended": 0,
            "memoized": 0,
            "no_template": 0,
            "not_routed": 0,
            "applied": 0,
            "dead_lettered": 0,
        }
        failed_leads: list[str] = []
        by_lead = events_by_record([*lead_events, *email_events])
        with self.ledger.write() as conn:
            decisions = self.ledger.routing_decisions(conn, wanted)
            known = self.ledger.template_recommendations(conn, wanted)
            states = self.ctx.records(conn, [(LEAD, lead_id) for lead_id in wanted])
            applicable = self._applicable_emails(conn, email_events, wanted, task_ids)
            batch = self.ledger.batch_work(conn)
            # Every lead this step may write, locked and read at once (in sorted order).
            batch.preload(wanted | {candidate.lead_id for _, candidate in applicable})
            for lead_id in sorted(wanted):
                state, decision = states.get((LEAD, lead_id)), decisions.get(lead_id)
                if lead_id in known:
                    summary["memoized"] += 1
                elif state is None or decision is None:
                    summary["not_routed"] += 1
                else:
                    lead_events = by_lead.get(lead_id, [])
                    # On the fields routing judged (a later edit in this batch is not seen,
                    # as it would not be had it come in the next one), else the current ones.
                    basis = routing_basis(state, _of_lead(lead_events), self.policy)
                    fields_of = basis[0] if basis is not None else state
                    outcome = self.ctx.isolated(
                        batch,
                        "recommend_templates",
                        lambda lead=fields_of, decision=decision: self._recommend_one(
                            batch, lead, decision
                        ),
                        lead_events,
                    )
                    summary[outcome] += 1
                    if outcome == "dead_lettered":
                        failed_leads.append(lead_id)
            summary["applied"] = self._apply_templates(batch, applicable)
            batch.flush()
        summary["failed_lead_ids"] = failed_leads
        return summary

    def _recommend_one(
        self, batch: BatchWork, state: RecordState, decision: RoutingDecision
    ) -> str:
        selection: TemplateSelection = self.selector.select(state.fields, self.catalog)
        decided_at = self.clock() if self.clock else decision.decided_at
        messages = selection.messages or selection_messages(state.fields, self.catalog)
        response = {
            "template_id": selection.template_id,
            "reason": selection.reason,
            "candidates": list(selection.candidates),
            "fallback_reason": selection.fallback_reason,
        }
        self.ctx.record_decision(
            batch,
            workload=WORKLOAD_TEMPLATE,
            lead_id=state.record_id,
            decided_at=decided_at,
            rule_id=decision.rule_id,
            model=selection.model,
            messages=messages,
            response=response,
            replay_ids=[],
        )
        outcome = (
            "fallback"
            if selection.fallback_reason
            else ("recommended" if selection.template_id else "none")
        )
        metrics.record_decision(WORKLOAD_TEMPLATE, outcome, self.policy.version)
        if selection.template_id is None:
            return "no_template"
        batch.insert_template_recommendation(
            TemplateRecommendation(
                lead_id=state.record_id,
                template_id=selection.template_id,
                model=selection.model,
                decided_at=decided_at,
                detail=response,
            )
        )
        batch.set_template_recommended(state.record_id, selection.template_id)
        batch.mark_dirty(LEAD, state.record_id, ["Template_Recommended__c"])
        return "recommended"

    def _applicable_emails(
        self,
        conn: sa.Connection,
        email_events: Sequence[ChangeEvent],
        lead_ids: Iterable[str],
        task_ids: Iterable[str] = (),
    ) -> list[tuple[RecordState, ResponseCandidate]]:
        """Emails of this batch, the stored outbound emails of ``lead_ids`` (emails that
        arrived before their lead was known) and the stored emails whose ActivityId is one
        of ``task_ids`` (emails that arrived before their Task), so the answer does not
        depend on order."""
        waiting = {
            c.record_id
            for candidates in self.ledger.candidates_for(conn, lead_ids).values()
            for c in candidates
            if c.source == EMAIL
        }
        waiting |= set(self.ledger.emails_linked_to(conn, task_ids))
        ids = sorted(
            waiting
            | {
                rid
                for e in email_events
                if e.entity == EMAIL
                for rid in e.record_ids
                if not is_wildcard(rid)
            }
        )
        states = self.ctx.records(conn, [(EMAIL, rid) for rid in ids])
        task_lookup = self.ctx.task_lookup(conn, states.values())
        found = [(states[key], email_candidate(states[key], task_lookup)) for key in sorted(states)]
        return [(email, candidate) for email, candidate in found if candidate is not None]

    def _apply_templates(
        self, batch: BatchWork, applicable: Sequence[tuple[RecordState, ResponseCandidate]]
    ) -> int:
        """Template_Applied__c of each email's lead (an earlier outbound email wins)."""
        applied = 0
        for email, candidate in applicable:
            template_id = applied_template(email, self.catalog)
            before = batch.row(candidate.lead_id)
            if before is None:
                continue  # the lead is not known yet: re-checked when its CREATE arrives
            before_template = before.Template_Applied__c
            if (
                batch.set_template_applied(
                    candidate.lead_id, template_id, at=candidate.at, record_id=email.record_id
                )
                and template_id != before_template
            ):
                batch.mark_dirty(LEAD, candidate.lead_id, ["Template_Applied__c"])
                applied += 1
        return applied


def _of_lead(events: Sequence[ChangeEvent]) -> list[ChangeEvent]:
    """A lead's own events among those ``events_by_record`` gives it (its emails too)."""
    return [e for e in events if e.entity == LEAD]
