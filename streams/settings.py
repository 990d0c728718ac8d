"""The one place the environment is read. Every setting is ``ESTOP_<NAME>``."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from streams.models import CHANNELS


class Settings(BaseSettings):
    """Broker, topics, storage and worker tuning; defaults run everything on one machine."""

    model_config = SettingsConfigDict(env_prefix="ESTOP_", extra="ignore")

    # Where the broker is. Set by the user -> used as is; otherwise tests/demo/bench pick one.
    bootstrap_servers: str = "localhost:9092"
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    # SASL_SSL (or SSL): the CA certificate (PEM) the brokers' certificates are checked against;
    # unset, the system's trusted CAs.
    ssl_ca_location: Path | None = None
    schema_registry_url: str | None = None

    # Topics.
    topic_prefix: str = ""
    partitions: int = Field(default=6, ge=1)
    control_partitions: int = Field(default=1, ge=1)
    # Unset: from the size of the cluster (3 and min.insync.replicas 2 on 3 brokers or more, else
    # as many replicas as brokers); see streams/kafka/topics.py `replication`.
    replication_factor: int | None = Field(default=None, ge=1)
    min_insync_replicas: int | None = Field(default=None, ge=1)

    # Local files: broker data and logs, simulated providers, the MTA, analytics store; the cache
    # folder holds what is downloaded once (Kafka's jars). Unset: .data and .cache in the working
    # directory (never inside the installed package).
    data_dir: Path = Field(default_factory=lambda: Path.cwd() / ".data")
    cache_dir: Path = Field(default_factory=lambda: Path.cwd() / ".cache")

    # Analytics store: SQLite in the data folder unless a PostgreSQL DSN is given.
    analytics_dsn: SecretStr | None = None

    # Prometheus: every process serves /metrics here; a taken port falls back to a free one.
    metrics_port: int = Field(default=9464, ge=0, le=65535)
    # A worker's /health answers 503 once a stage or the control feed has not passed through its
    # loop for this long (a stage waiting on a provider or a broker that does not answer).
    health_stall_s: float = Field(default=60.0, gt=0)

    # Control plane (`estop control`): HTTP API and its /metrics; port 0 picks a free port.
    control_port: int = Field(default=6066, ge=0, le=65535)
    control_host: str = "localhost"
    # Host names clients may reach the API by (the Host header; comma-separated), besides the
    # bound address and, on loopback, localhost: anything else is answered 421 (DNS rebinding).
    control_allowed_hosts: str = ""
    # HTTPS for the API: a certificate (chain) and its private key, PEM files.
    control_tls_cert: Path | None = None
    control_tls_key: Path | None = None
    # Who may use the HTTP API: comma-separated ``name:role:token`` entries, role viewer (reads),
    # operator (also stops, relaunches, exports) or admin (also the kill switch); a request
    # carries ``Authorization: Bearer <token>``. Required, unless ``http_open``.
    http_tokens: SecretStr | None = None
    # An API that asks nobody (every request acts as an admin), only on a loopback address and
    # only when asked for: the embedded demo and tests on one machine.
    http_open: bool = False
    # How long a stop may wait for every live gate and dispatcher to confirm it before `estop
    # stop` exits 3 and the console warns (the stop stays in force either way).
    stop_timeout_s: float = Field(default=30.0, ge=0)
    # A canary launch (`estop launch --canary 2%`) queues the rest of its audience once the
    # campaign went this long after its first cohort without a stop (unless released before).
    canary_hold_s: float = Field(default=600.0, ge=0)

    # Local broker recipe.
    kafka_version: str = "4.1.1"
    broker_port: int = 9092
    controller_port: int = 9093
    # Nodes of the local broker (`estop broker start --brokers N`); node n uses the ports above
    # plus 2(n-1).
    brokers: int = Field(default=1, ge=1, le=9)
    broker_heap: str = "1g"
    broker_start_timeout_s: float = Field(default=90.0, gt=0)
    # The local broker with SASL/SCRAM-SHA-512 and ACLs (`estop broker start --secure`). Its admin
    # principal is the one super user; without a password set, one is generated at the first
    # secured start and kept with the admin's credentials in <data_dir>/security/ (mode 0600).
    broker_secure: bool = False
    broker_admin_user: str = "admin"
    broker_admin_password: SecretStr | None = None

    # How long an admin call may wait for an unreachable broker.
    admin_timeout_s: float = Field(default=15.0, gt=0)

    # How long a dispatcher remembers a message that has its outcome (so a request queued again
    # meanwhile gets no second handoff or outcome): then it is forgotten, in memory and in the
    # ledger's changelog.
    ledger_retention_s: float = Field(default=7 * 24 * 3600.0, gt=0)

    # Data plane tuning.
    batch_size: int = Field(default=2000, ge=1)
    poll_timeout_s: float = Field(default=0.2, gt=0)
    # Commands older than this when a process first reads them are applied but not acknowledged:
    # a fresh process would otherwise flood the ack topic with the whole control history.
    ack_recent_s: float = Field(default=600.0, ge=0)

    # Which provider each channel's dispatcher hands its messages to, as a URL: "simulated" (the
    # default: a provider of our own in the data folder), "smtp://host:port" (an MTA, e.g. the
    # private Postfix of `estop mta start`). See docs/providers.md.
    email_provider: str = "simulated"
    sms_provider: str = "simulated"
    push_provider: str = "simulated"
    webpush_provider: str = "simulated"
    # Email addressing: a recipient id without "@" is mailed at recipient_id@email_domain.
    email_domain: str = "example.test"
    email_from: str = "campaigns@estop.test"
    # How long a provider may take to answer one call (connect, submit, cancel).
    provider_timeout_s: float = Field(default=30.0, gt=0)

    # The private MTA of `estop mta` (Postfix from Debian, run from the data folder): its SMTP
    # port, and the port of the receiving server that stands for the internet.
    mta_port: int = Field(default=2525, ge=1, le=65535)
    mta_receiver_port: int = Field(default=2526, ge=1, le=65535)
    # Its folder (config, queue, log, the receiver's mailbox, the agent's files); default
    # <data_dir>/mta.
    mta_dir: Path | None = None
    # The MTA agent beside that Postfix (`estop mta agent`): ships Postfix's log to Kafka and
    # finds and cancels queued mail for the dispatchers over HTTP, on this port, bound to this
    # address (loopback unless set: every dispatcher on another host needs it reachable). Its
    # bearer token: unset, `estop mta start` generates one into <mta_dir>/agent/token (0600),
    # which the agent, and an smtp:// adapter on the same host, read.
    mta_agent_port: int = Field(default=2527, ge=1, le=65535)
    mta_agent_host: str = "127.0.0.1"
    mta_agent_token: SecretStr | None = None

    # Web push (webpush://): the subscription directory (a JSON file: recipient_id -> {endpoint,
    # keys: {p256dh, auth}}, as browsers hand them out), the VAPID private key the subscriptions
    # were made for (base64url raw or DER, as `vapid --gen` prints; or PEM) and its contact.
    webpush_subscriptions: Path | None = None
    webpush_vapid_private_key: SecretStr | None = None
    webpush_vapid_subject: str = "mailto:campaigns@estop.test"
    # Mobile push (fcm://): the service account JSON file (project_id, client_email, private_key,
    # token_uri) that mints the OAuth bearer token of the FCM HTTP v1 API.
    push_service_account: Path | None = None

    # Simulated providers (one per channel): messages per second and time spent "processing".
    provider_rate: float = Field(default=20000.0, gt=0)
    provider_delay_s: float = Field(default=2.0, ge=0)
    # Simulated provider faults: the share of handoffs answered with an error (never accepted)
    # or a timeout (accepted or not: the caller cannot tell), and the dispatcher's retry budget
    # for them: up to provider_max_retries more attempts, backing off exponentially from
    # provider_retry_backoff_s; a message still not accepted ends as a `failed` outcome.
    provider_error_rate: float = Field(default=0.0, ge=0, le=1)
    provider_timeout_rate: float = Field(default=0.0, ge=0, le=1)
    provider_max_retries: int = Field(default=3, ge=0)
    provider_retry_backoff_s: float = Field(default=0.05, ge=0)

    # Fault injection for the reliability tests: the process SIGKILLs itself the first time it
    # reaches this point (see streams/faults.py). Never set in production.
    crash_at: str | None = None
    # Likewise: ``<point>:<seconds>``, the worker waits that long each time it reaches the point.
    pause_at: str | None = None

    @property
    def mta_home(self) -> Path:
        return self.mta_dir or self.data_dir / "mta"

    def environment(self) -> dict[str, str]:
        """These settings as the ESTOP_* variables of an estop process started from this one
        (secrets too: they go in its environment, never on its command line)."""
        env: dict[str, str] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if value is not None:
                text = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
                env[f"ESTOP_{name.upper()}"] = text
        return env

    def provider_url(self, channel: str) -> str:
        """The provider setting of a channel (ESTOP_<CHANNEL>_PROVIDER)."""
        return str(getattr(self, f"{channel}_provider"))

    @cached_property
    def topics(self) -> Topics:
        return Topics(self.topic_prefix)

    def client_config(self) -> dict[str, str]:
        """librdkafka settings shared by every client this process creates."""
        conf = {"bootstrap.servers": self.bootstrap_servers}
        if self.security_protocol != "PLAINTEXT":
            conf["security.protocol"] = self.security_protocol
        if self.sasl_mechanism:
            conf["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_username:
            conf["sasl.username"] = self.sasl_username
        if self.sasl_password:
            conf["sasl.password"] = self.sasl_password.get_secret_value()
        if self.ssl_ca_location is not None:
            conf["ssl.ca.location"] = str(self.ssl_ca_location)
        return conf


class Topics:
    """Topic names, derived from one optional prefix so tests can isolate themselves."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix
        self.control = f"{prefix}campaign-control"
        self.status = f"{prefix}campaign-status"
        self.acks = f"{prefix}campaign-control-acks"
        self.sent = f"{prefix}sent"
        self.notsent = f"{prefix}notsent"
        self.failed = f"{prefix}failed"
        self.audit = f"{prefix}audit"
        self.canary = f"{prefix}campaign-canary"
        self.sink_group = f"{prefix}estop-sink"
        # Guardrails (streams.guardrails): reports after a handoff, the rules, the processor's
        # changelog and its consumer group.
        self.feedback = f"{prefix}feedback"
        self.guardrail_rules = f"{prefix}guardrail-rules"
        self.guardrail_state = f"{prefix}guardrail-state"
        self.guardrail_counts = f"{prefix}guardrail-counts"
        self.guardrail_count_group = f"{prefix}estop-guardrail-count"
        self.guardrail_group = f"{prefix}estop-guardrail"

    def send_requests(self, channel: str) -> str:
        return f"{self.prefix}send-requests.{channel}"

    def dispatch(self, channel: str) -> str:
        return f"{self.prefix}dispatch.{channel}"

    def gate_group(self, channel: str) -> str:
        return f"{self.prefix}estop-gate-{channel}"

    def dispatcher_group(self, channel: str) -> str:
        return f"{self.prefix}estop-dispatcher-{channel}"

    def ledger(self, channel: str) -> str:
        """The dispatchers' handoff ledger: a compacted changelog, partitioned like dispatch."""
        return f"{self.prefix}dispatch.{channel}.ledger"

    def receipts(self, channel: str) -> str:
        """Provider receipts on their way to the dispatcher that owns the message (partitioned
        like dispatch: a receipt keyed by its message id lands on its message's partition)."""
        return f"{self.prefix}dispatch.{channel}.receipts"

    def data_plane_groups(self) -> list[str]:
        """Groups whose live members must acknowledge a stop before it counts as confirmed."""
        return [g for c in CHANNELS for g in (self.gate_group(c), self.dispatcher_group(c))]

    @staticmethod
    def dead_letter(topic: str) -> str:
        return f"{topic}.dlq"

    def inputs(self) -> list[str]:
        """Every topic some estop process consumes; each gets a dead-letter topic."""
        return [
            self.control,
            self.status,
            self.acks,
            *(self.send_requests(c) for c in CHANNELS),
            *(self.dispatch(c) for c in CHANNELS),
            *(self.receipts(c) for c in CHANNELS),
            self.sent,
            self.notsent,
            self.failed,
            self.audit,
            self.feedback,
        ]


def load_settings(**overrides: object) -> Settings:
    """Read the environment once; overrides win (tests and the CLI use them)."""
    return Settings(**overrides)  # type: ignore[arg-type]
