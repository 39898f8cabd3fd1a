"""A small wire-level stand-in for Elasticsearch 9, for the flywheel loader tests.

No Elasticsearch server can be installed in this environment (only PyPI, Debian and npm
registries are reachable, and Debian does not package Elasticsearch), so the loader is
tested with the official ``elasticsearch`` client (9.x) talking real HTTP to this
threaded server on 127.0.0.1. It implements only what the client calls, in the real
shapes:

- every response carries ``X-Elastic-Product: Elasticsearch`` (the client refuses 2xx
  responses without it) and answers compatibility requests
  (``Accept: application/vnd.elasticsearch+json; compatible-with=9``) with the same
  media type; ``compatible-with`` other than 8 or 9 gets 400
  ``media_type_header_exception``, as a 9.x node answers;
- ``GET /`` (cluster info, version 9.1.0);
- ``PUT``/``GET /_index_template/<name>`` (composable templates, applied by
  ``index_patterns`` and ``priority`` when an index is auto-created);
- ``HEAD /<index>``, ``PUT /<index>``, ``GET /<index>/_mapping``, ``GET /<index>/_count``,
  ``GET /<index>/_doc/<id>``, ``POST /<index>/_refresh``;
- ``POST|PUT /_bulk`` and ``/<index>/_bulk`` (NDJSON; ``create`` on an existing ``_id``
  is a 409 ``version_conflict_engine_exception`` item; a top-level field outside a
  ``dynamic: strict`` mapping is a 400 ``strict_dynamic_mapping_exception`` item; a
  non-numeric ``epoch_second`` date is a 400 ``document_parsing_exception`` item).

Faults for retry tests: ``fail_bulk_requests`` (statuses for the next whole bulk
requests), ``fail_paths`` (``"PUT /_index_template/x"`` -> statuses of its next answers)
and ``fail_items`` (per ``_id``, statuses for its next attempts; 429 uses the
real ``es_rejected_execution_exception`` shape).
"""

from __future__ import annotations

import fnmatch
import json
import re
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

VERSION = "9.1.0"
_COMPAT_RE = re.compile(r"compatible-with=(\d+)")


@dataclass
class IndexState:
    mappings: dict[str, Any]
    docs: dict[str, dict[str, Any]] = field(default_factory=dict)
    uuid: str = field(default_factory=lambda: uuid.uuid4().hex[:22])


@dataclass
class ClusterState:
    templates: dict[str, dict[str, Any]] = field(default_factory=dict)
    indices: dict[str, IndexState] = field(default_factory=dict)
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    bulk_requests: int = 0
    fail_bulk_requests: list[int] = field(default_factory=list)
    fail_items: dict[str, list[int]] = field(default_factory=dict)
    fail_paths: dict[str, list[int]] = field(default_factory=dict)  # "PUT /path" -> statuses
    lock: threading.Lock = field(default_factory=threading.Lock)


def _error(status: int, etype: str, reason: str, **extra: Any) -> tuple[int, dict[str, Any]]:
    cause = {"type": etype, "reason": reason, **extra}
    return status, {"error": {"root_cause": [cause], **cause}, "status": status}


