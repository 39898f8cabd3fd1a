"""FlywheelEmitter: whole-line appends, date and size rotation, no duplicate ids, concurrency."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from kpi_pipeline.adapters.flywheel.emitter import FlywheelEmitter
from kpi_pipeline.core.flywheel.records import canonical_json, record_id
from kpi_pipeline.core.flywheel.schema import FlywheelRecordError, validate_record
from kpi_pipeline_tests.support.flywheel import DAY, MakeRecord, make_record
from kpi_pipeline_tests.support.paths import REPO_ROOT

REPO = REPO_ROOT


def _lines(path: Path) -> list[dict[str, Any]]:
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n"), f"{path} ends with a partial line"
    return [json.loads(line) for line in data.splitlines()]


def _all_records(directory: Path) -> list[dict[str, Any]]:
    return [rec for path in sorted(directory.rglob("*.jsonl")) for rec in _lines(path)]


def test_records_land_in_workload_day_files_as_canonical_lines(
    tmp_path: Path, record: MakeRecord
) -> None:
    records = [record(n) for n in range(5)]
    with FlywheelEmitter(tmp_path) as emitter:
        for rec in records:
            assert emitter.emit(rec) == "buffered"
    path = tmp_path / "lead_route" / "2026-03-02.jsonl"
    assert path.read_bytes() == b"".join((canonical_json(r) + "\n").encode() for r in records)
    for line in _lines(path):
        validate_record(line)
    assert emitter.stats.written == 5 and emitter.stats.pending == 0


def test_batches_are_written_when_full_and_the_rest_on_flush(
    tmp_path: Path, record: MakeRecord
) -> None:
    emitter = FlywheelEmitter(tmp_path, batch_size=3)
    for n in range(4):
        emitter.emit(record(n))
    path = tmp_path / "lead_route" / "2026-03-02.jsonl"
    assert len(_lines(path)) == 3
    assert emitter.stats.pending == 1
    assert emitter.flush() == 1
    assert len(_lines(path)) == 4


def test_rotation_by_utc_day_of_the_record_and_by_workload(tmp_path: Path) -> None:
    eastern = timezone(timedelta(hours=-5))
    late_evening_local = datetime(2026, 3, 2, 20, 30, tzinfo=eastern)  # 01:30 UTC on the 3rd
    with FlywheelEmitter(tmp_path) as emitter:
        emitter.emit(make_record(1, decided_at=datetime(2026, 3, 2, 23, 59, 59, tzinfo=UTC)))
        emitter.emit(make_record(2, decided_at=late_evening_local))
        emitter.emit(make_record(3, workload_id="first_touch"))
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.jsonl")) == [
        "first_touch/2026-03-02.jsonl",
        "lead_route/2026-03-02.jsonl",
        "lead_route/2026-03-03.jsonl",
    ]
    assert _lines(tmp_path / "lead_route" / "2026-03-03.jsonl")[0]["request"]["metadata"][
        "lead_id"
    ].endswith("2")


def test_rotation_by_size_keeps_every_file_under_the_limit(tmp_path: Path) -> None:
    records = [make_record(n, padding=800) for n in range(12)]
    line_size = len(canonical_json(records[0])) + 1
    max_bytes = 3 * line_size + 10  # three lines per file
    with FlywheelEmitter(tmp_path, max_bytes=max_bytes, batch_size=5) as emitter:
        emitter.emit_many(records)
    files = sorted((tmp_path / "lead_route").glob("*.jsonl"))
    assert [p.name for p in files] == [
        "2026-03-02-001.jsonl",
        "2026-03-02-002.jsonl",
        "2026-03-02-003.jsonl",
        "2026-03-02.jsonl",
    ]
    assert all(p.stat().st_size <= max_bytes for p in files)
    assert [record_id(r) for r in _read_in_order(emitter.files())] == [
        record_id(r) for r in records
    ]


def _read_in_order(paths: list[Path]) -> list[dict[str, Any]]:
    return [rec for path in paths for rec in _lines(path)]


def test_size_rotation_continues_after_reopen(tmp_path: Path) -> None:
    line_size = len(canonical_json(make_record(0, padding=800))) + 1
    max_bytes = 2 * line_size + 10
    with FlywheelEmitter(tmp_path, max_bytes=max_bytes) as emitter:
        emitter.emit_many(make_record(n, padding=800) for n in range(3))
    with FlywheelEmitter(tmp_path, max_bytes=max_bytes) as emitter:
        emitter.emit_many(make_record(n, padding=800) for n in range(3, 5))
    sizes = {p.name: len(_lines(p)) for p in (tmp_path / "lead_route").glob("*.jsonl")}
    assert sizes == {"2026-03-02.jsonl": 2, "2026-03-02-001.jsonl": 2, "2026-03-02-002.jsonl": 1}


def test_a_record_larger_than_max_bytes_gets_a_file_of_its_own(tmp_path: Path) -> None:
    with FlywheelEmitter(tmp_path, max_bytes=1024) as emitter:
        emitter.emit(make_record(1))
        emitter.emit(make_record(2, padding=3000))
        emitter.emit(make_record(3))
    counts = {p.name: len(_lines(p)) for p in (tmp_path / "lead_route").glob("*.jsonl")}
    assert counts == {"2026-03-02.jsonl": 1, "2026-03-02-001.jsonl": 1, "2026-03-02-002.jsonl": 1}


def test_duplicate_ids_are_dropped_in_memory_and_across_reopen(
    tmp_path: Path, record: MakeRecord
) -> None:
    with FlywheelEmitter(tmp_path) as emitter:
        assert emitter.emit(record(1)) == "buffered"
        assert emitter.emit(record(1)) == "duplicate"
        emitter.flush()
        assert emitter.emit(record(1)) == "duplicate"
    with FlywheelEmitter(tmp_path) as reopened:
        assert reopened.emit(record(1)) == "duplicate"
        # Re-decided the next day from the same inputs: same id, still not logged twice.
        assert reopened.emit(record(1, decided_at=DAY + timedelta(days=1))) == "duplicate"
        assert reopened.emit(record(2)) == "buffered"
    assert reopened.stats.duplicates == 2
    assert [r["request"]["metadata"]["lead_id"][-1] for r in _all_records(tmp_path)] == ["1", "2"]


def test_invalid_record_is_rejected_counted_and_not_written(
    tmp_path: Path, record: MakeRecord
) -> None:
    bad = record(1)
    bad["lead_id"] = "00Q1"
    with FlywheelEmitter(tmp_path) as emitter:
        with pytest.raises(FlywheelRecordError, match="lead_id: unexpected top-level key"):
            emitter.emit(bad)
        emitter.emit(record(2))
    assert emitter.stats.rejected == 1 and emitter.stats.written == 1
    assert len(_all_records(tmp_path)) == 1


def test_threads_sharing_an_emitter_write_each_record_once(tmp_path: Path) -> None:
    records = [make_record(n, workload_id=("lead_route", "first_touch")[n % 2]) for n in range(200)]
    emitter = FlywheelEmitter(tmp_path, batch_size=7)
    errors: list[BaseException] = []

    def worker(offset: int) -> None:
        try:
            for i in range(len(records)):
                emitter.emit(
                    records[(i * 7 + offset) % len(records)]
                )  # every thread, its own order
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    emitter.close()
    assert not errors
    written = _all_records(tmp_path)
    assert sorted(record_id(r) for r in written) == sorted(record_id(r) for r in records)
    assert emitter.stats.written == 200 and emitter.stats.duplicates == 7 * 200


_PROCESS_SCRIPT = """
import os, sys, time
from kpi_pipeline.adapters.flywheel.emitter import FlywheelEmitter
from kpi_pipeline_tests.support.flywheel import make_record
offset = int(sys.argv[2])
open(os.path.join(sys.argv[3], f"ready-{offset}"), "w").close()
while not os.path.exists(os.path.join(sys.argv[3], "go")):  # start together, to overlap
    time.sleep(0.005)
