"""The simulation engine: a time-ordered queue of actions that write the org's activity.

Running an action may schedule more (never in the past). The lead lifecycle lives here:
creation, the first response (queue accept, email send, call, logged task), follow-ups,
status and field updates, and the noise the pipeline must ignore."""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kpi_pipeline.sandbox.simulator.catalog import (
    API_ORIGIN,
    AUTOMATION_ORIGIN,
    LEAD_STATUS_CLOSED,
    LEAD_STATUS_QUALIFIED,
    LEAD_STATUS_WORKING,
    NURTURE_TEMPLATE,
    OUTREACH_TEMPLATES,
    RESPONSE_KINDS,
    UI_ORIGIN,
    weighted,
)
from kpi_pipeline.sandbox.simulator.plans import LeadPlan
from kpi_pipeline.sandbox.simulator.timing import (
    DAY_MS,
    HOUR_MS,
    MINUTE_MS,
    after_working_minutes,
    day_ms,
    lognormal_ms,
)
from kpi_pipeline.sandbox.store import (
    AUTOMATION_USER,
    INTEGRATION_USER,
    REPS,
    SandboxStore,
    SandboxUser,
)


@dataclass
class SimulationSummary:
    leads: int = 0
    leads_never_answered: int = 0  # planned: these leads get no rep response at all
    responses: Counter[str] = field(default_factory=Counter)  # first responses written, by kind
    queue_accepts: int = 0
    automation_emails: int = 0
    inbound_emails: int = 0
    follow_ups: int = 0
    lead_deletes: int = 0
    changes: int = 0
    start_ms: int = 0
    end_ms: int = 0
    first_replay: int = 0
    last_replay: int = 0


@dataclass(order=True)
class _Action:
    at_ms: int
    order: int
    run: Callable[[int], None] = field(compare=False)


