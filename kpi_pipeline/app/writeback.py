"""Write-back use case: send the ledger's truth for dirty record fields to Salesforce.

Every place that processes changes (a batch run, a re-sync run) drains after its ledger
writes, and ``writeback_sensor`` drains when no traffic comes, so nothing waits for the
next event, and a claim whose drainer died is retaken once its lease runs out.

What is sent is read when it is sent (``LedgerOutbox.claim_pending``):

* the current ledger values of the dirty fields (``kpi_pipeline.core.workloads.writeback_fields``:
  groups go together, ordered groups never move later than what Salesforce confirmed,
  values Salesforce already has are not sent again);
* ``OwnerId`` only while no person has taken the lead. A person's reassignment after the
  lead became unrouted wins: known to the ledger (its change event arrived), or seen in
  the org itself (its current owner is read before any owner write, since the change
  event may still be on its way). The owner write is then dropped and the decision is
  recorded as superseded (flywheel record and ``decisions_total{outcome="superseded"}``).

Leases: a heartbeat thread renews the drain's claims every third of the lease while it
runs, and an update is sent only for rows the drain still holds, so a drainer that
stalled past its lease cannot overwrite what the row's new holder sends.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from kpi_pipeline.app.outbox_drain import DrainReport, OutboxItem, drain_outbox
from kpi_pipeline.core.outbox import Claim
from kpi_pipeline.core.workloads.lead_route import is_user_id, owner_set_by_person
from kpi_pipeline.core.workloads.writeback_fields import prepare
from kpi_pipeline.telemetry import metrics

log = logging.getLogger(__name__)
LEAD = "Lead"


@dataclass(frozen=True, slots=True)
class OwnerRules:
    """Who counts as "not a person" when judging owner changes."""

    integration_users: frozenset[str]
    client_id: str


@dataclass(frozen=True, slots=True)
class Superseded:
    """Our routing decision lost to a person's owner change: the owner write was dropped."""

    lead_id: str
    decided_owner: str
    actual_owner: str
    seen_in: str  # "ledger" (the change event arrived) or "org" (read before writing)


class SupersedeRecorder(Protocol):
    def record_superseded(self, superseded: Sequence[Superseded]) -> None: ...


