"""Typed settings for every part of kpi_pipeline.

All settings come from the environment with the prefix ``KPI_`` (or a ``.env`` file in
the working directory; see ``.env.example``). Nothing here performs I/O beyond reading
the environment, so core code may import it.

Without any ``KPI_SALESFORCE_*`` credentials the pipeline runs against the embedded
sandbox org (``kpi_pipeline.sandbox``), started in-process on loopback ports.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_CHANNELS = (
    "/data/LeadChangeEvent",
    "/data/TaskChangeEvent",
    "/data/EmailMessageChangeEvent",
)


class Settings(BaseSettings):
    """Every knob of the pipeline. Field descriptions are the documentation (README lists them)."""

    model_config = SettingsConfigDict(
        env_prefix="KPI_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    # --- local state -------------------------------------------------------------------
    data_dir: Path = Field(
        Path(".kpi_data"),
        description="Directory for local state: sandbox store, SQLite ledger, flywheel logs, metrics.",
    )
    ledger_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the lead ledger. Default: SQLite file DATA_DIR/ledger.db. "
        "Production: postgresql+psycopg2://user@host/db.",
    )
    timezone: str = Field("UTC", description="Timezone used for daily KPI partitions.")

    # --- CDC ---------------------------------------------------------------------------
    cdc_channels: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_CHANNELS),
        description="Comma-separated Pub/Sub channels to drain, e.g. /data/LeadChangeEvent or a "
        "custom /data/SalesKpis__chn carrying all three objects.",
    )
    cdc_max_events_per_tick: int = Field(
        500, ge=1, description="Upper bound of events fetched per channel in one sensor tick."
    )
    cdc_fetch_timeout_seconds: float = Field(
        8.0,
        gt=0,
        description="Upper bound of time spent fetching per channel in one sensor tick (Dagster "
        "times a tick out after 60 s).",
    )
    cdc_initial_preset: Literal["EARLIEST", "LATEST"] = Field(
        "EARLIEST", description="Where a channel with no stored replay id starts."
    )
    cdc_on_invalid_replay: Literal["EARLIEST", "LATEST"] = Field(
        "EARLIEST",
        description="Where to restart when the stored replay id is corrupted or outside retention. "
        "The gap is recorded as a re-sync window either way.",
    )
    cdc_stall_timeout_seconds: float = Field(
        300.0,
        gt=0,
        description="Subscribe stream with no response (not even a keepalive) for this long is considered dead.",
    )
    cdc_stalled_batch_max_attempts: int = Field(
        3,
        ge=1,
        description="Sensor mode: runs cdc_sensor requests with one staged batch at their head "
        "(Dagster's automatic retries of them not counted); after that the batch stays pending "
        "(kpi-pipeline ledger, live_path_health) for an operator and the batches after it go on.",
    )
    cdc_max_events_per_run: int = Field(
        20000,
        ge=1,
        description="Sensor mode: upper bound of events one process_cdc_batch run takes from the "
        "pending batches (oldest first); the next run takes the rest once it has finished.",
    )
    cdc_lead_partitions: int = Field(
        1,
        ge=1,
        le=256,
        description="Sensor mode: process_cdc_batch runs per round of pending batches, one per "
        "lead partition (lead-id hash; an activity goes with its lead). 1 is one run for "
        "everything; N > 1 needs the kpi/lead_partition tag concurrency limit of DEPLOYMENT.md.",
    )
    sensor_interval_seconds: int = Field(
        1,
        ge=1,
        description="Minimum seconds between cdc_sensor ticks. Dagster's daemon loop runs every 5 s, "
        "so 1 means every loop; exactly 5 makes about half the ticks slip to 10 s (bench/RESULTS.md).",
    )
    cdc_mode: Literal["stream", "sensor"] = Field(
        "stream",
        description="stream: one long-lived cdc_stream run subscribes to every channel and "
        "processes the responses as they arrive (cdc_sensor keeps that run alive); sensor: "
        "cdc_sensor fetches in bounded ticks and keeps at most one process_cdc_batch run going, "
        "which processes every pending batch in replay order.",
    )
    cdc_stream_generation_seconds: float = Field(
        1800.0,
        ge=10,
        description="A cdc_stream run ends gracefully after this long and cdc_sensor starts the "
        "next one, so each run's event log stays bounded.",
    )
    cdc_stream_lease_seconds: float = Field(
        30.0,
        ge=3,
        description="Lease on each channel held by the cdc_stream run (renewed every third of "
        "it); a killed run's channels are taken over once it expires.",
    )
    cdc_processing_alert_seconds: float = Field(
        300.0,
        gt=0,
        description="The live_path_health check fails (and /metrics shows it) once a staged batch "
        "has waited this long to be processed, or in stream mode when no cdc_stream run holds a "
        "channel.",
    )
    cdc_run_max_runtime_seconds: int = Field(
        600,
        ge=30,
        description="dagster/max_runtime of process_cdc_batch: run monitoring fails a run still "
        "going after this long (a run takes seconds; a worker that died holds its run slot "
        "until then), and cdc_sensor requests its batches again.",
    )
    cdc_idle_return_seconds: float = Field(
        0.25,
        gt=0,
        description="A fetch returns once nothing arrived for this long (the stream is caught up); "
        "the next tick continues from the cursor. Longer waits only delay the tick.",
    )

    # --- Scale-out (DEPLOYMENT.md §4) -----------------------------------------------------
    executor: Literal["in_process", "celery"] = Field(
        "in_process",
        description="Executor of the jobs that fan out (kpi_backfill: a step per day; cdc_resync: "
        "a step per window). celery sends each step to `dagster-celery worker start` workers over "
        "DAGSTER_CELERY_BROKER_URL (results in DAGSTER_CELERY_BACKEND_URL) and needs the celery "
        "extra; the live path (process_cdc_batch, cdc_stream) stays in process either way.",
    )
    celery_queue_prefix: str = Field(
        "",
        description="With KPI_EXECUTOR=celery, KPI steps go to queue <prefix>kpi and re-sync steps "
        "to <prefix>resync (start workers with -q for the ones they serve); a prefix keeps two "
        "deployments on one broker apart.",
    )

    # --- Salesforce (empty => embedded sandbox) -----------------------------------------
    salesforce_login_url: str = Field(
        "https://login.salesforce.com",
        description="OAuth host for the JWT bearer flow (test.salesforce.com for sandboxes).",
    )
    salesforce_client_id: str | None = Field(
        None, description="Connected app consumer key (JWT iss)."
    )
    salesforce_username: str | None = Field(
        None, description="Integration user's username (JWT sub)."
    )
    salesforce_private_key_file: Path | None = Field(
        None, description="PEM private key matching the connected app's certificate (JWT RS256)."
    )
    salesforce_api_version: str = Field("64.0", description="REST API version used for write-back.")
    salesforce_session_seconds: float = Field(
        7200.0,
        gt=60,
        description="The org's session timeout (Setup > Session Settings, or the connected app's). "
        "Salesforce's token response has no expiry, so the token cache trusts this value and "
        "re-authenticates a minute before it ends (or at once on INVALID_SESSION_ID).",
    )
    salesforce_integration_user_id: str | None = Field(
        None, description="User id of the integration user; leads it owns need routing."
    )
    pubsub_endpoint: str = Field(
        "api.pubsub.salesforce.com:7443", description="Pub/Sub API host:port for a real org."
    )
    pubsub_tls: bool = Field(
        True, description="Use TLS to the Pub/Sub API (always for a real org)."
    )
    pubsub_ca_file: Path | None = Field(
        None,
        description="PEM file of the CA certificates trusted for the Pub/Sub API's TLS "
        "certificate (e.g. a corporate proxy's CA); unset => the system's. The embedded sandbox "
        "uses its own DATA_DIR/sandbox_ca.pem regardless.",
    )
    client_id: str = Field(
        "kpi_pipeline",
        description="Our client id: sent as Sforce-Call-Options client=..., used to skip echoes of our "
        "own writes (changeOrigin) and as the flywheel client_id.",
    )

    # --- embedded sandbox ---------------------------------------------------------------
    sandbox_seed: int = Field(7, description="Seed of the sandbox activity simulator.")
    sandbox_leads_per_day: int = Field(
        400, ge=1, description="Simulated lead arrivals per simulated day."
    )
    sandbox_speedup: float = Field(
        600.0, gt=0, description="Simulated seconds per wall-clock second in dagster dev."
    )
    sandbox_live_leads_per_hour: float = Field(
        120.0,
        ge=0,
        description="Lead arrivals per wall-clock hour that the sandbox process keeps simulating "
        "(dagster dev); responses to them arrive sandbox_speedup times faster. 0 stops live activity.",
    )
    sandbox_access_token: str = Field(
        "sandbox-token", description="Static token the sandbox accepts beside JWT-issued ones."
    )
    sandbox_tenant_id: str = Field("00D000000000001AAA", description="Org id the sandbox reports.")
    sandbox_keepalive_seconds: float = Field(
        270.0,
        gt=0,
        description="The sandbox's Pub/Sub server sends a quiet Subscribe stream an empty "
        "keepalive response this often; 270 s as a real org (keep KPI_CDC_STALL_TIMEOUT_SECONDS "
        "above it).",
    )
    sandbox_idle_exit_seconds: float = Field(
        900.0,
        ge=0,
        description="The sandbox runs as its own `kpi-pipeline sandbox serve` process; once the "
        "process that started it is gone and no Pub/Sub or REST request arrived for this many "
        "seconds, it exits (so it does not outlive `dagster dev` for long). 0 keeps it running.",
    )

    # --- workloads ----------------------------------------------------------------------
    policy_file: Path | None = Field(
        None, description="Routing policy JSON. Default: the packaged policies/routing_policy.json."
    )
    llm_base_url: str | None = Field(
        None,
        description="OpenAI-compatible base URL for template selection; unset => local ranker.",
    )
    llm_model: str = Field("gpt-4o-mini", description="Model name sent to the LLM endpoint.")
    llm_api_key: SecretStr | None = Field(None, description="Bearer key for the LLM endpoint.")
    llm_timeout_seconds: float = Field(
        10.0, gt=0, description="LLM request timeout before fallback."
    )
    writeback_enabled: bool = Field(True, description="Drain the outbox to Salesforce.")
    writeback_lease_seconds: float = Field(
        60.0,
        ge=5,
        description="Lease on claimed outbox rows. A live drain renews it every third of this; a "
        "drainer that died lets its rows be retaken once it runs out.",
    )
    writeback_concurrent_requests: int = Field(
        4,
        ge=1,
        le=16,
        description="sObject Collections requests (200 records each) a write-back drain keeps in "
        "flight at once; a drain claims 200 times this many rows per round. 1 sends them one "
        "after another.",
    )
    writeback_backlog_alert_seconds: float = Field(
        600.0,
        gt=0,
        description="The outbox_backlog asset check fails (and /metrics shows it) once a row has "
        "waited longer than this to be sent, or a row failed for good.",
    )
    writeback_idle_drain_seconds: float = Field(
        30.0,
        gt=0,
        description="writeback_sensor requests a drain run when outbox rows have waited this long "
        "(no batch run drained them: traffic stopped, or their drainer died).",
    )
    send_email: bool = Field(
        False, description="Send the recommended template via emailSimple (off: recommend only)."
    )
    email_sender_name: str | None = Field(
        None,
        description="Fills {{sender_name}} in sent templates (e.g. 'Ana from Acme'); required "
        "when send_email is on and a template uses it.",
    )

    # --- observability ------------------------------------------------------------------
    metrics_dir: Path | None = Field(
        None,
        description="Directory where short-lived runs leave metric values (prometheus_client "
        "multiprocess mode). Default: DATA_DIR/metrics.",
    )
    metrics_port: int = Field(
        9464, description="Port of `kpi-pipeline web serve` (/metrics, /healthz, /readyz, /status)."
    )
    pushgateway_url: str | None = Field(
        None,
        description="Prometheus Pushgateway (e.g. http://pushgateway:9091): at the end of each "
        "Dagster run this host's metric totals are pushed there (grouping job=kpi_pipeline, "
        "instance=<host>), for runs on hosts Prometheus does not scrape. Unset: no push.",
    )
    log_format: Literal["text", "json"] = Field(
        "text",
        description="text: readable lines for a terminal (local development); json: one JSON "
        "object per line (ts, level, logger, msg, and channel / replay_id / batch_id / lead_id "
        "/ run_id / policy_version where known), as log collectors want, in every process "
        "including Dagster's code server and run workers (production). Secrets are redacted "
        "in both.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Level of kpi_pipeline's own processes' logs."
    )
    # /readyz (kpi_pipeline.app.operator_status): each reason for "not ready" has its threshold.
    ready_org_probe_seconds: float = Field(
        30.0,
        gt=0,
        description="/readyz asks the org (a token and a one-row SOQL query) at most this often; "
        "in between it reports the last answer.",
    )
    ready_processing_lag_seconds: float = Field(
        60.0,
        gt=0,
        description="/readyz is 503 when the oldest staged batch not yet processed has waited "
        "longer than this (KPI_CDC_PROCESSING_ALERT_SECONDS marks it stuck).",
    )
    ready_progress_stale_seconds: float = Field(
        600.0,
        gt=0,
        description="Stream mode: /readyz is 503 when a channel's durable replay id has not moved "
        "(no event and no keepalive) for this long. A real org sends keepalives within 270 s.",
    )
    ready_dead_letter_window_seconds: float = Field(
        300.0,
        gt=0,
        description="/readyz is 503 while dead letters were recorded within this many seconds.",
    )
    ready_outbox_backlog_rows: int = Field(
        1000,
        ge=1,
        description="/readyz is 503 when more write-back outbox rows than this wait to be sent.",
    )
    ready_outbox_age_seconds: float = Field(
        300.0,
        gt=0,
        description="/readyz is 503 when the oldest write-back outbox row has waited longer.",
    )
    elasticsearch_url: str | None = Field(
        None, description="Elasticsearch URL for flywheel_index; unset => skipped."
    )
    flywheel_index: str = Field("flywheel", description="Elasticsearch index for flywheel records.")

    @field_validator("cdc_channels", mode="before")
    @classmethod
    def _split_channels(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @property
    def uses_real_org(self) -> bool:
        """True when credentials for a real org are configured (else the sandbox is used)."""
        return bool(
            self.salesforce_client_id
            and self.salesforce_username
            and self.salesforce_private_key_file
        )

    @property
    def resolved_ledger_url(self) -> str:
        return self.ledger_url or f"sqlite:///{(self.data_dir / 'ledger.db').resolve()}"

    @property
    def resolved_metrics_dir(self) -> Path:
        return self.metrics_dir or (self.data_dir / "metrics")

    @property
    def sandbox_store_path(self) -> Path:
        return self.data_dir / "sandbox.db"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings, read once."""
    return Settings()


def describe_settings() -> list[tuple[str, str, str]]:
    """(environment variable, default, description) for every setting: README and .env.example."""
    rows = []
    for name, info in Settings.model_fields.items():
        if info.default_factory is not None:
            default = info.default_factory()
            default = ",".join(default) if isinstance(default, list) else str(default)
        else:
            default = "" if info.default is None else str(info.default)
        rows.append((f"KPI_{name.upper()}", default, info.description or ""))
    return rows
