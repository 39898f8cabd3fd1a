"""cdc_sensor's processing runs in sensor mode: at most one at a time, over every pending batch
in replay order; a run that died is requested again under a new attempt key, where only the
runs the sensor requested count as attempts (not Dagster's automatic retries of them); a head
batch that used up its attempts is left for an operator while the batches after it go on.
Real Dagster instance (SQLite storage) and a real ledger."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import dagster as dg
import pytest
from dagster._core.storage.tags import (
    MAX_RUNTIME_SECONDS_TAG,
    PARENT_RUN_ID_TAG,
    RETRY_NUMBER_TAG,
    ROOT_RUN_ID_TAG,
    WILL_RETRY_TAG,
)

from kpi_pipeline.adapters.ledger import Ledger
from kpi_pipeline.core.events import replay_id_from_int
from kpi_pipeline.core.raw import RawEvent
from kpi_pipeline.defs.cdc.sensors import FIRST_BATCH_TAG, _processing_request
from kpi_pipeline_tests.support.ledgers import NewLedger

LEAD = "/data/LeadChangeEvent"
TASK = "/data/TaskChangeEvent"

SCHEMAS = {"schemaA": '{"type": "record", "name": "LeadChangeEvent", "fields": []}'}
MAX_ATTEMPTS = 3


@pytest.fixture
def ledger(new_ledger: NewLedger) -> Ledger:
    """SQLite only (tmp_path/ledger.db), not the suite's parametrised ``ledger``."""
    return new_ledger()


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as instance:
        yield instance


def _stage(ledger: Ledger, channel: str = LEAD, first: int = 1, events: int = 1) -> str:
    raws = [
        RawEvent(channel, replay_id_from_int(n), "schemaA", b"avro", f"{channel}-{n}")
        for n in range(first, first + events)
    ]
    return ledger.stage_batch(channel, raws, SCHEMAS).batch_id


def _add_run(
    instance: dg.DagsterInstance,
    head: str,
    status: dg.DagsterRunStatus,
    parent: dg.DagsterRun | None = None,
    extra_tags: dict[str, str] | None = None,
) -> dg.DagsterRun:
    tags = {FIRST_BATCH_TAG: head, **(extra_tags or {})}
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


def _request(
    instance: dg.DagsterInstance, ledger: Ledger, max_events: int = 20_000
) -> dg.RunRequest | str:
    return _processing_request(
        instance,
        ledger,
        max_attempts=MAX_ATTEMPTS,
        max_events=max_events,
        max_runtime_seconds=777,
    )


def _batch_ids(request: dg.RunRequest) -> list[str]:
    return request.run_config["ops"]["load_batch"]["config"]["batch_ids"]


def test_one_run_covers_every_pending_batch_in_replay_order(
    instance: dg.DagsterInstance, ledger: Ledger
) -> None:
    staged = [_stage(ledger, LEAD, 1), _stage(ledger, TASK, 1, 3), _stage(ledger, LEAD, 2, 2)]
    request = _request(instance, ledger)
    assert _batch_ids(request) == staged
    assert request.run_key == f"cdc:{staged[0]}..{staged[-1]}#attempt1"
    assert request.tags[FIRST_BATCH_TAG] == staged[0]
    assert request.tags["kpi/events"] == "6" and request.tags["kpi/batches"] == "3"
    assert request.tags["kpi/channels"] == f"{LEAD},{TASK}"
    assert request.tags[MAX_RUNTIME_SECONDS_TAG] == "777"


def test_a_run_takes_up_to_max_events_and_always_at_least_one_batch(
    instance: dg.DagsterInstance, ledger: Ledger
) -> None:
    big = _stage(ledger, LEAD, 1, 5)
    small = _stage(ledger, LEAD, 6, 1)
    assert _batch_ids(_request(instance, ledger, max_events=3)) == [big]
    ledger.mark_batch_done(big, run_id="r", summary={})
    assert _batch_ids(_request(instance, ledger, max_events=3)) == [small]


def test_nothing_pending_or_a_run_in_progress_means_no_request(
    instance: dg.DagsterInstance, ledger: Ledger
) -> None:
    assert _request(instance, ledger) == "no staged batch is pending"
    head = _stage(ledger)
    run = _add_run(instance, head, dg.DagsterRunStatus.NOT_STARTED)
    _stage(ledger, TASK)  # staged while the run waits: the next run takes it
    reason = _request(instance, ledger)
    assert reason == f"run {run.run_id} is processing; 2 batches pending"


def test_automatic_retries_do_not_count_as_attempts(
    instance: dg.DagsterInstance, ledger: Ledger
) -> None:
    head = _stage(ledger)
    # The sensor's first run and Dagster's three automatic retries all died.
    run = _add_run(instance, head, dg.DagsterRunStatus.FAILURE)
    for _ in range(3):
        run = _add_run(instance, head, dg.DagsterRunStatus.FAILURE, parent=run)

    request = _request(instance, ledger)
    assert request.run_key == f"cdc:{head}..{head}#attempt2"


def test_a_head_that_used_up_its_attempts_is_left_and_the_rest_go_on(
    instance: dg.DagsterInstance, ledger: Ledger
) -> None:
    stuck = _stage(ledger)
    after = _stage(ledger, TASK)
    for _ in range(MAX_ATTEMPTS - 1):
        root = _add_run(instance, stuck, dg.DagsterRunStatus.FAILURE)
        _add_run(instance, stuck, dg.DagsterRunStatus.CANCELED, parent=root)
    assert _request(instance, ledger).run_key.endswith(f"#attempt{MAX_ATTEMPTS}")

    _add_run(instance, stuck, dg.DagsterRunStatus.FAILURE)
    request = _request(instance, ledger)
    assert _batch_ids(request) == [after]  # the stuck batch stays pending for an operator
    assert [b.batch_id for b in ledger.pending_batches()] == [stuck, after]

    _add_run(instance, after, dg.DagsterRunStatus.CANCELED)
    assert _request(instance, ledger).run_key == f"cdc:{after}..{after}#attempt2"


def test_no_new_attempt_while_a_promised_retry_is_in_flight(
    instance: dg.DagsterInstance, ledger: Ledger
) -> None:
    head = _stage(ledger)
    root = _add_run(instance, head, dg.DagsterRunStatus.FAILURE)
    # The run failed and the retry daemon has promised another one: wait for it.
    _add_run(
        instance,
        head,
        dg.DagsterRunStatus.FAILURE,
        parent=root,
        extra_tags={WILL_RETRY_TAG: "true"},
    )
    assert "automatic retry" in _request(instance, ledger)
