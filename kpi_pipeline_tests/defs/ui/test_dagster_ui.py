"""The Dagster UI as an analyst opens it (issue 13, part 3), in headless Chromium.

``dagster dev -w workspace.yaml`` runs on the embedded sandbox (scratch DAGSTER_HOME and
KPI_DATA_DIR, 20 simulated leads a day, stream mode as ``make dev``). Once the seeded history
is in the ledger and ``cdc_sensor`` has ticked, the two newest complete days of KPIs are
materialized with ``dagster asset materialize`` against the same instance, and the browser
checks what the pages render:

* the global asset lineage draws cdc_events → lead_ledger → every kpi_* and flywheel_logs →
  flywheel_index (nodes and the edges between them), and lead_ledger's page lists the same
  upstream and downstream assets;
* the Automation page and cdc_sensor's page show the sensor running, with ticks;
* kpi_ttfr_overall's page for yesterday shows the rollup's Markdown table with yesterday's
  row (its lead count is the ledger's), and its Checks tab shows every check succeeded.

GraphQL and the ledger are read only to know when to look; every assertion is on a page.
One screenshot per page goes to ``kpi_pipeline_tests/defs/ui/artifacts/`` (git-ignored; a CI run
leaves them there as its artifacts). Chromium missing is a failure that says how to install
it, not a skip.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from kpi_pipeline.core.kpis.rollups import ROLLUP_NAMES
from kpi_pipeline_tests.support.browser import (
    GRAPH_GEOMETRY_JS,
    chromium,
    drawn_edges,
    expect,
    init_script,
    label_matches,
)
from kpi_pipeline_tests.support.devserver import LOCATION, DagsterCommand, DagsterDev

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
KPI_ASSETS = [f"kpi_{name}" for name in ROLLUP_NAMES]
ASSETS = ["cdc_events", "lead_ledger", *KPI_ASSETS, "flywheel_logs", "flywheel_index"]
GROUPS = ["ingestion", "ledger", "kpis", "flywheel"]
EDGES = {
    ("cdc_events", "lead_ledger"),
    *(("lead_ledger", kpi) for kpi in KPI_ASSETS),
    ("lead_ledger", "flywheel_logs"),
    ("flywheel_logs", "flywheel_index"),
}
UI_TIMEOUT_MS = 90_000  # the machine is loaded: pages may take long to render


class UI:
    def __init__(self, dev: DagsterDev, browser: Any, day: str, materialize: DagsterCommand):
        self.dev, self.browser = dev, browser
        self.day = day  # yesterday (UTC, the KPI partitions' timezone)
        self._materialize = materialize
        self._day_leads: int | None = None

    @contextlib.contextmanager
    def page(self, path: str, shot: str) -> Iterator[Any]:
        """``path`` opened in a fresh browser context; its screenshot is saved as
        ``shot``.png once the caller's assertions are done, passed or not."""
        context = self.browser.new_context(viewport={"width": 1600, "height": 2000})
        try:
            context.add_init_script(init_script(GROUPS))
            context.set_default_timeout(UI_TIMEOUT_MS)
            page = context.new_page()
            page.goto(self.dev.url + path, wait_until="domcontentloaded", timeout=UI_TIMEOUT_MS)
            try:
                yield page
            finally:
                page.screenshot(path=str(ARTIFACTS / f"{shot}.png"), full_page=True)
        finally:
            context.close()

    def day_leads(self) -> int:
        """Once the KPI materialization (started in the background) has succeeded: the
        leads the ledger holds for ``day``."""
        if self._day_leads is None:
            self._materialize.result(timeout=400)
            self._day_leads = ledger_leads_on(self.dev.data_dir, self.day)
            assert self._day_leads > 0, f"the sandbox seeded no lead on {self.day}"
        return self._day_leads


