"""Dagster resources: thin wrappers that hand out the adapters built in ``kpi_pipeline.wiring``."""

import atexit
from typing import Any

import dagster as dg
import structlog

from kpi_pipeline import wiring
from kpi_pipeline.config import Settings


class PipelineResource(dg.ConfigurableResource):
    """Settings plus the adapters built from them (sandbox or real org, ledger, processor).

    Every field left unset comes from the ``KPI_*`` environment (see ``kpi_pipeline.config``);
    tests set ``data_dir``/``ledger_url`` to isolate themselves.
    """

    data_dir: str | None = None
    ledger_url: str | None = None

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """Runs, ticks and checks record metrics into this deployment's directory and, with
        KPI_LOG_FORMAT=json, log JSON lines (the entry point configures them; nothing does at
        import). In a run worker with
        KPI_PUSHGATEWAY_URL set, the host's totals are pushed when the run's process exits."""
        from kpi_pipeline.telemetry import logs, metrics

        settings = self.settings()
        metrics.configure(settings)
        if settings.log_format == "json":
            # The code server's sensor ticks and a run's lines outside Dagster's capture. In
            # text mode Dagster's own console handling stays as it is (a root handler would
            # print captured lines a second time).
            logs.configure(settings)
            logs.keep_logger_names()
            _json_run_console(getattr(context, "log", None))
        run = getattr(context, "dagster_run", None)
        # Lines this thread logs carry its run's id even when Dagster does not capture them; a
        # sensor tick in the same thread (the code server) must not inherit an earlier run's.
        if run is not None:
            structlog.contextvars.bind_contextvars(run_id=run.run_id)
        else:
            structlog.contextvars.unbind_contextvars("run_id")
        if settings.pushgateway_url and run is not None:
            _push_at_exit(settings.pushgateway_url)

    def settings(self) -> Settings:
        overrides: dict[str, Any] = {}
        if self.data_dir:
            overrides["data_dir"] = self.data_dir
        if self.ledger_url:
            overrides["ledger_url"] = self.ledger_url
        return Settings(**overrides)

    def ledger(self):
        return wiring.ledger(self.settings())

    def pubsub(self):
        return wiring.pubsub_client(self.settings())

    def decoder(self):
        return wiring.event_decoder(self.settings())

    def batch_decoder(self):
        """Decodes staged batches from their staged schemas (no Pub/Sub client needed)."""
        return wiring.staged_batch_decoder()

    def processor(self, *, live_clock: bool = True):
        return wiring.batch_processor(self.settings(), live_clock=live_clock)

    def salesforce_rest(self):
        return wiring.salesforce_rest(self.settings())

    def drain_writeback(self):
        """Send the outbox's dirty fields (``kpi_pipeline.app.writeback.WritebackResult``)."""
        return wiring.drain_writeback(self.settings())


def _json_run_console(log: Any) -> None:
    """Have this run's console print JSON through ``kpi_pipeline.telemetry.logs``'s formatter.

    A run prints through the console logger Dagster gives every job without loggers of its
    own: colored text, and no setting (not ``python_logs``, not ``--log-format``) changes that.
    A job's own ``@logger`` would only be used when each run's config names it, which sensors,
    schedules and the UI do not. So the run's log manager is asked for its console loggers
    and their stream handlers get our formatter: from here on, Dagster's events,
    ``context.log`` and the captured ``kpi_pipeline`` lines are JSON with ``run_id``,
    ``job_name`` and ``step_key``. This reads Dagster internals (``_dagster_handler._loggers``,
    dagster 1.13); if they change it does nothing and the JSON log test fails. The run's first
    few events (``RUN_START``, the first ``RESOURCE_INIT_STARTED``) come before any resource
    and stay Dagster's text."""
    import logging

    from kpi_pipeline.telemetry import logs

    dagster_handler = getattr(log, "_dagster_handler", None)
    for console in getattr(dagster_handler, "_loggers", ()):
        for handler in getattr(console, "handlers", ()):
            if isinstance(handler, logging.StreamHandler) and not getattr(
                handler, "_kpi_json", False
            ):
                handler.setFormatter(logs.json_formatter())
                handler._kpi_json = True  # type: ignore[attr-defined]


_pushes_registered: set[str] = set()


def _push_at_exit(url: str) -> None:
    """Once per process: a run worker is one process per run, so its exit is the run's end.
    (A teardown hook would make this resource a generator, which every direct sensor
    invocation would then have to open as a context manager.) Never fails the run."""
    if url in _pushes_registered:
        return
    _pushes_registered.add(url)

    def push() -> None:
        import logging

        from kpi_pipeline.telemetry import exposition, metrics

        try:
            exposition.push_to_gateway(url)
        except Exception as exc:
            metrics.record_error("metrics")
            logging.getLogger(__name__).warning("push to %s failed: %s", url, exc)

    atexit.register(push)
