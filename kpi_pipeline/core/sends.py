"""The states of an outreach email send (pure): at most one email per lead, and never a second
one when the first may have gone out."""

from __future__ import annotations

SENDING = "sending"  # claimed; the call may be in flight (or the process died during it)


SENT = "sent"  # Salesforce confirmed the send


RETRY = "retry"  # Salesforce refused before acting (limits, session): safe to try again


FAILED = "failed"  # will not be sent: missing variable, refused by Salesforce, too many retries


SKIPPED = "skipped"  # not to be emailed: no address, already answered, deleted


UNCONFIRMED = "unconfirmed"  # outcome unknown (outage after sending): never resent automatically


FINAL_STATUSES = frozenset({SENT, FAILED, SKIPPED, UNCONFIRMED})
