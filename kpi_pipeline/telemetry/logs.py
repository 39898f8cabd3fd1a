"""One log format for every kpi_pipeline process, and no secret in any line.

``configure(settings)`` puts one handler on the root logger. The CLI, ``web serve`` and the
sandbox call it at start; in Dagster's processes the pipeline resource calls it (and
``keep_logger_names``) when ``KPI_LOG_FORMAT=json``, so sensor ticks in the code server and
run workers log through it too:

* ``KPI_LOG_FORMAT=text`` (the default, for a terminal): ``ts LEVEL logger msg``;
* ``KPI_LOG_FORMAT=json`` (what DEPLOYMENT.md recommends): one JSON object per line with
  ``ts`` (ISO 8601, UTC), ``level``, ``logger``, ``msg`` and, where the code knows them,
  ``channel``, ``replay_id``, ``batch_id``, ``lead_id``, ``run_id``, ``policy_version``
  (passed as ``extra=`` or bound with ``bind_context``), plus ``exception`` with the
  traceback. Rendered by structlog's ``ProcessorFormatter``, so stdlib loggers (ours,
  uvicorn's, grpc's) all come out the same. A record Dagster re-logs inside a run (it
  carries ``dagster_meta``) keeps its original message and logger name and adds the run's
  ``run_id``, ``job_name``, ``step_key`` and ``dagster_event`` type.

Inside Dagster's processes the root handler skips what Dagster prints itself (records its
run log manager captured, and its ``dagster`` logger once a service set it up with
``--log-format``), so no line appears twice.

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
# Where a kpi_pipeline record's logger name survives Dagster's re-logging (see keep_logger_names).
ORIGIN_ATTR = "kpi_logger"
_FACTORY_MARK = "_kpi_pipeline_factory"


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


def _from_dagster(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    """A record Dagster re-logs in a run (``context.log``, its events, captured ``kpi_pipeline``
    lines) carries ``dagster_meta``: the original message, the run id and the step. The line
    keeps the original message, not Dagster's ``job - run_id - step - msg`` rewrite."""
    record = event.get("_record")
    meta = getattr(record, "dagster_meta", None)
    if not isinstance(meta, dict):
        return event
    event["event"] = meta.get("orig_message") or event.get("event", "")
    event["logger"] = getattr(record, ORIGIN_ATTR, None) or event.get("logger")
    for key in ("run_id", "job_name", "step_key"):
        if meta.get(key):  # the record's own run wins over whatever this thread has bound
            event[key] = meta[key]
    dagster_event = meta.get("dagster_event")
    if dagster_event is not None:
        event["dagster_event"] = getattr(dagster_event, "event_type_value", str(dagster_event))
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
            _from_dagster,
            structlog.processors.format_exc_info,
        ],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, _rename, _render],
    )


class _NotPrintedElsewhere(logging.Filter):
    """Inside Dagster's processes, skip what Dagster prints itself: records a run's log manager
    captured (they carry ``dagster_meta``; the run's console logger prints them) and Dagster's
    own ``dagster`` logger once a service configured it (``--log-format``). Without this, each
    such line would appear twice, since those loggers propagate to the root."""

    def filter(self, record: logging.LogRecord) -> bool:
        if hasattr(record, "dagster_meta"):
            return False
        if record.name == "dagster" or record.name.startswith("dagster."):
            return not logging.getLogger("dagster").handlers
        return True


def keep_logger_names() -> None:
    """Give every ``kpi_pipeline`` record its logger name as the extra ``kpi_logger``.

    Dagster hands a captured record to a run's loggers as a new record under its own name,
    copying only the extras, so this is how the JSON line of a run still says
    ``kpi_pipeline.app.outbox_drain`` rather than ``dagster``. Only our names get it: Dagster
    builds its new record with the extras and refuses an extra that the factory already set.
    """
    previous = logging.getLogRecordFactory()
    if getattr(previous, _FACTORY_MARK, False):
        return

    def factory(name: Any, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(name, *args, **kwargs)
        if isinstance(name, str) and (name == "kpi_pipeline" or name.startswith("kpi_pipeline.")):
            setattr(record, ORIGIN_ATTR, name)
        return record

    setattr(factory, _FACTORY_MARK, True)
    logging.setLogRecordFactory(factory)


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
    handler.addFilter(_NotPrintedElsewhere())
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level)
