"""Write-back use case: drain the ledger's outbox to Salesforce.

Every place that processes changes (a batch run, a re-sync run, the idle drain of
``writeback_sensor``) calls ``drain_writeback`` after its ledger writes, so pending
updates go out wherever processing runs and also when no traffic arrives.
"""

from __future__ import annotations

from typing import Any

from kpi_pipeline.salesforce.outbox import DrainReport, drain_outbox


def drain_writeback(ledger: Any, rest: Any, *, lease_seconds: float = 60.0) -> DrainReport:
    """Send what the outbox holds; confirmed rows are marked sent, the rest stay for a retry."""
    del lease_seconds  # the lease becomes per-drain with the dirty-field outbox
    return drain_outbox(ledger, rest)


def report_summary(report: DrainReport) -> dict[str, Any]:
    """The JSON-able summary runs attach as metadata."""
    return {
        "claimed": report.claimed,
        "sent": len(report.sent),
        "failed": len(report.failed),
        "retry_later": len(report.retry_later),
        "requests": report.requests,
        "error": report.error,
    }
