"""Realistic sales activity for the sandbox org, fully deterministic for a seed and start time.

What it writes (through ``SandboxStore``, so every action is also a change event):

* **Lead arrivals**: a non-homogeneous Poisson process with a business-hours peak (EMEA
  morning, EMEA/NA overlap, a small APAC bump), quiet nights and weekends. Sources,
  countries, industries and company sizes follow skewed distributions. About 55% of
  leads land in a queue, 25% are owned by the integration user (web-to-lead through the
  API): both need routing; 20% are created by a rep who owns them.
* **Responses**: the owner at response time answers after a lognormal delay (median ~25
  minutes, long tail) of *working time* in the responder's region: the calendars of the
  packaged routing policy (NA New York, EMEA Berlin, APAC Sydney: weekly hours, holidays,
  DST). Nights, weekends and holidays therefore stretch the wall-clock TTFR (the tail is
  days long) while the business-minute TTFR stays near the delay, which is the difference
  the business-hours KPIs show. ~20% of leads are never answered.
  A lead still in a queue or with the integration user is first accepted by a rep of the
  lead's region (an OwnerId UPDATE). A response is one of:
  an **email send** (one transaction at one instant: a completed Task ``TaskSubtype=Email``
  and an outbound EmailMessage with ``Incoming=false``, ``RelatedToId``=lead,
  ``ActivityId``=task, an ``EmailTemplateId`` from ``TEMPLATE_CATALOG`` for most),
  a **call** (a Task created open, UPDATEd to Completed with ``CompletedDateTime`` minutes
  later), or a **task logged already completed**.
* **Noise the pipeline must ignore**: nurture emails by the marketing-automation user
  minutes after creation, inbound emails (``Incoming=true``), follow-up touches after the
  first response, status and rating updates, a phone number set to null, spam leads
  deleted (a few undeleted again), mistaken tasks deleted.

Two drivers share one engine:

* ``simulate(store, leads=, days=, seed=)`` writes a batch history that ends at "now" by
  default (so it is inside the 72 h retention); activity planned after the end is dropped
  (those leads are simply still pending).
* ``LiveSimulator(store, seed=, leads_per_hour=, response_speedup=)``: ``step(now_ms)``
  writes what is due up to now. Arrivals follow a homogeneous Poisson process at
  ``leads_per_hour`` *wall-clock* leads per hour (a demo should show data at any hour).
  Every delay (responses, call durations, follow-ups, status changes) is divided by
  ``response_speedup`` and working hours are not applied, so with 600 a 25-minute median
  response arrives after ~2.5 s. Leads live in memory: after a restart the live simulator
  starts new leads and no longer answers the old ones.

Each lead draws from its own RNG (seed, lead number), so what the pipeline writes back
(e.g. routing a lead to another owner) changes who answers but not the rest of the run.
"""

from __future__ import annotations

import bisect
import functools
import heapq
import itertools
import math
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from kpi_pipeline.core.policy.load import load_policy
from kpi_pipeline.core.workloads.business_hours import BusinessClock
from kpi_pipeline.sandbox.store import (
    AUTOMATION_USER,
    INBOUND_QUEUE,
    INTEGRATION_USER,
    PARTNER_QUEUE,
    REPS,
    SandboxStore,
    SandboxUser,
    sf_id,
)

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
API_ORIGIN = "com/salesforce/api/rest/64.0;client=WebToLeadConnector"
UI_ORIGIN = "com/salesforce/api/soap/64.0;client=SfdcInternalAPI/"
AUTOMATION_ORIGIN = "com/salesforce/api/rest/64.0;client=MarketingCloudConnect"


@dataclass(frozen=True, slots=True)
class EmailTemplate:
    id: str
    name: str
    subject: str
    purpose: str  # "outreach" | "nurture"


