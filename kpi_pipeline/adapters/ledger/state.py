"""Workload state in the ledger (mixed into ``Ledger``), by responsibility:

* ``record_states.py``: record states (read for the merge and the steps, written back);
* ``lead_facts.py``: each lead's facts row (per-row guarded statements, the KPI frame);
* ``memos.py``: response candidates, routing memo and pools, template recommendations,
  decisions.

Methods taking ``conn`` run inside the caller's transaction (``Ledger.write()``), so one
batch step is one transaction. The guards that keep effects idempotent and monotone live
in the SQL itself, so they also hold between two concurrent runs, not just within one
process. The processing steps write through ``batch_work`` instead (``batch.py``): the same
guards applied in memory to rows locked for the transaction, then one bulk statement per
table.
"""

from __future__ import annotations

from kpi_pipeline.adapters.ledger.lead_facts import LeadFactsMixin
from kpi_pipeline.adapters.ledger.memos import WorkloadMemosMixin
from kpi_pipeline.adapters.ledger.record_states import RecordStatesMixin

__all__ = ["WorkloadStateMixin"]


class WorkloadStateMixin(RecordStatesMixin, LeadFactsMixin, WorkloadMemosMixin):
    """``Ledger.batch_work`` gives the set-based writes of a batch step (``batch.py``)."""
