"""``query?q=`` and ``query/<cursor>``: SOQL answered from the store, paged with
``nextRecordsUrl`` like Salesforce (``LeadHistory`` from the owner changes the store recorded)."""

from __future__ import annotations

import uuid
from typing import Any

from kpi_pipeline.core.events import format_sf_datetime, parse_sf_datetime
from kpi_pipeline.sandbox.rest_server.app_state import RestAppState
from kpi_pipeline.sandbox.rest_server.record_values import project_record
from kpi_pipeline.sandbox.rest_server.responses import ApiError, Response
from kpi_pipeline.sandbox.rest_server.soql import (
    HISTORY_OBJECTS,
    SOQL_PATTERN,
    modified_ms,
    parse_history_soql,
    parse_soql,
)

MAX_OPEN_CURSORS = 50  # query locators kept for nextRecordsUrl; older ones become invalid


class QueryEndpoints(RestAppState):
    """SOQL queries and their paging (see the module docstring)."""

    def query(self, version: str, soql: str) -> Response:
        if not soql.strip():
            raise ApiError(400, "MALFORMED_QUERY", "the query parameter q is missing")
        target = SOQL_PATTERN.match(soql)
        if target and target["object"] in HISTORY_OBJECTS:
            return self._paged(version, self._history_rows(version, soql, target["object"]))
        parsed = parse_soql(soql)
        try:
            records = self.store.query_records(
                parsed.sobject, ids=parsed.ids, modified_since_ms=parsed.since_ms
            )
        except ValueError:
            raise ApiError(
                400, "INVALID_TYPE", f"sObject type '{parsed.sobject}' is not supported."
            ) from None
        if parsed.until_ms is not None:
            records = [r for r in records if modified_ms(r) < parsed.until_ms]
        if parsed.order_desc is not None:
            records.sort(
                key=lambda r: (modified_ms(r), str(r.get("Id", ""))), reverse=parsed.order_desc
            )
        if parsed.limit is not None:
            records = records[: parsed.limit]
        rows = [project_record(version, parsed.sobject, r, parsed.fields) for r in records]
        return self._paged(version, rows)

    def _history_rows(self, version: str, soql: str, sobject: str) -> list[dict[str, Any]]:
        if not self.field_history:
            raise ApiError(
                400,
                "INVALID_TYPE",
                f"sObject type '{sobject}' is not supported. If you are attempting to use a "
                "custom object, be sure to append the '__c' after the entity name. Please "
                "reference your WSDL or the describe call for the appropriate names.",
            )
        parsed = parse_history_soql(soql)
        _, parent_field = HISTORY_OBJECTS[parsed.sobject]
        found = self.store.field_history(parsed.parent, parsed.parent_ids)
        if parsed.field_names is not None:
            found = [r for r in found if r["Field"] in parsed.field_names]
        if parsed.order_desc:
            found.reverse()  # the store answers oldest first
        if parsed.limit is not None:
            found = found[: parsed.limit]
        rows = []
        for row in found:
            view = {
                **{k: v for k, v in row.items() if k != "ParentId"},
                parent_field: row["ParentId"],
                "IsDeleted": False,
                "CreatedDate": format_sf_datetime(parse_sf_datetime(row["CreatedDate"])),
            }
            url = f"/services/data/v{version}/sobjects/{parsed.sobject}/{row['Id']}"
            rows.append(
                {"attributes": {"type": parsed.sobject, "url": url}}
                | {name: view.get(name) for name in parsed.fields}
            )
        return rows

    def _paged(self, version: str, rows: list[dict[str, Any]]) -> Response:
        key = None
        if len(rows) > self.query_batch_size:
            key = "01g" + uuid.uuid4().hex[:15].upper()
            with self._lock:
                self._cursors[key] = rows
                while len(self._cursors) > MAX_OPEN_CURSORS:  # oldest locators expire first
                    self._cursors.popitem(last=False)
        return Response(200, self._page(version, key, rows, 0))

    def query_more(self, version: str, cursor: str) -> Response:
        key, _, offset = cursor.rpartition("-")
        with self._lock:
            rows = self._cursors.get(key)
        if rows is None or not offset.isdigit():
            raise ApiError(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
        return Response(200, self._page(version, key, rows, int(offset)))

    def _page(
        self, version: str, key: str | None, rows: list[dict[str, Any]], offset: int
    ) -> dict[str, Any]:
        end = offset + self.query_batch_size
        done = end >= len(rows)
        page: dict[str, Any] = {"totalSize": len(rows), "done": done, "records": rows[offset:end]}
        if not done:
            page["nextRecordsUrl"] = f"/services/data/v{version}/query/{key}-{end}"
        elif key is not None:
            with self._lock:  # the last page closes the cursor, as Salesforce does
                self._cursors.pop(key, None)
        return page
