"""The sandbox org's Salesforce REST server: a real HTTP server on loopback.

It speaks the parts of the REST API that the pipeline uses, in Salesforce's shapes, so the
production client (``kpi_pipeline.adapters.salesforce.rest`` over simple-salesforce, and the JWT flow
in ``kpi_pipeline.adapters.auth.jwt``) is the code under test:

* ``POST /services/oauth2/token``: the JWT bearer flow; verifies the RS256 signature against
  the connected app's certificate and the ``iss``/``sub``/``aud``/``exp`` claims.
* ``POST /services/data/vNN.N/sobjects/<Type>`` (create: 201 ``{"id", "success", "errors"}``)
  and ``GET|PATCH|DELETE /services/data/vNN.N/sobjects/<Type>/<Id>`` (PATCH and DELETE: 204)
  for Lead, Task and EmailMessage; a DELETE moves the record to the recycle bin
* ``PATCH /services/data/vNN.N/composite/sobjects`` (sObject Collections update, <= 200)
* ``GET /services/data/vNN.N/sobjects/<Type>/describe``: the sObject's fields (name, type,
  ``compoundFieldName``) as Salesforce describes them, custom fields included
* ``GET /services/data/vNN.N/query?q=`` for the SOQL subset the pipeline issues, with
  ``nextRecordsUrl`` paging (``GET .../query/<cursor>``); that includes ``LeadHistory``
  (``SELECT <fields> FROM LeadHistory WHERE Field = 'Owner' AND LeadId IN (..) ORDER BY
  CreatedDate``), answered from the owner changes the store recorded (``field_history=False``:
  an org where the object is not available, INVALID_TYPE)
* ``POST /services/data/vNN.N/actions/standard/emailSimple``

Writes go through ``RecordStore.create_record``/``update_record``/``delete_record`` with
``change_origin`` ``com/salesforce/api/rest/NN.N;client=<Sforce-Call-Options client>`` and
the access token's user as ``commitUser`` (static tokens: the integration user), so they show
up as the CDC CREATE/UPDATE/DELETE events a real org publishes; the pipeline recognises its
own updates as echoes by that origin.

Refused writes change nothing and publish nothing. They get Salesforce's error list
(``[{"message", "errorCode", "fields"}]``): an unknown field is 400 INVALID_FIELD ("No such
column 'Foo' on sobject of type Lead"), a value of the wrong type 400 JSON_PARSER_ERROR, a
malformed id in a reference field 400 MALFORMED_ID, a read-only field 400
INVALID_FIELD_FOR_INSERT_UPDATE, a create without a required field (Lead: LastName, Company;
EmailMessage: Status) 400 REQUIRED_FIELD_MISSING, an unknown or unsupported sObject or record
id 404 NOT_FOUND, a record already in the recycle bin 404 ENTITY_IS_DELETED. Like a real org,
a create without ``OwnerId`` gives Lead and Task records to the calling user.

Faults (``RunningRestServer.faults``): REQUEST_LIMIT_EXCEEDED, UNABLE_TO_LOCK_ROW, HTTP 500
or dropped connections, expired sessions, and a delay between applying an update and
answering it (``delay_updates``; ``kpi-pipeline sandbox serve`` arms it from
``KPI_SANDBOX_REST_UPDATE_DELAY_SECONDS``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import secrets
import ssl
import sys
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import jwt as pyjwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from kpi_pipeline.adapters.pubsub.schemas import sf_type_of
from kpi_pipeline.core.events import EventFormatError, format_sf_datetime, parse_sf_datetime
from kpi_pipeline.sandbox.changelog import SANDBOX_ENTITIES, RecordStore
from kpi_pipeline.sandbox.encoding import DEFAULT_SCHEMAS, SchemaSet
from kpi_pipeline.sandbox.store import (
    FieldValueError,
    RecordNotFoundError,
    SandboxStoreError,
    UnknownFieldError,
    field_type,
    normalize_values,
    rest_view,
)
from kpi_pipeline.sandbox.tls import TlsFiles
from kpi_pipeline.sandbox.tokens import TokenRegistry

log = logging.getLogger(__name__)

JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
MAX_COLLECTION_RECORDS = 200
MAX_ASSERTION_AHEAD_S = 300  # Salesforce wants exp "within a few minutes"
CLOCK_SKEW_S = 5
MAX_OPEN_CURSORS = 50  # query locators kept for nextRecordsUrl; older ones become invalid
DEFAULT_INTEGRATION_USER_ID = "005000000000001AAA"
READ_ONLY_FIELDS = frozenset(
    {
        "Id",
        "CreatedDate",
        "CreatedById",
        "LastModifiedDate",
        "LastModifiedById",
        "SystemModstamp",
        "IsDeleted",
    }
)
_DATA_PATH = re.compile(r"^/services/data/v(?P<version>\d+\.\d)/(?P<rest>.*)$")
_ID = re.compile(r"^[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?$")
# Fields a create must set (nillable=false without a default in a standard org).
REQUIRED_ON_CREATE: Mapping[str, tuple[str, ...]] = {
    "Lead": ("LastName", "Company"),
    "Task": (),
    "EmailMessage": ("Status",),
}
# Owned objects: a create without OwnerId gives the record to the calling user.
OWNED_SOBJECTS = frozenset({"Lead", "Task"})
# JSON types of the wrong-typed values, worded as Salesforce's JSON parser reports them.
_PARSER_TYPES = {
    "Int": "int",
    "Number": "double",
    "Currency": "double",
    "Boolean": "boolean",
    "DateTime": "datetime",
    "Date": "date",
}


# --- configuration ---------------------------------------------------------------------


@dataclass(frozen=True)
class ConnectedApp:
    """The sandbox's connected app: who may use the JWT flow and with which certificate.

    ``allowed_usernames`` are the pre-authorized users; a mapping gives their user ids, a plain
    collection gets stable derived ids. ``login_audiences`` are accepted as JWT ``aud`` beside
    the server's own URL.
    """

    consumer_key: str
    certificate_pem: str | bytes | None = None
    public_key_pem: str | bytes | None = None
    allowed_usernames: Mapping[str, str] | Collection[str] = ()
    login_audiences: tuple[str, ...] = ()

    def public_key(self) -> rsa.RSAPublicKey:
        if (self.certificate_pem is None) == (self.public_key_pem is None):
            raise ValueError("ConnectedApp needs exactly one of certificate_pem or public_key_pem")
        if self.certificate_pem is not None:
            data = _as_bytes(self.certificate_pem)
            try:
                key = x509.load_pem_x509_certificate(data).public_key()
            except ValueError:
                raise ValueError(
                    "ConnectedApp.certificate_pem is not a PEM X.509 certificate"
                ) from None
        else:
            try:
                key = serialization.load_pem_public_key(_as_bytes(self.public_key_pem or b""))
            except ValueError:
                raise ValueError("ConnectedApp.public_key_pem is not a PEM public key") from None
        if not isinstance(key, rsa.RSAPublicKey):
            raise ValueError("the connected app's certificate must hold an RSA key (JWT RS256)")
        return key

    def user_id_for(self, username: str) -> str | None:
        if isinstance(self.allowed_usernames, Mapping):
            return self.allowed_usernames.get(username)
        if username not in self.allowed_usernames:
            return None
        return derived_user_id(username)


def derived_user_id(username: str) -> str:
    """A stable 18-character User id for a username."""
    digest = hashlib.sha1(username.encode()).hexdigest()[:12].upper()
    return f"005{digest}AAA"


def _as_bytes(value: str | bytes) -> bytes:
    return value.encode() if isinstance(value, str) else value


# --- faults ------------------------------------------------------------------------------


class RestFaults:
    """Injected failures; each call arms the next matching requests. Thread-safe."""

    def __init__(self, registry: TokenRegistry):
        self._registry = registry
        self._lock = threading.Lock()
        self._limit_left = 0
        self._limit_daily = False
        self._locks: dict[str, int] = {}
        self._fail_after = 0
        self._fail_left = 0
        self._fail_drop = False
        self._update_delay_s = 0.0

    def delay_updates(self, seconds: float) -> None:
        """Every record update (single or sObject Collections) is answered ``seconds`` after
        it was applied (0: at once). The client then waits with the update already in the org
        and its outcome unknown to it: a drainer killed in that window is the hard-kill case
        the write-back must survive, and the delay makes the window wide enough to hit."""
        if seconds < 0:
            raise ValueError(f"delay_updates needs seconds >= 0, got {seconds}")
        with self._lock:
            self._update_delay_s = float(seconds)

    def update_delay(self) -> float:
        with self._lock:
            return self._update_delay_s

    def request_limit_exceeded_next(self, n: int, *, daily: bool = False) -> None:
        """The next n data requests get 403 REQUEST_LIMIT_EXCEEDED (concurrent, or the daily total)."""
        with self._lock:
            self._limit_left, self._limit_daily = n, daily

    def lock_rows(self, record_ids: Iterable[str], times: int = 1) -> None:
        """The next ``times`` updates of each record fail with UNABLE_TO_LOCK_ROW."""
        with self._lock:
            for record_id in record_ids:
                self._locks[record_id] = times

    def fail_next_requests(self, n: int, *, after: int = 0, drop_connection: bool = False) -> None:
        """After ``after`` more requests pass, fail the next n: HTTP 500, or close the socket."""
        with self._lock:
            self._fail_after, self._fail_left, self._fail_drop = after, n, drop_connection

    def expire_sessions(self) -> int:
        """Every issued session ends now (clients must re-authenticate)."""
        return self._registry.expire_all()

    def take_request_failure(self) -> str | None:
        """'500', 'drop' or None for the request now arriving."""
        with self._lock:
            if self._fail_left <= 0:
                return None
            if self._fail_after > 0:
                self._fail_after -= 1
                return None
            self._fail_left -= 1
            return "drop" if self._fail_drop else "500"

    def take_limit(self) -> str | None:
        """The REQUEST_LIMIT_EXCEEDED message for this request, or None."""
        with self._lock:
            if self._limit_left <= 0:
                return None
            self._limit_left -= 1
            if self._limit_daily:
                return "TotalRequests Limit exceeded."
            return "ConcurrentPerOrgLongTxn Limit exceeded."

    def take_lock(self, record_id: str) -> bool:
        with self._lock:
            left = self._locks.get(record_id, 0)
            if left <= 0:
                return False
            self._locks[record_id] = left - 1
            return True


# --- responses and errors ----------------------------------------------------------------


@dataclass
class Response:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False


class ApiError(Exception):
    """A REST error in Salesforce's list shape: [{"message", "errorCode"}], plus ``fields``
    for errors about a record's values (Salesforce sends it for DML errors, not for
    request-level ones such as INVALID_SESSION_ID)."""

    def __init__(self, status: int, code: str, message: str, fields: Sequence[str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.fields = None if fields is None else list(fields)

    def response(self) -> Response:
        error: dict[str, Any] = {"message": self.message, "errorCode": self.code}
        if self.fields is not None:
            error["fields"] = self.fields
        return Response(self.status, [error])


def _oauth_error(error: str, description: str) -> Response:
    return Response(400, {"error": error, "error_description": description})


def _save_error(code: str, message: str, fields: Sequence[str] = ()) -> dict[str, Any]:
    return {"statusCode": code, "message": message, "fields": list(fields)}


@dataclass(frozen=True)
class RecordedRequest:
    """What the server received (secrets left out), for tests to assert on."""

    method: str
    path: str
    body: Any
    client: str | None
    auto_assign: str | None = None  # the Sforce-Auto-Assign header as sent


# --- SOQL subset --------------------------------------------------------------------------

_SOQL = re.compile(
    r"^\s*SELECT\s+(?P<fields>.+?)\s+FROM\s+(?P<object>\w+)"
    r"(?:\s+WHERE\s+(?P<where>.+?))?"
    r"(?:\s+ORDER\s+BY\s+(?P<order>.+?))?"
    r"(?:\s+LIMIT\s+(?P<limit>\d+))?\s*$",
    re.IGNORECASE | re.DOTALL,
)
_WHERE_IDS = re.compile(r"^Id\s+IN\s*\((?P<ids>[^)]*)\)$", re.IGNORECASE)
_WHERE_ID = re.compile(r"^Id\s*=\s*'(?P<id>[A-Za-z0-9]+)'$", re.IGNORECASE)
_WHERE_MODIFIED = re.compile(
    r"^LastModifiedDate\s*>=\s*(?P<since>\S+)(?:\s+AND\s+LastModifiedDate\s*<\s*(?P<until>\S+))?$",
    re.IGNORECASE,
)
_ORDER = re.compile(r"^LastModifiedDate(?:\s+(?P<dir>ASC|DESC))?$", re.IGNORECASE)
_FIELD = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_QUOTED_ID = re.compile(r"^'([A-Za-z0-9]+)'$")
# History objects: LeadHistory's fields as a real org describes them (OldValue/NewValue are
# anyType: ids and names come back as strings).
HISTORY_OBJECTS: Mapping[str, tuple[str, str]] = {"LeadHistory": ("Lead", "LeadId")}
_HISTORY_FIELDS = (
    "Id",
    "IsDeleted",
    "CreatedById",
    "CreatedDate",
    "Field",
    "OldValue",
    "NewValue",
    "DataType",
)
_HISTORY_CONDITION = re.compile(
    r"^(?P<name>\w+)\s*(?:=\s*(?P<one>'[^']*')|IN\s*\((?P<many>[^)]*)\))$", re.IGNORECASE
)
_QUOTED = re.compile(r"^'([^']*)'$")


@dataclass(frozen=True)
class SoqlQuery:
    sobject: str
    fields: tuple[str, ...]
    ids: tuple[str, ...] | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    order_desc: bool | None = None  # None: no ORDER BY
    limit: int | None = None


def _malformed(what: str) -> ApiError:
    return ApiError(
        400,
        "MALFORMED_QUERY",
        f"{what}. The sandbox supports: SELECT <fields> FROM <Object> [WHERE Id IN ('..') | "
        "WHERE LastModifiedDate >= <ISO> [AND LastModifiedDate < <ISO>]] "
        "[ORDER BY LastModifiedDate [ASC|DESC]] [LIMIT n]",
    )


def parse_soql(text: str) -> SoqlQuery:
    """The SOQL subset the pipeline issues; anything else is MALFORMED_QUERY naming the part."""
    match = _SOQL.match(text)
    if not match:
        raise _malformed(f"unsupported query {text[:120]!r}")
    fields = tuple(f.strip() for f in match["fields"].split(","))
    for name in fields:
        if not _FIELD.match(name):
            raise _malformed(f"unsupported select item {name!r} (plain field names only)")
    query = SoqlQuery(
        match["object"], fields, limit=int(match["limit"]) if match["limit"] else None
    )
    if match["where"]:
        query = _apply_where(query, match["where"].strip())
    if match["order"]:
        order = _ORDER.match(match["order"].strip())
        if not order:
            raise _malformed(f"unsupported ORDER BY {match['order'].strip()!r}")
        query = _replace(query, order_desc=(order["dir"] or "ASC").upper() == "DESC")
    return query


def _apply_where(query: SoqlQuery, where: str) -> SoqlQuery:
    if m := _WHERE_IDS.match(where):
        ids = []
        for item in m["ids"].split(","):
            quoted = _QUOTED_ID.match(item.strip())
            if not quoted:
                raise _malformed(
                    f"unsupported IN list item {item.strip()!r} (quoted record ids only)"
                )
            ids.append(quoted[1])
        return _replace(query, ids=tuple(ids))
    if m := _WHERE_ID.match(where):
        return _replace(query, ids=(m["id"],))
    if m := _WHERE_MODIFIED.match(where):
        until = _soql_datetime_ms(m["until"]) if m["until"] else None
        return _replace(query, since_ms=_soql_datetime_ms(m["since"]), until_ms=until)
    raise _malformed(f"unsupported WHERE clause {where!r}")


def _soql_datetime_ms(literal: str) -> int:
    try:
        parsed = parse_sf_datetime(literal) if re.search(r"(Z|[+-]\d\d:?\d\d)$", literal) else None
    except EventFormatError:
        parsed = None
    if parsed is None:
        raise _malformed(
            f"value of filter criterion {literal!r} is not a SOQL dateTime literal such as "
            "2024-05-01T10:00:00Z"
        )
    return int(parsed.timestamp() * 1000)


@dataclass(frozen=True)
class HistoryQuery:
    """``SELECT <fields> FROM <Object>History WHERE <Parent>Id IN (..) [AND Field = '..']
    [ORDER BY CreatedDate [ASC|DESC]] [LIMIT n]``."""

    sobject: str  # LeadHistory
    parent: str  # Lead
    fields: tuple[str, ...]
    parent_ids: tuple[str, ...]
    field_names: tuple[str, ...] | None = None
    order_desc: bool = False
    limit: int | None = None


def _history_malformed(what: str) -> ApiError:
    return ApiError(
        400,
        "MALFORMED_QUERY",
        f"{what}. The sandbox supports: SELECT <fields> FROM LeadHistory WHERE LeadId IN ('..') "
        "[AND Field = '..' | Field IN ('..')] [ORDER BY CreatedDate [ASC|DESC]] [LIMIT n]",
    )


def parse_history_soql(text: str) -> HistoryQuery:
    """A history-object query; unknown columns are INVALID_FIELD as in a real org."""
    match = _SOQL.match(text)
    if not match or match["object"] not in HISTORY_OBJECTS:
        raise _history_malformed(f"unsupported query {text[:120]!r}")
    sobject = match["object"]
    parent, parent_field = HISTORY_OBJECTS[sobject]
    known = {n.lower(): n for n in (*_HISTORY_FIELDS, parent_field)}
    fields = []
    for name in (f.strip() for f in match["fields"].split(",")):
        if name.lower() not in known:
            raise ApiError(
                400, "INVALID_FIELD", f"No such column '{name}' on entity '{sobject}'.", [name]
            )
        fields.append(known[name.lower()])
    ids: tuple[str, ...] | None = None
    field_names: tuple[str, ...] | None = None
    where = (match["where"] or "").strip()
    for condition in re.split(r"\s+AND\s+", where, flags=re.I) if where else ():
        found = _HISTORY_CONDITION.match(condition.strip())
        name = found["name"].lower() if found else ""
        values = _quoted_values(found) if found else ()
        if name == parent_field.lower():
            ids = values
        elif name == "field":
            field_names = values
        else:
            raise _history_malformed(f"unsupported WHERE condition {condition.strip()!r}")
    if ids is None:
        raise _history_malformed(f"a {sobject} query must filter on {parent_field}")
    order_desc = False
    if match["order"]:
        order = re.match(r"^CreatedDate(?:\s+(ASC|DESC))?$", match["order"].strip(), re.I)
        if not order:
            raise _history_malformed(f"unsupported ORDER BY {match['order'].strip()!r}")
        order_desc = (order[1] or "ASC").upper() == "DESC"
    limit = int(match["limit"]) if match["limit"] else None
    return HistoryQuery(sobject, parent, tuple(fields), ids, field_names, order_desc, limit)


def _quoted_values(found: re.Match[str]) -> tuple[str, ...]:
    items = [found["one"]] if found["one"] is not None else found["many"].split(",")
    values = []
    for item in items:
        quoted = _QUOTED.match(item.strip())
        if not quoted:
            raise _history_malformed(f"unsupported value {item.strip()!r} (quoted strings only)")
        values.append(quoted[1])
    return tuple(values)


def _replace(query: SoqlQuery, **changes: Any) -> SoqlQuery:
    return SoqlQuery(**{**query.__dict__, **changes})


def _modified_ms(record: Mapping[str, Any]) -> int:
    value = parse_sf_datetime(record.get("LastModifiedDate"))
    return int(value.timestamp() * 1000) if value else 0


# --- the application -----------------------------------------------------------------------


class RestApp:
    """Routes and handlers, independent of the HTTP plumbing."""

    def __init__(
        self,
        store: RecordStore,
        registry: TokenRegistry,
        connected_app: ConnectedApp,
        *,
        tenant_id: str,
        integration_user_id: str,
        query_batch_size: int,
        api_daily_limit: int,
        clock: Callable[[], float],
        keep_requests: int = 10_000,
        field_history: bool = True,
    ):
        self.store = store
        self.field_history = field_history
        self.registry = registry
        self.app = connected_app
        self.public_key = connected_app.public_key()
        self.tenant_id = tenant_id
        self.integration_user_id = integration_user_id
        self.query_batch_size = query_batch_size
        self.api_daily_limit = api_daily_limit
        self.clock = clock
        self.faults = RestFaults(registry)
        self.url = ""  # set once the port is known
        self.instance_url = ""
        # Bounded: `kpi-pipeline sandbox serve` and `dagster dev` run the server for days.
        self.received: deque[RecordedRequest] = deque(maxlen=keep_requests)
        self.sent_emails: deque[dict[str, Any]] = deque(maxlen=keep_requests)
        self._lock = threading.Lock()
        self._cursors: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
        self._api_calls = 0
        self._signing_secret = secrets.token_bytes(32)

    # --- dispatch -----------------------------------------------------------------------

    @property
    def _schemas(self) -> SchemaSet:
        """The org's schemas (custom fields included), read per request: they may change."""
        return getattr(self.store, "schemas", DEFAULT_SCHEMAS)

    def handle(self, method: str, target: str, headers: Mapping[str, str], body: bytes) -> Response:
        url = urlsplit(target)
        path = unquote(url.path)
        failure = self.faults.take_request_failure()
        if failure == "drop":
            return Response(0, drop=True)
        if failure == "500":
            return ApiError(
                500, "UNKNOWN_EXCEPTION", "An unexpected error occurred (injected fault)."
            ).response()
        try:
            if path == "/services/oauth2/token":
                self._record(method, path, None, None)  # the assertion is a secret: not logged
                if method != "POST":
                    raise ApiError(
                        405,
                        "METHOD_NOT_ALLOWED",
                        f"HTTP Method '{method}' not allowed. Allowed are POST",
                    )
                return self.token(body)
            data = _DATA_PATH.match(path)
            if not data:
                raise ApiError(404, "NOT_FOUND", "The requested resource does not exist")
            return self._data_request(
                method, data["version"], data["rest"], url.query, headers, body
            )
        except ApiError as exc:
            return exc.response()

    def _data_request(
        self,
        method: str,
        version: str,
        rest: str,
        query: str,
        headers: Mapping[str, str],
        body: bytes,
    ) -> Response:
        client = _call_options_client(headers.get("Sforce-Call-Options", ""))
        payload = _json_body(body) if body else None
        self._record(  # before the auth check, so tests see refused requests too
            method,
            f"/services/data/v{version}/{rest}",
            None if payload is _UNPARSEABLE else payload,
            client,
            headers.get("Sforce-Auto-Assign"),
        )
        token = self._bearer_token(headers)
        if not self.registry.is_valid(token):
            raise ApiError(401, "INVALID_SESSION_ID", "Session expired or invalid")
        if limit_message := self.faults.take_limit():
            raise ApiError(403, "REQUEST_LIMIT_EXCEEDED", limit_message)
        if payload is _UNPARSEABLE:
            raise ApiError(400, "JSON_PARSER_ERROR", "the request body is not valid JSON")
        response = self._route(method, version, rest.rstrip("/"), query, payload, client, token)
        response.headers["Sforce-Limit-Info"] = (
            f"api-usage={self._count_call()}/{self.api_daily_limit}"
        )
        return response

    def _route(
        self,
        method: str,
        version: str,
        rest: str,
        query: str,
        payload: Any,
        client: str | None,
        token: str,
    ) -> Response:
        parts = rest.split("/")
        if parts[0] == "sobjects" and len(parts) == 3 and parts[2] == "describe":
            _allow(method, ("GET",))
            return Response(200, describe_sobject(parts[1], self._schemas))
        if parts[0] == "sobjects" and len(parts) == 2:
            _allow(method, ("POST",))
            return self.create_record(parts[1], payload, self._origin(version, client), token)
        if parts[0] == "sobjects" and len(parts) == 3:
            _allow(method, ("GET", "PATCH", "DELETE"))
            if method == "GET":
                return self.get_record(version, parts[1], parts[2], query)
            if method == "DELETE":
                return self.delete_record(parts[1], parts[2], self._origin(version, client), token)
            return self.update_record(
                parts[1], parts[2], payload, self._origin(version, client), token
            )
        if rest == "composite/sobjects":
            _allow(method, ("PATCH",))
            return self.update_collection(payload, self._origin(version, client), token)
        if rest == "query":
            _allow(method, ("GET",))
            return self.query(version, parse_qs(query).get("q", [""])[0])
        if parts[0] == "query" and len(parts) == 2:
            _allow(method, ("GET",))
            return self.query_more(version, parts[1])
        if rest == "actions/standard/emailSimple":
            _allow(method, ("POST",))
            return self.email_simple(payload)
        raise ApiError(404, "NOT_FOUND", "The requested resource does not exist")

    def _record(
        self, method: str, path: str, body: Any, client: str | None, auto_assign: str | None = None
    ) -> None:
        with self._lock:
            self.received.append(RecordedRequest(method, path, body, client, auto_assign))

    def _count_call(self) -> int:
        with self._lock:
            self._api_calls += 1
            return self._api_calls

    @staticmethod
    def _bearer_token(headers: Mapping[str, str]) -> str:
        value = headers.get("Authorization", "")
        scheme, _, token = value.partition(" ")
        return token.strip() if scheme in ("Bearer", "OAuth") else ""

    def _origin(self, version: str, client: str | None) -> str:
        origin = f"com/salesforce/api/rest/{version}"
        return f"{origin};client={client}" if client else origin

    def _user_for(self, token: str) -> str:
        username = self.registry.username_for(token)
        user_id = self.app.user_id_for(username) if username else None
        return user_id or self.integration_user_id

    # --- OAuth ------------------------------------------------------------------------------

    def token(self, body: bytes) -> Response:
        form = parse_qs(body.decode("utf-8", "replace"))
        if form.get("grant_type", [""])[0] != JWT_BEARER_GRANT:
            return _oauth_error("unsupported_grant_type", "grant type not supported")
        assertion = form.get("assertion", [""])[0]
        try:
            claims = pyjwt.decode(assertion, options={"verify_signature": False})
        except pyjwt.PyJWTError:
            return _oauth_error("invalid_grant", "invalid assertion")
        if claims.get("iss") != self.app.consumer_key:
            return _oauth_error("invalid_client_id", "client identifier invalid")
        try:
            # Claims are checked below with our clock and Salesforce's error texts.
            pyjwt.decode(
                assertion,
                self.public_key,
                algorithms=["RS256"],
                options={
                    "verify_exp": False,
                    "verify_aud": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
        except pyjwt.PyJWTError:
            return _oauth_error("invalid_grant", "invalid assertion")
        refusal = self._check_claims(claims)
        if refusal is not None:
            return refusal
        return self._issue(str(claims["sub"]))

    def _check_claims(self, claims: Mapping[str, Any]) -> Response | None:
        audiences = {self.url, *self.app.login_audiences}
        if claims.get("aud") not in audiences:
            return _oauth_error("invalid_grant", "audience is invalid")
        exp = claims.get("exp")
        now = self.clock()
        if not isinstance(exp, int | float) or exp <= now - CLOCK_SKEW_S:
            return _oauth_error("invalid_grant", "expired authorization code")
        if exp > now + MAX_ASSERTION_AHEAD_S + CLOCK_SKEW_S:
            return _oauth_error("invalid_grant", "invalid assertion")
        if self.app.user_id_for(str(claims.get("sub", ""))) is None:
            return _oauth_error("invalid_grant", "user hasn't approved this consumer")
        return None

    def _issue(self, username: str) -> Response:
        user_id = self.app.user_id_for(username)
        access_token = self.registry.issue(username)
        identity = f"{self.url}/id/{self.tenant_id}/{user_id}"
        issued_at = str(int(self.clock() * 1000))
        mac = hmac.new(
            self._signing_secret, (identity + issued_at).encode(), hashlib.sha256
        ).digest()
        return Response(
            200,
            {
                "access_token": access_token,
                "scope": "api",
                "instance_url": self.instance_url,
                "id": identity,
                "token_type": "Bearer",
                "issued_at": issued_at,
                "signature": base64.b64encode(mac).decode(),
            },
        )

    # --- sObjects -------------------------------------------------------------------------

    def get_record(self, version: str, sobject: str, record_id: str, query: str) -> Response:
        try:
            record = self.store.get_record(sobject, record_id)
        except ValueError:  # the store names unknown sObject types this way
            record = None
        if record is None:
            raise ApiError(404, "NOT_FOUND", "The requested resource does not exist")
        wanted = parse_qs(query).get("fields", [""])[0]
        names = [f.strip() for f in wanted.split(",") if f.strip()] or None
        return Response(200, self._project(version, sobject, record, names))

    def create_record(self, sobject: str, payload: Any, origin: str, token: str) -> Response:
        """POST sobjects/<Type>: 201 with Salesforce's save result, or an error list."""
        _writable(sobject)
        values = _record_body(payload)
        values.pop("attributes", None)  # clients may send the type there; the URL decides
        _check_values(sobject, values, self._schemas)
        read_only = sorted(set(values) & READ_ONLY_FIELDS)
        if read_only:
            raise ApiError(400, **_read_only_error(read_only))
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
            raise _value_error(sobject, exc) from None
        return Response(201, {"id": record_id, "success": True, "errors": []})

    def update_record(
        self, sobject: str, record_id: str, payload: Any, origin: str, token: str
    ) -> Response:
        """PATCH sobjects/<Type>/<Id>: 204 No Content, or an error list."""
        _writable(sobject)
        values = _record_body(payload)
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
        _writable(sobject)
        existing = (
            self.store.get_record(sobject, record_id, include_deleted=True)
            if _ID.match(record_id)
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
            return Response(200, _rolled_back(checked))
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
            return _save_error("JSON_PARSER_ERROR", "each record must be a JSON object"), (
                "",
                "",
                {},
            )
        sobject = (record.get("attributes") or {}).get("type") or ""
        record_id = str(record.get("id") or record.get("Id") or "")
        values = {k: v for k, v in record.items() if k not in ("attributes", "id", "Id")}
        if not sobject:
            return _save_error("INVALID_TYPE", "Must send a concrete entity type."), (
                sobject,
                record_id,
                values,
            )
        if not record_id:
            return _save_error("MISSING_ARGUMENT", "Id not specified in an update call"), (
                sobject,
                record_id,
                values,
            )
        return self._check_update(sobject, record_id, values), (sobject, record_id, values)

    def _check_update(
        self, sobject: str, record_id: str, values: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        if not _ID.match(record_id):
            return _save_error("MALFORMED_ID", f"malformed id {record_id}")
        read_only = sorted(set(values) & READ_ONLY_FIELDS)
        if read_only:
            error = _read_only_error(read_only)
            return _save_error(error["code"], error["message"], read_only)
        try:
            existing = self.store.get_record(sobject, record_id)
        except ValueError:
            return _save_error("INVALID_TYPE", f"sObject type '{sobject}' is not supported.")
        if existing is None:
            return _save_error(
                "INVALID_CROSS_REFERENCE_KEY", f"invalid cross reference id {record_id}"
            )
        if existing.get("IsDeleted"):
            return _save_error("ENTITY_IS_DELETED", "entity is deleted")
        if self.faults.take_lock(record_id):
            return _save_error(
                "UNABLE_TO_LOCK_ROW",
                f"unable to obtain exclusive access to this record or 1 records: {record_id}",
            )
        return None

    def _apply(
        self, sobject: str, record_id: str, values: Mapping[str, Any], origin: str, token: str
    ) -> dict[str, Any] | None:
        try:
            _check_values(sobject, values, self._schemas)
        except ApiError as exc:
            return _save_error(exc.code, exc.message, exc.fields or [])
        try:
            self.store.update_record(
                sobject, record_id, values, user_id=self._user_for(token), change_origin=origin
            )
        except RecordNotFoundError:  # deleted by someone else since _check_update
            return _save_error("ENTITY_IS_DELETED", "entity is deleted")
        except SandboxStoreError as exc:
            # The store rejects unknown fields and bad values: report per record, like Salesforce.
            error = _value_error(sobject, exc)
            return _save_error(error.code, error.message, error.fields or [])
        return None

    @staticmethod
    def _project(
        version: str, sobject: str, record: Mapping[str, Any], names: Sequence[str] | None
    ) -> dict[str, Any]:
        """The record as REST returns it (store shape -> REST shape), limited to ``names``."""
        view = rest_view(sobject, record)
        view.pop("attributes", None)
        url = f"/services/data/v{version}/sobjects/{sobject}/{record.get('Id', '')}"
        out: dict[str, Any] = {"attributes": {"type": sobject, "url": url}}
        by_lower = {k.lower(): k for k in view}
        for name in names if names is not None else list(view):
            key = by_lower.get(name.lower(), name)  # SOQL names are case-insensitive
            out[key] = view.get(key)
        return out

    # --- query -------------------------------------------------------------------------------

    def query(self, version: str, soql: str) -> Response:
        if not soql.strip():
            raise ApiError(400, "MALFORMED_QUERY", "the query parameter q is missing")
        target = _SOQL.match(soql)
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
            records = [r for r in records if _modified_ms(r) < parsed.until_ms]
        if parsed.order_desc is not None:
            records.sort(
                key=lambda r: (_modified_ms(r), str(r.get("Id", ""))), reverse=parsed.order_desc
            )
        if parsed.limit is not None:
            records = records[: parsed.limit]
        rows = [self._project(version, parsed.sobject, r, parsed.fields) for r in records]
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

    # --- actions -----------------------------------------------------------------------------

    def email_simple(self, payload: Any) -> Response:
        inputs = payload.get("inputs") if isinstance(payload, dict) else None
        if not isinstance(inputs, list) or not inputs:
            raise ApiError(400, "JSON_PARSER_ERROR", 'the body must be {"inputs": [{...}]}')
        results = []
        for item in inputs:
            missing = [
                name
                for name, present in (
                    (
                        "emailAddresses",
                        bool(item.get("emailAddresses") or item.get("emailAddressesArray")),
                    ),
                    ("emailSubject", bool(item.get("emailSubject"))),
                    ("emailBody", bool(item.get("emailBody"))),
                )
                if not present
            ]
            errors = [
                _save_error("REQUIRED_FIELD_MISSING", f"Missing required input parameter: {m}")
                for m in missing
            ]
            if not errors:
                with self._lock:
                    self.sent_emails.append(dict(item))
            results.append(
                {
                    "actionName": "emailSimple",
                    "errors": errors or None,
                    "isSuccess": not errors,
                    "outputValues": None,
                }
            )
        return Response(200, results)


def _rolled_back(
    checked: list[tuple[dict[str, Any] | None, tuple[str, str, dict]]],
) -> list[dict[str, Any]]:
    message = "Record rolled back because not all records were valid and the request was using AllOrNone header"
    return [
        {
            "success": False,
            "errors": [err or _save_error("ALL_OR_NONE_OPERATION_ROLLED_BACK", message)],
        }
        for err, _ in checked
    ]


# The sandbox's field types as sObject describe names them.
_DESCRIBE_TYPES = {
    "Text": "string",
    "Id": "id",
    "Picklist": "picklist",
    "Email": "email",
    "Phone": "phone",
    "Url": "url",
    "TextArea": "textarea",
    "Lookup": "reference",
    "Boolean": "boolean",
    "Int": "int",
    "Number": "double",
    "Currency": "currency",
    "DateTime": "datetime",
    "Date": "date",
}


def _describe_field(name: str, sf_type: str, compound: str | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "type": sf_type,
        "compoundFieldName": compound,
        "custom": name.endswith("__c"),
        "calculated": False,
    }


def describe_sobject(sobject: str, schemas: SchemaSet) -> dict[str, Any]:
    """``sobjects/<Type>/describe`` from the org's change-event schema: every field with
    its describe type, compound children under their REST names (``BillingCity``) with
    ``compoundFieldName``, plus the fields REST has and CDC does not (Id, IsDeleted,
    SystemModstamp). Address's ``Xyz`` is a CDC-only child and is left out."""
    schema = schemas.schemas.get(sobject)
    if schema is None:
        raise ApiError(404, "NOT_FOUND", "The requested resource does not exist")
    fields = [
        _describe_field("Id", "id"),
        _describe_field("IsDeleted", "boolean"),
        _describe_field("SystemModstamp", "datetime"),
    ]
    for spec in schema["fields"][1:]:
        branches = spec["type"] if isinstance(spec["type"], list) else [spec["type"]]
        record = next((b for b in branches if isinstance(b, dict)), None)
        named = next((b for b in branches if isinstance(b, str) and b != "null"), None)
        if record is None and named in ("Address", "Switchable_PersonName"):
            record = _named_record(schema, named)  # a reference to a type defined earlier
        if record is None:
            fields.append(
                _describe_field(spec["name"], _DESCRIBE_TYPES[sf_type_of(spec) or "Text"])
            )
            continue
        parent = spec["name"]
        fields.append(
            _describe_field(parent, "address" if record["name"] == "Address" else "string")
        )
        prefix = parent.removesuffix("Address") if parent.endswith("Address") else ""
        for child in record["fields"]:
            if child["name"] == "Xyz":
                continue
            child_type = _DESCRIBE_TYPES[sf_type_of(child) or "Text"]
            fields.append(_describe_field(prefix + child["name"], child_type, parent))
    return {"name": sobject, "custom": False, "fields": fields}


def _named_record(schema: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    for spec in schema["fields"][1:]:
        for branch in spec["type"] if isinstance(spec["type"], list) else [spec["type"]]:
            if isinstance(branch, dict) and branch.get("name") == name:
                return branch
    return None


def _writable(sobject: str) -> None:
    # A real org answers NOT_FOUND for an sObject it does not have; the sandbox writes only the
    # objects it publishes change events for.
    if sobject not in SANDBOX_ENTITIES:
        raise ApiError(404, "NOT_FOUND", "The requested resource does not exist")


def _record_body(payload: Any) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise ApiError(400, "JSON_PARSER_ERROR", "the body must be a JSON object of field values")
    return dict(payload)


def _read_only_error(names: Sequence[str]) -> dict[str, Any]:
    return {
        "code": "INVALID_FIELD_FOR_INSERT_UPDATE",
        "message": f"Unable to create/update fields: {', '.join(names)}. Please check the security "
        "settings of this field and verify that it is read/write for your profile or permission set.",
        "fields": list(names),
    }


def _check_values(sobject: str, values: Mapping[str, Any], schemas: SchemaSet) -> None:
    """Unknown fields and wrong-typed values, found by the store's own normalization; read-only
    fields are left to the caller (they get their own error)."""
    try:
        normalize_values(
            sobject,
            {k: v for k, v in values.items() if k not in READ_ONLY_FIELDS},
            schemas=schemas,
        )
    except SandboxStoreError as exc:
        raise _value_error(sobject, exc) from None
    for name, value in values.items():
        # The store takes any string in a reference field (its own tests and tools use short
        # placeholders); an org refuses one that is not shaped like an id.
        if (
            isinstance(value, str)
            and field_type(sobject, name, schemas) == "Lookup"
            and not _ID.match(value)
        ):
            raise ApiError(
                400, "MALFORMED_ID", f"{name}: id value of incorrect type: {value}", [name]
            )


def _value_error(sobject: str, exc: SandboxStoreError) -> ApiError:
    """A store refusal as the error Salesforce gives for that kind of bad value."""
    if isinstance(exc, UnknownFieldError):
        return ApiError(
            400, "INVALID_FIELD", f"No such column '{exc.field_name}' on sobject of type {sobject}"
        )
    if isinstance(exc, FieldValueError):
        expected = _PARSER_TYPES.get(exc.sf_type, "string")
        return ApiError(
            400,
            "JSON_PARSER_ERROR",
            f"Cannot deserialize instance of {expected} from {_json_token(exc.value)} value "
            f"{json.dumps(exc.value)} or request may be missing a required field",
        )
    # Anything else the store refuses (e.g. a compound field given a scalar).
    return ApiError(400, "INVALID_FIELD", str(exc), [])


def _json_token(value: Any) -> str:
    """The JSON parser's name for a value's token, as in Salesforce's JSON_PARSER_ERROR."""
    if isinstance(value, bool):
        return "VALUE_TRUE" if value else "VALUE_FALSE"
    if isinstance(value, int):
        return "VALUE_NUMBER_INT"
    if isinstance(value, float):
        return "VALUE_NUMBER_FLOAT"
    if isinstance(value, str):
        return "VALUE_STRING"
    return "START_ARRAY" if isinstance(value, list) else "START_OBJECT"


def _allow(method: str, allowed: tuple[str, ...]) -> None:
    if method not in allowed:
        raise ApiError(
            405,
            "METHOD_NOT_ALLOWED",
            f"HTTP Method '{method}' not allowed. Allowed are {','.join(allowed)}",
        )


_UNPARSEABLE = object()  # a body that is not JSON: refused after the auth check, like Salesforce


def _json_body(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return _UNPARSEABLE


def _call_options_client(value: str) -> str | None:
    """``client`` from ``Sforce-Call-Options: client=<id>[, defaultNamespace=...]``."""
    for part in value.split(","):
        name, _, client = part.strip().partition("=")
        if name.strip() == "client" and client.strip():
            return client.strip()
    return None


# --- HTTP plumbing ----------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; without this, Nagle plus the client's delayed
    # ACK add ~40 ms to every response.
    disable_nagle_algorithm = True

    def _dispatch(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        response = self.server.app.handle(self.command, self.path, self.headers, body)
        if response.drop:
            self.close_connection = True  # the client sees the connection reset mid-request
            return
        payload = b"" if response.body is None else json.dumps(response.body).encode()
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        if payload:
            self.send_header("Content-Type", "application/json;charset=UTF-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if payload:
            self.wfile.write(payload)

    do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _dispatch

    def log_message(
        self, format: str, *args: Any
    ) -> None:  # quiet; never log request lines at INFO
        log.debug("rest %s - %s", self.address_string(), format % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # The default backlog of 5 overflows when several run workers connect at once.
    request_queue_size = 128
    app: RestApp

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Liveness checks (a bare TCP connect) and clients that do not trust the CA end in a
        # failed handshake: the client sees that failure; it is no server error.
        if isinstance(sys.exc_info()[1], ssl.SSLError | ConnectionError):
            return
        super().handle_error(request, client_address)


@dataclass
class RunningRestServer:
    """A started server. ``url`` is both the login URL and the instance URL."""

    port: int
    url: str
    app: RestApp
    _server: _Server = field(repr=False)
    _thread: threading.Thread = field(repr=False)

    @property
    def faults(self) -> RestFaults:
        return self.app.faults

    @property
    def registry(self) -> TokenRegistry:
        return self.app.registry

    @property
    def received(self) -> list[RecordedRequest]:
        """The most recent requests (up to ``keep_requests``), oldest first."""
        return list(self.app.received)

    @property
    def sent_emails(self) -> list[dict[str, Any]]:
        return list(self.app.sent_emails)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> RunningRestServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_rest_server(
    store: RecordStore,
    *,
    token_registry: TokenRegistry,
    connected_app: ConnectedApp,
    host: str = "127.0.0.1",
    port: int = 0,
    instance_url: str | None = None,
    tenant_id: str = "00D000000000001AAA",
    integration_user_id: str = DEFAULT_INTEGRATION_USER_ID,
    query_batch_size: int = 2000,
    api_daily_limit: int = 100_000,
    clock: Callable[[], float] = time.time,
    keep_requests: int = 10_000,
    tls: TlsFiles | None = None,
    field_history: bool = True,
) -> RunningRestServer:
    """Serve ``store`` over the REST API on ``host:port`` (0: an ephemeral port) in a thread,
    over HTTPS when ``tls`` is given; ``field_history=False`` answers history-object queries
    with INVALID_TYPE (an org where they are not available to the API user)."""
    if query_batch_size < 1:
        raise ValueError(f"query_batch_size must be at least 1, got {query_batch_size}")
    app = RestApp(
        store,
        token_registry,
        connected_app,
        tenant_id=tenant_id,
        integration_user_id=integration_user_id,
        query_batch_size=query_batch_size,
        api_daily_limit=api_daily_limit,
        clock=clock,
        keep_requests=keep_requests,
        field_history=field_history,
    )
    try:
        server = _Server((host, port), _Handler)
    except OSError as exc:
        raise OSError(
            f"cannot listen on {host}:{port} for the sandbox REST server: {exc.strerror}"
        ) from exc
    server.app = app
    bound_port = server.server_address[1]
    scheme = "http"
    if tls is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(tls.cert_file, tls.key_file)
        # The handshake runs in the request's own thread (on its first read), so a client
        # that connects and never speaks TLS cannot hold up the accept loop.
        server.socket = context.wrap_socket(
            server.socket, server_side=True, do_handshake_on_connect=False
        )
        scheme = "https"
    app.url = f"{scheme}://{host}:{bound_port}"
    app.instance_url = (instance_url or app.url).rstrip("/")
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.05},  # stop() returns within 50 ms
        name=f"sandbox-rest-{bound_port}",
        daemon=True,
    )
    thread.start()
    return RunningRestServer(bound_port, app.url, app, server, thread)