TEMPLATE_CATALOG: tuple[EmailTemplate, ...] = (
    EmailTemplate(sf_id("00X", 1), "Intro - short", "Quick question about {company}", "outreach"),
    EmailTemplate(
        sf_id("00X", 2), "Intro - value", "How {industry} teams cut response time", "outreach"
    ),
    EmailTemplate(
        sf_id("00X", 3), "Demo invite", "15 minutes for a demo, {first_name}?", "outreach"
    ),
    EmailTemplate(
        sf_id("00X", 4), "Partner intro", "Introduced by our partner: next steps", "outreach"
    ),
    EmailTemplate(
        sf_id("00X", 5), "Event follow-up", "Great meeting you, {first_name}", "outreach"
    ),
    EmailTemplate(
        sf_id("00X", 6), "Nurture - welcome", "Thanks for your interest, {first_name}", "nurture"
    ),
)
OUTREACH_TEMPLATES = tuple(t for t in TEMPLATE_CATALOG if t.purpose == "outreach")
NURTURE_TEMPLATE = TEMPLATE_CATALOG[-1]

# (value, weight) tables: skewed like a typical B2B inbound funnel.
LEAD_SOURCES = (
    ("Web", 34),
    ("Phone Inquiry", 10),
    ("Partner Referral", 10),
    ("Webinar", 10),
    ("Trade Show", 8),
    ("Purchased List", 8),
    ("Advertisement", 8),
    ("Other", 8),
    ("Employee Referral", 4),
)
NEVER_ANSWERED_BY_SOURCE = {"Purchased List": 0.45, "Webinar": 0.25}
NEVER_ANSWERED_DEFAULT = 0.17  # weighted with the above: ~20% of leads never answered
COUNTRIES = (  # country, code, region, weight, cities
    ("United States", "US", "NA", 40, ("San Francisco", "New York", "Austin", "Chicago", "Boston")),
    ("United Kingdom", "GB", "EMEA", 12, ("London", "Manchester", "Edinburgh")),
    ("Germany", "DE", "EMEA", 10, ("Berlin", "Munich", "Hamburg")),
    ("Canada", "CA", "NA", 6, ("Toronto", "Vancouver")),
    ("France", "FR", "EMEA", 6, ("Paris", "Lyon")),
    ("Australia", "AU", "APAC", 5, ("Sydney", "Melbourne")),
    ("India", "IN", "APAC", 5, ("Bengaluru", "Mumbai")),
    ("Netherlands", "NL", "EMEA", 4, ("Amsterdam", "Rotterdam")),
    ("Japan", "JP", "APAC", 3, ("Tokyo", "Osaka")),
    ("Brazil", "BR", "NA", 3, ("Sao Paulo",)),
    ("Singapore", "SG", "APAC", 2, ("Singapore",)),
    ("Spain", "ES", "EMEA", 2, ("Madrid", "Barcelona")),
    ("Sweden", "SE", "EMEA", 2, ("Stockholm",)),
)
INDUSTRIES = (
    ("Technology", 28),
    ("Finance", 12),
    ("Healthcare", 10),
    ("Manufacturing", 10),
    ("Retail", 8),
    ("Education", 6),
    ("Consulting", 6),
    ("Media", 5),
    ("Telecommunications", 5),
    ("Government", 3),
    ("Energy", 3),
    ("Not For Profit", 2),
    ("Transportation", 2),
)
TITLES = (
    ("Head of Sales", 10),
    ("VP Marketing", 8),
    ("Sales Operations Manager", 12),
    ("RevOps Lead", 10),
    ("CTO", 5),
    ("Marketing Manager", 12),
    ("Founder", 6),
    ("Director of Business Development", 8),
    ("IT Manager", 7),
    ("Analyst", 6),
)
FIRST_NAMES = (
    "James", "Olivia", "Noah", "Amelia", "Elijah", "Charlotte", "Mateo", "Isabella", "Lucas",
    "Mia", "Oliver", "Harper", "Leo", "Evelyn", "Arjun", "Aiko", "Chen", "Fatima", "Lars",
    "Ingrid", "Pierre", "Chloe", "Hannah", "Jonas", "Maya", "Ravi", "Sakura", "Tomas",
    "Yara", "Zoe", "Daniel", "Grace", "Henry", "Ivy", "Kai", "Laura", "Marco", "Nina",
)  # fmt: skip
LAST_NAMES = (
    "Smith", "Johnson", "Brown", "Garcia", "Miller", "Davis", "Lopez", "Wilson", "Anderson",
    "Taylor", "Moore", "Jackson", "Martin", "Lee", "Walker", "Young", "King", "Wright",
    "Muller", "Schneider", "Fischer", "Bernard", "Moreau", "Sato", "Suzuki", "Patel", "Sharma",
    "Silva", "Santos", "Jansen", "De Vries", "Andersson", "Nilsson", "Kim", "Nguyen", "Chen",
)  # fmt: skip
COMPANY_WORDS = (
    "Blue", "North", "Bright", "Summit", "Nimbus", "Vertex", "Harbor", "Quantum", "Cedar",
    "Atlas", "Lumen", "Pioneer", "Silver", "Orbit", "Granite", "Maple", "Nova", "Zenith",
)  # fmt: skip
COMPANY_SUFFIXES = (
    "Labs",
    "Systems",
    "Analytics",
    "Logistics",
    "Health",
    "Capital",
    "Works",
    "Software",
    "Group",
    "Retail",
)
LEAD_STATUS_OPEN = "Open - Not Contacted"
LEAD_STATUS_WORKING = "Working - Contacted"
LEAD_STATUS_QUALIFIED = "Closed - Converted"
LEAD_STATUS_CLOSED = "Closed - Not Converted"
# Each region's reps work the hours of its calendar in the packaged routing policy.
REGION_CALENDARS = {"NA": "na", "EMEA": "emea", "APAC": "apac"}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
RESPONSE_KINDS = (("email", 50), ("call", 30), ("logged_task", 20))


