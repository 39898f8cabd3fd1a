"""`kpi-pipeline ledger ...`: operator commands for the lead ledger.

* ``ledger upgrade [--url URL]``: migrate the ledger schema to the newest revision;
* ``ledger dead-letters [--limit N] [--channel C]``: events parked with their reason;
* ``ledger resync-windows [--all] [--close ID --note TEXT]``: spans CDC did not deliver;
* ``ledger outreach-sends [--status S] [--reset LEAD_ID]``: outreach emails and their
  outcome; ``--reset`` makes an unconfirmed, stuck or failed send eligible again (only
  after checking in Salesforce that no email went out).

The URL defaults to the configured ledger (``KPI_LEDGER_URL``, else ``DATA_DIR/ledger.db``).
Output is JSON Lines, one object per row, so it pipes into ``jq``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import sqlalchemy as sa

from kpi_pipeline.cdc.events import format_sf_datetime, replay_id_hex, replay_id_to_int
from kpi_pipeline.config import get_settings
from kpi_pipeline.ledger import migrations
from kpi_pipeline.ledger.store import Ledger, LedgerError, create_ledger_engine


def _url(args: argparse.Namespace) -> str:
    return args.url or get_settings().resolved_ledger_url


def _print(row: dict[str, Any]) -> None:
    print(json.dumps(row, sort_keys=True, default=str))


def _upgrade(args: argparse.Namespace) -> int:
    engine = create_ledger_engine(_url(args))
    try:
        before = migrations.current_revision(engine)
        after = migrations.upgrade(engine)
    finally:
        engine.dispose()
    _print(
        {
            "url": sa.make_url(_url(args)).render_as_string(hide_password=True),
            "from": before,
            "to": after,
        }
    )
    return 0


def _dead_letters(args: argparse.Namespace) -> int:
    ledger = Ledger.from_url(_url(args))
    try:
        for letter in ledger.dead_letters(args.limit, channel=args.channel):
            _print(
                {
                    "id": letter.id,
                    "channel": letter.channel,
                    "replay_id": replay_id_to_int(letter.replay_id),
                    "replay_hex": replay_id_hex(letter.replay_id),
                    "batch_id": letter.batch_id,
                    "stage": letter.stage,
                    "reason": letter.reason,
                    "payload_bytes": len(letter.payload) if letter.payload is not None else None,
                    "created_at": format_sf_datetime(letter.created_at),
                }
            )
    finally:
        ledger.dispose()
    return 0


def _resync_windows(args: argparse.Namespace) -> int:
    ledger = Ledger.from_url(_url(args))
    try:
        if args.close is not None:
            closed = ledger.close_resync_window(
                args.close, detail={"closed_by": "cli", "note": args.note or ""}
            )
            _print({"id": args.close, "closed": closed})
            return 0
        windows = ledger.resync_windows() if args.all else ledger.open_resync_windows()
        for window in windows:
            _print(
                {
                    "id": window.id,
                    "channel": window.channel,
                    "reason": window.reason,
                    "from_replay_hex": window.from_replay_hex,
                    "from_time_ms": window.from_time_ms,
                    "to_time_ms": window.to_time_ms,
                    "status": window.status,
                    "detected_at": format_sf_datetime(window.detected_at),
                    "closed_at": format_sf_datetime(window.closed_at),
                    "detail": window.detail,
                }
            )
    finally:
        ledger.dispose()
    return 0


def _outreach_sends(args: argparse.Namespace) -> int:
    ledger = Ledger.from_url(_url(args))
    try:
        if args.reset is not None:
            _print({"lead_id": args.reset, "reset": ledger.reset_send(args.reset)})
            return 0
        for row in ledger.outreach_sends(args.status):
            _print(
                {
                    "lead_id": row.lead_id,
                    "template_id": row.template_id,
                    "status": row.status,
                    "attempts": row.attempts,
                    "to_address": row.to_address,
                    "error": row.error,
                    "started_at": format_sf_datetime(row.started_at),
                    "sent_at": format_sf_datetime(row.sent_at),
                }
            )
    finally:
        ledger.dispose()
    return 0


def _guarded(func):  # type: ignore[no-untyped-def]
    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except (LedgerError, sa.exc.OperationalError) as exc:
            print(f"kpi-pipeline ledger {args.ledger_command}: {exc}", file=sys.stderr)
            return 2

    return run


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "ledger", help="lead ledger: migrate, dead letters, re-sync windows, outreach sends"
    )
    commands = parser.add_subparsers(dest="ledger_command", required=True, metavar="LEDGER_COMMAND")

    def add(name: str, help_text: str, func) -> argparse.ArgumentParser:  # type: ignore[no-untyped-def]
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument(
            "--url", default=None, help="SQLAlchemy URL (default: the configured ledger)"
        )
        sub.set_defaults(func=_guarded(func))
        return sub

    add("upgrade", "migrate the ledger schema to the newest revision", _upgrade)
    letters = add(
        "dead-letters", "list events parked with their reason, newest first", _dead_letters
    )
    letters.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    letters.add_argument("--channel", default=None, help="only this channel")
    windows = add(
        "resync-windows",
        "list open re-sync windows (gaps, overflow, expired replay ids)",
        _resync_windows,
    )
    windows.add_argument("--all", action="store_true", help="include closed windows")
    windows.add_argument("--close", type=int, default=None, metavar="ID", help="close this window")
    windows.add_argument("--note", default=None, help="note stored with --close")
    sends = add("outreach-sends", "list outreach email sends and their outcome", _outreach_sends)
    sends.add_argument("--status", default=None, help="only this status (e.g. unconfirmed)")
    sends.add_argument(
        "--reset",
        default=None,
        metavar="LEAD_ID",
        help="make this lead's unconfirmed/stuck/failed send eligible again (check Salesforce first)",
    )
