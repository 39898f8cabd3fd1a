"""Time to first response: response candidates are stored per lead, and each affected lead's
first response is settled; it only ever moves earlier."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from kpi_pipeline.app.processing.batch_port import BatchWork
from kpi_pipeline.app.processing.context import StepContext
from kpi_pipeline.core.events import ChangeEvent
from kpi_pipeline.core.workloads.decision_messages import first_touch_messages
from kpi_pipeline.core.workloads.first_touch import (
    FirstResponse,
    ResponseCandidate,
    email_candidate,
    first_response,
    first_response_to_json,
    task_candidate,
)
from kpi_pipeline.core.workloads.records import RecordState
from kpi_pipeline.core.workloads.selection import (
    EMAIL,
    LEAD,
    TASK,
    created_or_none,
    is_echo,
    is_wildcard,
    replays_by_record,
)
from kpi_pipeline.core.workloads.writeback_fields import FIRST_RESPONSE_GROUP
from kpi_pipeline.telemetry import metrics

WORKLOAD_FIRST_TOUCH = "first_touch"
FIRST_TOUCH_MODEL = "first-touch-rules-v1"  # CONTRACTS.md §4 as code; policy adds automation


class FirstTouchStep:
    def __init__(self, ctx: StepContext) -> None:
        self.ctx = ctx
        self.ledger = ctx.ledger
        self.policy = ctx.policy
        self.clock = ctx.clock

    def detect_first_touch(
        self, events: Sequence[ChangeEvent], created_lead_ids: Iterable[str] = ()
    ) -> dict[str, Any]:
        """Store response candidates; settle each affected lead's first response (only earlier)."""
        activities = [
            e for e in events if e.entity in (TASK, EMAIL) and not is_echo(e, self.ctx.client_id)
        ]
        replays = replays_by_record(activities)
        changed = {
            (e.entity, rid) for e in activities for rid in e.record_ids if not is_wildcard(rid)
        }
        summary = {"activities": len(changed), "candidates": 0, "improved": 0}
        summary |= {"waiting_for_lead": 0, "relinked_emails": 0}
        affected: set[str] = set(created_lead_ids)
        with self.ledger.write() as conn:
            relinked = self._emails_of_tasks(conn, changed, replays)
            summary["relinked_emails"] = len(relinked)
            keys = sorted(changed | relinked)
            states = self.ctx.records(conn, keys)
            task_lookup = self.ctx.task_lookup(conn, states.values())
            lead_replays: dict[str, list[str]] = {}
            puts: list[ResponseCandidate] = []
            drops: list[str] = []
            for key in keys:
                state = states.get(key)
                if state is None:
                    continue
                candidate = (
                    task_candidate(state)
                    if state.sobject == TASK
                    else email_candidate(state, task_lookup)
                )
                if candidate is None:
                    drops.append(state.record_id)
                    continue
                summary["candidates"] += 1
                puts.append(candidate)
                affected.add(candidate.lead_id)
                lead_replays.setdefault(candidate.lead_id, []).extend(replays.get(key[1], []))
            self.ledger.drop_candidates(conn, drops)
            self.ledger.put_candidates(conn, puts)
            leads = self.ctx.records(conn, [(LEAD, lead_id) for lead_id in affected])
            stored = self.ledger.candidates_for(conn, affected)
            batch = self.ledger.batch_work(conn)
            batch.preload(lead_id for (_, lead_id) in leads)
            for lead_id in sorted(affected):
                outcome = self._settle_first_response(
                    batch,
                    leads.get((LEAD, lead_id)),
                    stored.get(lead_id, []),
                    lead_replays.get(lead_id, []),
                )
                summary[outcome] = summary.get(outcome, 0) + 1
            batch.flush()
        return summary

    def _emails_of_tasks(
        self,
        conn: sa.Connection,
        changed: set[tuple[str, str]],
        replays: dict[str, list[str]],
    ) -> set[tuple[str, str]]:
        """Stored emails whose ActivityId is one of the changed Tasks: an email linked to
        its lead only through its Task is re-evaluated when that Task arrives or changes,
        so its candidate and template do not depend on which came first. The Task's replay
        ids are credited to the email (they are what triggered the re-evaluation)."""
        task_ids = [rid for sobject, rid in changed if sobject == TASK]
        linked = self.ledger.emails_linked_to(conn, task_ids)
        for email_id, task_id in linked.items():
            replays.setdefault(email_id, []).extend(replays.get(task_id, []))
        return {(EMAIL, email_id) for email_id in linked} - changed

    def _settle_first_response(
        self,
        batch: BatchWork,
        lead: RecordState | None,
        candidates: list[Any],
        replay_ids: list[str],
    ) -> str:
        created = created_or_none(lead) if lead is not None else None
        if lead is None or created is None:
            return "waiting_for_lead"
        lead_id = lead.record_id
        fr = first_response(
            candidates,
            lead_created=created,
            automation_users=frozenset(self.policy.automation_users),
        )
        if fr is None:
            return "unanswered"
        if not batch.improve_first_response(lead_id, fr):
            return "unchanged"
        # Business minutes of the new first response (and a due time not yet computed).
        dirty = self.ctx.refresh_clocks(batch, lead_id) | set(FIRST_RESPONSE_GROUP)
        batch.mark_dirty(LEAD, lead_id, dirty)
        self._record_first_touch(batch, lead_id, created, candidates, fr, replay_ids)
        metrics.observe_first_response(max(0.0, (fr.at - created).total_seconds()))
        return "improved"

    def _record_first_touch(
        self,
        batch: BatchWork,
        lead_id: str,
        created: datetime,
        candidates: list[Any],
        fr: FirstResponse,
        replay_ids: list[str],
    ) -> None:
        messages = first_touch_messages(lead_id, created, candidates)
        self.ctx.record_decision(
            batch,
            workload=WORKLOAD_FIRST_TOUCH,
            lead_id=lead_id,
            decided_at=self.clock() if self.clock else fr.at,
            rule_id=fr.source,
            model=FIRST_TOUCH_MODEL,
            messages=messages,
            response=first_response_to_json(fr),
            replay_ids=replay_ids,
        )
        metrics.record_decision(WORKLOAD_FIRST_TOUCH, fr.source, self.policy.version)
