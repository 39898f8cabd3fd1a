"""`kpi-pipeline sandbox ...`: simulate activity into a store, serve it, export its change log."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from kpi_pipeline.core.events import EventFormatError, parse_sf_datetime, to_epoch_ms
from kpi_pipeline.sandbox.runtime import ACCESS_TOKEN_ENV

# Test-only fault: read from the environment because the pipeline starts the serve process
# itself (kpi_pipeline.sandbox.runtime), passing its own environment on; a hard-kill test sets
# it on the dagster processes and the sandbox they start inherits it.
UPDATE_DELAY_ENV = "KPI_SANDBOX_REST_UPDATE_DELAY_SECONDS"


def register(subparsers: argparse._SubParsersAction) -> None:
    sandbox = subparsers.add_parser(
        "sandbox", help="the embedded sandbox org: simulate activity, serve it, export events"
    )
    commands = sandbox.add_subparsers(dest="sandbox_command", required=True, metavar="SUBCOMMAND")

    sim = commands.add_parser("simulate", help="write simulated sales activity into a store")
    sim.add_argument(
        "--store", required=True, type=Path, help="sandbox store file (SQLite; created if missing)"
    )
    sim.add_argument(
        "--leads", type=int, default=400, help="leads arriving in the window (default 400)"
    )
    sim.add_argument(
        "--days", type=float, default=2.0, help="length of the window in days (default 2)"
    )
    sim.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    sim.add_argument(
        "--start",
        help="window start, ISO-8601 UTC (default: the window ends now, inside retention)",
    )
    sim.set_defaults(func=_simulate)

    serve = commands.add_parser(
        "serve",
        help="serve a store over the Pub/Sub API and REST on 127.0.0.1",
        description="Serve a sandbox store until SIGTERM/SIGINT. With --endpoints-file it "
        "registers itself there (the pipeline's DATA_DIR/sandbox.json, as `dagster dev` "
        "starts it) and exits once the process that started it is gone and no request "
        "arrived for --idle-exit-seconds.",
    )
    serve.add_argument("--store", required=True, type=Path, help="sandbox store file (SQLite)")
    serve.add_argument(
        "--pubsub-port", type=int, default=0, help="gRPC port (default: any free port)"
    )
    serve.add_argument(
        "--rest-port", type=int, default=0, help="REST port (default: any free port)"
    )
    serve.add_argument(
        "--access-token",
        default=os.environ.get(ACCESS_TOKEN_ENV) or "sandbox-token",
        help=f"static token accepted beside JWT-issued ones (default: ${ACCESS_TOKEN_ENV} "
        "or sandbox-token)",
    )
    serve.add_argument(
        "--tenant-id", default="00D000000000001AAA", help="org id the sandbox reports"
    )
    serve.add_argument(
        "--tls",
        action="store_true",
        help="serve gRPC and REST over TLS, as a real org does, with a certificate for "
        "localhost/127.0.0.1 signed by a CA generated into --tls-dir (its sandbox_ca.pem is "
        "what clients trust)",
    )
    serve.add_argument(
        "--tls-dir",
        type=Path,
        help="where the CA and server certificate live (default: the store's directory)",
    )
    serve.add_argument(
        "--keepalive-seconds",
        type=float,
        default=270.0,
        help="a quiet Subscribe stream gets an empty keepalive response this often (default "
        "270, as a real org)",
    )
    serve.add_argument(
        "--replay-id-bytes",
        type=int,
        default=8,
        help="length of the replay ids the Pub/Sub server issues (default 8; real ids are "
        "opaque and some orgs issue longer ones, e.g. 10)",
    )
    serve.add_argument(
        "--seed-leads-per-day",
        type=int,
        default=0,
        help="create the store if missing and, when it has no events, seed 2 days of history "
        "at this many leads per day (default 0: the store must exist)",
    )
    serve.add_argument(
        "--live-leads-per-hour",
        type=float,
        default=0.0,
        help="keep simulating this many new leads per hour while serving (default 0: off)",
    )
    serve.add_argument(
        "--speedup", type=float, default=600.0, help="live responses come this many times faster"
    )
    serve.add_argument("--seed", type=int, default=7, help="seed of the seeding and live simulator")
    serve.add_argument(
        "--jwt-key-out",
        type=Path,
        help="write the connected app's private key (PEM) here to try the JWT flow",
    )
    serve.add_argument(
        "--endpoints-file",
        type=Path,
        help="register in this JSON file (pid, endpoints, JWT details) under its lock, remove "
        "it on exit; refuse to start when it names a live sandbox",
    )
    serve.add_argument(
        "--parent-pid",
        type=int,
        help="the process this sandbox serves (default: the one that started it)",
    )
    serve.add_argument(
        "--idle-exit-seconds",
        type=float,
        default=900.0,
        help="exit once the parent process is gone and no Pub/Sub or REST request arrived "
        "for this long (default 900; 0: never)",
    )
    serve.add_argument(
        "--update-delay-seconds",
        type=float,
        default=None,
        help="test fault: answer each record update this long after applying it (default: "
        f"${UPDATE_DELAY_ENV} or 0)",
    )
    serve.set_defaults(func=_serve)

    export = commands.add_parser(
        "export", help="write the store's change log as recorded JSON Lines"
    )
    export.add_argument("--store", required=True, type=Path, help="sandbox store file (SQLite)")
    export.add_argument("--out", required=True, type=Path, help="output EVENTS.jsonl")
    export.add_argument(
        "--channel",
        help="one channel for every event (e.g. /data/SalesKpis__chn); default per entity",
    )
    export.add_argument(
        "--iso-datetimes", action="store_true", help="DateTimes as ISO-8601 instead of epoch ms"
    )
    export.set_defaults(func=_export)


def _existing_store(path: Path) -> str | None:
    """An error message when ``path`` is not an existing store file."""
    if not path.is_file():
        return f"error: sandbox store {path} does not exist; create it with `kpi-pipeline sandbox simulate --store {path}`"
    return None


def _simulate(args: argparse.Namespace) -> int:
    from kpi_pipeline.sandbox.simulator import simulate
    from kpi_pipeline.sandbox.store import SandboxStore

    start_ms = None
    if args.start:
        try:
            start = parse_sf_datetime(args.start)
        except EventFormatError as exc:
            print(f"error: --start: {exc} (example: 2026-01-05T00:00:00Z)", file=sys.stderr)
            return 2
        start_ms = to_epoch_ms(start) if start else None
    if args.leads < 0 or args.days <= 0:
        print("error: --leads must be >= 0 and --days > 0", file=sys.stderr)
        return 2
    store = SandboxStore(args.store)
    try:
        summary = simulate(
            store, leads=args.leads, days=args.days, seed=args.seed, start_ms=start_ms
        )
    finally:
        store.close()
    responses = ", ".join(f"{kind} {count}" for kind, count in sorted(summary.responses.items()))
    print(
        f"simulated {summary.leads} leads from {_iso(summary.start_ms)} to {_iso(summary.end_ms)} "
        f"into {args.store}\n"
        f"  change events: {summary.changes} (replay {summary.first_replay}..{summary.last_replay})\n"
        f"  first responses: {responses or 'none'}; never answered: {summary.leads_never_answered}\n"
        f"  automation emails: {summary.automation_emails}; inbound emails: {summary.inbound_emails}; "
        f"lead deletes: {summary.lead_deletes}"
    )
    return 0


def _serve(args: argparse.Namespace) -> int:
    from kpi_pipeline.sandbox.runtime import (
        SandboxAlreadyRunning,
        SandboxRuntime,
        seed_if_empty,
        start_registered,
        unregister,
        write_private_file,
    )
    from kpi_pipeline.sandbox.store import SandboxStoreError

    if error := _serve_input_error(args):
        print(error, file=sys.stderr)
        return 2
    update_delay = _update_delay(args)
    if update_delay is None:
        print(f"error: ${UPDATE_DELAY_ENV} must be a number of seconds >= 0", file=sys.stderr)
        return 2
    from kpi_pipeline.telemetry import logs

    logs.configure()  # the sandbox logs like every other process (KPI_LOG_FORMAT)
    logs.register_secret(args.access_token)
    parent_pid = args.parent_pid or os.getppid()
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    runtime = SandboxRuntime(
        args.store,
        pubsub_port=args.pubsub_port,
        rest_port=args.rest_port,
        access_token=args.access_token,
        tenant_id=args.tenant_id,
        tls_dir=(args.tls_dir or args.store.resolve().parent) if args.tls else None,
        plaintext=not args.tls,
        replay_id_bytes=args.replay_id_bytes,
        keepalive_interval_s=args.keepalive_seconds,
    )

    def prepare() -> None:
        if args.seed_leads_per_day > 0:
            args.store.parent.mkdir(parents=True, exist_ok=True)
            seed_if_empty(args.store, leads_per_day=args.seed_leads_per_day, seed=args.seed)
        if args.jwt_key_out and runtime.jwt_private_key_pem:
            write_private_file(args.jwt_key_out, runtime.jwt_private_key_pem)

    try:
        try:
            if args.endpoints_file:
                info = _registration_info(args, parent_pid)
                start_registered(runtime, args.endpoints_file, prepare=prepare, extra=info)
            else:
                prepare()
                runtime.start()
        except (SandboxAlreadyRunning, SandboxStoreError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        if update_delay > 0:
            runtime.rest_server.faults.delay_updates(update_delay)
            _say(f"sandbox: record updates answered {update_delay:g} s after applying")
        if args.live_leads_per_hour > 0:
            runtime.start_live(
                seed=args.seed,
                leads_per_hour=args.live_leads_per_hour,
                response_speedup=args.speedup,
            )
        _print_endpoints(args, runtime)
        _wait_for_stop(stop, runtime, parent_pid, args.idle_exit_seconds)
        _say("sandbox: stopping")
    finally:
        runtime.stop()
        if args.endpoints_file:
            unregister(args.endpoints_file)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _update_delay(args: argparse.Namespace) -> float | None:
    """--update-delay-seconds, else $KPI_SANDBOX_REST_UPDATE_DELAY_SECONDS, else 0 (None: invalid)."""
    value = args.update_delay_seconds
    if value is None:
        try:
            value = float(os.environ.get(UPDATE_DELAY_ENV) or 0)
        except ValueError:
            return None
    return value if value >= 0 else None


def _serve_input_error(args: argparse.Namespace) -> str | None:
    if args.seed_leads_per_day < 0:
        return "error: --seed-leads-per-day must be >= 0"
    if args.idle_exit_seconds < 0:
        return "error: --idle-exit-seconds must be >= 0 (0 never exits on idle)"
    if args.tls_dir is not None and not args.tls:
        return "error: --tls-dir only applies with --tls"
    if not 8 <= args.replay_id_bytes <= 32:
        return "error: --replay-id-bytes must be between 8 and 32"
    if args.keepalive_seconds <= 0:
        return "error: --keepalive-seconds must be > 0"
    if args.seed_leads_per_day == 0:
        return _existing_store(args.store)
    return None


def _registration_info(args: argparse.Namespace, parent_pid: int) -> dict[str, object]:
    from kpi_pipeline.sandbox.runtime import SANDBOX_CONSUMER_KEY
    from kpi_pipeline.sandbox.store import INTEGRATION_USER

    info: dict[str, object] = {
        "parent_pid": parent_pid,
        "idle_exit_seconds": args.idle_exit_seconds,
    }
    if args.jwt_key_out:  # lets a user try the JWT flow against the sandbox
        info |= {
            "jwt_private_key_file": str(args.jwt_key_out.resolve()),
            "jwt_consumer_key": SANDBOX_CONSUMER_KEY,
            "jwt_username": INTEGRATION_USER.email,
        }
    return info


def _wait_for_stop(
    stop: threading.Event, runtime, parent_pid: int, idle_exit_seconds: float
) -> None:
    """Until SIGTERM/SIGINT, or idle with the parent gone (see ``idle_exit_due``)."""
    from kpi_pipeline.sandbox.runtime import idle_exit_due

    while not stop.wait(0.5):
        if idle_exit_due(runtime, parent_pid=parent_pid, idle_exit_seconds=idle_exit_seconds):
            print(
                f"sandbox: no request for {runtime.idle_seconds():.0f} s and the process that "
                f"started it (pid {parent_pid}) is gone",
                flush=True,
            )
            return


def _print_endpoints(args: argparse.Namespace, runtime) -> None:
    from kpi_pipeline.sandbox.runtime import SANDBOX_CONSUMER_KEY
    from kpi_pipeline.sandbox.store import INTEGRATION_USER

    transport = "gRPC over TLS" if runtime.tls else "plaintext gRPC"
    lines = [
        f"sandbox org serving {args.store} (Ctrl-C or SIGTERM stops it)",
        f"  pubsub: {runtime.pubsub_target} ({transport}, eventbus.v1.PubSub)",
        f"  rest: {runtime.rest_url} (login and instance URL)",
        # Not into a log file: with an endpoints file (the embedded sandbox, whose output is
        # DATA_DIR/sandbox.log) clients read the token from there instead.
        f"  access token: {args.access_token}"
        if not args.endpoints_file
        else f"  access token: access_token in {args.endpoints_file}",
        f"  tenant id: {args.tenant_id}",
    ]
    if runtime.tls:
        lines.append(f"  CA file: {runtime.tls.ca_file.resolve()} (trust it in clients)")
    if args.jwt_key_out:
        lines.append(
            f"  JWT: consumer key {SANDBOX_CONSUMER_KEY}, user {INTEGRATION_USER.email}, key {args.jwt_key_out}"
        )
    _say("\n".join(lines))


def _say(text: str) -> None:
    """What the sandbox tells its operator: plain lines on stdout, or, with
    KPI_LOG_FORMAT=json, log lines like the rest of its output (the embedded sandbox writes
    both streams into DATA_DIR/sandbox.log, which then stays one JSON object per line)."""
    from kpi_pipeline.config import get_settings

    if get_settings().log_format == "json":
        logger = logging.getLogger("kpi_pipeline.sandbox")
        for line in text.splitlines():
            logger.info(line.strip())
    else:
        print(text, flush=True)


def _export(args: argparse.Namespace) -> int:
    from kpi_pipeline.sandbox.store import SandboxStore

    if error := _existing_store(args.store):
        print(error, file=sys.stderr)
        return 2
    store = SandboxStore(args.store)
    try:
        count = store.export_recorded(
            args.out, channel_for_entity=args.channel, iso_datetimes=args.iso_datetimes
        )
    finally:
        store.close()
    print(f"wrote {count} change events to {args.out}")
    return 0


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