def _index_not_found(index: str) -> tuple[int, dict[str, Any]]:
    return _error(
        404,
        "index_not_found_exception",
        f"no such index [{index}]",
        **{"resource.type": "index_or_alias", "resource.id": index, "index": index},
    )


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, *args: Any) -> None:  # keep test output quiet
        return

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path = unquote(urlsplit(self.path).path)
        state = self.server.state
        with state.lock:
            state.requests.append((method, path, {k.lower(): v for k, v in self.headers.items()}))
        compat = self._compat_version()
        if compat is not None and compat not in (8, 9):
            status, payload = _error(
                400,
                "media_type_header_exception",
                f"Invalid media-type value on headers [Accept, Content-Type]: compatible-with={compat}",
            )
        elif state.fail_paths.get(f"{method} {path}"):
            with state.lock:
                failure = state.fail_paths[f"{method} {path}"].pop(0)
            status, payload = _error(failure, "cluster_block_exception", "injected failure")
        else:
            status, payload = route(state, method, path, body)
        self._send(method, status, payload, compat)

    def _compat_version(self) -> int | None:
        for header in ("Accept", "Content-Type"):
            match = _COMPAT_RE.search(self.headers.get(header, ""))
            if match:
                return int(match.group(1))
        return None

    def _send(self, method: str, status: int, payload: Any, compat: int | None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("X-Elastic-Product", "Elasticsearch")
        media = (
            f"application/vnd.elasticsearch+json;compatible-with={compat}"
            if compat
            else "application/json"
        )
        self.send_header("Content-Type", media)
        self.send_header("Content-Length", str(0 if method == "HEAD" else len(data)))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(data)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: ClusterState


def route(state: ClusterState, method: str, path: str, body: bytes) -> tuple[int, Any]:
    parts = [p for p in path.split("/") if p]
    if method == "GET" and not parts:
        return 200, _info()
    if parts[:1] == ["_index_template"] and len(parts) == 2:
        return _template(state, method, parts[1], body)
    if method in ("POST", "PUT") and parts[-1:] == ["_bulk"] and len(parts) <= 2:
        return _bulk(state, parts[0] if len(parts) == 2 else None, body)
    if len(parts) == 1 and not parts[0].startswith("_"):
        return _index(state, method, parts[0], body)
    if len(parts) >= 2 and not parts[0].startswith("_"):
        return _index_api(state, method, parts)
    return 400, {"error": f"no handler found for uri [{path}] and method [{method}]"}


def _info() -> dict[str, Any]:
    return {
        "name": "kpi-test-node",
        "cluster_name": "kpi-test",
        "cluster_uuid": "kpi-test-cluster-uuid",
        "version": {
            "number": VERSION,
            "build_flavor": "default",
            "build_type": "tar",
            "build_snapshot": False,
            "lucene_version": "10.2.2",
            "minimum_wire_compatibility_version": "8.19.0",
            "minimum_index_compatibility_version": "8.0.0",
        },
        "tagline": "You Know, for Search",
    }


def _template(state: ClusterState, method: str, name: str, body: bytes) -> tuple[int, Any]:
    with state.lock:
        if method == "PUT":
            template = json.loads(body or b"{}")
            if not template.get("index_patterns"):
                return _error(
                    400,
                    "action_request_validation_exception",
                    "Validation Failed: 1: index patterns are missing;",
                )
            state.templates[name] = template
            return 200, {"acknowledged": True}
        if method == "GET":
            if name not in state.templates:
                return _error(
                    404,
                    "resource_not_found_exception",
                    f"index template matching [{name}] not found",
                )
            return 200, {
                "index_templates": [{"name": name, "index_template": state.templates[name]}]
            }
    return 405, {
        "error": f"Incorrect HTTP method for uri [/_index_template/{name}] and method [{method}]"
    }


def _index(state: ClusterState, method: str, index: str, body: bytes) -> tuple[int, Any]:
    with state.lock:
        exists = index in state.indices
        if method == "HEAD":
            return (200 if exists else 404), {}
        if method == "PUT":
            if exists:
                return _error(
                    400,
                    "resource_already_exists_exception",
                    f"index [{index}] already exists",
                    index=index,
                )
            request = json.loads(body or b"{}")
            state.indices[index] = IndexState(mappings=request.get("mappings", {}))
            return 200, {"acknowledged": True, "shards_acknowledged": True, "index": index}
    return 405, {"error": f"Incorrect HTTP method for uri [/{index}] and method [{method}]"}


def _index_api(state: ClusterState, method: str, parts: list[str]) -> tuple[int, Any]:
    index, api = parts[0], parts[1]
    with state.lock:
        target = state.indices.get(index)
        if target is None:
            return _index_not_found(index)
        if api == "_mapping" and method == "GET":
            return 200, {index: {"mappings": target.mappings}}
        if api == "_count" and method in ("GET", "POST"):
            return 200, {"count": len(target.docs), "_shards": _shards(1)}
        if api == "_refresh" and method in ("GET", "POST"):
            return 200, {"_shards": _shards(1)}
        if api == "_doc" and len(parts) == 3 and method == "GET":
            doc = target.docs.get(parts[2])
            found = {"_index": index, "_id": parts[2], "found": doc is not None}
            if doc is None:
                return 404, found
            return 200, {**found, "_version": 1, "_seq_no": 0, "_primary_term": 1, "_source": doc}
    return 400, {"error": f"no handler found for uri [/{'/'.join(parts)}] and method [{method}]"}


def _shards(total: int) -> dict[str, int]:
    return {"total": total, "successful": total, "skipped": 0, "failed": 0}


def _matching_mappings(state: ClusterState, index: str) -> dict[str, Any]:
    """Mappings of the highest-priority template whose pattern matches (auto-create)."""
    candidates = [
        t
        for t in state.templates.values()
        if any(fnmatch.fnmatchcase(index, p) for p in t["index_patterns"])
    ]
    if not candidates:
        return {}
    best = max(candidates, key=lambda t: t.get("priority", 0))
    return best.get("template", {}).get("mappings", {})


def _mapping_error(
    mappings: dict[str, Any], doc_id: str, source: dict[str, Any]
) -> dict[str, Any] | None:
    properties = mappings.get("properties", {})
    if str(mappings.get("dynamic")) == "strict":
        for key in source:
            if key not in properties:
                return {
                    "type": "strict_dynamic_mapping_exception",
                    "reason": f"[1:2] mapping set to strict, dynamic introduction of [{key}] within [_doc] is not allowed",
                }
    for key, spec in properties.items():
        if spec.get("type") == "date" and spec.get("format") == "epoch_second" and key in source:
            value = source[key]
            numeric = isinstance(value, int | float) and not isinstance(value, bool)
            if not numeric and not (isinstance(value, str) and value.lstrip("-").isdigit()):
                return {
                    "type": "document_parsing_exception",
                    "reason": f"[1:15] failed to parse field [{key}] of type [date] in document with id "
                    f"'{doc_id}'. Preview of field's value: '{value}'",
                }
    return None


def _bulk(state: ClusterState, default_index: str | None, body: bytes) -> tuple[int, Any]:
    lines = [line for line in body.split(b"\n") if line.strip()]
    with state.lock:
        state.bulk_requests += 1
        if state.fail_bulk_requests:
            status = state.fail_bulk_requests.pop(0)
            return _error(
                status, "unavailable_shards_exception", "[flywheel][0] primary shard is not active"
            )
        items = []
        for i in range(0, len(lines), 2):
            ((op, meta),) = json.loads(lines[i]).items()
            source = json.loads(lines[i + 1])
            items.append({op: _bulk_item(state, op, meta, source, default_index)})
    errors = any("error" in next(iter(item.values())) for item in items)
    return 200, {"errors": errors, "took": 1, "items": items}


def _bulk_item(
    state: ClusterState,
    op: str,
    meta: dict[str, Any],
    source: dict[str, Any],
    default_index: str | None,
) -> dict[str, Any]:
    index = meta.get("_index") or default_index
    doc_id = meta.get("_id") or uuid.uuid4().hex
    head = {"_index": index, "_id": doc_id}
    faults = state.fail_items.get(doc_id)
    if faults:
        status = faults.pop(0)
        etype = "es_rejected_execution_exception" if status == 429 else "illegal_state_exception"
        return {
            **head,
            "status": status,
            "error": {"type": etype, "reason": f"injected {status} for [{doc_id}]"},
        }
    if index not in state.indices:
        state.indices[index] = IndexState(mappings=_matching_mappings(state, index))
    target = state.indices[index]
    problem = _mapping_error(target.mappings, doc_id, source)
    if problem:
        return {
            **head,
            "status": 400,
            "error": {**problem, "index_uuid": target.uuid, "index": index},
        }
    if op == "create" and doc_id in target.docs:
        return {
            **head,
            "status": 409,
            "error": {
                "type": "version_conflict_engine_exception",
                "reason": f"[{doc_id}]: version conflict, document already exists (current version [1])",
                "index_uuid": target.uuid,
                "shard": "0",
                "index": index,
            },
        }
    existed = doc_id in target.docs
    target.docs[doc_id] = source
    result, status = ("updated", 200) if existed else ("created", 201)
    seq_no = len(target.docs) - 1
    return {
        **head,
        "_version": 1,
        "result": result,
        "_shards": {"total": 2, "successful": 1, "failed": 0},
        "_seq_no": seq_no,
        "_primary_term": 1,
        "status": status,
    }


class ElasticStandIn:
    """Start/stop the stand-in on an ephemeral loopback port; ``url`` and ``state`` for tests."""

    def __init__(self) -> None:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.state = ClusterState()
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="es-stand-in",
            daemon=True,
        )

    @property
    def state(self) -> ClusterState:
        return self._server.state

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> ElasticStandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
