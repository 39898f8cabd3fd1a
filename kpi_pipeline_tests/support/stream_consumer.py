"""``python -m kpi_pipeline_tests.support.stream_consumer HOLDER``: one stream-mode consumer as a
plain process, outside Dagster: StreamWorker generations back to back under the lease holder
name HOLDER, with the settings of the environment (KPI_LEDGER_URL, KPI_DATA_DIR, ...). The
``cdc_stream`` run does the same inside a run worker; this lets a test start two on one
ledger and SIGKILL one without a daemon in between. SIGTERM ends the current generation."""

from __future__ import annotations

import signal
import sys
import threading

from kpi_pipeline import wiring
from kpi_pipeline.config import get_settings


def main(holder: str) -> None:
    settings = get_settings()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while not stop.is_set():
        wiring.stream_worker(settings, holder=holder).run(stop)


if __name__ == "__main__":
    main(sys.argv[1])
