"""Channel leases on SQLite and PostgreSQL: one holder per channel, handover on expiry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from kpi_pipeline.adapters.ledger import Ledger

T = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
TTL = timedelta(seconds=30)
LEAD_CH, TASK_CH = "/data/LeadChangeEvent", "/data/TaskChangeEvent"


def test_one_holder_per_channel_and_a_zombies_lease_expires(ledger_url: str) -> None:
    now = [T]
    a = Ledger.from_url(ledger_url, clock=lambda: now[0])
    b = Ledger.from_url(ledger_url, clock=lambda: now[0])  # another process
    try:
        assert a.acquire_leases("run-a", [LEAD_CH, TASK_CH], ttl=TTL) == {LEAD_CH, TASK_CH}
        assert b.acquire_leases("run-b", [LEAD_CH, TASK_CH], ttl=TTL) == set()
        now[0] = T + timedelta(seconds=20)
        assert a.renew_leases("run-a", ttl=TTL) == {LEAD_CH, TASK_CH}
        now[0] = T + timedelta(seconds=45)  # renewed at 20 s: still a's until 50 s
        assert b.acquire_leases("run-b", [LEAD_CH], ttl=TTL) == set()
        now[0] = T + timedelta(seconds=51)  # a stopped renewing (killed): b takes over
        assert b.acquire_leases("run-b", [LEAD_CH], ttl=TTL) == {LEAD_CH}
        assert a.renew_leases("run-a", ttl=TTL) == {TASK_CH}  # the zombie learns it lost one
        (lead,) = [lease for lease in b.channel_leases() if lease.channel == LEAD_CH]
        assert (lead.holder, lead.acquired_at) == ("run-b", T + timedelta(seconds=51))
    finally:
        a.dispose()
        b.dispose()


def test_reacquiring_keeps_the_lease_and_release_hands_it_over(ledger: Ledger) -> None:
    assert ledger.acquire_leases("run-a", [LEAD_CH], ttl=TTL) == {LEAD_CH}
    first = ledger.channel_leases()[0].acquired_at
    assert ledger.acquire_leases("run-a", [LEAD_CH], ttl=TTL) == {LEAD_CH}
    assert ledger.channel_leases()[0].acquired_at == first
    ledger.release_leases("run-a")
    (released,) = ledger.channel_leases()  # kept, expired: a handover, not a vanished stream
    assert released.holder == "run-a" and released.expires_at <= datetime.now(UTC)
    assert ledger.acquire_leases("run-b", [LEAD_CH], ttl=TTL) == {LEAD_CH}