class LedgerOutbox:
    """``OutboxPort`` over the ledger for one drain: claims rows, resolves their values."""

    def __init__(
        self,
        ledger: Any,
        rest: Any,
        rules: OwnerRules,
        *,
        lease: timedelta = timedelta(seconds=60),
    ) -> None:
        self.ledger = ledger
        self.rest = rest
        self.rules = rules
        self.lease = lease
        self.superseded: list[Superseded] = []
        self.held_back: dict[str, dict[str, str]] = {}  # record -> field -> why not sent
        self.deleted: list[str] = []  # records deleted in the org: nothing sent
        self._claims: dict[int, Claim] = {}
        self._values: dict[int, dict[str, Any]] = {}
        self._tokens: set[str] = set()
        self._lock = threading.Lock()

    # --- OutboxPort -------------------------------------------------------------------

    def claim_pending(self, limit: int) -> list[OutboxItem]:
        """Claim rows and resolve what to send. Rows left with nothing to send (values the
        org already has, an owner a person took) are settled at once, and the next rows
        are claimed, so an empty answer means the outbox has nothing more to send."""
        while True:
            claims = self.ledger.claim_dirty(limit, lease=self.lease)
            if not claims:
                return []
            with self._lock:
                self._tokens.add(claims[0].token)
            values = self._resolve(claims)
            items = []
            nothing_to_send = []
            for claim in claims:
                self._claims[claim.id] = claim
                self._values[claim.id] = values[claim.id]
                if values[claim.id]:
                    items.append(
                        OutboxItem(claim.id, claim.sobject, claim.record_id, values[claim.id])
                    )
                else:
                    nothing_to_send.append(claim)
            self.ledger.confirm_sent(claims[0].token, [(c, {}) for c in nothing_to_send])
            if items:
                return items

    def still_held(self, ids: Sequence[int]) -> set[int]:
        held: set[int] = set()
        for token in {self._claims[i].token for i in ids}:
            held |= self.ledger.renew_claims(token, lease=self.lease)
        return held & set(ids)

    def mark_sent(self, ids: Sequence[int]) -> None:
        by_token: dict[str, list[tuple[Claim, dict[str, Any]]]] = {}
        for item_id in ids:
            claim = self._claims[item_id]
            by_token.setdefault(claim.token, []).append((claim, self._values[item_id]))
        for token, sent in by_token.items():
            self.ledger.confirm_sent(token, sent)
        metrics.record_writeback("sent", len(ids))
        confirmed_at = datetime.now(UTC)
        for item_id in ids:
            dirtied_at = self._claims[item_id].dirtied_at
            if dirtied_at is not None:
                metrics.observe_writeback_lag((confirmed_at - dirtied_at).total_seconds())

    def mark_failed(self, id: int, error: str, *, retryable: bool) -> None:
        claim = self._claims[id]
        self.ledger.release_claims(
            claim.token,
            [id],
            error,
            retryable=retryable,
            claimed_generations={id: claim.generation},
        )
        metrics.record_writeback("retry" if retryable else "failed")

    # --- leases -----------------------------------------------------------------------

    @contextmanager
    def heartbeat(self) -> Iterator[None]:
        """Renew this drain's claims every third of the lease until the block ends."""
        stop = threading.Event()

        def renew() -> None:
            while not stop.wait(self.lease.total_seconds() / 3):
                with self._lock:
                    tokens = list(self._tokens)
                for token in tokens:
                    try:
                        self.ledger.renew_claims(token, lease=self.lease)
                    except Exception as exc:  # the drain itself reports ledger trouble
                        log.warning("could not renew outbox claims: %s", exc)

        thread = threading.Thread(target=renew, name="outbox-lease", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    # --- values -----------------------------------------------------------------------

    def _resolve(self, claims: Sequence[Claim]) -> dict[int, dict[str, Any]]:
        resolved = resolve_from_ledger(self.ledger, claims, self.rules)
        self.held_back.update(resolved.held_back)
        self.deleted += resolved.deleted
        for item in resolved.superseded:
            self._supersede(item)
        self._drop_owners_taken_in_org(claims, resolved.values)
        return resolved.values

    def _drop_owners_taken_in_org(
        self, claims: Sequence[Claim], resolved: dict[int, dict[str, Any]]
    ) -> None:
        """Read the org's current owner of every lead we are about to re-own: the change
        event of a rep's reassignment may not have reached the ledger yet."""
        owner_writes = {
            c.record_id: c.id for c in claims if c.sobject == LEAD and "OwnerId" in resolved[c.id]
        }
        if not owner_writes:
            return
        rows = self.rest.query_by_ids(LEAD, ["OwnerId"], sorted(owner_writes))
        for row in rows:
            item_id = owner_writes.get(row.get("Id", ""))
            if item_id is None:
                continue
            ours = resolved[item_id]["OwnerId"]
            theirs = row.get("OwnerId")
            if self._taken_by_person(theirs, ours):
                del resolved[item_id]["OwnerId"]
                self._supersede(Superseded(row["Id"], ours, theirs, "org"))

    def _taken_by_person(self, org_owner: Any, ours: str) -> bool:
        """The org's owner is a user other than ours and not an integration user: someone
        (a rep, an assignment rule, another tool) took the lead."""
        if not is_user_id(org_owner) or org_owner == ours:
            return False
        return org_owner not in self.rules.integration_users

    def _supersede(self, item: Superseded) -> None:
        self.superseded.append(item)
        metrics.record_writeback("superseded")
        log.debug(
            "owner write for %s dropped: %s took it (seen in the %s)",
            item.lead_id,
            item.actual_owner,
            item.seen_in,
        )


@dataclass(frozen=True, slots=True)
class ResolvedValues:
    values: dict[int, dict[str, Any]]  # claim id -> fields to send
    superseded: list[Superseded]
    held_back: dict[str, dict[str, str]]  # record -> field -> why not sent
    deleted: list[str]  # records deleted in the org since: nothing sent


def resolve_from_ledger(ledger: Any, claims: Sequence[Claim], rules: OwnerRules) -> ResolvedValues:
    """What the ledger says to send for each claim now (no org read, no writes): the dirty
    fields' current values after the order rules, without an owner a person took."""
    leads = [c.record_id for c in claims if c.sobject == LEAD]
    with ledger.read() as conn:
        facts = ledger.lead_facts(conn, leads)
        decisions = ledger.routing_decisions(conn, leads)
        states = ledger.records(conn, [(LEAD, lead_id) for lead_id in leads])
    values: dict[int, dict[str, Any]] = {}
    superseded: list[Superseded] = []
    held_back: dict[str, dict[str, str]] = {}
    deleted: list[str] = []
    for claim in claims:
        state = states.get((LEAD, claim.record_id))
        if state is not None and state.deleted:
            # Deleted in the org after we decided (a merge, a cleanup): an update could only
            # fail for good (INVALID_CROSS_REFERENCE_KEY), so there is nothing to send.
            log.debug("write-back of %s dropped: the record is deleted", claim.record_id)
            deleted.append(claim.record_id)
            values[claim.id] = {}
            continue
        row = facts.get(claim.record_id)
        current = dict(row._mapping) if row is not None else {}
        current["SLA_Due_At__c"] = current.get("SLA_Due_At")  # the ledger's column name
        decision = decisions.get(claim.record_id)
        current["OwnerId"] = decision.owner_id if decision is not None else None
        dirty = set(claim.dirty)
        if "OwnerId" in dirty:
            person = None
            if state is not None and decision is not None:
                person = owner_set_by_person(
                    state,
                    decision.basis_ms,
                    integration_users=rules.integration_users,
                    client_id=rules.client_id,
                )
            if decision is None or person is not None:
                dirty.discard("OwnerId")
            if decision is not None and person is not None:
                superseded.append(Superseded(claim.record_id, decision.owner_id, person, "ledger"))
        prepared = prepare(current, dirty, claim.confirmed)
        if prepared.held_back:
            held_back[claim.record_id] = prepared.held_back
        values[claim.id] = prepared.values
    return ResolvedValues(values, superseded, held_back, deleted)


@dataclass
class WritebackResult:
    report: DrainReport
    superseded: list[Superseded] = field(default_factory=list)
    held_back: dict[str, dict[str, str]] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The JSON-able summary runs attach as metadata."""
        return {
            **report_summary(self.report),
            "superseded": len(self.superseded),
            "held_back": len(self.held_back),
        }


def drain_writeback(
    ledger: Any,
    rest: Any,
    rules: OwnerRules,
    *,
    recorder: SupersedeRecorder | None = None,
    lease_seconds: float = 60.0,
    batch_size: int = 200,
) -> WritebackResult:
    """Send every dirty field the outbox holds; confirmed rows become sent, the rest stay
    (pending, or claimed until their lease runs out) for the next drain."""
    outbox = LedgerOutbox(ledger, rest, rules, lease=timedelta(seconds=lease_seconds))
    with outbox.heartbeat():
        report = drain_outbox(outbox, rest, batch_size=batch_size)
    if recorder is not None and outbox.superseded:
        recorder.record_superseded(outbox.superseded)
    _log_what_was_not_sent(outbox)
    return WritebackResult(report, outbox.superseded, outbox.held_back)


def _log_what_was_not_sent(outbox: LedgerOutbox) -> None:
    """One line per drain for each kind of write left unsent, not one per record: under
    Dagster every ``kpi_pipeline`` log line is an event stored in the run's event log
    (``dagster.yaml``'s managed loggers), and a catch-up that dropped thousands of owner
    writes one line each spent about a sixth of its processing time storing them
    (bench/RESULTS.md, Catch-up). Each record's line stays at DEBUG."""
    if outbox.superseded:
        log.info(
            "owner writes dropped for %s a person took: %s",
            _count(len(outbox.superseded), "lead"),
            _some(f"{s.lead_id} -> {s.actual_owner} ({s.seen_in})" for s in outbox.superseded),
        )
    if outbox.held_back:
        log.warning(
            "write-back held back for %s: %s",
            _count(len(outbox.held_back), "record"),
            _some(f"{record}: {why}" for record, why in outbox.held_back.items()),
        )
    if outbox.deleted:
        log.info(
            "write-back dropped for %s deleted in the org: %s",
            _count(len(outbox.deleted), "record"),
            _some(outbox.deleted),
        )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _some(items: Iterable[str], shown: int = 5) -> str:
    """The first ``shown`` items, then how many more."""
    listed = list(items)
    more = len(listed) - shown
    return ", ".join(listed[:shown]) + (f" and {more} more" if more > 0 else "")


def report_summary(report: DrainReport) -> dict[str, Any]:
    return {
        "claimed": report.claimed,
        "sent": len(report.sent),
        "failed": len(report.failed),
        "retry_later": len(report.retry_later),
        "requests": report.requests,
        "error": report.error,
    }


def owner_rules(policy: Any, client_id: str, integration_user_id: str | None) -> OwnerRules:
    """The integration users of the policy plus the configured one, and our client id."""
    users = set(policy.integration_users)
    if integration_user_id:
        users.add(integration_user_id)
    return OwnerRules(frozenset(users), client_id)
