"""`kpi-pipeline`: the command line for what is not a Dagster UI action (CONTRACTS.md §7).

Each area owns its sub-commands in its own module, which exposes
``register(subparsers: argparse._SubParsersAction) -> None``; the parsers it adds set
``func`` (called with the parsed namespace, returning an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

COMMAND_MODULES = (
    "kpi_pipeline.cli.sandbox",  # sandbox simulate | serve
    "kpi_pipeline.cli.policy",  # policy validate | simulate
    "kpi_pipeline.app.replay",  # replay EVENTS.jsonl --out DIR
    "kpi_pipeline.web.server",  # web serve | status
    "kpi_pipeline.telemetry.exposition",  # metrics compact | serve (the old name of web serve)
    "kpi_pipeline.cli.flywheel",  # flywheel export | training-set
    "kpi_pipeline.cli.ledger",  # ledger upgrade | dead-letters | resync-windows | replay-ids
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kpi-pipeline",
        description="Salesforce CDC to sales KPIs: offline and operator commands.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(
                exc.name
            ):  # area not built yet; other errors are real
                continue
            raise
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
