"""The two ways to run the engine: ``simulate`` (a batch history ending now) and
``LiveSimulator`` (activity as time passes, for ``dagster dev``)."""

from __future__ import annotations

import itertools
import random

from kpi_pipeline.sandbox.simulator.engine import Engine, SimulationSummary
from kpi_pipeline.sandbox.simulator.plans import lead_rng, plan_lead
from kpi_pipeline.sandbox.simulator.timing import DAY_MS, HOUR_MS, sample_arrivals
from kpi_pipeline.sandbox.store import SandboxStore


def simulate(
    store: SandboxStore, *, leads: int, days: float, seed: int, start_ms: int | None = None
) -> SimulationSummary:
    """Write ``leads`` leads arriving over ``days`` days and the activity that follows them.

    The window ends at the store's clock "now" unless ``start_ms`` is given; activity due
    after the window's end is not written. Deterministic for (seed, window) on an empty store.
    """
    if leads < 0 or days <= 0:
        raise ValueError(f"simulate needs leads >= 0 and days > 0, got leads={leads}, days={days}")
    end_ms = int(store.clock()) if start_ms is None else int(start_ms + days * DAY_MS)
    start = int(end_ms - days * DAY_MS)
    rng = random.Random(seed)
    engine = Engine(store, speedup=1.0, working_hours=True)
    first_replay = store.latest_replay() + 1
    for number, arrival in enumerate(sample_arrivals(rng, leads, start, end_ms), start=1):
        engine.add_lead(plan_lead(number, arrival, lead_rng(seed, "batch", number)))
    engine.run_until(end_ms - 1)
    summary = engine.summary
    summary.start_ms, summary.end_ms = start, end_ms
    summary.first_replay, summary.last_replay = first_replay, store.latest_replay()
    return summary


class LiveSimulator:
    """Activity as time passes, for ``dagster dev`` (see the module docstring for the clock).

    ``step(now_ms)`` writes everything due up to ``now_ms`` and returns how many change
    events it wrote; call it every second or so. Deterministic for a seed and step times.
    """

    def __init__(
        self,
        store: SandboxStore,
        *,
        seed: int,
        leads_per_hour: float,
        response_speedup: float = 1.0,
    ) -> None:
        if leads_per_hour < 0 or response_speedup <= 0:
            raise ValueError(
                f"LiveSimulator needs leads_per_hour >= 0 and response_speedup > 0, got {leads_per_hour}, {response_speedup}"
            )
        self.store = store
        self.seed = seed
        self.leads_per_hour = leads_per_hour
        self._rng = random.Random(f"{seed}/live")
        self._engine = Engine(store, speedup=response_speedup, working_hours=False)
        self._next_arrival_ms: int | None = None
        self._numbers = itertools.count(1)
        self._namespace = "live"

    @property
    def summary(self) -> SimulationSummary:
        return self._engine.summary

    def _gap_ms(self) -> float:
        return self._rng.expovariate(self.leads_per_hour / HOUR_MS)

    def step(self, now_ms: int) -> int:
        if self.leads_per_hour > 0:
            if self._next_arrival_ms is None:
                # the first step time names this run's leads, so a restarted simulator does
                # not replay the previous run's people (still deterministic in the step times)
                self._namespace = f"live/{now_ms}"
                self._next_arrival_ms = int(now_ms + self._gap_ms())
            while self._next_arrival_ms <= now_ms:
                number = next(self._numbers)
                rng = lead_rng(self.seed, self._namespace, number)
                self._engine.add_lead(plan_lead(number, self._next_arrival_ms, rng))
                self._next_arrival_ms = int(self._next_arrival_ms + max(1.0, self._gap_ms()))
        return self._engine.run_until(now_ms)
