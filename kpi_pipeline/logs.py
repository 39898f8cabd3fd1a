"""One log format for every kpi_pipeline process, and no secret in any line.

``configure(settings)`` (called by the CLI, the web server, the sandbox and the Dagster
resource, so code server and run workers too) puts one handler on the root logger:

* ``KPI_LOG_FORMAT=text`` (the default, for a terminal): ``ts LEVEL logger msg``;
* ``KPI_LOG_FORMAT=json`` (what DEPLOYMENT.md recommends): one JSON object per line with
  ``ts`` (ISO 8601, UTC), ``level``, ``logger``, ``msg`` and, where the code knows them,
  ``channel``, ``replay_id``, ``batch_id``, ``lead_id``, ``run_id``, ``policy_version``
  (passed as ``extra=`` or bound with ``bind_context``), plus ``exception`` with the
  traceback. Rendered by structlog's ``ProcessorFormatter``, so stdlib loggers (ours,
  uvicorn's, grpc's) all come out the same.

Both formats pass every finished line through ``redact``: private key blocks, Salesforce
session ids, bearer tokens and ``token=``/``api_key=``-style values become ``[REDACTED]``,
and so does every value registered with ``register_secret`` (access tokens when they are
issued, the LLM key, the sandbox's static token). Dagster's own services take
``--log-format json`` (DEPLOYMENT.md).
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import threading
from collections.abc import Iterator
from typing import Any

import structlog

CONTEXT_KEYS = ("channel", "replay_id", "batch_id", "lead_id", "run_id", "policy_version")
REDACTED = "[REDACTED]"
_PATTERNS = (
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S),
    re.compile(r"\b00D[A-Za-z0-9]{12,15}![A-Za-z0-9._-]+"),  # a Salesforce session id
    re.compile(r"(?i)(bearer )[A-Za-z0-9._~+/=!-]{8,}"),
    re.compile(
        r"(?i)((?:access_token|accesstoken|api_key|apikey|client_secret|assertion|password)"
        r"[\"']?[:=] ?[\"']?)[^\s\"',&}]{4,}"
    ),
)
_secrets: set[str] = set()
_secrets_lock = threading.Lock()
_HANDLER_MARK = "_kpi_pipeline_handler"


def register_secret(value: str | None) -> None:
    """Never log ``value`` (8 characters or more; shorter ones would redact ordinary words)."""
    if value and len(value) >= 8:
        with _secrets_lock:
            _secrets.add(value)


def redact(text: str) -> str:
    for pattern in _PATTERNS:
        # Keep a pattern's leading group ("Bearer ", "access_token=") and hide what follows.
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + REDACTED, text)
    with _secrets_lock:
        known = sorted(_secrets, key=len, reverse=True)
    for secret in known:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


@contextlib.contextmanager
def bind_context(**values: Any) -> Iterator[None]:
    """Add ``values`` (e.g. ``channel=..., batch_id=...``) to every JSON line logged inside."""
    known = {k: v for k, v in values.items() if k in CONTEXT_KEYS and v is not None}
    with structlog.contextvars.bound_contextvars(**known):
        yield


class _RedactingText(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def _rename(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    event["msg"] = event.pop("event", "")
    return event


def _render(logger: Any, name: str, event: dict[str, Any]) -> str:
    return redact(structlog.processors.JSONRenderer(sort_keys=False)(logger, name, event))


def json_formatter() -> logging.Formatter:
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.ExtraAdder(allow=CONTEXT_KEYS),
            structlog.processors.format_exc_info,
        ],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, _rename, _render],
    )


def configure(settings: Any = None) -> None:
    """Install the one handler on the root logger (idempotent: a second call replaces it)."""
    if settings is None:
        from kpi_pipeline.config import get_settings

        settings = get_settings()
    if settings.llm_api_key is not None:
        register_secret(settings.llm_api_key.get_secret_value())
    handler = logging.StreamHandler(sys.stderr)
    setattr(handler, _HANDLER_MARK, True)
    if settings.log_format == "json":
        handler.setFormatter(json_formatter())
    else:
        handler.setFormatter(
            _RedactingText("%(asctime)s %(levelname)s %(name)s %(message)s", "%Y-%m-%dT%H:%M:%S")
        )
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level)
