"""``run_beside``: a forked child does one piece of work while this process does another."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kpi_pipeline.adapters.beside import BesideError, run_beside


def test_both_pieces_run_in_two_processes_and_the_foreground_result_comes_back(
    tmp_path: Path,
) -> None:
    here = os.getpid()

    def background() -> None:
        (tmp_path / "beside.txt").write_text(str(os.getpid()))

    assert run_beside(background, lambda: os.getpid()) == here
    child = int((tmp_path / "beside.txt").read_text())
    assert child != here


def test_a_failure_beside_is_raised_here_with_its_message(tmp_path: Path) -> None:
    def background() -> None:
        raise ValueError("flywheel record fw-1 is invalid: timestamp: must be an integer")

    done: list[str] = []
    with pytest.raises(BesideError, match=r"ValueError: flywheel record fw-1 is invalid"):
        run_beside(background, lambda: done.append("foreground"))
    assert done == ["foreground"]  # this side still ran to its end


def test_a_failure_here_still_waits_for_the_child(tmp_path: Path) -> None:
    marker = tmp_path / "child-finished"

    def background() -> None:
        marker.write_text("yes")

    def foreground() -> None:
        raise RuntimeError("KPI rollup failed")

    with pytest.raises(RuntimeError, match="KPI rollup failed"):
        run_beside(background, foreground)
    assert marker.read_text() == "yes"  # joined before the error left run_beside
