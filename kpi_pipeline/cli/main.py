"""`kpi-pipeline`: the command line for what is not a Dagster UI action (CONTRACTS.md §7).

Every command lives in this package, one module per area; each exposes
``register(subparsers: argparse._SubParsersAction) -> None``, and the parsers it adds set
``func`` (called with the parsed namespace, returning an exit code).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from kpi_pipeline.cli import flywheel, ledger, metrics, policy, replay, sandbox, web

COMMAND_MODULES = (
    sandbox,  # sandbox simulate | serve | export
    policy,  # policy validate | simulate
    replay,  # replay EVENTS.jsonl --out DIR
    web,  # web serve | status
    metrics,  # metrics compact | serve (the old name of web serve)
    flywheel,  # flywheel export | training-set
    ledger,  # ledger upgrade | dead-letters | resync-windows | replay-ids
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kpi-pipeline",
        description="Salesforce CDC to sales KPIs: offline and operator commands.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from kpi_pipeline.telemetry import logs

    parser = build_parser()
    args = parser.parse_args(argv)
    logs.configure()  # KPI_LOG_FORMAT: text (default) or json, secrets redacted either way
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
