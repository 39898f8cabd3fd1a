"""Sensor-mode lead partitions in the ledger: leases, link fields, per-partition completion.

With ``KPI_CDC_LEAD_PARTITIONS=N`` (N > 1) every round of pending batches is processed by N
``process_cdc_batch`` runs, one per partition (``kpi_pipeline.core.lead_partitions``). This
module is what makes that safe beyond Dagster's tag concurrency limits:

* **Partition leases** (``cdc_partition_leases``): a run holds its partition from
  ``load_batch`` to the end of ``complete_batch``; every op renews the lease before it
  works and fails if it no longer holds it. A second run of the same partition is refused
  (``PartitionBusy``) while the lease is live, and so is a run of a different N while any
  partition of another N is held (their partitions would overlap). The holder is the run's
  *root* run id, so Dagster's automatic retry of a failed run (same root) carries on with
  the lease its first attempt took. A lease expires after the run's max runtime; the
  sensor releases them all once no processing run is in progress (``release_partitions``).
* **Link fields** (``round_links``): the stored WhoId / RelatedToId / ActivityId of the
  activities a round names, which ``LeadResolver`` reads under the round's own events; read
  once per round and kept (``cdc_partition_links``), so every partition run of the round
  resolves with the same copy.
* **Completion** (``cdc_batch_partitions``): each partition run records the batches it
  completed; a batch is done when all N partitions of one N have completed it, and the run
  that records the last one marks it done (``complete_partition``). Recording is
  idempotent; the batch rows are locked first, so two partitions finishing at once cannot
  both miss the other's row.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from kpi_pipeline.adapters.ledger import schema as t
from kpi_pipeline.adapters.ledger.sql import insert_ignore
from kpi_pipeline.adapters.ledger.store import Ledger, LedgerError
from kpi_pipeline.core.events import ChangeEvent
from kpi_pipeline.core.lead_partitions import (
    EMAIL,
    LINK_FIELDS,
    Links,
    RecordKey,
    activity_keys,
    batch_links,
    check_partition,
    named_tasks,
)

# Serialises lease changes on PostgreSQL (SQLite write transactions are exclusive already).
_PG_LEASE_LOCK = 0x6B70695F70617274  # "kpi_part"


class PartitionBusy(LedgerError):
    """Another run holds the partition (or a partition of another partition count)."""


@dataclass(frozen=True, slots=True)
class PartitionLease:
    partition: int
    partitions: int
    holder: str
    acquired_at: datetime
    expires_at: datetime


# --- leases -------------------------------------------------------------------------------


def acquire_partition(
    ledger: Ledger, partition: int, partitions: int, *, holder: str, ttl: timedelta
) -> PartitionLease:
    """Take (or renew, when ``holder`` has it) the partition's lease; PartitionBusy if a live
    lease of another holder overlaps it."""
    check_partition(partition, partitions)
    now = ledger._now()
    c = t.cdc_partition_leases.c
    with ledger.write() as conn:
        _serialise(conn)
        live = conn.execute(
            sa.select(t.cdc_partition_leases).where(c.expires_at > now, c.holder != holder)
        ).all()
        for row in live:
            if row.partition == partition or row.partitions != partitions:
                raise PartitionBusy(
                    f"lead partition {partition}/{partitions} is not free: run {row.holder} "
                    f"holds partition {row.partition}/{row.partitions} until "
                    f"{row.expires_at.isoformat()}; one run per partition at a time"
                )
        conn.execute(
            insert_ignore(conn, t.cdc_partition_leases, ["partition"]).values(
                partition=partition,
                partitions=partitions,
                holder=holder,
                acquired_at=now,
                expires_at=now + ttl,
            )
        )
        conn.execute(
            t.cdc_partition_leases.update()
            .where(c.partition == partition)
            .values(
                partitions=partitions,
                holder=holder,
                expires_at=now + ttl,
                acquired_at=sa.case((c.holder == holder, c.acquired_at), else_=now),
            )
        )
        row = conn.execute(sa.select(t.cdc_partition_leases).where(c.partition == partition)).one()
    return _lease(row)


def hold_partition(
    ledger: Ledger, partition: int, partitions: int, *, holder: str, ttl: timedelta
) -> None:
    """Renew the holder's live lease; PartitionBusy if it does not hold it any more (it
    expired and may be another run's): the op must not write."""
    now = ledger._now()
    c = t.cdc_partition_leases.c
    with ledger.write() as conn:
        renewed = conn.execute(
            t.cdc_partition_leases.update()
            .where(
                c.partition == partition,
                c.partitions == partitions,
                c.holder == holder,
                c.expires_at > now,
            )
            .values(expires_at=now + ttl)
        )
    if renewed.rowcount != 1:
        raise PartitionBusy(
            f"run {holder} no longer holds lead partition {partition}/{partitions} (its lease "
            "expired or was released); the sensor requests the batches again"
        )


def release_partition(ledger: Ledger, partition: int, *, holder: str) -> None:
    """The holder is done: its lease expires now (the row stays, for operators)."""
    now = ledger._now()
    c = t.cdc_partition_leases.c
    with ledger.write() as conn:
        conn.execute(
            t.cdc_partition_leases.update()
            .where(c.partition == partition, c.holder == holder, c.expires_at > now)
            .values(expires_at=now)
        )


def release_partitions(ledger: Ledger) -> int:
    """Expire every live lease and forget every round's links: only for a caller that knows
    no processing run is in progress (cdc_sensor, before it requests a round), so a run that
    died without its retries does not hold its partition until the lease's time runs out."""
    now = ledger._now()
    c = t.cdc_partition_leases.c
    with ledger.write() as conn:
        _serialise(conn)
        released = conn.execute(
            t.cdc_partition_leases.update().where(c.expires_at > now).values(expires_at=now)
        )
        conn.execute(t.cdc_partition_links.delete())
    return released.rowcount


