"""`kpi-pipeline flywheel export | training-set | load-elastic`.

- ``export (--from DIR | --ledger-url URL) --out FILE [--workload W] [--since DAY] [--until DAY]``:
  flywheel records as one deterministic JSONL file (stable order, canonical JSON).
  ``DIR`` is an emitter directory (``<workload>/<YYYY-MM-DD>[-NNN].jsonl``); the ledger
  source turns the ledger's decisions (``Ledger.decisions_between``) into records.
- ``training-set --from DIR --out DIR``: the distillation format, one
  ``<workload>.jsonl`` of ``{"messages": [...]}`` lines per workload.
- ``load-elastic --from DIR [--url URL] [--index NAME]``: put the index template and
  bulk-load (idempotent: a second load adds nothing). Exit 1 when any record failed.

Days are UTC, ``--since`` inclusive and ``--until`` exclusive. Exit 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any

from kpi_pipeline.adapters.flywheel.loaders.to_elastic import ElasticLoader, ElasticLoadError
from kpi_pipeline.adapters.flywheel.loaders.to_jsonl import (
    export_training_set,
    read_directory,
    write_jsonl,
)
from kpi_pipeline.config import get_settings
from kpi_pipeline.core.flywheel.records import record_from_decision
from kpi_pipeline.core.flywheel.schema import WORKLOAD_IDS


class _InputError(ValueError):
    """Bad command-line input; printed without a traceback, exit 2."""


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a day; use YYYY-MM-DD (UTC)") from None


def _add_selection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workload", choices=WORKLOAD_IDS, help="only this workload")
    parser.add_argument(
        "--since", metavar="DAY", type=_day, help="first UTC day included (YYYY-MM-DD)"
    )
    parser.add_argument(
        "--until", metavar="DAY", type=_day, help="first UTC day excluded (YYYY-MM-DD)"
    )


def _add_source_dir(parser: Any, *, required: bool) -> None:
    """``--from DIR``: a flywheel log directory (``parser`` may be a mutually exclusive group)."""
    parser.add_argument(
        "--from",
        dest="source_dir",
        metavar="DIR",
        type=Path,
        required=required,
        help="flywheel log directory",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    flywheel = subparsers.add_parser(
        "flywheel", help="export flywheel records, build training sets, load Elasticsearch"
    )
    commands = flywheel.add_subparsers(dest="flywheel_command", required=True, metavar="SUBCOMMAND")

    export = commands.add_parser("export", help="flywheel records as one deterministic JSONL file")
    source = export.add_mutually_exclusive_group(required=True)
    _add_source_dir(source, required=False)
    source.add_argument("--ledger-url", metavar="URL", help="SQLAlchemy URL of the lead ledger")
    export.add_argument(
        "--out", metavar="FILE", type=Path, required=True, help="JSONL file to write"
    )
    export.add_argument(
        "--client-id", metavar="ID", help="client_id of ledger records (default: KPI_CLIENT_ID)"
    )
    _add_selection(export)
    export.set_defaults(func=_export)

    training = commands.add_parser("training-set", help="distillation JSONL per workload")
    _add_source_dir(training, required=True)
    training.add_argument("--out", metavar="DIR", type=Path, required=True, help="output directory")
    _add_selection(training)
    training.set_defaults(func=_training_set)

    load = commands.add_parser("load-elastic", help="bulk-load flywheel records into Elasticsearch")
    _add_source_dir(load, required=True)
    load.add_argument(
        "--url", metavar="URL", help="Elasticsearch URL (default: KPI_ELASTICSEARCH_URL)"
    )
    load.add_argument(
        "--index", metavar="NAME", help="index name (default: KPI_FLYWHEEL_INDEX, 'flywheel')"
    )
    _add_selection(load)
    load.set_defaults(func=_load_elastic)


def _guarded(command: Any) -> Any:
    """Print expected failures as one clear line on stderr instead of a traceback."""

    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except (_InputError, ValueError, FileNotFoundError) as exc:
            return _fail(args, exc, exit_code=2)
        except ElasticLoadError as exc:
            return _fail(args, exc, exit_code=1)

    return run


def _fail(args: argparse.Namespace, exc: Exception, *, exit_code: int) -> int:
    print(f"kpi-pipeline flywheel {args.flywheel_command}: error: {exc}", file=sys.stderr)
    return exit_code


def _check_range(args: argparse.Namespace) -> None:
    if args.since and args.until and args.since >= args.until:
        raise _InputError(f"--since {args.since} must be before --until {args.until}")


def _from_directory(args: argparse.Namespace) -> list[dict[str, Any]]:
    _check_range(args)
    return read_directory(
        args.source_dir, workload_id=args.workload, since=args.since, until=args.until
    )


def _from_ledger(args: argparse.Namespace) -> list[dict[str, Any]]:
    _check_range(args)
    try:
        from kpi_pipeline.adapters.ledger.store import Ledger
    except ImportError as exc:
        raise _InputError(
            f"the ledger is not available ({exc}); export from a directory with --from DIR"
        ) from None
    ledger = Ledger.from_url(args.ledger_url)
    if not hasattr(ledger, "decisions_between"):
        raise _InputError(
            "this ledger has no decisions_between() yet; export from a directory with --from DIR"
        )
    start, end = (
        datetime.combine(day, time.min, tzinfo=UTC) if day else None
        for day in (args.since, args.until)
    )
    client_id = args.client_id or get_settings().client_id
    try:
        records = [
            record_from_decision(d, client_id=client_id)
            for d in ledger.decisions_between(start, end)
        ]
    finally:
        ledger.dispose()
    return [r for r in records if args.workload in (None, r["workload_id"])]


@_guarded
def _export(args: argparse.Namespace) -> int:
    records = _from_ledger(args) if args.ledger_url else _from_directory(args)
    count = write_jsonl(records, args.out)
    print(f"wrote {count} flywheel record(s) to {args.out}")
    return 0


@_guarded
def _training_set(args: argparse.Namespace) -> int:
    paths = export_training_set(_from_directory(args), args.out)
    for workload, path in paths.items():
        lines = sum(1 for _ in path.open(encoding="utf-8"))
        print(f"{workload}: {lines} example(s) in {path}")
    if not paths:
        print(f"no flywheel records found in {args.source_dir}")
    return 0


@_guarded
def _load_elastic(args: argparse.Namespace) -> int:
    settings = get_settings()
    url = args.url or settings.elasticsearch_url
    if not url:
        raise _InputError("no Elasticsearch URL: pass --url or set KPI_ELASTICSEARCH_URL")
    loader = ElasticLoader(url, index=args.index or settings.flywheel_index)
    records = _from_directory(args)
    loader.ensure_index_template()
    report = loader.load(records, refresh=True)
    print(json.dumps({"index": loader.index, **report.to_dict()}, sort_keys=True))
    return 0 if report.ok else 1