class Engine:
    """A time-ordered queue of actions; running one may schedule more (never in the past)."""

    def __init__(self, store: SandboxStore, *, speedup: float, working_hours: bool) -> None:
        self.store = store
        self.speedup = speedup
        self.working_hours = working_hours
        self.summary = SimulationSummary()
        self._queue: list[_Action] = []
        self._order = itertools.count()

    # -- scheduling --
    def at(self, at_ms: int, run: Callable[[int], None]) -> None:
        heapq.heappush(self._queue, _Action(int(at_ms), next(self._order), run))

    def later(self, now_ms: int, delay_ms: float, run: Callable[[int], None]) -> None:
        self.at(now_ms + max(1, int(delay_ms / self.speedup)), run)

    def run_until(self, end_ms: int) -> int:
        """Run every action due at or before ``end_ms``; returns change events written."""
        before = self.summary.changes
        while self._queue and self._queue[0].at_ms <= end_ms:
            action = heapq.heappop(self._queue)
            action.run(action.at_ms)
        return self.summary.changes - before

    # -- store writes (counted) --
    def _create(
        self,
        sobject: str,
        values: dict[str, Any],
        user: SandboxUser,
        at_ms: int,
        tx=None,
        origin: str = "",
    ) -> str:
        self.summary.changes += 1
        return self.store.create_record(
            sobject, values, user_id=user.id, at_ms=at_ms, transaction=tx, change_origin=origin
        )

    def _update(
        self, sobject: str, record_id: str, values: dict[str, Any], user: SandboxUser, at_ms: int
    ) -> None:
        self.summary.changes += 1
        self.store.update_record(
            sobject, record_id, values, user_id=user.id, at_ms=at_ms, change_origin=UI_ORIGIN
        )

    # -- the lead lifecycle --
    def add_lead(self, plan: LeadPlan) -> None:
        self.at(plan.arrival_ms, lambda now: self._create_lead(plan, now))

    def _create_lead(self, plan: LeadPlan, now: int) -> None:
        rng = plan.rng
        plan.lead_id = self._create("Lead", plan.values, plan.creator, now, origin=plan.origin)
        self.summary.leads += 1
        if rng.random() < 0.015 and plan.creator.role != "rep":  # spam: deleted, no response
            self.later(now, lognormal_ms(rng, 40, 0.8), lambda t: self._delete_lead(plan, t))
            return
        if plan.response_kind is None:
            self.summary.leads_never_answered += 1
            self.later(
                now,
                rng.uniform(5, 9) * DAY_MS,
                lambda t: self._set_status(plan, LEAD_STATUS_CLOSED, AUTOMATION_USER, t),
            )
        else:
            self.at(self._response_time(plan, now), lambda t: self._respond(plan, t))
        if plan.values["LeadSource"] in ("Web", "Webinar", "Advertisement") and rng.random() < 0.6:
            self.later(
                now, rng.uniform(1, 12) * MINUTE_MS, lambda t: self._automation_email(plan, t)
            )
        if rng.random() < 0.08:
            self.later(now, lognormal_ms(rng, 180, 1.0), lambda t: self._inbound_email(plan, t))

    def _response_time(self, plan: LeadPlan, now: int) -> int:
        if not self.working_hours:
            return now + max(1, int(plan.response_delay_ms / self.speedup))
        # The delay is the rep's working time: a lead at 18:55 on a Friday is answered on
        # Monday morning, and a holiday waits for the next working day.
        minutes = plan.response_delay_ms / MINUTE_MS
        return after_working_minutes(now, minutes, plan.fallback_rep.region)

    def _lead(self, plan: LeadPlan) -> dict[str, Any] | None:
        return self.store.get_record("Lead", plan.lead_id)

    def _responder(self, lead: dict[str, Any]) -> SandboxUser | None:
        return next((rep for rep in REPS if rep.id == lead.get("OwnerId")), None)

    def _respond(self, plan: LeadPlan, now: int) -> None:
        lead = self._lead(plan)
        if lead is None:
            return  # deleted meanwhile
        rep = self._responder(lead)
        if rep is None:  # still in a queue or with the integration user: a rep takes it
            rep = plan.fallback_rep
            self._update("Lead", plan.lead_id, {"OwnerId": rep.id}, rep, now)
            self.summary.queue_accepts += 1
            self.later(
                now,
                plan.rng.uniform(1, 8) * MINUTE_MS,
                lambda t: self._touch(plan, rep, t, first=True),
            )
            return
        self._touch(plan, rep, now, first=True)

    def _touch(self, plan: LeadPlan, rep: SandboxUser, now: int, *, first: bool) -> None:
        if self._lead(plan) is None:
            return
        rng = plan.rng
        kind = plan.response_kind if first else weighted(rng, RESPONSE_KINDS)
        if kind == "email":
            self._email_send(
                plan, rep, now, rng.choice(OUTREACH_TEMPLATES) if rng.random() < 0.75 else None
            )
        elif kind == "call":
            self._open_call(plan, rep, now)
        else:
            self._logged_task(plan, rep, now)
        if not first:
            self.summary.follow_ups += 1
            return
        self.summary.responses[kind] += 1
        self.later(
            now,
            rng.uniform(1, 30) * MINUTE_MS,
            lambda t: self._set_status(plan, LEAD_STATUS_WORKING, rep, t),
        )
        for _ in range(rng.choice((0, 0, 1, 1, 2))):
            self.later(
                now, rng.uniform(0.5, 4) * DAY_MS, lambda t: self._touch(plan, rep, t, first=False)
            )
        if rng.random() < 0.15:
            self.later(
                now, rng.uniform(0.1, 2) * DAY_MS, lambda t: self._touch_fields(plan, rep, t)
            )
        if rng.random() < 0.5:
            outcome = LEAD_STATUS_QUALIFIED if rng.random() < 0.45 else LEAD_STATUS_CLOSED
            self.later(
                now, rng.uniform(1, 6) * DAY_MS, lambda t: self._set_status(plan, outcome, rep, t)
            )

    def _fill(self, text: str, plan: LeadPlan) -> str:
        return text.format(
            company=plan.values["Company"],
            industry=plan.values["Industry"],
            first_name=plan.values["FirstName"],
        )

    def _email_send(
        self,
        plan: LeadPlan,
        sender: SandboxUser,
        now: int,
        template: Any,
        *,
        origin: str = UI_ORIGIN,
    ) -> None:
        """An email sent from Salesforce: Task + EmailMessage in one transaction, one instant."""
        subject = (
            self._fill(template.subject, plan)
            if template
            else f"Following up on your inquiry, {plan.values['FirstName']}"
        )
        with self.store.transaction(at_ms=now) as tx:
            task_id = self._create("Task", {
                "Subject": f"Email: {subject}", "Status": "Completed", "Priority": "Normal", "IsClosed": True,
                "WhoId": plan.lead_id, "OwnerId": sender.id, "ActivityDate": day_ms(now),
                "CompletedDateTime": now, "TaskSubtype": "Email", "Type": "Email",
            }, sender, now, tx, origin)  # fmt: skip
            self._create("EmailMessage", {
                "Subject": subject, "FromAddress": sender.email, "ToAddress": plan.values["Email"],
                "Incoming": False, "MessageDate": now, "Status": "3", "RelatedToId": plan.lead_id,
                "ActivityId": task_id, "EmailTemplateId": template.id if template else None,
                "TextBody": f"Hi {plan.values['FirstName']},\n\n{subject}.\n\n{sender.name}",
            }, sender, now, tx, origin)  # fmt: skip

    def _open_call(self, plan: LeadPlan, rep: SandboxUser, now: int) -> None:
        task_id = self._create("Task", {
            "Subject": f"Call {plan.values['FirstName']} {plan.values['LastName']}", "Status": "Not Started",
            "Priority": "High", "IsClosed": False, "WhoId": plan.lead_id, "OwnerId": rep.id,
            "ActivityDate": day_ms(now), "TaskSubtype": "Call", "Type": "Call",
        }, rep, now, origin=UI_ORIGIN)  # fmt: skip
        self.later(
            now,
            plan.rng.uniform(3, 25) * MINUTE_MS,
            lambda t: self._complete_call(plan, rep, task_id, t),
        )

    def _complete_call(self, plan: LeadPlan, rep: SandboxUser, task_id: str, now: int) -> None:
        if self.store.get_record("Task", task_id) is None:
            return
        outcome = plan.rng.choice(("Connected", "Left voicemail", "No answer"))
        self._update(
            "Task",
            task_id,
            {
                "Status": "Completed",
                "IsClosed": True,
                "CompletedDateTime": now,
                "Description": outcome,
            },
            rep,
            now,
        )

    def _logged_task(self, plan: LeadPlan, rep: SandboxUser, now: int) -> None:
        task_id = self._create("Task", {
            "Subject": plan.rng.choice(("Call", "LinkedIn message", "Intro call")), "Status": "Completed",
            "Priority": "Normal", "IsClosed": True, "WhoId": plan.lead_id, "OwnerId": rep.id,
            "ActivityDate": day_ms(now), "CompletedDateTime": now,
            "TaskSubtype": plan.rng.choice(("Call", "Task")), "Type": "Call",
        }, rep, now, origin=UI_ORIGIN)  # fmt: skip
        if plan.rng.random() < 0.03:  # logged on the wrong lead: deleted again
            self.later(
                now,
                plan.rng.uniform(2, 60) * MINUTE_MS,
                lambda t: self._delete("Task", task_id, rep, t),
            )

    def _automation_email(self, plan: LeadPlan, now: int) -> None:
        if self._lead(plan) is None:
            return
        self._email_send(plan, AUTOMATION_USER, now, NURTURE_TEMPLATE, origin=AUTOMATION_ORIGIN)
        self.summary.automation_emails += 1

    def _inbound_email(self, plan: LeadPlan, now: int) -> None:
        lead = self._lead(plan)
        if lead is None:
            return
        owner = self._responder(lead) or INTEGRATION_USER
        email_id = self._create("EmailMessage", {
            "Subject": f"Re: question about pricing ({plan.values['Company']})",
            "FromAddress": plan.values["Email"], "ToAddress": owner.email, "Incoming": True,
            "MessageDate": now, "Status": "0", "RelatedToId": plan.lead_id,
            "TextBody": "Hi, could you send me pricing details?",
        }, owner, now, origin=API_ORIGIN)  # fmt: skip
        self.summary.inbound_emails += 1
        if owner.role == "rep":
            self.later(
                now,
                plan.rng.uniform(5, 120) * MINUTE_MS,
                lambda t: self._update("EmailMessage", email_id, {"Status": "1"}, owner, t),
            )

    def _set_status(self, plan: LeadPlan, status: str, user: SandboxUser, now: int) -> None:
        lead = self._lead(plan)
        if lead is None or lead.get("Status") in (
            status,
            LEAD_STATUS_QUALIFIED,
            LEAD_STATUS_CLOSED,
        ):
            return
        self._update("Lead", plan.lead_id, {"Status": status}, user, now)

    def _touch_fields(self, plan: LeadPlan, rep: SandboxUser, now: int) -> None:
        lead = self._lead(plan)
        if lead is None:
            return
        values: dict[str, Any] = {"Rating": plan.rng.choice(("Hot", "Warm", "Cold"))}
        if lead.get("Phone") and plan.rng.random() < 0.4:
            values["Phone"] = None  # wrong number: cleared (nulledFields)
        self._update("Lead", plan.lead_id, values, rep, now)

    def _delete_lead(self, plan: LeadPlan, now: int) -> None:
        if self._lead(plan) is None:
            return
        self._delete("Lead", plan.lead_id, INTEGRATION_USER, now)
        self.summary.lead_deletes += 1
        if plan.rng.random() < 0.15:  # not spam after all
            self.later(
                now, plan.rng.uniform(1, 6) * HOUR_MS, lambda t: self._undelete_lead(plan, t)
            )

    def _undelete_lead(self, plan: LeadPlan, now: int) -> None:
        self.summary.changes += 1
        self.store.undelete_record(
            "Lead", plan.lead_id, user_id=INTEGRATION_USER.id, at_ms=now, change_origin=UI_ORIGIN
        )

    def _delete(self, sobject: str, record_id: str, user: SandboxUser, now: int) -> None:
        if self.store.get_record(sobject, record_id) is None:
            return
        self.summary.changes += 1
        self.store.delete_record(
            sobject, record_id, user_id=user.id, at_ms=now, change_origin=UI_ORIGIN
        )
