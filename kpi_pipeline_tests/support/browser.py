"""Headless Debian Chromium driven through Playwright over the DevTools protocol.

Chromium is started here (``--remote-debugging-port=0``, a fresh user-data-dir, in a session
of its own) and Playwright only connects to it (``connect_over_cdp``): Playwright's own
browser download (``playwright install``) is never needed, and the browser is stopped by
SIGKILL to its process group whatever state Playwright is in.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

INSTALL_HINT = (
    "the browser smoke test needs Debian's chromium: run `make tools` "
    "(or `apt-get install -y chromium`), or point KPI_UI_CHROMIUM at a Chromium binary"
)
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)
# Dagster's UI state kept in localStorage: the community sign-up dialog already dismissed
# (it covers the first page otherwise), and every group of the global lineage graph open, so
# the graph shows assets and their edges instead of four collapsed group boxes.
GLOBAL_GRAPH_KEY = "asset-graph-open-graph-nodes-global-__GLOBAL__"
INIT_SCRIPT = """
localStorage.setItem('communityNux', JSON.stringify('1'));
localStorage.setItem('%s', JSON.stringify({expanded: %s}));
"""


def chromium_path() -> str:
    """The Chromium binary (KPI_UI_CHROMIUM, else ``chromium`` on PATH, else
    /usr/bin/chromium); fails the test with how to install it when there is none."""
    candidates = [os.environ.get("KPI_UI_CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium"]
    for path in candidates:
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    pytest.fail(f"no Chromium found: {INSTALL_HINT}", pytrace=False)


def expect(target: Any) -> Any:
    """Playwright's retrying assertions (imported here: ``chromium`` says how to install it)."""
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(target)


def init_script(groups: list[str]) -> str:
    expanded = ",".join(f"global@global:{g}" for g in groups)
    return INIT_SCRIPT % (GLOBAL_GRAPH_KEY, repr(expanded))


@contextlib.contextmanager
def chromium(workdir: Path, *, timeout: float = 90) -> Iterator[Any]:
    """A Playwright ``Browser`` connected to a headless Chromium started here."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(
            "playwright (Python) is not installed: `pip install -e '.[dev]'` "
            "(never `playwright install`: the test uses Debian's chromium)",
            pytrace=False,
        )
    binary = chromium_path()
    profile = workdir / "chromium-profile"
    profile.mkdir(parents=True)
    log_path = workdir / "chromium.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [
                binary,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "about:blank",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not (port_file.exists() and port_file.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"{binary} did not open its DevTools port (exit {proc.poll()}): "
                    f"{log_path.read_text(errors='replace')[-2000:]}",
                    pytrace=False,
                )
            time.sleep(0.2)
        port = int(port_file.read_text().split()[0])
        with sync_playwright() as pw:
            browser = pw.chromium.connect_over_cdp(
                f"http://127.0.0.1:{port}", timeout=timeout * 1000
            )
            try:
                yield browser
            finally:
                with contextlib.suppress(Exception):
                    browser.close()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)


# Every lineage edge the graph draws (an SVG path with an arrow head), as its two end points,
# and every asset node (its label and the box it is drawn in), in screen coordinates.
GRAPH_GEOMETRY_JS = """
() => {
  const point = (p, at) => {
    const q = p.getPointAtLength(at).matrixTransform(p.getScreenCTM());
    return [q.x, q.y];
  };
  const edges = Array.from(document.querySelectorAll('svg path[marker-end]')).map(p => ({
    from: point(p, 0), to: point(p, p.getTotalLength()),
  }));
  const nodes = Array.from(document.querySelectorAll('[class*="assetName"]')).map(label => {
    const box = (label.closest('foreignObject') || label).getBoundingClientRect();
    return {label: label.textContent.trim(),
            box: [box.left, box.top, box.right, box.bottom]};
  });
  return {edges, nodes};
}
"""


def label_matches(label: str, name: str) -> bool:
    """Graph labels middle-truncate long names (``kpi_assig…_latency``)."""
    if label == name:
        return True
    if "…" in label:
        head, _, tail = label.partition("…")
        return name.startswith(head) and name.endswith(tail) and len(name) > len(head + tail)
    return False


def drawn_edges(geometry: dict[str, Any], names: list[str]) -> set[tuple[str, str]]:
    """The (upstream, downstream) pairs the graph draws: each edge's start point is matched
    to the nearest node box (it leaves that box's border), its end point likewise."""
    boxes: list[tuple[str, list[float]]] = []
    for node in geometry["nodes"]:
        matched = [n for n in names if label_matches(node["label"], n)]
        if len(matched) == 1:
            boxes.append((matched[0], node["box"]))

    def nearest(x: float, y: float) -> str | None:
        best, best_d = None, float("inf")
        for name, (left, top, right, bottom) in boxes:
            dx = max(left - x, 0.0, x - right)
            dy = max(top - y, 0.0, y - bottom)
            d = (dx * dx + dy * dy) ** 0.5
            if d < best_d:
                best, best_d = name, d
        return best

    found = set()
    for edge in geometry["edges"]:
        a, b = nearest(*edge["from"]), nearest(*edge["to"])
        if a and b and a != b:
            found.add((a, b))
    return found
