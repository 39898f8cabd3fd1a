"""A lead's plan: everything decided for it when it arrives (values, creator, owner, region,
whether and how it is answered, after what delay), from its own RNG so runs stay stable."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

from kpi_pipeline.sandbox.simulator.catalog import (
    API_ORIGIN,
    AUTOMATION_ORIGIN,
    COMPANY_SUFFIXES,
    COMPANY_WORDS,
    COUNTRIES,
    FIRST_NAMES,
    INDUSTRIES,
    LAST_NAMES,
    LEAD_SOURCES,
    LEAD_STATUS_OPEN,
    NEVER_ANSWERED_BY_SOURCE,
    NEVER_ANSWERED_DEFAULT,
    RESPONSE_KINDS,
    TITLES,
    UI_ORIGIN,
    weighted,
)
from kpi_pipeline.sandbox.simulator.timing import lognormal_ms, next_working_time
from kpi_pipeline.sandbox.store import (
    AUTOMATION_USER,
    INBOUND_QUEUE,
    INTEGRATION_USER,
    PARTNER_QUEUE,
    REPS,
    SandboxUser,
)


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


def plan_lead(number: int, arrival_ms: int, rng: random.Random) -> LeadPlan:
    source = weighted(rng, LEAD_SOURCES)
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
        "Title": weighted(rng, TITLES),
        "Email": f"{first}.{last}@{domain}".lower().replace(" ", ""),
        "Phone": None
        if rng.random() < 0.1
        else f"+{rng.randint(1, 99)} {rng.randint(200, 999)} 555 {rng.randint(1000, 9999)}",
        "Status": LEAD_STATUS_OPEN,
        "LeadSource": source,
        "Industry": weighted(rng, INDUSTRIES),
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
    kind = None if never else weighted(rng, RESPONSE_KINDS)
    delay = lognormal_ms(rng, 25, 1.3)
    return LeadPlan(number, arrival_ms, rng, values, creator, origin, region, fallback, kind, delay)


def lead_rng(seed: int, namespace: str, number: int) -> random.Random:
    return random.Random(f"{seed}/{namespace}/{number}")
