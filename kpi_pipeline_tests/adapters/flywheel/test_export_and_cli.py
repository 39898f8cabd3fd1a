"""Ledger decisions → flywheel files → Elasticsearch, and the `kpi-pipeline flywheel` commands.

The ledger is the real one (SQLite file); Elasticsearch is the wire-level stand-in.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from kpi_pipeline.adapters.flywheel.export import (
    load_flywheel_days_to_elastic,
    validate_flywheel_days,
    write_flywheel_days,
)
from kpi_pipeline.adapters.flywheel.loaders.to_elastic import ElasticLoadError
from kpi_pipeline.adapters.flywheel.loaders.to_jsonl import read_jsonl
from kpi_pipeline.adapters.ledger.store import Ledger
from kpi_pipeline.cli import flywheel as cli
from kpi_pipeline.core.flywheel.records import canonical_json, compute_record_id, record_id
from kpi_pipeline.core.ledger_rows import DecisionRow
from kpi_pipeline_tests.support.es_server import ElasticStandIn
from kpi_pipeline_tests.support.flywheel import DAY, make_record
from kpi_pipeline_tests.support.ledgers import NewLedger

WORKLOADS = ("lead_route", "first_touch", "outreach_template")
NEXT_DAY = DAY + timedelta(days=1)


def _decision(n: int, decided_at: datetime) -> DecisionRow:
    workload = WORKLOADS[n % 3]
    lead_id = f"00Q{n:015d}"
    messages = [{"role": "user", "content": canonical_json({"Id": lead_id})}]
    rid = compute_record_id(
        workload_id=workload,
        client_id="kpi_pipeline",
        lead_id=lead_id,
        model="policy:v1",
        messages=messages,
    )
    return DecisionRow(
        id=rid,
        workload=workload,
        lead_id=lead_id,
        decided_at=decided_at,
        policy_version="v1",
        rule_id="default",
        model="policy:v1",
        request={"messages": messages, "metadata": {"lead_id": lead_id, "decision_id": rid}},
        response={"owner_id": "005000000000001AAA"},
        replay_ids=[f"{n:016x}"],
    )


@pytest.fixture
def ledger(new_ledger: NewLedger) -> Ledger:
    ledger = new_ledger()
    with ledger.write() as conn:
        for n in range(30):  # 24 on DAY (hourly), 6 on the next day
            ledger.insert_decision(conn, _decision(n, DAY + timedelta(hours=n)))
    return ledger


def test_write_flywheel_days_logs_the_window_once(ledger: Ledger, tmp_path: Path) -> None:
    logs = tmp_path / "flywheel"
    first = write_flywheel_days(ledger, logs, start=DAY, end=NEXT_DAY, client_id="kpi_pipeline")
    assert (first.decisions, first.written, first.already_logged, first.rejected) == (24, 24, 0, 0)
    again = write_flywheel_days(ledger, logs, start=DAY, end=NEXT_DAY, client_id="kpi_pipeline")
    assert (again.written, again.already_logged) == (0, 24)
    files = sorted(str(p.relative_to(logs)) for p in logs.rglob("*.jsonl"))
    assert files == [f"{w}/2026-03-02.jsonl" for w in sorted(WORKLOADS)]
    record = read_jsonl(logs / "lead_route" / "2026-03-02.jsonl")[0]
    assert (
        record_id(record) == record["request"]["metadata"]["decision_id"]
    )  # ledger id == record id
    assert record["request"]["metadata"]["replay_ids"] == "0000000000000000"
    assert validate_flywheel_days(logs, start=DAY, end=NEXT_DAY) == ([], 24)


def test_validate_flywheel_days_reports_file_line_and_problem(tmp_path: Path) -> None:
    folder = tmp_path / "lead_route"
    folder.mkdir()
    good = canonical_json(make_record(1))
    wrong_day = canonical_json(make_record(2, decided_at=NEXT_DAY))
    (folder / "2026-03-02.jsonl").write_text("\n".join([good, good, wrong_day, "{oops"]) + "\n")
    problems, checked = validate_flywheel_days(tmp_path, start=DAY, end=NEXT_DAY)
    assert checked == 4
    assert problems[0].startswith("lead_route/2026-03-02.jsonl:2: duplicate record id fw-")
    assert (
        "lead_route/2026-03-02.jsonl:3: record fw-" in problems[1]
        and "is of day 2026-03-03" in problems[1]
    )
    assert problems[2].startswith("lead_route/2026-03-02.jsonl:4: ")
    assert len(problems) == 3


def test_load_days_to_elastic_is_idempotent_and_fails_loudly(
    ledger: Ledger, tmp_path: Path
) -> None:
    logs = tmp_path / "flywheel"
    write_flywheel_days(
        ledger, logs, start=DAY, end=NEXT_DAY + timedelta(days=1), client_id="kpi_pipeline"
    )
    with ElasticStandIn() as es:
        summary = load_flywheel_days_to_elastic(logs, es.url, "flywheel", start=DAY, end=NEXT_DAY)
        assert (summary["created"], summary["already_present"]) == (24, 0)
        summary = load_flywheel_days_to_elastic(logs, es.url, "flywheel", start=DAY, end=NEXT_DAY)
        assert (summary["created"], summary["already_present"]) == (0, 24)
        es.state.fail_items = {
            record_id(read_jsonl(logs / "first_touch" / "2026-03-03.jsonl")[0]): [400]
        }
        with pytest.raises(
            ElasticLoadError, match=r"1 flywheel record\(s\) failed to load into 'flywheel'"
        ):
            load_flywheel_days_to_elastic(
                logs, es.url, "flywheel", start=NEXT_DAY, end=NEXT_DAY + timedelta(days=1)
            )
        assert len(es.state.indices["flywheel"].docs) == 29


def _run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="kpi-pipeline")
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.func(args)


@pytest.fixture
def logs(ledger: Ledger, tmp_path: Path) -> Path:
    folder = tmp_path / "flywheel"
    write_flywheel_days(
        ledger, folder, start=DAY, end=DAY + timedelta(days=2), client_id="kpi_pipeline"
    )
    return folder


def test_cli_export_from_directory_and_from_ledger_agree(
    logs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from_dir, from_ledger = tmp_path / "dir.jsonl", tmp_path / "ledger.jsonl"
    common = ["--since", "2026-03-02", "--until", "2026-03-03"]
    assert _run("flywheel", "export", "--from", str(logs), "--out", str(from_dir), *common) == 0
    assert f"wrote 24 flywheel record(s) to {from_dir}" in capsys.readouterr().out
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    assert _run("flywheel", "export", "--ledger-url", url, "--out", str(from_ledger), *common) == 0
    assert from_dir.read_bytes() == from_ledger.read_bytes()
    assert (
        _run(
            "flywheel",
            "export",
            "--from",
            str(logs),
            "--out",
            str(from_dir),
            "--workload",
            "first_touch",
        )
        == 0
    )
    assert {r["workload_id"] for r in read_jsonl(from_dir)} == {"first_touch"}
    assert len(read_jsonl(from_dir)) == 10


def test_cli_training_set(logs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "train"
    assert _run("flywheel", "training-set", "--from", str(logs), "--out", str(out)) == 0
    assert "lead_route: 10 example(s)" in capsys.readouterr().out
    example = json.loads((out / "lead_route.jsonl").read_text().splitlines()[0])
    assert [m["role"] for m in example["messages"]] == ["user", "assistant"]


def _load_elastic(logs: Path, es: ElasticStandIn) -> int:
    """`flywheel load-elastic` of ``logs`` into the stand-in's ``fw-test`` index."""
    return _run(
        "flywheel", "load-elastic", "--from", str(logs), "--url", es.url, "--index", "fw-test"
    )


