"""The lead ledger (adapter layer: SQLAlchemy Core + alembic; SQLite or PostgreSQL)."""

from kpi_pipeline.ledger.store import (
    BatchInfo,
    DeadLetter,
    Ledger,
    LedgerError,
    LoadedBatch,
    ResyncWindow,
    StagedBatch,
    batch_id_for,
)

__all__ = [
    "BatchInfo",
    "DeadLetter",
    "Ledger",
    "LedgerError",
    "LoadedBatch",
    "ResyncWindow",
    "StagedBatch",
    "batch_id_for",
]
