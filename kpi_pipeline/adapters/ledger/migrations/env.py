"""Alembic environment for the ledger.

Runs only programmatically (``kpi_pipeline.adapters.ledger.migrations.upgrade``): the caller
passes an open SQLAlchemy connection in ``config.attributes["connection"]``, so no
alembic.ini or URL is needed at runtime.
"""

from __future__ import annotations

from alembic import context

from kpi_pipeline.adapters.ledger.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "the ledger migrations run through kpi_pipeline.adapters.ledger.migrations.upgrade(engine) "
        "(or `kpi-pipeline ledger upgrade`), which supplies the connection"
    )

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # ALTER TABLE support on SQLite
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
