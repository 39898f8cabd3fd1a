"""Programmatic alembic upgrade of the ledger schema (no alembic.ini at runtime)."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

MIGRATIONS_DIR = Path(__file__).resolve().parent
# Any fixed number: serialises concurrent upgrades of one PostgreSQL database.
_PG_UPGRADE_LOCK = 0x6B70695F6C6467  # "kpi_ldg"


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "the ledger has no migrations"
    return head


def current_revision(engine: sa.Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: sa.Engine, revision: str = "head") -> str | None:
    """Bring the ledger schema to ``revision``; a no-op when it is already there.

    Returns the revision the database is at afterwards.
    """
    config = alembic_config()
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Two processes starting at once (sensor + run) must not both create tables.
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_UPGRADE_LOCK})
        config.attributes["connection"] = conn
        command.upgrade(config, revision)
    return current_revision(engine)
