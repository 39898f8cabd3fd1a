"""Dagster resources: thin wrappers that hand out the adapters built in ``kpi_pipeline.wiring``."""

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
        entry point configures them; nothing does at import)."""
        from kpi_pipeline import metrics

        metrics.configure(self.settings())

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        """At the end of a run, push this host's metric totals to KPI_PUSHGATEWAY_URL (for
        run workers on hosts Prometheus does not scrape). Never fails the run."""
        settings = self.settings()
        if not settings.pushgateway_url or getattr(context, "dagster_run", None) is None:
            return
        from kpi_pipeline import metrics, metrics_cli

        try:
            metrics_cli.push_to_gateway(settings.pushgateway_url)
        except Exception as exc:
            metrics.record_error("metrics")
            context.log.warning(f"push to {settings.pushgateway_url} failed: {exc}")

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

    def processor(self, *, live_clock: bool = True):
        return wiring.batch_processor(self.settings(), live_clock=live_clock)

    def salesforce_rest(self):
        return wiring.salesforce_rest(self.settings())

    def drain_writeback(self):
        """Send the outbox's dirty fields (``kpi_pipeline.writeback.WritebackResult``)."""
        return wiring.drain_writeback(self.settings())
