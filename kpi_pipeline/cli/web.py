"""`kpi-pipeline web serve` and `kpi-pipeline status`: the operator's HTTP server
(``kpi_pipeline.web.server``) and the same status without a server."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime

from kpi_pipeline.config import get_settings
from kpi_pipeline.web.server import serve


def serve_command(args: argparse.Namespace) -> int:
    try:
        serve(args.host, args.port, args.compact_interval)
    except OSError as exc:
        print(
            f"cannot serve on {args.host}:{args.port}: {exc}; pick another --port.", file=sys.stderr
        )
        return 2
    except KeyboardInterrupt:
        pass
    return 0


def _status_command(args: argparse.Namespace) -> int:
    """Print /status (with readiness) without a server; exit 1 when not ready."""
    from kpi_pipeline import wiring
    from kpi_pipeline.app.operator_status import Thresholds, gather_status, status_and_readiness

    settings = get_settings()
    org = wiring.probe_org(settings) if args.probe_org else None
    status = gather_status(wiring.ledger(settings), settings, now=datetime.now(UTC), org=org)
    body, readiness = status_and_readiness(status, Thresholds.from_settings(settings))
    print(json.dumps(body, indent=2))
    return 0 if readiness.ready else 1


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--port",
        type=int,
        default=None,
        help="TCP port (0: any free port; default KPI_METRICS_PORT, 9464)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 for all)")
    parser.add_argument(
        "--compact-interval",
        type=positive_seconds,
        default=10.0,
        help="seconds between compactions of finished processes' metric files (each scrape reads "
        "every file, so frequent compaction keeps scrapes fast; an idle compaction costs under 1 ms)",
    )
    parser.set_defaults(func=_with_default_port(serve_command))


def _with_default_port(command: Callable[[argparse.Namespace], int]):
    def run(args: argparse.Namespace) -> int:
        if args.port is None:  # read here, not when the parser is built
            args.port = get_settings().metrics_port
        return command(args)

    return run


def register(subparsers: argparse._SubParsersAction) -> None:
    web = subparsers.add_parser("web", help="the operator's HTTP server")
    commands = web.add_subparsers(dest="web_command", required=True, metavar="SUBCOMMAND")
    add_serve_arguments(
        commands.add_parser(
            "serve", help="serve /metrics, /healthz, /readyz and /status (FastAPI, uvicorn)"
        )
    )
    status = subparsers.add_parser(
        "status", help="print the deployment's status and readiness as JSON (exit 1: not ready)"
    )
    status.add_argument(
        "--no-org",
        dest="probe_org",
        action="store_false",
        help="leave the org probe (a token and a one-row query) out",
    )
    status.set_defaults(func=_status_command)


def positive_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds, e.g. 10")
    return seconds
