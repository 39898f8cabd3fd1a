"""Deterministic JSONL exports, directory reads and the distillation training set."""

from __future__ import annotations

import json
import random
import tempfile
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kpi_pipeline.adapters.flywheel.emitter import FlywheelEmitter
from kpi_pipeline.adapters.flywheel.loaders.to_jsonl import (
    export_training_set,
    read_directory,
    read_jsonl,
    write_jsonl,
)
from kpi_pipeline.core.flywheel.records import record_id, sort_key
from kpi_pipeline.core.flywheel.schema import FlywheelRecordError, validate_record
from kpi_pipeline_tests.support.flywheel import (
    WORKLOADS,
    make_record,
    spaced_records,
)


def _mixed(count: int = 30) -> list[dict]:
    return spaced_records(count, timedelta(hours=1))


def test_write_jsonl_is_byte_identical_whatever_the_input_order(tmp_path: Path) -> None:
    records = _mixed()
    shuffled = records[:]
    random.Random(3).shuffle(shuffled)
    assert write_jsonl(records, tmp_path / "a.jsonl") == 30
    assert write_jsonl(shuffled + records[:5], tmp_path / "b.jsonl") == 30  # repeats written once
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    lines = (tmp_path / "a.jsonl").read_text().splitlines()
    assert lines[0] == json.dumps(json.loads(lines[0]), sort_keys=True, separators=(",", ":"))
    times = [json.loads(line)["timestamp"] for line in lines]
    assert times == sorted(times)


def test_write_jsonl_takes_validated_models_as_their_records(tmp_path: Path) -> None:
    records = _mixed()
    models = [validate_record(record) for record in records]
    assert write_jsonl(records, tmp_path / "dicts.jsonl") == 30
    assert write_jsonl(models + models[:3], tmp_path / "models.jsonl") == 30
    assert (tmp_path / "dicts.jsonl").read_bytes() == (tmp_path / "models.jsonl").read_bytes()


def test_read_jsonl_round_trips(tmp_path: Path) -> None:
    records = _mixed(6)
    write_jsonl(records, tmp_path / "out.jsonl")
    assert sorted(map(record_id, read_jsonl(tmp_path / "out.jsonl"))) == sorted(
        map(record_id, records)
    )


def test_read_jsonl_names_file_and_line_of_bad_input(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    good = json.dumps(make_record(1))
    path.write_text(good + "\n{not json\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: not valid JSON"):
        read_jsonl(path)
    broken = make_record(2)
    broken["extra"] = 1
    path.write_text(good + "\n\n" + json.dumps(broken) + "\n")
    with pytest.raises(
        ValueError, match=r"bad\.jsonl:3: flywheel record fw-[0-9a-f]{64} is invalid: extra"
    ):
        read_jsonl(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_jsonl(tmp_path / "missing.jsonl")


def test_write_jsonl_refuses_invalid_records_and_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    write_jsonl(_mixed(3), path)
    before = path.read_bytes()
    bad = make_record(9)
    bad["timestamp"] = bad["timestamp"] * 1000
    with pytest.raises(FlywheelRecordError, match="epoch milliseconds"):
        write_jsonl([*_mixed(3), bad], path)
    assert path.read_bytes() == before
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_read_directory_filters_by_workload_and_utc_days(tmp_path: Path) -> None:
    records = _mixed(72)  # three days, hourly
    with FlywheelEmitter(tmp_path) as emitter:
        emitter.emit_many(records)
    assert len(read_directory(tmp_path)) == 72
    day_two = read_directory(tmp_path, since=date(2026, 3, 3), until=date(2026, 3, 4))
    assert len(day_two) == 24
    assert {datetime.fromtimestamp(r["timestamp"], UTC).date() for r in day_two} == {
        date(2026, 3, 3)
    }
    window = read_directory(
        tmp_path,
        since=datetime(2026, 3, 3, 6, tzinfo=UTC),
        until=datetime(2026, 3, 3, 12, tzinfo=UTC),
    )
    assert len(window) == 6
    only_touch = read_directory(tmp_path, workload_id="first_touch")
    assert {r["workload_id"] for r in only_touch} == {"first_touch"} and len(only_touch) == 24
    with pytest.raises(ValueError, match="workload 'routing' is not one of"):
        read_directory(tmp_path, workload_id="routing")
    with pytest.raises(ValueError, match="has no timezone"):
        read_directory(tmp_path, since=datetime(2026, 3, 3))


def test_training_set_is_request_messages_plus_the_first_choice(tmp_path: Path) -> None:
    records = _mixed(9)
    paths = export_training_set(records, tmp_path / "train")
    assert sorted(paths) == sorted(WORKLOADS)
    assert paths["lead_route"] == tmp_path / "train" / "lead_route.jsonl"
    examples = [json.loads(line) for line in paths["lead_route"].read_text().splitlines()]
    route_records = [r for r in records if r["workload_id"] == "lead_route"]
    assert len(examples) == len(route_records) == 3
    for example, record in zip(examples, route_records, strict=True):
        assert list(example) == ["messages"]
        assert example["messages"] == [
            *record["request"]["messages"],
            record["response"]["choices"][0]["message"],
        ]
        assert example["messages"][-1]["role"] == "assistant"
        assert [m["role"] for m in example["messages"][:-1]] == ["system", "user"]


def test_training_set_is_deterministic(tmp_path: Path) -> None:
    records = _mixed(12)
    first = export_training_set(records, tmp_path / "a")
    second = export_training_set(list(reversed(records)), tmp_path / "b")
    for workload in WORKLOADS:
        assert first[workload].read_bytes() == second[workload].read_bytes()


_POOL = _mixed(40)


@settings(max_examples=40, deadline=None)
@given(picks=st.lists(st.integers(0, len(_POOL) - 1), max_size=60))
def test_export_bytes_depend_only_on_the_set_of_records(picks: list[int]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        shuffled = Path(folder) / "shuffled.jsonl"
        canonical = Path(folder) / "canonical.jsonl"
        assert write_jsonl([_POOL[i] for i in picks], shuffled) == len(set(picks))
        write_jsonl([_POOL[i] for i in sorted(set(picks))], canonical)
        assert shuffled.read_bytes() == canonical.read_bytes()


@settings(max_examples=25, deadline=None)
@given(
    picks=st.lists(st.integers(0, len(_POOL) - 1), max_size=60),
    reopen_every=st.integers(1, 20),
    batch_size=st.integers(1, 9),
)
def test_emitter_logs_each_record_once_whatever_the_order_repeats_and_restarts(
    picks: list[int], reopen_every: int, batch_size: int
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        emitter = FlywheelEmitter(folder, batch_size=batch_size, max_bytes=4096)
        for position, i in enumerate(picks, start=1):
            emitter.emit(_POOL[i])
            if position % reopen_every == 0:  # a new run picks up where the last one stopped
                emitter.close()
                emitter = FlywheelEmitter(folder, batch_size=batch_size, max_bytes=4096)
        emitter.close()
        on_disk = read_directory(folder)
        assert [record_id(r) for r in on_disk] == [record_id(r) for r in sorted_unique(picks)]
        for path in Path(folder).rglob("*.jsonl"):
            assert path.stat().st_size <= 4096
            assert {r["workload_id"] for r in read_jsonl(path)} == {path.parent.name}


def sorted_unique(picks: list[int]) -> list[dict]:
    return sorted((_POOL[i] for i in set(picks)), key=sort_key)
