"""Running the embedded sandbox org: both servers on loopback over one store.

``SandboxRuntime`` starts the Pub/Sub API gRPC server and the REST server (JWT token
endpoint included) over a ``SandboxStore`` file *in the calling process*, plus optionally a
``LiveSimulator`` thread so new activity keeps arriving. Tests that want the servers (and
their fault injection) in-process use it directly.

``ensure_sandbox(data_dir)`` is the entry point the pipeline's wiring calls when no real
org is configured. It runs the sandbox as its **own detached process**
(``kpi-pipeline sandbox serve --endpoints-file DATA_DIR/sandbox.json ...``, output appended
to ``DATA_DIR/sandbox.log``), because none of the processes that need it lives long: the
dagster-daemon replaces its code server about every minute and each run is a process of
its own; a sandbox living inside one of them died with it. The first caller starts it;
every later caller, in any process, reuses it while it is alive (the pid named in
``sandbox.json`` runs and neither of its ports refuses a TCP connection). Starters take
``sandbox.start.lock`` so concurrent callers end up with one sandbox.

The serve process seeds an empty store, registers itself in ``sandbox.json`` under
``sandbox.lock`` (refusing to start when a live sandbox is registered there), removes the
file on exit, and stops on SIGTERM/SIGINT. It also stops on its own once the process that
started it is gone and no Pub/Sub or REST request arrived for ``--idle-exit-seconds``
(``KPI_SANDBOX_IDLE_EXIT_SECONDS``, default 900; 0 never), so it does not linger after
``dagster dev`` stops. ``shutdown_sandbox(data_dir)`` stops it on purpose (tests).

Where it lives: ``in_process`` (``SandboxRuntime``), ``detached`` (``ensure_sandbox``,
``shutdown_sandbox``, ``read_endpoints``: the serve process seen from the pipeline),
``registration`` (the serve process's seeding and ``sandbox.json``) and ``probes`` (pid and
port checks). This package exposes their public names.
"""

from __future__ import annotations

from kpi_pipeline.sandbox.runtime.detached import (
    ACCESS_TOKEN_ENV,
    JWT_KEY_FILE,
    LOG_FILE,
    START_LOCK_FILE,
    START_TIMEOUT_S,
    STOP_TIMEOUT_S,
    STORE_FILE,
    SandboxStartError,
    ensure_sandbox,
    read_endpoints,
    shutdown_sandbox,
)
from kpi_pipeline.sandbox.runtime.in_process import (
    HOST,
    SANDBOX_CONSUMER_KEY,
    SandboxEndpoints,
    SandboxRuntime,
    generate_connected_app,
)
from kpi_pipeline.sandbox.runtime.registration import (
    ENDPOINTS_FILE,
    LOCK_FILE,
    SEED_HISTORY_DAYS,
    SandboxAlreadyRunning,
    idle_exit_due,
    seed_if_empty,
    start_registered,
    unregister,
    write_private_file,
)

__all__ = [
    "ACCESS_TOKEN_ENV",
    "ENDPOINTS_FILE",
    "HOST",
    "JWT_KEY_FILE",
    "LOCK_FILE",
    "LOG_FILE",
    "SANDBOX_CONSUMER_KEY",
    "SEED_HISTORY_DAYS",
    "START_LOCK_FILE",
    "START_TIMEOUT_S",
    "STOP_TIMEOUT_S",
    "STORE_FILE",
    "SandboxAlreadyRunning",
    "SandboxEndpoints",
    "SandboxRuntime",
    "SandboxStartError",
    "ensure_sandbox",
    "generate_connected_app",
    "idle_exit_due",
    "read_endpoints",
    "seed_if_empty",
    "shutdown_sandbox",
    "start_registered",
    "unregister",
    "write_private_file",
]
