"""The workload steps of a batch, in order, declared once.

After the batch's events are merged into record states (``apply_records``), each step selects
the events it looks at and runs, taking the summaries of the steps it follows. ``run_steps``
(``BatchProcessor.process``: replay, re-sync, the stream worker) runs them in this order, and
``process_cdc_batch`` builds its op graph from the same tuple, so the job and replay cannot
disagree on the order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from kpi_pipeline.core.events import ChangeEvent
from kpi_pipeline.core.workloads.selection import (
    select_first_touch,
    select_routing,
    select_templates,
)

Summary = dict[str, Any]


class BatchProcessor(Protocol):
    """What the steps need of ``kpi_pipeline.app.processing.processor.BatchProcessor``."""

    client_id: str

    def route_leads(self, events: Sequence[ChangeEvent]) -> Summary: ...
    def detect_first_touch(
        self, events: Sequence[ChangeEvent], created_lead_ids: Any
    ) -> Summary: ...
    def recommend_templates(self, *args: Any, **kwargs: Any) -> Summary: ...


@dataclass(frozen=True)
class WorkloadStep:
    name: str
    select: Callable[[Sequence[ChangeEvent], str], Any]  # (events, client id) -> the step's input
    after: tuple[str, ...]  # the steps whose summaries it takes, in this order
    run: Callable[..., Summary]  # (processor, input, *summaries of `after`) -> summary


def _route(processor: BatchProcessor, routing_events: list[ChangeEvent]) -> Summary:
    return processor.route_leads(routing_events)


def _first_touch(processor: BatchProcessor, first_touch_input: Mapping[str, Any]) -> Summary:
    return processor.detect_first_touch(**first_touch_input)


def _templates(
    processor: BatchProcessor, template_input: Mapping[str, Any], routing_summary: Summary
) -> Summary:
    return processor.recommend_templates(routing_summary=routing_summary, **template_input)


STEPS: tuple[WorkloadStep, ...] = (
    WorkloadStep("route_leads", select_routing, after=(), run=_route),
    WorkloadStep("detect_first_touch", select_first_touch, after=(), run=_first_touch),
    # Templates are recommended for the leads routing just routed.
    WorkloadStep("recommend_templates", select_templates, after=("route_leads",), run=_templates),
)


def step_inputs(events: Sequence[ChangeEvent], client_id: str) -> dict[str, Any]:
    """Each step's input selected from a batch's events, by step name."""
    return {step.name: step.select(events, client_id) for step in STEPS}


def run_steps(processor: BatchProcessor, events: Sequence[ChangeEvent]) -> dict[str, Summary]:
    """Every step, in order, after the merge; summaries by step name."""
    inputs = step_inputs(events, processor.client_id)
    summaries: dict[str, Summary] = {}
    for step in STEPS:
        upstream = [summaries[name] for name in step.after]
        summaries[step.name] = step.run(processor, inputs[step.name], *upstream)
    return summaries
