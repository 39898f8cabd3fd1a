"""`kpi-pipeline metrics compact | serve`: fold finished processes' metric files into the archive,
and the old name of `web serve` (kept as an alias for one release).

``python -m kpi_pipeline.cli.metrics serve|compact ...`` runs the same commands without importing
every other area (0.2 s start instead of 1 s), for process supervisors and tests that start the
endpoint often.
"""

from __future__ import annotations

import argparse
import sys

from kpi_pipeline.telemetry import metrics, metrics_store


def _compact_command(args: argparse.Namespace) -> int:
    directory = metrics.configure()
    result = metrics_store.compact(directory)
    print(
        f"absorbed {result.files_absorbed} files of {result.dead_processes} finished processes "
        f"into archive generation {result.generation} in {directory}"
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from kpi_pipeline.cli import web

    parser = subparsers.add_parser("metrics", help="Prometheus metrics endpoint")
    commands = parser.add_subparsers(dest="metrics_command", required=True, metavar="SUBCOMMAND")
    web.add_serve_arguments(
        commands.add_parser("serve", help="the old name of `web serve` (kept for one release)")
    )
    compact_parser = commands.add_parser(
        "compact", help="fold finished processes' metric files into the archive"
    )
    compact_parser.set_defaults(func=_compact_command)


def main(argv: list[str] | None = None) -> int:
    """`python -m kpi_pipeline.cli.metrics serve|compact ...` (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m kpi_pipeline.cli.metrics")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["metrics", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
