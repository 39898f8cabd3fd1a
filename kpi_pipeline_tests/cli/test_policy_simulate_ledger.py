"""`kpi-pipeline policy simulate --ledger-url`: what-if over the leads a ledger actually routed."""

import json

from kpi_pipeline.adapters.ledger.store import Ledger
from kpi_pipeline.adapters.llm.client import selector_from_settings
from kpi_pipeline.cli.main import main
from kpi_pipeline.core.policy.load import load_policy
from kpi_pipeline_tests.support.events import MINUTE, T0, lead_created
from kpi_pipeline_tests.support.kpi_stream import POLICY
from kpi_pipeline_tests.support.processors import make_processor


def test_simulate_over_a_ledger_compares_with_the_decisions_made(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    ledger = Ledger.from_url(url)
    processor = make_processor(ledger, load_policy(POLICY), selector=selector_from_settings())
    leads = [
        lead_created(
            f"00Q00000000010{i}AAA", T0 + i * MINUTE, LeadSource="Partner" if i % 2 else "Web"
        )
        for i in range(6)
    ]
    processor.process(leads)
    ledger.dispose()

    same = tmp_path / "same.json"
    same.write_text(json.dumps(POLICY))
    assert main(["policy", "simulate", "--policy", str(same), "--ledger-url", url]) == 0
    report = capsys.readouterr().out
    assert "routed: 6; owner changes vs baseline: 0" in report

    # A policy without the partner rule moves the partner leads' rule (and round robin order).
    changed = dict(
        POLICY, version="kpi-test-2", rules=[r for r in POLICY["rules"] if r["id"] != "partners"]
    )
    other = tmp_path / "other.json"
    other.write_text(json.dumps(changed))
    assert main(["policy", "simulate", "--policy", str(other), "--ledger-url", url]) == 0
    report = capsys.readouterr().out
    assert "policy kpi-test-2 vs baseline decisions in the ledger" in report
    partners_row = next(line for line in report.splitlines() if line.startswith("partners"))
    assert partners_row.split()[1:3] == ["0", "3"]
