"""The lead ledger (adapter layer: SQLAlchemy Core + alembic; SQLite or PostgreSQL)."""

from kpi_pipeline.adapters.ledger.replay_store import (
    ReplayPosition,
    ReplayPositionMoved,
    StagedResponse,
)
from kpi_pipeline.adapters.ledger.store import (
    BatchInfo,
    DeadLetter,
    Ledger,
    LedgerError,
    ResyncWindow,
    StagedBatch,
    batch_id_for,
)

__all__ = [
    "BatchInfo",
    "DeadLetter",
    "Ledger",
    "LedgerError",
    "ReplayPosition",
    "ReplayPositionMoved",
    "ResyncWindow",
    "StagedBatch",
    "StagedResponse",
    "batch_id_for",
]
