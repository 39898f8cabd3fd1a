"""`kpi-pipeline replay` on the shipped stream, and the `ledger` operator commands."""

from __future__ import annotations

import csv
import gc
import hashlib
import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from kpi_pipeline.adapters.ledger import migrations
from kpi_pipeline.app.processing.collector import cycle_collection_paused
from kpi_pipeline.cli.main import main
from kpi_pipeline.core.flywheel.schema import validate_record
from kpi_pipeline.core.kpis import ROLLUP_NAMES
from kpi_pipeline.core.ledger_rows import FailedEvent
from kpi_pipeline.core.resync_windows import ResyncGap
from kpi_pipeline.core.salesforce_fields import WRITTEN_FIELD_NAMES
from kpi_pipeline.fixtures import RECORDED_STREAM, fixture_path


def tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


# The shipped fixture's replay output, pinned: a refactoring must leave it byte for byte. A
# deliberate change of a rule or of the packaged policy changes it: update the digest in the
# same commit and say why.
PINNED_REPLAY_DIGEST = "d96d5824e7a7b647fc3077054b86198fa75a80e979b3eacd690ee83442c16d92"


def tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for name, data in tree(root).items():
        digest.update(name.encode() + b"\0" + hashlib.sha256(data).hexdigest().encode() + b"\n")
    return digest.hexdigest()


def test_replay_of_the_shipped_fixture_matches_its_pinned_digest(tmp_path: Path, capsys) -> None:
    assert main(["replay", str(RECORDED_STREAM), "--out", str(tmp_path / "out")]) == 0
    capsys.readouterr()
    assert tree_digest(tmp_path / "out") == PINNED_REPLAY_DIGEST


def test_replay_writes_the_three_outputs_byte_identically_twice(tmp_path: Path, capsys) -> None:
    assert main(["replay", str(RECORDED_STREAM), "--out", str(tmp_path / "a")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["events"] == 239 and summary["leads"] == 60
    assert main(["replay", str(RECORDED_STREAM), "--out", str(tmp_path / "b")]) == 0
    first, second = tree(tmp_path / "a"), tree(tmp_path / "b")
    assert first == second
    assert set(first) == {
        "lead_facts.csv",
        *(f"kpis/{name}.csv" for name in ROLLUP_NAMES),
        *(f"flywheel/{w}.jsonl" for w in ("first_touch", "lead_route", "outreach_template")),
    }

    with (tmp_path / "a" / "lead_facts.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["Id", "CreatedDate", "OwnerId", *WRITTEN_FIELD_NAMES]
    assert [r["Id"] for r in rows] == sorted(r["Id"] for r in rows) and len(rows) == 60
    responded = [r for r in rows if r["First_Response_At__c"]]
    assert responded and all(r["First_Response_At__c"].endswith("Z") for r in responded)
    assert all(r["CreatedDate"].endswith("Z") for r in rows)
    assert any(r["Time_to_First_Response__c"] == "" for r in rows)  # unanswered leads: empty cell

    for workload in ("first_touch", "lead_route", "outreach_template"):
        lines = (tmp_path / "a" / "flywheel" / f"{workload}.jsonl").read_text().splitlines()
        assert lines, f"no {workload} decisions"
        records = [json.loads(line) for line in lines]
        for record in records:
            validate_record(record)
            assert record["workload_id"] == workload
        assert len({r["response"]["id"] for r in records}) == len(records)
    assert summary["decisions"]["lead_route"] == len(
        (tmp_path / "a" / "flywheel" / "lead_route.jsonl").read_text().splitlines()
    )


def test_replay_as_of_changes_only_time_dependent_kpis(tmp_path: Path, capsys) -> None:
    early = tmp_path / "early"
    assert (
        main(
            ["replay", str(RECORDED_STREAM), "--out", str(early), "--as-of", "2026-11-18T12:00:00Z"]
        )
        == 0
    )
    late = tmp_path / "late"
    assert main(["replay", str(RECORDED_STREAM), "--out", str(late)]) == 0
    assert (early / "lead_facts.csv").read_bytes() == (late / "lead_facts.csv").read_bytes()
    assert (early / "kpis" / "sla.csv").read_bytes() != (late / "kpis" / "sla.csv").read_bytes()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["replay", "/nonexistent/events.jsonl", "--out", "OUT"], "does not exist"),
        (["replay", "BAD", "--out", "OUT"], "recorded event must look like"),
        (
            ["replay", "STREAM", "--out", "OUT", "--policy", "/nonexistent/policy.json"],
            "file not found",
        ),
        (["replay", "STREAM", "--out", "OUT", "--batch-size", "0"], "at least 1"),
    ],
)
def test_replay_refuses_bad_input_with_a_clear_message(
    tmp_path: Path, capsys, argv: list[str], message: str
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"channel": "/data/LeadChangeEvent", "data": {}}\n')
    replace = {"OUT": str(tmp_path / "out"), "BAD": str(bad), "STREAM": str(RECORDED_STREAM)}
    assert main([replace.get(a, a) for a in argv]) == 2
    assert message in capsys.readouterr().err


