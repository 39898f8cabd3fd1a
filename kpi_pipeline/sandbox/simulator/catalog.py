"""What the simulated org is made of: change origins, email templates, and the weighted
tables leads are drawn from (sources, countries, industries, titles, names, companies,
statuses, response kinds), skewed like a typical B2B inbound funnel."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from kpi_pipeline.sandbox.store import sf_id

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


RESPONSE_KINDS = (("email", 50), ("call", 30), ("logged_task", 20))


def weighted(rng: random.Random, table: tuple[tuple[Any, int], ...]) -> Any:
    return rng.choices([value for value, _ in table], weights=[w for _, w in table])[0]
