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

Where it lives: ``catalog`` (origins, templates, the weighted tables), ``timing`` (arrival
rhythm, delays, working hours), ``plans`` (a lead's plan), ``engine`` (the action queue and
the lead lifecycle) and ``drivers`` (``simulate``, ``LiveSimulator``). This package exposes
what callers run and the values they compare with.
"""

from __future__ import annotations

from kpi_pipeline.sandbox.simulator.catalog import (
    API_ORIGIN,
    AUTOMATION_ORIGIN,
    TEMPLATE_CATALOG,
    UI_ORIGIN,
    EmailTemplate,
)
from kpi_pipeline.sandbox.simulator.drivers import LiveSimulator, simulate
from kpi_pipeline.sandbox.simulator.engine import SimulationSummary

__all__ = [
    "API_ORIGIN",
    "AUTOMATION_ORIGIN",
    "TEMPLATE_CATALOG",
    "UI_ORIGIN",
    "EmailTemplate",
    "LiveSimulator",
    "SimulationSummary",
    "simulate",
]
