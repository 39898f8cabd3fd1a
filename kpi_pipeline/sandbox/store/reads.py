"""Reading records and their field history (the REST server's side of the store)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from kpi_pipeline.sandbox.store.database import StoreDatabase
from kpi_pipeline.sandbox.store.fields import check_sobject


class RecordReads(StoreDatabase):
    """``RecordStore`` reads: one record, a query by ids or modification time, history rows."""

    def get_record(
        self, sobject: str, record_id: str, *, include_deleted: bool = False
    ) -> dict[str, Any] | None:
        """The record (stored shape plus Id, IsDeleted, SystemModstamp), or None."""
        check_sobject(sobject)
        row = (
            self._conn()
            .execute(
                "SELECT id, fields, modified_ms, deleted FROM records WHERE sobject = ? AND id = ?",
                (sobject, record_id),
            )
            .fetchone()
        )
        if row is None or (row[3] and not include_deleted):
            return None
        return _record_from_row(row)

    def query_records(
        self,
        sobject: str,
        *,
        ids: Sequence[str] | None = None,
        modified_since_ms: int | None = None,
        include_deleted: bool = False,
    ) -> list[dict[str, Any]]:
        """Records of one sobject ordered by Id, optionally by id list and/or modified at or
        after ``modified_since_ms`` (deleted ones only with ``include_deleted``, like queryAll)."""
        check_sobject(sobject)
        sql = "SELECT id, fields, modified_ms, deleted FROM records WHERE sobject = ?"
        params: list[Any] = [sobject]
        if not include_deleted:
            sql += " AND deleted = 0"
        if modified_since_ms is not None:
            sql += " AND modified_ms >= ?"
            params.append(int(modified_since_ms))
        if ids is not None:
            if not ids:
                return []
            sql += f" AND id IN ({','.join('?' * len(ids))})"
            params.extend(ids)
        rows = self._conn().execute(sql + " ORDER BY id", params).fetchall()
        return [_record_from_row(row) for row in rows]

    def field_history(
        self, sobject: str, record_ids: Sequence[str], *, field: str | None = None
    ) -> list[dict[str, Any]]:
        """``<sobject>History`` rows of those records (optionally one ``Field``), oldest
        first: Id, ParentId, Field, OldValue, NewValue, DataType, CreatedDate (epoch ms),
        CreatedById."""
        check_sobject(sobject)
        if not record_ids:
            return []
        sql = (
            "SELECT id, record_id, field, old_value, new_value, data_type, created_ms, created_by "
            f"FROM field_history WHERE sobject = ? AND record_id IN ({','.join('?' * len(record_ids))})"
        )
        params: list[Any] = [sobject, *record_ids]
        if field is not None:
            sql += " AND field = ?"
            params.append(field)
        rows = self._conn().execute(sql + " ORDER BY created_ms, position", params).fetchall()
        names = ("Id", "ParentId", "Field", "OldValue", "NewValue", "DataType", "CreatedDate")
        return [{**dict(zip(names, r[:7], strict=True)), "CreatedById": r[7]} for r in rows]


def _record_from_row(row: Sequence[Any]) -> dict[str, Any]:
    record_id, fields_json, modified_ms, deleted = row
    return {
        "Id": record_id,
        **json.loads(fields_json),
        "IsDeleted": bool(deleted),
        "SystemModstamp": modified_ms,
    }
