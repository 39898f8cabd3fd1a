"""The sandbox org's ids and its seeded directory (users and queues).

``sf_id`` makes Salesforce-shaped 18-character ids, deterministic in a counter, so runs with
one seed give the same ids. The users and queues are the org every sandbox starts with:
the integration user (the pipeline's own), the marketing-automation user and eight reps in
three regions, and two lead queues."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kpi_pipeline.sandbox.store.errors import SandboxStoreError

KEY_PREFIXES = {
    "Lead": "00Q",
    "Task": "00T",
    "EmailMessage": "02s",
    "Contact": "003",
    "Account": "001",
    "User": "005",
    "Group": "00G",
    "EmailTemplate": "00X",
}


_POD = "5g0"  # instance + reserved characters of the 15-char id (fixed in the sandbox)
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_CHECKSUM_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
SEED_CREATED_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z: when the seeded users "joined"
_ORG_DOMAIN = "kpi-sandbox.example"


def _checksum(id15: str) -> str:
    """Salesforce's case-safe suffix: one char per 5-char chunk, a bit per uppercase letter."""
    out = []
    for chunk_start in (0, 5, 10):
        chunk = id15[chunk_start : chunk_start + 5]
        flags = sum(1 << bit for bit, char in enumerate(chunk) if "A" <= char <= "Z")
        out.append(_CHECKSUM_CHARS[flags])
    return "".join(out)


def sf_id(prefix: str, number: int) -> str:
    """The 18-char id of the ``number``-th record with this key prefix (deterministic)."""
    if len(prefix) != 3 or number < 1:
        raise SandboxStoreError(
            f"sf_id needs a 3-char key prefix and number >= 1, got {prefix!r}, {number}"
        )
    digits = ""
    value = number
    while value:
        value, rem = divmod(value, 62)
        digits = _BASE62[rem] + digits
    id15 = prefix + _POD + digits.rjust(9, "0")
    if len(id15) != 15:
        raise SandboxStoreError(f"id number {number} is too large for a Salesforce id")
    return id15 + _checksum(id15)


# --- the seeded directory -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SandboxUser:
    id: str
    first_name: str
    last_name: str
    role: str  # "rep" | "integration" | "automation"
    region: str = ""  # reps: "NA" | "EMEA" | "APAC"
    title: str = ""

    @property
    def name(self) -> str:
        return f"{self.first_name} {self.last_name}".strip()

    @property
    def email(self) -> str:
        return f"{self.first_name}.{self.last_name}@{_ORG_DOMAIN}".lower().replace(" ", "")


@dataclass(frozen=True, slots=True)
class SandboxQueue:
    id: str
    name: str
    developer_name: str


INTEGRATION_USER = SandboxUser(
    sf_id("005", 1), "Integration", "User", "integration", title="API Integration"
)
AUTOMATION_USER = SandboxUser(
    sf_id("005", 2), "Marketing", "Automation", "automation", title="Automation"
)
REPS: tuple[SandboxUser, ...] = tuple(
    SandboxUser(sf_id("005", 3 + i), first, last, "rep", region, title)
    for i, (first, last, region, title) in enumerate(
        [
            ("Ava", "Thompson", "NA", "Account Executive"),
            ("Liam", "Carter", "NA", "Sales Development Rep"),
            ("Sofia", "Martinez", "NA", "Sales Development Rep"),
            ("Emma", "Schmidt", "EMEA", "Account Executive"),
            ("Lucas", "Dubois", "EMEA", "Sales Development Rep"),
            ("Mia", "Rossi", "EMEA", "Sales Development Rep"),
            ("Hiro", "Tanaka", "APAC", "Account Executive"),
            ("Priya", "Nair", "APAC", "Sales Development Rep"),
        ]
    )
)
SEED_USERS: tuple[SandboxUser, ...] = (INTEGRATION_USER, AUTOMATION_USER, *REPS)
INBOUND_QUEUE = SandboxQueue(sf_id("00G", 1), "Inbound Leads", "Inbound_Leads")
PARTNER_QUEUE = SandboxQueue(sf_id("00G", 2), "Partner Leads", "Partner_Leads")
SEED_QUEUES: tuple[SandboxQueue, ...] = (INBOUND_QUEUE, PARTNER_QUEUE)
INTEGRATION_USER_ID = INTEGRATION_USER.id
AUTOMATION_USER_ID = AUTOMATION_USER.id
REP_USER_IDS: tuple[str, ...] = tuple(rep.id for rep in REPS)
QUEUE_IDS: tuple[str, ...] = tuple(queue.id for queue in SEED_QUEUES)


def _user_fields(user: SandboxUser) -> dict[str, Any]:
    return {
        "Name": user.name,
        "FirstName": user.first_name,
        "LastName": user.last_name,
        "Username": user.email,
        "Email": user.email,
        "IsActive": True,
        "UserType": "Standard",
        "Title": user.title,
        "Department": user.region or user.role.title(),
        "CreatedDate": SEED_CREATED_MS,
    }


def _queue_fields(queue: SandboxQueue) -> dict[str, Any]:
    return {
        "Name": queue.name,
        "DeveloperName": queue.developer_name,
        "Type": "Queue",
        "Email": f"{queue.developer_name.lower()}@{_ORG_DOMAIN}",
        "CreatedDate": SEED_CREATED_MS,
    }


def directory_rows() -> list[tuple[str, str, dict[str, Any]]]:
    """(sobject, id, stored fields) of every seeded user and queue: what a new store holds."""
    rows = [("User", u.id, _user_fields(u)) for u in SEED_USERS]
    rows += [("Group", q.id, _queue_fields(q)) for q in SEED_QUEUES]
    return rows
