"""REST re-sync: close the gaps CDC cannot deliver by re-reading records and applying them.

Salesforce publishes gap events (GAP_CREATE/UPDATE/DELETE/UNDELETE: records changed
outside the normal save path, header only), GAP_OVERFLOW (a transaction changed more
records than CDC carries) and refuses replay ids that expired; in each case the ledger
holds an open *re-sync window* (``kpi_pipeline.app.processing`` records gaps, ``ingest``
refused replay ids). This use case (no Dagster) closes them:

* ``gap`` windows name their records: re-read them with ``WHERE Id IN`` (<= 200 per
  query); a record the org no longer returns was deleted (GAP_DELETE, or deleted since);
* ``gap_overflow`` and ``replay_id_invalid`` windows re-read every record of the window's
  entities modified since the window started.

What to re-read comes from the org itself (``OrgDescription``), never from the sandbox's
schemas: an entity's SELECT list is every field of the newest GetSchema answer for it staged
in the ledger with the events (``Ledger.staged_schemas``), else of its sObject describe over
REST; a channel's entities are ``/data/<Entity>ChangeEvent``'s one, or those whose events
were staged on it (before any was: the entities the workloads read).

Every re-read record becomes a ``ChangeEvent`` that ``BatchProcessor.process`` applies
through the same workloads as CDC. Its version is the record's ``LastModifiedDate`` with
commit and sequence number 0, so under the per-field last-writer-wins merge
(``workloads/records.py``) a re-read never overrides a change CDC delivered with a newer
commit time, and loses an exact tie (CDC commit numbers are positive). Its
``changeOrigin`` (``RESYNC_ORIGIN``) carries no ``client=`` part, so the processor does not
mistake it for an echo of our own write-back.

Owner changes are dated from the org's field history, not from ``LastModifiedDate``: for
the Leads a window re-reads, ``LeadHistory`` (``Field = 'Owner'``) says when each owner was
given and by whom. Each user's first appearance becomes an owner-only UPDATE at that
``CreatedDate`` (commit and sequence 0, like every re-read event), which feeds the
processor's "first transition to a user owner" (``Owner_Assigned_At__c``, latency) at the
real hand-over time even when the lead was modified again before the re-read. Of
the two rows a real org writes for a change involving a queue (ids and names), the one whose
``NewValue`` is an id is used. The assignment still only moves earlier (the ledger keeps the
earliest), so re-running a window, or a later run seeing a later-dated change, never moves
it later. When the org has no history (the query fails with INVALID_TYPE, or answers no row
for any of the Leads), owners are dated at ``LastModifiedDate`` as before, with a warning
and ``errors_total{area="resync_owner_history"}``.

Time windows are read up to ``now``, not to the window's end: a record changed inside the
window and again after it has a ``LastModifiedDate`` past the window, and CDC's later
UPDATE only carried the fields *it* changed.

A window is read and applied a page at a time (``SalesforceRest.pages_modified_since``,
``pages_by_ids``: one SOQL page, up to 2,000 rows from a real org), the next page read in a
background thread while one is applied (``run.read_ahead``): memory is bounded by a page
whatever the window's size, and the REST round trips overlap with processing. Events go to
the processor ``EVENTS_PER_PROCESS_CALL`` at a time, in the order the pages give them.

Idempotent: only open windows are worked on, and applying the same re-read twice leaves
the same state (same versions, same values). A failure leaves the window open with the
error in its detail (``resync_error``), and ``windows_due`` backs retries off.

Modules: ``run`` (one window or every open one: read, apply, close), ``planning`` (what a
window asks to re-read; backoff and run keys), ``org`` (fields and channel entities from
the org), ``owner_history`` (``LeadHistory`` owner changes), ``record_events`` (a REST
record as change events), ``ports`` (what it needs from the ledger, the org's REST API and
the processor; ``kpi_pipeline.adapters.ledger.resync_windows`` is the ledger's side),
``errors``.
"""

from kpi_pipeline.app.resync.errors import ResyncError
from kpi_pipeline.app.resync.org import (
    WORKLOAD_ENTITIES,
    EntityFields,
    OrgDescription,
    entity_of_channel,
    entity_of_schema,
)
from kpi_pipeline.app.resync.owner_history import OwnerChange, owner_changes_from_history
from kpi_pipeline.app.resync.planning import (
    REASON_GAP,
    REASON_OVERFLOW,
    REASON_REPLAY,
    RETRY_BASE,
    RETRY_MAX,
    TIME_WINDOW_REASONS,
    ReadPlan,
    attempts,
    plan_window,
    run_key_for,
    windows_due,
)
from kpi_pipeline.app.resync.ports import (
    HistoryReader,
    Processor,
    RecordReader,
    ResyncLedger,
    StagedSchemas,
)
from kpi_pipeline.app.resync.record_events import (
    RESYNC_ORIGIN,
    ResyncSource,
    events_for_record,
    rest_body,
)
from kpi_pipeline.app.resync.run import (
    EVENTS_PER_PROCESS_CALL,
    ResyncReport,
    read_ahead,
    resync_open_windows,
    resync_window,
)

__all__ = [
    "EVENTS_PER_PROCESS_CALL",
    "REASON_GAP",
    "REASON_OVERFLOW",
    "REASON_REPLAY",
    "RESYNC_ORIGIN",
    "RETRY_BASE",
    "RETRY_MAX",
    "TIME_WINDOW_REASONS",
    "WORKLOAD_ENTITIES",
    "EntityFields",
    "HistoryReader",
    "OrgDescription",
    "OwnerChange",
    "Processor",
    "ReadPlan",
    "RecordReader",
    "ResyncError",
    "ResyncLedger",
    "ResyncReport",
    "ResyncSource",
    "StagedSchemas",
    "attempts",
    "entity_of_channel",
    "entity_of_schema",
    "events_for_record",
    "owner_changes_from_history",
    "plan_window",
    "read_ahead",
    "rest_body",
    "resync_open_windows",
    "resync_window",
    "run_key_for",
    "windows_due",
]
