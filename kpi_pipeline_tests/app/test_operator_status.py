"""operator_status without a server: the policy version is read once per version of the file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kpi_pipeline.app import operator_status
from kpi_pipeline.config import Settings
from kpi_pipeline.core.policy import load
from kpi_pipeline.core.policy.load import default_policy_path


def test_the_policy_file_is_parsed_again_only_when_it_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = json.loads(default_policy_path().read_text())
    path = tmp_path / "policy.json"
    path.write_text(json.dumps({**policy, "version": "v-1"}))
    loads: list[str] = []
    real = load.load_policy

    def counting(source: object) -> object:
        loads.append(str(source))
        return real(source)

    monkeypatch.setattr(load, "load_policy", counting)
    settings = Settings(data_dir=tmp_path, policy_file=path)

    assert [operator_status._policy_version(settings) for _ in range(3)] == ["v-1"] * 3
    assert len(loads) == 1

    path.write_text(json.dumps({**policy, "version": "v-22"}))  # a new size and mtime
    os.utime(path, ns=(1, 1))  # a clock step must not hide it either: the mtime differs
    assert operator_status._policy_version(settings) == "v-22"
    assert len(loads) == 2

    path.write_text("{")
    assert operator_status._policy_version(settings).startswith("unreadable: ")
    path.unlink()
    assert operator_status._policy_version(settings).startswith("unreadable: ")
