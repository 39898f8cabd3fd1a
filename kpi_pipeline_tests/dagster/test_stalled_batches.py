"""cdc_sensor's recovery of staged batches whose runs died: only the runs it requested count
as attempts, Dagster's own automatic retries do not; every request carries the max_runtime
setting. Real Dagster instance (SQLite storage) and a real ledger."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.storage.tags import (
    MAX_RUNTIME_SECONDS_TAG,
    PARENT_RUN_ID_TAG,
    RETRY_NUMBER_TAG,
    ROOT_RUN_ID_TAG,
    WILL_RETRY_TAG,
)

from kpi_pipeline.cdc.events import replay_id_from_int
from kpi_pipeline.cdc.raw import RawEvent
from kpi_pipeline.defs.sensors import _stalled_batch_requests
from kpi_pipeline.ingest import run_key_for
from kpi_pipeline.ledger import Ledger

LEAD = "/data/LeadChangeEvent"
SCHEMAS = {"schemaA": '{"type": "record", "name": "LeadChangeEvent", "fields": []}'}
MAX_ATTEMPTS = 3


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    opened = Ledger.from_url(f"sqlite:///{tmp_path / 'ledger.db'}")
    yield opened
    opened.dispose()


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as instance:
        yield instance


def _stage(ledger: Ledger) -> str:
    event = RawEvent(LEAD, replay_id_from_int(1), "schemaA", b"avro", "uuid-1")
    return ledger.stage_batch(LEAD, [event], SCHEMAS).batch_id


def _add_run(
    instance: dg.DagsterInstance,
    batch_id: str,
    status: dg.DagsterRunStatus,
    parent: dg.DagsterRun | None = None,
    extra_tags: dict[str, str] | None = None,
) -> dg.DagsterRun:
    tags = {"kpi/batch_id": batch_id, **(extra_tags or {})}
    if parent is not None:
        # What Dagster's retry daemon puts on a run it launches for a failed one.
        root = parent.tags.get(ROOT_RUN_ID_TAG, parent.run_id)
        number = int(parent.tags.get(RETRY_NUMBER_TAG, "0")) + 1
        tags |= {
            PARENT_RUN_ID_TAG: parent.run_id,
            ROOT_RUN_ID_TAG: root,
            RETRY_NUMBER_TAG: str(number),
        }
    run = dg.DagsterRun(
        job_name="process_cdc_batch", run_id=str(uuid.uuid4()), status=status, tags=tags
    )
    return instance.add_run(run)


def _requests(instance: dg.DagsterInstance, ledger: Ledger) -> list[dg.RunRequest]:
    return _stalled_batch_requests(instance, ledger, set(), timedelta(0), MAX_ATTEMPTS, 777)


def test_automatic_retries_do_not_count_as_attempts(
    instance: dg.DagsterInstance, ledger: Ledger
) -> None:
    batch_id = _stage(ledger)
    # The sensor's first run and Dagster's three automatic retries all died.
    run = _add_run(instance, batch_id, dg.DagsterRunStatus.FAILURE)
    for _ in range(3):
        run = _add_run(instance, batch_id, dg.DagsterRunStatus.FAILURE, parent=run)

    (request,) = _requests(instance, ledger)
    assert request.run_key == f"{run_key_for(batch_id)}#attempt2"
    assert request.tags["kpi/batch_id"] == batch_id
    assert request.tags[MAX_RUNTIME_SECONDS_TAG] == "777"


def test_the_cap_counts_the_runs_the_sensor_requested(
    instance: dg.DagsterInstance, ledger: Ledger
) -> None:
    batch_id = _stage(ledger)
    for _ in range(MAX_ATTEMPTS - 1):
        root = _add_run(instance, batch_id, dg.DagsterRunStatus.FAILURE)
        _add_run(instance, batch_id, dg.DagsterRunStatus.CANCELED, parent=root)
    (request,) = _requests(instance, ledger)
    assert request.run_key == f"{run_key_for(batch_id)}#attempt{MAX_ATTEMPTS}"

    _add_run(instance, batch_id, dg.DagsterRunStatus.FAILURE)
    assert _requests(instance, ledger) == []  # cap reached: left pending for an operator


def test_no_new_attempt_while_a_run_or_a_promised_retry_is_in_flight(
    instance: dg.DagsterInstance, ledger: Ledger
) -> None:
    batch_id = _stage(ledger)
    root = _add_run(instance, batch_id, dg.DagsterRunStatus.FAILURE)
    retry = _add_run(instance, batch_id, dg.DagsterRunStatus.STARTED, parent=root)
    assert _requests(instance, ledger) == []

    # The retry failed and the retry daemon has promised another one: wait for it.
    instance.delete_run(retry.run_id)
    _add_run(
        instance,
        batch_id,
        dg.DagsterRunStatus.FAILURE,
        parent=root,
        extra_tags={WILL_RETRY_TAG: "true"},
    )
    assert _requests(instance, ledger) == []