def ledger_leads_on(data_dir: Path, day: str) -> int:
    from kpi_pipeline.adapters.ledger import schema as t

    start = datetime.fromisoformat(day).replace(tzinfo=UTC)
    engine = sa.create_engine(f"sqlite:///{data_dir / 'ledger.db'}")
    try:
        with engine.connect() as conn:
            c = t.lead_facts.c
            query = sa.select(sa.func.count()).where(
                c.CreatedDate >= start, c.CreatedDate < start + timedelta(days=1)
            )
            return int(conn.execute(query).scalar_one())
    finally:
        engine.dispose()


def seeded_history_processed(dev: DagsterDev, seeded: int) -> bool:
    from kpi_pipeline_tests.support.harness import read_progress

    progress = read_progress(dev.data_dir)
    return progress.inbox >= seeded and progress.staged == 0


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UI]:
    from kpi_pipeline.sandbox.runtime import read_endpoints
    from kpi_pipeline_tests.support.harness import org_change_count

    started = time.monotonic()

    def mark(what: str) -> None:  # shown with -s, or in the report of a failing test
        print(f"[ui] {time.monotonic() - started:6.1f} s  {what}", flush=True)

    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    workdir = tmp_path_factory.mktemp("dagster-ui")
    dev = DagsterDev(workdir, leads_per_day=20)
    dev.start()
    try:
        dev.wait_for("the webserver's code location", dev.location_loaded, 300)
        mark("webserver up, code location loaded")
        # The code server starts the sandbox org (seeded with two days of history) and the
        # stream run; wait until that history is in the ledger and nothing is left staged.
        dev.wait_for("the sandbox org", lambda: read_endpoints(dev.data_dir), 300)
        seeded = org_change_count(dev.data_dir)
        mark(f"sandbox org up with {seeded} seeded change events")
        dev.wait_for(
            f"the ledger to hold the sandbox's {seeded} seeded change events",
            lambda: seeded_history_processed(dev, seeded),
            300,
        )
        mark("seeded history in the ledger")
        dev.wait_for("a cdc_sensor tick", lambda: dev.sensor_ticks("cdc_sensor")[1], 180)
        mark("cdc_sensor ticked")
        # Yesterday and the day before: the partition freshness check expects yesterday
        # after 03:00 and the day before until then, so both are there whenever this runs.
        today = datetime.now(UTC).date()
        day, before = str(today - timedelta(days=1)), str(today - timedelta(days=2))
        # In the background: the lineage and sensor pages are checked meanwhile.
        materialize = dev.dagster(
            "asset", "materialize", "-m", "kpi_pipeline.definitions",
            "--select", "group:kpis", "--partition-range", f"{before}...{day}",
            log_name="materialize_kpis.log",
        )  # fmt: skip
        with chromium(workdir) as browser:
            mark("chromium up")
            yield UI(dev, browser, day, materialize)
        mark("pages checked")
    finally:
        dev.stop()


def test_global_lineage_draws_cdc_events_to_ledger_to_kpis_and_flywheel(ui: UI) -> None:
    with ui.page("/asset-groups", "01_global_asset_lineage") as page:
        labels = page.locator('[class*="assetName"]')
        labels.nth(len(ASSETS) - 1).wait_for()
        page.wait_for_function(
            "n => document.querySelectorAll('svg path[marker-end]').length >= n", arg=len(EDGES)
        )
        page.wait_for_timeout(1000)  # let the layout settle before measuring it
        shown = labels.all_inner_texts()
        missing = [a for a in ASSETS if not any(label_matches(s.strip(), a) for s in shown)]
        assert not missing, (
            f"assets missing from the global lineage graph: {missing}; shown {shown}"
        )
        for group in GROUPS:
            assert page.get_by_text(group, exact=True).count() > 0, f"group {group} not shown"
        edges = drawn_edges(page.evaluate(GRAPH_GEOMETRY_JS), ASSETS)
        assert edges >= EDGES, f"edges not drawn: {sorted(EDGES - edges)}; drawn {sorted(edges)}"