with FlywheelEmitter(sys.argv[1], batch_size=3) as emitter:
    for i in range(150):
        emitter.emit(make_record((i + offset) % 150))
print(emitter.stats.written)
"""


def test_two_processes_on_one_directory_write_each_record_once(tmp_path: Path) -> None:
    logs, gate = tmp_path / "logs", tmp_path / "gate"
    gate.mkdir()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _PROCESS_SCRIPT, str(logs), str(k * 75), str(gate)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        for k in range(2)
    ]
    deadline = time.monotonic() + 30
    while len(list(gate.glob("ready-*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    (gate / "go").touch()
    written = [int(p.communicate(timeout=60)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    ids = [record_id(r) for r in _all_records(logs)]
    assert len(ids) == len(set(ids)) == 150
    assert sum(written) == 150


def test_partial_line_left_by_a_killed_writer_is_cut_off(
    tmp_path: Path, record: MakeRecord
) -> None:
    with FlywheelEmitter(tmp_path) as emitter:
        emitter.emit(record(1))
    path = tmp_path / "lead_route" / "2026-03-02.jsonl"
    whole = path.read_bytes()
    with path.open("ab") as handle:  # what a process killed in the middle of a write leaves
        handle.write((canonical_json(record(2)) + "\n").encode()[:40])
    with FlywheelEmitter(tmp_path) as emitter:
        emitter.emit(record(3))
    assert path.read_bytes() == whole + (canonical_json(record(3)) + "\n").encode()


_FULL_DISK_SCRIPT = """
import os, resource, signal, sys
from kpi_pipeline.adapters.flywheel.emitter import FlywheelEmitter
from kpi_pipeline_tests.support.flywheel import make_record
path = os.path.join(sys.argv[1], "lead_route", "2026-03-02.jsonl")
emitter = FlywheelEmitter(sys.argv[1], batch_size=100)
emitter.emit(make_record(0))
emitter.flush()
size = os.path.getsize(path)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (size + 700, hard))  # room for part of one more line
for n in range(1, 6):
    emitter.emit(make_record(n))
try:
    emitter.flush()
    print("flush succeeded")
except OSError as exc:
    print("failed", exc.errno, os.path.getsize(path) == size, emitter.stats.pending)
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
print("retry wrote", emitter.flush())
"""


def test_failed_write_leaves_no_partial_line_and_keeps_records_pending(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _FULL_DISK_SCRIPT, str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "failed 27 True 5"  # EFBIG, file back to its size, nothing lost
    assert lines[1] == "retry wrote 5"
    written = _lines(tmp_path / "lead_route" / "2026-03-02.jsonl")
    assert [r["request"]["metadata"]["replay_ids"] for r in written] == [
        "0",
        "1",
        "2",
        "3",
        "4",
        "5",
    ]


def test_bad_arguments_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_bytes=10 is too small"):
        FlywheelEmitter(tmp_path, max_bytes=10)
    with pytest.raises(ValueError, match="batch_size=0 must be at least 1"):
        FlywheelEmitter(tmp_path, batch_size=0)
