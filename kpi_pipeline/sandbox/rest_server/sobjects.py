"""sObject reads and writes: ``sobjects/<Type>[/<Id>]`` and ``composite/sobjects``.

Writes go through the store with the REST ``change_origin`` and the token's user as
``commitUser``; refused writes change nothing and publish nothing."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs

from kpi_pipeline.sandbox.rest_server.app_state import RestAppState
from kpi_pipeline.sandbox.rest_server.record_values import (
    OWNED_SOBJECTS,
    READ_ONLY_FIELDS,
    RECORD_ID,
    REQUIRED_ON_CREATE,
    check_values,
    check_writable,
    project_record,
    read_only_error,
    record_body,
    rolled_back,
    value_error,
)
from kpi_pipeline.sandbox.rest_server.responses import ApiError, Response, save_error
from kpi_pipeline.sandbox.store import RecordNotFoundError, SandboxStoreError

MAX_COLLECTION_RECORDS = 200


class SObjectEndpoints(RestAppState):
    """Single-record GET/POST/PATCH/DELETE and the sObject Collections update."""

    def get_record(self, version: str, sobject: str, record_id: str, query: str) -> Response:
        try:
            record = self.store.get_record(sobject, record_id)
        except ValueError:  # the store names unknown sObject types this way
            record = None
        if record is None:
            raise ApiError(404, "NOT_FOUND", "The requested resource does not exist")
        wanted = parse_qs(query).get("fields", [""])[0]
        names = [f.strip() for f in wanted.split(",") if f.strip()] or None
        return Response(200, project_record(version, sobject, record, names))

    def create_record(self, sobject: str, payload: Any, origin: str, token: str) -> Response:
        """POST sobjects/<Type>: 201 with Salesforce's save result, or an error list."""
        check_writable(sobject)
        values = record_body(payload)
        values.pop("attributes", None)  # clients may send the type there; the URL decides
        check_values(sobject, values, self._schemas)
        read_only = sorted(set(values) & READ_ONLY_FIELDS)
        if read_only:
            raise ApiError(400, **read_only_error(read_only))
        missing = [name for name in REQUIRED_ON_CREATE[sobject] if values.get(name) in (None, "")]
        if missing:
            raise ApiError(
                400,
                "REQUIRED_FIELD_MISSING",
                f"Required fields are missing: [{', '.join(missing)}]",
                missing,
            )
        user_id = self._user_for(token)
        if sobject in OWNED_SOBJECTS and values.get("OwnerId") is None:
            values["OwnerId"] = user_id
        try:
            record_id = self.store.create_record(
                sobject, values, user_id=user_id, change_origin=origin
            )
        except SandboxStoreError as exc:
            raise value_error(sobject, exc) from None
        return Response(201, {"id": record_id, "success": True, "errors": []})

    def update_record(
        self, sobject: str, record_id: str, payload: Any, origin: str, token: str
    ) -> Response:
        """PATCH sobjects/<Type>/<Id>: 204 No Content, or an error list."""
        check_writable(sobject)
        values = record_body(payload)
        error = self._check_update(sobject, record_id, values)
        if error is None:
            error = self._apply(sobject, record_id, values, origin, token)
            self._delay_answer()
        if error is None:
            return Response(204)
        code = error["statusCode"]
        if code in ("INVALID_CROSS_REFERENCE_KEY", "MALFORMED_ID", "INVALID_TYPE"):
            # On the record's own URL an unknown id is a missing resource, not a bad value.
            raise ApiError(404, "NOT_FOUND", "The requested resource does not exist")
        status = 404 if code == "ENTITY_IS_DELETED" else 400
        raise ApiError(status, code, error["message"], error["fields"])

    def delete_record(self, sobject: str, record_id: str, origin: str, token: str) -> Response:
        """DELETE sobjects/<Type>/<Id>: 204; the record goes to the recycle bin."""
        check_writable(sobject)
        existing = (
            self.store.get_record(sobject, record_id, include_deleted=True)
            if RECORD_ID.match(record_id)
            else None
        )
        if existing is None:
            raise ApiError(404, "NOT_FOUND", "The requested resource does not exist")
        if existing.get("IsDeleted"):
            raise ApiError(404, "ENTITY_IS_DELETED", "entity is deleted", [])
        if self.faults.take_lock(record_id):
            raise ApiError(
                400,
                "UNABLE_TO_LOCK_ROW",
                f"unable to obtain exclusive access to this record or 1 records: {record_id}",
                [],
            )
        try:
            self.store.delete_record(
                sobject, record_id, user_id=self._user_for(token), change_origin=origin
            )
        except RecordNotFoundError:  # deleted by someone else since the check above
            raise ApiError(404, "ENTITY_IS_DELETED", "entity is deleted", []) from None
        return Response(204)

    def update_collection(self, payload: Any, origin: str, token: str) -> Response:
        if not isinstance(payload, dict) or not isinstance(payload.get("records"), list):
            raise ApiError(
                400, "JSON_PARSER_ERROR", 'the body must be {"allOrNone": bool, "records": [...]}'
            )
        records: list[Any] = payload["records"]
        if len(records) > MAX_COLLECTION_RECORDS:
            raise ApiError(
                400,
                "EXCEEDED_ID_LIMIT",
                f"record limit reached. cannot submit more than {MAX_COLLECTION_RECORDS} records into this call",
            )
        checked = [self._check_collection_record(r) for r in records]
        if payload.get("allOrNone") and any(err is not None for err, _ in checked):
            return Response(200, rolled_back(checked))
        results = []
        for error, record in checked:
            if error is None:
                sobject, record_id, values = record
                error = self._apply(sobject, record_id, values, origin, token)
            if error is None:
                results.append({"id": record[1], "success": True, "errors": []})
            else:
                # Like Salesforce, a failed entry carries no id: results match requests by position.
                results.append({"success": False, "errors": [error]})
        self._delay_answer()
        return Response(200, results)

    def _delay_answer(self) -> None:
        # Outside any lock: other requests (queries, the Pub/Sub side) go on meanwhile.
        if (delay := self.faults.update_delay()) > 0:
            time.sleep(delay)

    def _check_collection_record(
        self, record: Any
    ) -> tuple[dict[str, Any] | None, tuple[str, str, dict]]:
        if not isinstance(record, dict):
            return save_error("JSON_PARSER_ERROR", "each record must be a JSON object"), (
                "",
                "",
                {},
            )
        sobject = (record.get("attributes") or {}).get("type") or ""
        record_id = str(record.get("id") or record.get("Id") or "")
        values = {k: v for k, v in record.items() if k not in ("attributes", "id", "Id")}
        if not sobject:
            return save_error("INVALID_TYPE", "Must send a concrete entity type."), (
                sobject,
                record_id,
                values,
            )
        if not record_id:
            return save_error("MISSING_ARGUMENT", "Id not specified in an update call"), (
                sobject,
                record_id,
                values,
            )
        return self._check_update(sobject, record_id, values), (sobject, record_id, values)

    def _check_update(
        self, sobject: str, record_id: str, values: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        if not RECORD_ID.match(record_id):
            return save_error("MALFORMED_ID", f"malformed id {record_id}")
        read_only = sorted(set(values) & READ_ONLY_FIELDS)
        if read_only:
            error = read_only_error(read_only)
            return save_error(error["code"], error["message"], read_only)
        try:
            existing = self.store.get_record(sobject, record_id)
        except ValueError:
            return save_error("INVALID_TYPE", f"sObject type '{sobject}' is not supported.")
        if existing is None:
            return save_error(
                "INVALID_CROSS_REFERENCE_KEY", f"invalid cross reference id {record_id}"
            )
        if existing.get("IsDeleted"):
            return save_error("ENTITY_IS_DELETED", "entity is deleted")
        if self.faults.take_lock(record_id):
            return save_error(
                "UNABLE_TO_LOCK_ROW",
                f"unable to obtain exclusive access to this record or 1 records: {record_id}",
            )
        return None

    def _apply(
        self, sobject: str, record_id: str, values: Mapping[str, Any], origin: str, token: str
    ) -> dict[str, Any] | None:
        try:
            check_values(sobject, values, self._schemas)
        except ApiError as exc:
            return save_error(exc.code, exc.message, exc.fields or [])
        try:
            self.store.update_record(
                sobject, record_id, values, user_id=self._user_for(token), change_origin=origin
            )
        except RecordNotFoundError:  # deleted by someone else since _check_update
            return save_error("ENTITY_IS_DELETED", "entity is deleted")
        except SandboxStoreError as exc:
            # The store rejects unknown fields and bad values: report per record, like Salesforce.
            error = value_error(sobject, exc)
            return save_error(error.code, error.message, error.fields or [])
        return None
