"""What every part of the REST app shares: its configuration, the org's store and tokens,
the log of received requests, the API call count."""

from __future__ import annotations

import secrets
import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

from kpi_pipeline.sandbox.changelog import RecordStore
from kpi_pipeline.sandbox.encoding import DEFAULT_SCHEMAS, SchemaSet
from kpi_pipeline.sandbox.rest_server.connected_app import ConnectedApp
from kpi_pipeline.sandbox.rest_server.faults import RestFaults
from kpi_pipeline.sandbox.rest_server.responses import RecordedRequest
from kpi_pipeline.sandbox.tokens import TokenRegistry


class RestAppState:
    """The REST app's state; the endpoint classes build on it and ``RestApp`` joins them."""

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

    @property
    def _schemas(self) -> SchemaSet:
        """The org's schemas (custom fields included), read per request: they may change."""
        return getattr(self.store, "schemas", DEFAULT_SCHEMAS)

    def _record(
        self, method: str, path: str, body: Any, client: str | None, auto_assign: str | None = None
    ) -> None:
        with self._lock:
            self.received.append(RecordedRequest(method, path, body, client, auto_assign))

    def _count_call(self) -> int:
        with self._lock:
            self._api_calls += 1
            return self._api_calls

    def _user_for(self, token: str) -> str:
        username = self.registry.username_for(token)
        user_id = self.app.user_id_for(username) if username else None
        return user_id or self.integration_user_id
