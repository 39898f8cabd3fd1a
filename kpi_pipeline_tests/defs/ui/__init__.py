"""Browser smoke test of the Dagster UI (issue 13, part 3): ``dagster dev`` on the sandbox,
driven by headless Debian Chromium over the DevTools protocol (Playwright's
``connect_over_cdp``); screenshots under ``kpi_pipeline_tests/defs/ui/artifacts/``."""
