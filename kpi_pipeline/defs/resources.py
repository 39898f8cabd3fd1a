"""Dagster resources: thin wrappers that hand out the adapters built in ``kpi_pipeline.wiring``."""

import atexit
from typing import Any

import dagster as dg

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
        """Runs, ticks and checks record metrics into this deployment's directory (the
        entry point configures them; nothing does at import). In a run worker with
        KPI_PUSHGATEWAY_URL set, the host's totals are pushed when the run's process exits."""
        from kpi_pipeline import metrics

        settings = self.settings()
        metrics.configure(settings)
        if settings.pushgateway_url and getattr(context, "dagster_run", None) is not None:
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
        """Send the outbox's dirty fields (``kpi_pipeline.writeback.WritebackResult``)."""
        return wiring.drain_writeback(self.settings())


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

        from kpi_pipeline import metrics, metrics_cli

        try:
            metrics_cli.push_to_gateway(url)
        except Exception as exc:
            metrics.record_error("metrics")
            logging.getLogger(__name__).warning("push to %s failed: %s", url, exc)

    atexit.register(push)
