"""The embedded sandbox org's state: one SQLite file holding records, users/queues and the change log.

``SandboxStore`` implements both sides of ``kpi_pipeline.sandbox.changelog``:
``ChangeLogSource`` for the Pub/Sub API server and ``RecordStore`` for the REST server.
Every write appends the change event Salesforce would publish for it, in the same SQLite
transaction, so the records and the change log never disagree.

Shapes (the contract with the servers):

* Field names are those of the Avro schemas in ``kpi_pipeline.adapters.pubsub.schemas``; a write with
  an unknown field fails and names the schema to extend.
* Compound fields are nested like the Avro record (Lead ``Name`` = {Salutation, FirstName,
  LastName}, ``Address`` = {Street, City, ...}). Writers may also pass the REST-style
  children (``FirstName``, ``City``); header field lists name them ``Name.FirstName``.
* DateTime and Date values are stored as epoch milliseconds (ISO strings are accepted on
  write and converted).
* Values are checked against their field's Salesforce type (the ``Data:<type>`` docs of the
  schemas): a string in an Int field fails the write (``FieldValueError``) rather than
  reaching the change log, where it would break the Avro encoding for every subscriber.
  Unknown fields raise ``UnknownFieldError``.
* Change-event headers use the recorded-JSON keys of CONTRACTS.md §2, field lists as names.
  An UPDATE carries only the changed values; ``changedFields`` always includes
  ``LastModifiedDate`` (Salesforce stamps it on every save, so an update that changes
  nothing else still publishes an event naming only it); fields set to null are listed in
  ``nulledFields`` and absent from the body.

Field history: with ``track_owner_history`` (the default), every change of a Lead's owner
also writes ``LeadHistory`` rows in the same transaction, as an org with field history
tracking on for Lead Owner does: ``Field`` ``Owner``, ``CreatedDate`` the change's commit
time, ``CreatedById`` who made it. An owner change that involves a queue writes two rows,
one with the ids (``DataType`` ``EntityId``) and one with the owners' names (``Text``); a
user-to-user change writes the id row. Gap updates (changes made outside the normal save
path) are tracked too: history is kept apart from the change log and is not pruned with it.
``track_owner_history=False`` is an org with tracking off: no rows.

Concurrency: WAL mode, one connection per thread (and per process after a fork), and
``BEGIN IMMEDIATE`` for writes, so writers in several threads or processes serialize and
replay ids follow commit order. ``wait_for_changes`` wakes at once for writes in this
process and polls (every 50 ms) to notice writes from other processes.

Where it lives: ``errors`` (what the store refuses), ``directory`` (ids, seeded users and
queues), ``fields`` (field specs from the schemas, value checks, the REST view),
``database`` (the SQLite file, connections, transactions), ``writes``, ``reads`` and
``change_feed`` (the three sides of the store), assembled in ``sandbox_store``. This package
exposes their public names, so importers name ``kpi_pipeline.sandbox.store`` only.
"""

from __future__ import annotations

from kpi_pipeline.sandbox.store.change_feed import (
    recorded_message,
)
from kpi_pipeline.sandbox.store.database import (
    DEFAULT_RETENTION_MS,
    Transaction,
)
from kpi_pipeline.sandbox.store.directory import (
    AUTOMATION_USER,
    AUTOMATION_USER_ID,
    INBOUND_QUEUE,
    INTEGRATION_USER,
    INTEGRATION_USER_ID,
    KEY_PREFIXES,
    PARTNER_QUEUE,
    QUEUE_IDS,
    REP_USER_IDS,
    REPS,
    SEED_QUEUES,
    SEED_USERS,
    SandboxQueue,
    SandboxUser,
    sf_id,
)
from kpi_pipeline.sandbox.store.errors import (
    FieldValueError,
    RecordNotFoundError,
    SandboxStoreError,
    UnknownFieldError,
)
from kpi_pipeline.sandbox.store.fields import (
    DATE_FIELDS,
    DATETIME_FIELDS,
    DIRECTORY_SOBJECTS,
    SYSTEM_FIELDS,
    field_type,
    normalize_values,
    rest_view,
)
from kpi_pipeline.sandbox.store.sandbox_store import (
    SandboxStore,
)
from kpi_pipeline.sandbox.store.writes import (
    GAP_TYPES,
)

__all__ = [
    "AUTOMATION_USER",
    "AUTOMATION_USER_ID",
    "DATETIME_FIELDS",
    "DATE_FIELDS",
    "DEFAULT_RETENTION_MS",
    "DIRECTORY_SOBJECTS",
    "GAP_TYPES",
    "INBOUND_QUEUE",
    "INTEGRATION_USER",
    "INTEGRATION_USER_ID",
    "KEY_PREFIXES",
    "PARTNER_QUEUE",
    "QUEUE_IDS",
    "REPS",
    "REP_USER_IDS",
    "SEED_QUEUES",
    "SEED_USERS",
    "SYSTEM_FIELDS",
    "FieldValueError",
    "RecordNotFoundError",
    "SandboxQueue",
    "SandboxStore",
    "SandboxStoreError",
    "SandboxUser",
    "Transaction",
    "UnknownFieldError",
    "field_type",
    "normalize_values",
    "recorded_message",
    "rest_view",
    "sf_id",
]
