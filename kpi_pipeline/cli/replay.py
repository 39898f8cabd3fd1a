"""`kpi-pipeline replay EVENTS.jsonl --out DIR`: the whole processing path, offline
(``kpi_pipeline.app.replay``; CONTRACTS.md §7)."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path

from kpi_pipeline.app.replay import DEFAULT_BATCH_SIZE, ReplayError, replay
from kpi_pipeline.core.events import EventFormatError, format_sf_datetime, parse_sf_datetime
from kpi_pipeline.core.policy.validation import PolicyError
from kpi_pipeline.wiring import replay_ports


def parse_as_of(text: str) -> datetime:
    """An ``--as-of`` argument (ISO 8601), for argparse: a clear error names the form."""
    try:
        parsed = parse_sf_datetime(text)
    except EventFormatError as exc:
        raise argparse.ArgumentTypeError(
            f"--as-of {text!r} is not an ISO-8601 time; use e.g. 2026-11-20T00:00:00Z"
        ) from exc
    if parsed is None:
        raise argparse.ArgumentTypeError("--as-of needs a value, e.g. 2026-11-20T00:00:00Z")
    return parsed


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "replay",
        help="run the processing path offline on recorded events (deterministic)",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument(
        "events", type=Path, metavar="EVENTS.jsonl", help="recorded change events (CONTRACTS.md §2)"
    )
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output directory")
    parser.add_argument(
        "--policy", type=Path, default=None, metavar="FILE", help="routing policy JSON"
    )
    parser.add_argument(
        "--as-of",
        type=parse_as_of,
        default=None,
        metavar="ISO",
        help="KPI as-of time (default: last commit)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        metavar="N",
        help=f"events per processed batch, as the sensor would stage them (default {DEFAULT_BATCH_SIZE})",
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    try:
        result = replay(
            args.events,
            args.out,
            ports=replay_ports(),
            policy_path=args.policy,
            as_of=args.as_of,
            batch_size=args.batch_size,
        )
    except (ReplayError, EventFormatError, PolicyError) as exc:
        print(f"kpi-pipeline replay: {exc}", file=sys.stderr)
        return 2
    print(
        json.dumps(
            {
                "events": result.events,
                "leads": result.leads,
                "decisions": result.decisions,
                "as_of": format_sf_datetime(result.as_of),
                "files": [str(p) for p in result.files],
            },
            indent=2,
        )
    )
    return 0