def test_replay_rejects_a_malformed_as_of(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        main(["replay", str(RECORDED_STREAM), "--out", str(tmp_path), "--as-of", "yesterday"])
    assert "not an ISO-8601 time" in capsys.readouterr().err


def test_single_event_fixtures_parse_and_belong_together() -> None:
    from kpi_pipeline.core.events import ChangeEvent

    lead, task, email = (
        ChangeEvent.from_recorded(json.loads(fixture_path(name).read_text()))
        for name in ("lead_create.json", "task_complete.json", "emailmessage.json")
    )
    assert (lead.entity, lead.change_type) == ("Lead", "CREATE")
    assert task.fields["WhoId"] == lead.record_ids[0] and task.fields["Status"] == "Completed"
    assert email.fields["RelatedToId"] == lead.record_ids[0] and email.fields["Incoming"] is False
    with pytest.raises(FileNotFoundError, match="shipped fixtures"):
        fixture_path("nope.json")


@pytest.mark.postgres
def test_ledger_upgrade_warns_of_a_postgresql_server_without_autovacuum(
    postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without autovacuum the ledger's keyed reads degrade as its tables grow
    (DEPLOYMENT.md, section 3); the warning names the fix. This machine's server decides
    which case runs."""
    engine = sa.create_engine(postgres_url)
    with engine.connect() as conn:
        autovacuum = conn.execute(sa.text("SHOW autovacuum")).scalar_one()
    engine.dispose()
    assert main(["ledger", "upgrade", "--url", postgres_url]) == 0
    captured = capsys.readouterr()
    warnings = json.loads(captured.out)["warnings"]
    if autovacuum == "on":
        assert warnings == [] and captured.err == ""
    else:
        (warning,) = warnings
        assert "autovacuum is off" in warning and "ANALYZE" in warning
        assert f"warning: {warning}" in captured.err


def test_ledger_commands(tmp_path: Path, capsys) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    assert main(["ledger", "upgrade", "--url", url]) == 0
    upgraded = json.loads(capsys.readouterr().out)
    assert (upgraded["from"], upgraded["to"]) == (None, migrations.head_revision())
    assert upgraded["warnings"] == []  # nothing to say of SQLite
    assert main(["ledger", "upgrade", "--url", url]) == 0
    assert json.loads(capsys.readouterr().out)["from"] == migrations.head_revision()

    from kpi_pipeline.adapters.ledger import Ledger

    ledger = Ledger.from_url(url)
    ledger.dead_letter(
        FailedEvent(
            channel="/data/LeadChangeEvent",
            replay_id=(7).to_bytes(8, "big"),
            batch_id="b",
            stage="decode",
            reason="bad avro",
            payload=b"xx",
        )
    )
    window = ledger.record_resync_window(
        ResyncGap(
            channel="/data/LeadChangeEvent",
            reason="gap",
            from_replay=None,
            from_time_ms=1,
            to_time_ms=2,
            detail={},
        )
    )
    ledger.dispose()
    assert main(["ledger", "dead-letters", "--url", url]) == 0
    letter = json.loads(capsys.readouterr().out)
    assert (letter["replay_id"], letter["stage"], letter["payload_bytes"]) == (7, "decode", 2)
    assert main(["ledger", "resync-windows", "--url", url]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == window
    assert (
        main(
            ["ledger", "resync-windows", "--url", url, "--close", str(window), "--note", "re-read"]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out) == {"closed": True, "id": window}
    assert main(["ledger", "resync-windows", "--url", url]) == 0
    assert capsys.readouterr().out == ""
    assert main(["ledger", "resync-windows", "--url", url, "--close", "99"]) == 2
    assert "no resync window with id 99" in capsys.readouterr().err


def test_replay_renders_kpis_and_flywheel_as_the_daily_assets_do(tmp_path: Path) -> None:
    """One output path: replay's files are what kpis.files and the flywheel JSONL writer
    produce for the same ledger, not a second rendering of their own."""
    from kpi_pipeline.adapters.flywheel.loaders.to_jsonl import write_jsonl
    from kpi_pipeline.adapters.kpi_files import kpi_csv_text
    from kpi_pipeline.adapters.ledger import Ledger
    from kpi_pipeline.app.replay import read_events, replay, replay_processor
    from kpi_pipeline.config import get_settings
    from kpi_pipeline.core.flywheel.records import record_from_decision
    from kpi_pipeline.core.kpis import compute_all
    from kpi_pipeline.core.policy.load import load_policy
    from kpi_pipeline.wiring import replay_ports

    result = replay(RECORDED_STREAM, tmp_path / "out", ports=replay_ports(), batch_size=500)
    settings = get_settings()
    ledger = Ledger.from_url(f"sqlite:///{tmp_path / 'ledger.db'}")
    try:
        processor = replay_processor(ledger, load_policy(settings.policy_file), settings.client_id)
        events = read_events(RECORDED_STREAM)
        for start in range(0, len(events), 500):
            processor.process(events[start : start + 500])
        frame, decisions = ledger.lead_facts_frame(), ledger.decisions_between()
    finally:
        ledger.dispose()
    for name, table in compute_all(frame, as_of=result.as_of, tz=settings.timezone).items():
        assert (tmp_path / "out" / "kpis" / f"{name}.csv").read_text() == kpi_csv_text(table)
    route = [record_from_decision(d, client_id=settings.client_id) for d in decisions]
    route = [r for r in route if r["workload_id"] == "lead_route"]
    write_jsonl(route, tmp_path / "lead_route.jsonl")
    assert (tmp_path / "out" / "flywheel" / "lead_route.jsonl").read_bytes() == (
        tmp_path / "lead_route.jsonl"
    ).read_bytes()


def test_the_cycle_collector_is_paused_only_while_a_replay_runs() -> None:
    assert gc.isenabled()
    with cycle_collection_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()  # a caller that had it off keeps it off
    try:
        with cycle_collection_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_outputs_written_beside_equal_outputs_written_in_one_process(tmp_path: Path) -> None:
    """Half of the output files are written by a forked child (``run_beside``); the files
    are the same bytes as when one process writes them all."""
    from dataclasses import replace

    from kpi_pipeline.app.replay import replay
    from kpi_pipeline.wiring import replay_ports

    def one_after_the_other(background, foreground):
        background()
        return foreground()

    forked = replay(RECORDED_STREAM, tmp_path / "forked", ports=replay_ports())
    alone = replay(
        RECORDED_STREAM,
        tmp_path / "alone",
        ports=replace(replay_ports(), run_beside=one_after_the_other),
    )
    assert [p.relative_to(tmp_path / "forked") for p in forked.files] == [
        p.relative_to(tmp_path / "alone") for p in alone.files
    ]
    for path in forked.files:
        assert (
            path.read_bytes()
            == (tmp_path / "alone" / path.relative_to(tmp_path / "forked")).read_bytes()
        )
    assert {p.name for p in (tmp_path / "forked" / "flywheel").iterdir()} == {
        "first_touch.jsonl",
        "lead_route.jsonl",
        "outreach_template.jsonl",
    }