def test_lead_ledger_page_lists_upstream_and_downstream(ui: UI) -> None:
    with ui.page("/assets/lead_ledger", "02_lead_ledger_lineage") as page:

        def linked(heading: str) -> list[str]:
            title = page.get_by_text(heading, exact=True)
            title.wait_for()
            links = title.locator("xpath=following-sibling::div[1]").locator("a")
            links.first.wait_for()
            return sorted(h.removeprefix("/assets/") for h in links.evaluate_all(
                "els => els.map(e => e.getAttribute('href'))"
            ))  # fmt: skip

        assert linked("Upstream assets") == ["cdc_events"]
        assert linked("Downstream assets") == sorted(["flywheel_logs", *KPI_ASSETS])


def test_automation_page_shows_cdc_sensor_running(ui: UI) -> None:
    with ui.page("/automation", "03_automation") as page:
        # One row of the virtualized list per sensor or schedule.
        row = page.locator("[data-index]").filter(has=page.get_by_text("cdc_sensor", exact=True))
        row.first.wait_for()
        assert row.count() == 1
        # The switch is drawn once the sensor's state has loaded (a grey placeholder before).
        switch = row.locator('label[class*="formatSwitch"] input[type="checkbox"]')
        expect(switch).to_be_checked(timeout=UI_TIMEOUT_MS)


def test_cdc_sensor_page_shows_running_with_ticks(ui: UI) -> None:
    with ui.page(f"/locations/{LOCATION}/sensors/cdc_sensor", "04_cdc_sensor") as page:
        running = page.locator("tr").filter(has=page.get_by_text("Running", exact=True))
        running.first.wait_for()
        expect(running.locator('input[type="checkbox"]')).to_be_checked(timeout=UI_TIMEOUT_MS)
        latest = page.locator("tr").filter(has=page.get_by_text("Latest tick", exact=True))
        assert "None" not in latest.inner_text()
        ticks = page.locator("table").filter(has=page.get_by_role("columnheader", name="Timestamp"))
        ticks.locator("tbody tr").first.wait_for()
        # Evaluated ticks say how many runs they requested (one started the cdc_stream run).
        texts = ticks.locator("tbody tr").all_inner_texts()
        assert any("requested" in t for t in texts), f"no evaluated tick among {texts}"


def test_kpi_partition_page_shows_the_days_markdown_table(ui: UI) -> None:
    day_leads = ui.day_leads()
    with ui.page(
        f"/assets/kpi_ttfr_overall?view=partitions&partition={ui.day}",
        "05_kpi_ttfr_overall_partition",
    ) as page:
        table = page.locator(".dagster-markdown table").filter(
            has=page.get_by_role("columnheader", name="ttfr_p90", exact=True)
        )
        table.first.wait_for()
        headers = table.first.locator("th").all_inner_texts()
        for column in ("day", "leads", "responded", "coverage", "ttfr_p50", "ttfr_p90", "ttfr_p95"):
            assert column in headers, f"column {column} not in the rendered table {headers}"
        row = table.first.locator("tbody tr").filter(
            has=page.get_by_role("cell", name=ui.day, exact=True)
        )
        assert row.count() == 1, f"no row for {ui.day}: {table.first.inner_text()}"
        cells = row.locator("td").all_inner_texts()
        assert cells[headers.index("leads")] == str(day_leads), (headers, cells, day_leads)


def test_kpi_checks_tab_shows_checks_succeeded(ui: UI) -> None:
    ui.day_leads()  # the materialization has succeeded
    with ui.page("/assets/kpi_ttfr_overall?view=checks", "06_kpi_ttfr_overall_checks") as page:
        rows = page.locator('[class*="checkRow"]')
        reconciles = rows.filter(has=page.locator('[title="reconciles_with_ledger"]'))
        expect(reconciles).to_contain_text("Succeeded", timeout=UI_TIMEOUT_MS)
        statuses = {
            row.locator("[title]").first.get_attribute("title"): row.inner_text()
            for row in rows.all()
        }
        assert "reconciles_with_ledger" in statuses, statuses
        failed = {name: text for name, text in statuses.items() if "Succeeded" not in text}
        assert not failed, f"checks not succeeded on the Checks tab: {failed}"
