"""`kpi-pipeline ledger ...`: operator commands for the lead ledger.

* ``ledger upgrade [--url URL]``: migrate the ledger schema to the newest revision;
* ``ledger dead-letters [--limit N] [--channel C]``: events parked with their reason;
* ``ledger resync-windows [--all] [--close ID --note TEXT]``: spans CDC did not deliver;
* ``ledger outreach-sends [--status S] [--reset LEAD_ID]``: outreach emails and their
  outcome; ``--reset`` makes an unconfirmed, stuck or failed send eligible again (only
  after checking in Salesforce that no email went out);
* ``ledger replay-ids show | set --channel C --replay-id B64 | reset --channel C``: the
  durable replay id each CDC channel resumes after. ``set`` moves it (backwards replays
  events, which staging de-duplicates; forwards skips events, so re-sync that span);
  ``reset`` forgets it, so the channel restarts from ``KPI_CDC_INITIAL_PRESET``. Stop the
  stream first: a running stream notices the move and stops.

The URL defaults to the configured ledger (``KPI_LEDGER_URL``, else ``DATA_DIR/ledger.db``).
Output is JSON Lines, one object per row, so it pipes into ``jq``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa

from kpi_pipeline.adapters.ledger import migrations
from kpi_pipeline.adapters.ledger.engine import server_warnings
from kpi_pipeline.adapters.ledger.store import Ledger, LedgerError, create_ledger_engine
from kpi_pipeline.config import get_settings
from kpi_pipeline.core.events import (
    EventFormatError,
    format_sf_datetime,
    replay_id_from_b64,
    replay_id_hex,
    replay_id_to_b64,
    replay_id_to_int,
)


def _url(args: argparse.Namespace) -> str:
    return args.url or get_settings().resolved_ledger_url


def _print(row: dict[str, Any]) -> None:
    print(json.dumps(row, sort_keys=True, default=str))


def _upgrade(args: argparse.Namespace) -> int:
    engine = create_ledger_engine(_url(args))
    try:
        before = migrations.current_revision(engine)
        after = migrations.upgrade(engine)
        warnings = server_warnings(engine)
    finally:
        engine.dispose()
    for warning in warnings:
        print(f"kpi-pipeline ledger upgrade: warning: {warning}", file=sys.stderr)
    _print(
        {
            "url": sa.make_url(_url(args)).render_as_string(hide_password=True),
            "from": before,
            "to": after,
            "warnings": warnings,
        }
    )
    return 0


@contextmanager
def _opened_ledger(args: argparse.Namespace) -> Iterator[Ledger]:
    ledger = Ledger.from_url(_url(args))
    try:
        yield ledger
    finally:
        ledger.dispose()


def _print_fields(item: Any, *names: str, **computed: Any) -> None:
    """One JSON line of ``item``'s attributes ``names`` (a name ending in ``_at`` is a time,
    printed as a Salesforce datetime) and the ``computed`` values."""
    row = {name: getattr(item, name) for name in names}
    for name in names:
        if name.endswith("_at"):
            row[name] = format_sf_datetime(row[name])
    _print({**row, **computed})


def _dead_letters(args: argparse.Namespace) -> int:
    with _opened_ledger(args) as ledger:
        for letter in ledger.dead_letters(args.limit, channel=args.channel):
            payload = letter.payload
            _print_fields(
                letter,
                *("id", "channel", "batch_id", "stage", "reason", "created_at"),
                replay_id=replay_id_to_int(letter.replay_id),
                replay_hex=replay_id_hex(letter.replay_id),
                payload_bytes=len(payload) if payload is not None else None,
            )
    return 0


_WINDOW_FIELDS = (
    *("id", "channel", "reason", "from_replay_hex", "from_time_ms", "to_time_ms", "status"),
    *("detected_at", "closed_at", "detail"),
)
_SEND_FIELDS = (
    *("lead_id", "template_id", "status", "attempts", "to_address", "error"),
    *("started_at", "sent_at"),
)


def _resync_windows(args: argparse.Namespace) -> int:
    with _opened_ledger(args) as ledger:
        if args.close is not None:
            closed = ledger.close_resync_window(
                args.close, detail={"closed_by": "cli", "note": args.note or ""}
            )
            _print({"id": args.close, "closed": closed})
            return 0
        windows = ledger.resync_windows() if args.all else ledger.open_resync_windows()
        for window in windows:
            _print_fields(window, *_WINDOW_FIELDS)
    return 0


def _outreach_sends(args: argparse.Namespace) -> int:
    with _opened_ledger(args) as ledger:
        if args.reset is not None:
            _print({"lead_id": args.reset, "reset": ledger.reset_send(args.reset)})
            return 0
        for row in ledger.outreach_sends(args.status):
            _print_fields(row, *_SEND_FIELDS)
    return 0


def _replay_ids(args: argparse.Namespace) -> int:
    with _opened_ledger(args) as ledger:
        if args.replay_command == "set":
            ledger.set_replay_id(args.channel, _parse_replay_id(args.replay_id))
        elif args.replay_command == "reset":
            _print({"channel": args.channel, "reset": ledger.reset_replay_id(args.channel)})
            return 0
        for position in ledger.replay_positions():
            if args.replay_command == "show" or position.channel == args.channel:
                _print(_position_row(position))
    return 0


def _parse_replay_id(text: str) -> bytes:
    try:
        replay_id = replay_id_from_b64(text)
    except EventFormatError:
        replay_id = b""
    if not replay_id:
        raise LedgerError(
            f"--replay-id {text!r} is not a non-empty base64 replay id; copy it from "
            "`kpi-pipeline ledger replay-ids show` (field replay_id), e.g. AAAAAAAAAHs="
        )
    return replay_id


def _position_row(position: Any) -> dict[str, Any]:
    return {
        "channel": position.channel,
        "replay_id": replay_id_to_b64(position.replay_id),
        "replay_hex": replay_id_hex(position.replay_id),
        "commit_ms": position.commit_ms,
        "updated_at": format_sf_datetime(position.updated_at),
        "updated_by": position.updated_by,
    }


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
        "ledger",
        help="lead ledger: migrate, dead letters, re-sync windows, outreach sends, replay ids",
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
    _register_replay_ids(commands)


def _register_replay_ids(commands: argparse._SubParsersAction) -> None:
    help_text = "show, set or reset the durable replay id each CDC channel resumes after"
    parser = commands.add_parser("replay-ids", help=help_text, description=help_text)
    actions = parser.add_subparsers(dest="replay_command", required=True, metavar="ACTION")
    for name, text in (
        ("show", "list every channel's replay id (base64), newest commit time, who set it"),
        ("set", "resume CHANNEL after this replay id (stop the stream first)"),
        ("reset", "forget CHANNEL's replay id: it restarts from KPI_CDC_INITIAL_PRESET"),
    ):
        sub = actions.add_parser(name, help=text, description=text)
        sub.add_argument(
            "--url", default=None, help="SQLAlchemy URL (default: the configured ledger)"
        )
        if name != "show":
            sub.add_argument("--channel", required=True, help="e.g. /data/LeadChangeEvent")
        if name == "set":
            sub.add_argument("--replay-id", required=True, help="base64, as `show` prints it")
        sub.set_defaults(func=_guarded(_replay_ids))