def test_cli_load_elastic_twice_adds_nothing(
    logs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with ElasticStandIn() as es:
        assert _load_elastic(logs, es) == 0
        first = json.loads(capsys.readouterr().out)
        assert _load_elastic(logs, es) == 0
        second = json.loads(capsys.readouterr().out)
        assert (first["created"], second["created"], second["already_present"]) == (30, 0, 30)
        assert "kpi-pipeline-fw-test" in es.state.templates
        es.state.fail_items = {
            record_id(read_jsonl(logs / "lead_route" / "2026-03-02.jsonl")[0]): [400]
        }
        es.state.indices.clear()
        assert _load_elastic(logs, es) == 1
        assert len(json.loads(capsys.readouterr().out)["failed"]) == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["export", "--from", "{tmp}/nowhere", "--out", "{tmp}/x.jsonl"],
            "flywheel directory {tmp}/nowhere does not exist",
        ),
        (
            [
                "export",
                "--from",
                "{tmp}",
                "--out",
                "{tmp}/x.jsonl",
                "--since",
                "2026-03-03",
                "--until",
                "2026-03-02",
            ],
            "--since 2026-03-03 must be before --until 2026-03-02",
        ),
        (
            ["load-elastic", "--from", "{tmp}"],
            "no Elasticsearch URL: pass --url or set KPI_ELASTICSEARCH_URL",
        ),
        (
            ["load-elastic", "--from", "{tmp}", "--url", "http://127.0.0.1:9", "--index", "Bad"],
            "index name 'Bad' is invalid",
        ),
    ],
)
def test_cli_bad_input_is_one_clear_line(
    argv: list[str],
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("KPI_ELASTICSEARCH_URL", raising=False)
    cli.get_settings.cache_clear()
    try:
        assert _run("flywheel", *(a.format(tmp=tmp_path) for a in argv)) == 2
    finally:
        cli.get_settings.cache_clear()
    err = capsys.readouterr().err
    assert f"kpi-pipeline flywheel {argv[0]}: error: " in err
    assert message.format(tmp=tmp_path) in err
    assert "Traceback" not in err


def test_cli_rejects_a_malformed_day(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _run("flywheel", "export", "--from", ".", "--out", "x", "--since", "03/02/2026")
    assert "'03/02/2026' is not a day; use YYYY-MM-DD (UTC)" in capsys.readouterr().err


def test_console_script_dispatches_to_the_flywheel_commands(logs: Path, tmp_path: Path) -> None:
    from kpi_pipeline.cli.main import main

    out = tmp_path / "all.jsonl"
    assert main(["flywheel", "export", "--from", str(logs), "--out", str(out)]) == 0
    assert len(read_jsonl(out)) == 30
