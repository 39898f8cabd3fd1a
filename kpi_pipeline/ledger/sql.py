"""Dialect-portable statement helpers (SQLite and PostgreSQL share ON CONFLICT syntax)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite


def insert_ignore(conn: sa.Connection, table: sa.Table, keys: Sequence[str]) -> Any:
    """``INSERT ... ON CONFLICT (keys) DO NOTHING`` for the connection's dialect."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table).on_conflict_do_nothing(index_elements=list(keys))


def upsert(conn: sa.Connection, table: sa.Table, keys: Sequence[str], update: Sequence[str]) -> Any:
    """``INSERT ... ON CONFLICT (keys) DO UPDATE SET col = excluded.col`` for ``update`` columns."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(table)
    return stmt.on_conflict_do_update(
        index_elements=list(keys), set_={name: stmt.excluded[name] for name in update}
    )


def dumps(value: Any) -> str:
    """Canonical JSON (sorted keys, no spaces): equal documents give equal text and hashes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def canonical(value: Any) -> Any:
    """Round-trip through canonical JSON so stored documents never depend on dict order."""
    return json.loads(dumps(value))


_STATEMENTS: dict[tuple[str, str], Any] = {}


def prepared(conn: sa.Connection, name: str, build: Any) -> Any:
    """A statement built once per dialect and reused with parameters at execute time.

    Building Core statements with literal ``.values(...)`` per row costs more than running
    them on SQLite; hot paths bind parameters instead (``conn.execute(stmt, params)``).
    """
    key = (conn.dialect.name, name)
    stmt = _STATEMENTS.get(key)
    if stmt is None:
        stmt = _STATEMENTS[key] = build(conn)
    return stmt