def _weighted(rng: random.Random, table: tuple[tuple[Any, int], ...]) -> Any:
    return rng.choices([value for value, _ in table], weights=[w for _, w in table])[0]


def _lognormal_ms(rng: random.Random, median_minutes: float, sigma: float) -> int:
    return int(rng.lognormvariate(math.log(median_minutes), sigma) * MINUTE_MS)


# --- arrival rhythm ------------------------------------------------------------------------


def _bump(hour: float, center: float, width: float) -> float:
    distance = min(abs(hour - center), 24 - abs(hour - center))
    return math.exp(-0.5 * (distance / width) ** 2)


def arrival_weight(at_ms: int) -> float:
    """Relative lead-arrival intensity at a UTC instant (1.0 ~ weekday afternoon peak)."""
    moment = datetime.fromtimestamp(at_ms / 1000, tz=UTC)
    hour = moment.hour + moment.minute / 60
    weight = (
        0.06
        + 0.5 * _bump(hour, 9.5, 2.0)
        + 0.9 * _bump(hour, 15.5, 2.5)
        + 0.15 * _bump(hour, 2.0, 2.0)
    )
    return weight * (0.25 if moment.weekday() >= 5 else 1.0)


def sample_arrivals(rng: random.Random, count: int, start_ms: int, end_ms: int) -> list[int]:
    """``count`` arrival instants in [start, end): given its total, a Poisson process's
    arrivals are independent draws from its normalized intensity (sampled per minute)."""
    if end_ms <= start_ms:
        raise ValueError(f"simulation window is empty: start {start_ms} >= end {end_ms}")
    edges = list(range(start_ms, end_ms, MINUTE_MS))
    cumulative = list(itertools.accumulate(arrival_weight(t + MINUTE_MS // 2) for t in edges))
    total = cumulative[-1]
    arrivals = []
    for _ in range(count):
        index = bisect.bisect_left(cumulative, rng.random() * total)
        bin_end = min(edges[index] + MINUTE_MS, end_ms)
        arrivals.append(edges[index] + int(rng.random() * (bin_end - edges[index])))
    return sorted(arrivals)


@functools.cache
def _region_clocks() -> dict[str, BusinessClock]:
    calendars = load_policy().calendars
    return {
        region: BusinessClock.from_calendar(calendars[name], name)
        for region, name in REGION_CALENDARS.items()
    }


def _ms(at: datetime) -> int:
    return (at - _EPOCH) // timedelta(milliseconds=1)


def next_working_time(at_ms: int, region: str) -> int:
    """``at_ms`` if it is inside the region's working hours, else the next start of them."""
    at = datetime.fromtimestamp(at_ms / 1000, tz=UTC)
    return _ms(_region_clocks()[region].next_open(at))


def after_working_minutes(at_ms: int, minutes: float, region: str) -> int:
    """The instant ``minutes`` of the region's working time after ``at_ms``."""
    at = datetime.fromtimestamp(at_ms / 1000, tz=UTC)
    return _ms(_region_clocks()[region].add_open_minutes(at, minutes))


# --- lead plans ------------------------------------------------------------------------------


@dataclass
class LeadPlan:
    """Everything decided for one lead when it arrives (its own RNG keeps runs stable)."""

    number: int
    arrival_ms: int
    rng: random.Random
    values: dict[str, Any]
    creator: SandboxUser
    origin: str
    region: str
    fallback_rep: SandboxUser
    response_kind: str | None  # None: never answered
    response_delay_ms: int
    lead_id: str = ""


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


def _plan_lead(number: int, arrival_ms: int, rng: random.Random) -> LeadPlan:
    source = _weighted(rng, LEAD_SOURCES)
    # People fill in forms during their own working day: a region off hours sends few leads.
    awake = [1.0 if next_working_time(arrival_ms, c[2]) == arrival_ms else 0.2 for c in COUNTRIES]
    weights = [c[3] * factor for c, factor in zip(COUNTRIES, awake, strict=True)]
    country, code, region, _, cities = rng.choices(COUNTRIES, weights=weights)[0]
    first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
    company = f"{rng.choice(COMPANY_WORDS)} {rng.choice(COMPANY_SUFFIXES)}"
    domain = (
        company.lower().replace(" ", "") + "." + ("com" if code in ("US", "CA") else code.lower())
    )
    employees = max(1, min(250_000, int(rng.lognormvariate(math.log(80), 1.6))))
    values: dict[str, Any] = {
        "FirstName": first,
        "LastName": last,
        "Salutation": rng.choice(("Mr.", "Ms.", "Dr.", None, None)),
        "Company": company,
        "Title": _weighted(rng, TITLES),
        "Email": f"{first}.{last}@{domain}".lower().replace(" ", ""),
        "Phone": None
        if rng.random() < 0.1
        else f"+{rng.randint(1, 99)} {rng.randint(200, 999)} 555 {rng.randint(1000, 9999)}",
        "Status": LEAD_STATUS_OPEN,
        "LeadSource": source,
        "Industry": _weighted(rng, INDUSTRIES),
        "NumberOfEmployees": employees,
        "AnnualRevenue": None
        if rng.random() < 0.3
        else float(round(employees * rng.lognormvariate(math.log(150_000), 0.6), -3)),
        "Address": {
            "City": rng.choice(cities),
            "Country": country,
            "CountryCode": code,
            "Street": f"{rng.randint(1, 999)} {rng.choice(COMPANY_WORDS)} Street",
            "PostalCode": str(rng.randint(10000, 99999)),
        },
    }
    regional_reps = [rep for rep in REPS if rep.region == region]
    fallback = rng.choice(regional_reps)
    owner_draw = rng.random()
    if source == "Partner Referral":
        owner, creator, origin = PARTNER_QUEUE.id, INTEGRATION_USER, API_ORIGIN
    elif source in ("Phone Inquiry", "Trade Show", "Employee Referral") and owner_draw < 0.75:
        owner, creator, origin = fallback.id, fallback, UI_ORIGIN  # the rep keyed it in
    elif source in ("Purchased List", "Webinar", "Advertisement"):
        owner, creator, origin = INBOUND_QUEUE.id, AUTOMATION_USER, AUTOMATION_ORIGIN
    elif owner_draw < 0.45:
        owner, creator, origin = INTEGRATION_USER.id, INTEGRATION_USER, API_ORIGIN
    else:
        owner, creator, origin = INBOUND_QUEUE.id, INTEGRATION_USER, API_ORIGIN
    values["OwnerId"] = owner
    never = rng.random() < NEVER_ANSWERED_BY_SOURCE.get(source, NEVER_ANSWERED_DEFAULT)
    kind = None if never else _weighted(rng, RESPONSE_KINDS)
    delay = _lognormal_ms(rng, 25, 1.3)
    return LeadPlan(number, arrival_ms, rng, values, creator, origin, region, fallback, kind, delay)


# --- the engine -------------------------------------------------------------------------------


@dataclass(order=True)
class _Action:
    at_ms: int
    order: int
    run: Callable[[int], None] = field(compare=False)


class _Engine:
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
            self.later(now, _lognormal_ms(rng, 40, 0.8), lambda t: self._delete_lead(plan, t))
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
            self.later(now, _lognormal_ms(rng, 180, 1.0), lambda t: self._inbound_email(plan, t))

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
        kind = plan.response_kind if first else _weighted(rng, RESPONSE_KINDS)
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
                "WhoId": plan.lead_id, "OwnerId": sender.id, "ActivityDate": _day_ms(now),
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
            "ActivityDate": _day_ms(now), "TaskSubtype": "Call", "Type": "Call",
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
            "ActivityDate": _day_ms(now), "CompletedDateTime": now,
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


def _day_ms(at_ms: int) -> int:
    """Midnight UTC of the instant's day (Salesforce Date fields travel as epoch ms)."""
    return at_ms - at_ms % DAY_MS


def _lead_rng(seed: int, namespace: str, number: int) -> random.Random:
    return random.Random(f"{seed}/{namespace}/{number}")


# --- drivers -------------------------------------------------------------------------------


def simulate(
    store: SandboxStore, *, leads: int, days: float, seed: int, start_ms: int | None = None
) -> SimulationSummary:
    """Write ``leads`` leads arriving over ``days`` days and the activity that follows them.

    The window ends at the store's clock "now" unless ``start_ms`` is given; activity due
    after the window's end is not written. Deterministic for (seed, window) on an empty store.
    """
    if leads < 0 or days <= 0:
        raise ValueError(f"simulate needs leads >= 0 and days > 0, got leads={leads}, days={days}")
    end_ms = int(store.clock()) if start_ms is None else int(start_ms + days * DAY_MS)
    start = int(end_ms - days * DAY_MS)
    rng = random.Random(seed)
    engine = _Engine(store, speedup=1.0, working_hours=True)
    first_replay = store.latest_replay() + 1
    for number, arrival in enumerate(sample_arrivals(rng, leads, start, end_ms), start=1):
        engine.add_lead(_plan_lead(number, arrival, _lead_rng(seed, "batch", number)))
    engine.run_until(end_ms - 1)
    summary = engine.summary
    summary.start_ms, summary.end_ms = start, end_ms
    summary.first_replay, summary.last_replay = first_replay, store.latest_replay()
    return summary


class LiveSimulator:
    """Activity as time passes, for ``dagster dev`` (see the module docstring for the clock).

    ``step(now_ms)`` writes everything due up to ``now_ms`` and returns how many change
    events it wrote; call it every second or so. Deterministic for a seed and step times.
    """

    def __init__(
        self,
        store: SandboxStore,
        *,
        seed: int,
        leads_per_hour: float,
        response_speedup: float = 1.0,
    ) -> None:
        if leads_per_hour < 0 or response_speedup <= 0:
            raise ValueError(
                f"LiveSimulator needs leads_per_hour >= 0 and response_speedup > 0, got {leads_per_hour}, {response_speedup}"
            )
        self.store = store
        self.seed = seed
        self.leads_per_hour = leads_per_hour
        self._rng = random.Random(f"{seed}/live")
        self._engine = _Engine(store, speedup=response_speedup, working_hours=False)
        self._next_arrival_ms: int | None = None
        self._numbers = itertools.count(1)
        self._namespace = "live"

    @property
    def summary(self) -> SimulationSummary:
        return self._engine.summary

    def _gap_ms(self) -> float:
        return self._rng.expovariate(self.leads_per_hour / HOUR_MS)

    def step(self, now_ms: int) -> int:
        if self.leads_per_hour > 0:
            if self._next_arrival_ms is None:
                # the first step time names this run's leads, so a restarted simulator does
                # not replay the previous run's people (still deterministic in the step times)
                self._namespace = f"live/{now_ms}"
                self._next_arrival_ms = int(now_ms + self._gap_ms())
            while self._next_arrival_ms <= now_ms:
                number = next(self._numbers)
                rng = _lead_rng(self.seed, self._namespace, number)
                self._engine.add_lead(_plan_lead(number, self._next_arrival_ms, rng))
                self._next_arrival_ms = int(self._next_arrival_ms + max(1.0, self._gap_ms()))
        return self._engine.run_until(now_ms)