def partition_leases(ledger: Ledger) -> list[PartitionLease]:
    c = t.cdc_partition_leases.c
    with ledger.read() as conn:
        rows = conn.execute(sa.select(t.cdc_partition_leases).order_by(c.partition)).all()
    return [_lease(row) for row in rows]


def _lease(row: Any) -> PartitionLease:
    return PartitionLease(
        row.partition, row.partitions, row.holder, row.acquired_at, row.expires_at
    )


def _serialise(conn: sa.Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LEASE_LOCK})


# --- link fields --------------------------------------------------------------------------


def round_key(batch_ids: Sequence[str], partitions: int) -> str:
    """The key of a round: its batch ids, in order, and its partition count."""
    text = json.dumps([partitions, list(batch_ids)], separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def round_links(ledger: Ledger, key: str, events: Sequence[ChangeEvent]) -> Links:
    """The stored link fields the round's partition runs resolve activities with.

    The first run of the round to get here reads them (``stored_links``) and keeps a copy
    under the round's key; every later run of the round (and its retries) reads that copy.
    So all partitions of a round agree on every activity's partition even if another writer
    (a re-sync, an operator's replay) changes a stored link while the round runs: each record
    is processed by exactly one partition run, never by none.
    """
    c = t.cdc_partition_links.c
    with ledger.write() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(
                sa.text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"), {"k": key}
            )
        rows = conn.execute(
            sa.select(c.sobject, c.record_id, c.links).where(c.round_key == key)
        ).all()
        if rows:
            return {(r.sobject, r.record_id): dict(r.links) for r in rows if r.sobject}
        links = stored_links(ledger, events, conn=conn)
        marker = [{"round_key": key, "sobject": "", "record_id": "", "links": {}}]
        conn.execute(
            t.cdc_partition_links.insert(),
            marker
            + [
                {"round_key": key, "sobject": sobject, "record_id": rid, "links": fields}
                for (sobject, rid), fields in sorted(links.items())
            ],
        )
    return links


def stored_links(
    ledger: Ledger, events: Sequence[ChangeEvent], *, conn: sa.Connection | None = None
) -> Links:
    """The stored link fields of the round's activities, and of the Tasks their emails name
    (from the round's events or the stored emails), for ``LeadResolver``."""
    keys = activity_keys(events)
    found = _link_fields(ledger, keys, conn)
    in_batch = batch_links(events)
    emails = [
        {**found.get(key, {}), **in_batch.get(key, {})}
        for key in keys | set(in_batch)
        if key[0] == EMAIL
    ]
    tasks = named_tasks(emails) - keys
    return found | _link_fields(ledger, tasks, conn)


def _link_fields(
    ledger: Ledger, keys: Iterable[RecordKey], conn: sa.Connection | None
) -> dict[RecordKey, dict[str, Any]]:
    wanted = sorted(set(keys))
    if not wanted:
        return {}
    if conn is None:
        with ledger.read() as own:
            states = ledger.records(own, wanted)
    else:
        states = ledger.records(conn, wanted)
    return {
        key: {name: state.fields.get(name) for name in LINK_FIELDS[key[0]]}
        for key, state in states.items()
    }


# --- completion ---------------------------------------------------------------------------


def complete_partition(
    ledger: Ledger, batch_ids: Iterable[str], partition: int, partitions: int, *, run_id: str
) -> list[str]:
    """Record that this partition completed the batches; returns those that every partition
    of ``partitions`` has now completed (the caller marks them done, idempotently)."""
    check_partition(partition, partitions)
    ids = sorted(set(batch_ids))
    if not ids:
        return []
    c = t.cdc_batch_partitions.c
    now = ledger._now()
    with ledger.write() as conn:
        _lock_batches(conn, ids)
        conn.execute(
            insert_ignore(conn, t.cdc_batch_partitions, ["batch_id", "partitions", "partition"]),
            [
                {
                    "batch_id": batch_id,
                    "partitions": partitions,
                    "partition": partition,
                    "run_id": run_id,
                    "completed_at": now,
                }
                for batch_id in ids
            ],
        )
        counts = dict(
            conn.execute(
                sa.select(c.batch_id, sa.func.count())
                .where(c.batch_id.in_(ids), c.partitions == partitions)
                .group_by(c.batch_id)
            ).all()
        )
    return [batch_id for batch_id in ids if counts.get(batch_id, 0) >= partitions]


def completed_partitions(ledger: Ledger, batch_id: str) -> dict[int, set[int]]:
    """{N: the partitions of N that completed the batch}."""
    c = t.cdc_batch_partitions.c
    found: dict[int, set[int]] = {}
    with ledger.read() as conn:
        rows = conn.execute(
            sa.select(c.partitions, c.partition).where(c.batch_id == batch_id)
        ).all()
    for partitions, partition in rows:
        found.setdefault(partitions, set()).add(partition)
    return found


def _lock_batches(conn: sa.Connection, ids: Sequence[str]) -> None:
    """Lock the batch rows (in id order: no deadlock) until the transaction ends, so the
    count each partition run reads includes every completion committed before it."""
    if conn.dialect.name != "postgresql":
        return  # the IMMEDIATE write transaction already excludes other writers
    c = t.cdc_batches.c
    for start in range(0, len(ids), 500):
        conn.execute(
            sa.select(c.batch_id)
            .where(c.batch_id.in_(ids[start : start + 500]))
            .order_by(c.batch_id)
            .with_for_update()
        ).all()
