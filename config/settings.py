"""Pydantic settings models: one model per section, strict, with bounds in ``Field``.

Every service has one top-level model (``IngestorSettings``, ``EncoderSettings``,
``BrokerSettings``) built from the shared sections below. They are loaded once in the
service's ``__main__.main()`` from an optional TOML file plus ``CAM_``-prefixed
environment variables (nested with ``__``, e.g. ``CAM_MQTT__HOST``), and passed down.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from contract.ids import TOPIC_PREFIX_RE
from contract.partition import PARTITIONS


def _one_topic_level(v: str) -> str:
    if not TOPIC_PREFIX_RE.fullmatch(v):
        raise ValueError("must be one topic level of letters, digits, '_' or '-'")
    return v


TopicPrefix = Annotated[str, AfterValidator(_one_topic_level)]
HostName = Annotated[str, Field(min_length=1, max_length=253,
                                pattern=r"^[A-Za-z0-9]([A-Za-z0-9.:-]*[A-Za-z0-9])?$")]
"""A DNS name or IP address: rendered into NATS route URLs, so no user, port or quote."""
"""The first level of every device topic (``cam`` by default)."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TlsSettings(_Section):
    """TLS towards the broker."""

    enabled: bool = True
    ca_file: Path | None = Field(
        default=None, description="CA certificate that signed the broker's certificate."
    )
    cert_file: Path | None = Field(default=None, description="Client certificate (optional).")
    key_file: Path | None = Field(default=None, description="Client key (optional).")

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> TlsSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be given together")
        return self


class MqttSettings(_Section):
    """Connection to the MQTT broker."""

    host: str = Field(default="localhost", min_length=1)
    port: int = Field(default=8883, ge=1, le=65535)
    username: str = Field(default="", description="Service account name.")
    password: SecretStr = Field(default=SecretStr(""), description="Service account password.")
    password_file: Path | None = Field(
        default=None, description="Read the password from this file instead (Docker secrets)."
    )
    client_id: str | None = Field(
        default=None, description="MQTT client id; default: the service name."
    )
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    session_expiry_s: int = Field(
        default=7 * 24 * 3600,
        ge=0,
        description="How long the broker keeps our session (and queues for us) while we are away.",
    )
    reconnect_min_s: float = Field(default=0.5, gt=0, le=60)
    reconnect_max_s: float = Field(default=30.0, gt=0, le=600)
    topic_prefix: TopicPrefix = Field(default="cam",
                                      description="First level of every device topic.")
    tls: TlsSettings = TlsSettings()
    protocol: Literal["5", "3.1.1"] = Field(
        default="5",
        description="MQTT version. 3.1.1 for broker.engine = nats (NATS speaks 3.1.1 only: "
        "no session expiry, no Receive Maximum; the broker's max_ack_pending is the window). "
        "With 3.1.1 the client id gets a suffix derived from the password, so no other "
        "account can take over the session (docs/scaling.md).")

    @model_validator(mode="after")
    def _backoff_order(self) -> MqttSettings:
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError("reconnect_min_s must not exceed reconnect_max_s")
        return self

    def resolved_password(self) -> str:
        """The password, read from ``password_file`` when one is set.

        Returns:
            The password text without a trailing newline.
        """
        if self.password_file is not None:
            return self.password_file.read_text(encoding="utf-8").rstrip("\r\n")
        return self.password.get_secret_value()


class StorageSettings(_Section):
    """Where frames, batches and videos live (the storage root)."""

    root: Path = Field(default=Path("data/storage"), description="Storage root folder.")


class LogSettings(_Section):
    """Process logging."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = Field(
        default="auto", description="auto: JSON when stderr is not a TTY."
    )


class MetricsSettings(_Section):
    """Prometheus endpoint."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=9100, ge=0, le=65535, description="0 picks a free port.")


class HandoffSettings(_Section):
    """Moving partitions between two live ingestors at a capture-time fence.

    The releasing ingestor stores the frames of ``partitions`` captured before
    ``at_ms`` and acknowledges the later ones without storing them; the acquiring one
    does the opposite. Frames without a trusted capture time are kept by both (a
    duplicate is possible, a loss is not). docs/scaling.md, "Rebalancing partitions".
    """

    role: Literal["release", "acquire"] = Field(
        description="release: this ingestor gives the partitions away; acquire: takes "
        "them.")
    partitions: list[Annotated[int, Field(ge=0, le=63)]] = Field(
        min_length=1, max_length=64, description="The partitions that move (a subset of "
        "ingest.partitions).")
    at_ms: int = Field(
        ge=0, description="The fence: a capture time, Unix milliseconds. The acquiring "
        "ingestor must be subscribed before it (it refuses to start less than 5 s "
        "before).")
    release_after_s: float = Field(
        default=300.0, gt=0, le=86_400,
        description="release: UNSUBSCRIBE the partitions once every device seen on them "
        "has sent a frame captured at or after at_ms, or at the latest this long after "
        "at_ms.")


class IngestSettings(_Section):
    """Reassembly, storage and batching rules of the ingestor."""

    frames_per_video: int = Field(default=300, ge=1, le=100_000)
    idle_seal_s: float | None = Field(
        default=None, gt=0, description="Seal a partial batch after this long without frames."
    )
    max_frame_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    partial_timeout_s: float = Field(default=60.0, gt=0, le=3600)
    max_inflight_bytes: int = Field(
        default=512 * 1024 * 1024, ge=1024 * 1024, description="All partial frames together."
    )
    max_device_inflight_bytes: int = Field(
        default=32 * 1024 * 1024, ge=64 * 1024, description="Partial frames of one device."
    )
    fsync_interval_ms: float = Field(
        default=20.0, ge=0, le=5000, description="Group-commit window for durable writes."
    )
    max_pending_frames: int = Field(
        default=4096, ge=1, description="Completed frames waiting for the disk before pausing."
    )
    announce_retry_s: float = Field(
        default=30.0, gt=0, description="Publish a ready event again until the broker acks it."
    )
    reannounce_s: float = Field(
        default=120.0, gt=0, le=86_400,
        description="Announce a sealed batch again when it still has no video after this "
        "long, whatever became of its ready event; doubles after each try.",
    )
    reannounce_max_s: float = Field(
        default=3600.0, gt=0, le=86_400, description="Longest wait between two re-announces."
    )
    receive_maximum: int = Field(
        default=65535,
        ge=1,
        le=65535,
        description="MQTT 5 Receive Maximum sent at CONNECT: the broker's window of unacked "
        "chunks towards us (docs/ingestor.md explains the sizing).",
    )
    max_partial_chunks: int = Field(
        default=32768,
        ge=1,
        le=65535,
        description="Unacked chunks held by partial frames; past it the oldest partial is "
        "dropped so the window never fills with frames that cannot complete.",
    )
    upload_retry_s: float = Field(
        default=1.0, gt=0, le=600,
        description="First wait before retrying a failed pack upload or catalog write "
        "(doubles each time).")
    upload_retry_max_s: float = Field(
        default=30.0, gt=0, le=3600, description="Longest wait between such retries.")
    upload_process: bool = Field(
        default=True,
        description="S3: build and upload packs in a child process (ingestor/uploadproc.py); "
        "false: on the finisher thread, sharing the GIL with the network thread.")
    upload_nice: int = Field(
        default=10, ge=0, le=19,
        description="S3: added to the upload child's nice value, so that storing and "
        "acknowledging frames gets the CPU first (0: same priority).")
    storage_retry_s: float = Field(
        default=2.0, gt=0, le=300, description="Pause between retries while the disk fails."
    )
    status_interval_s: float = Field(
        default=15.0, gt=0, le=3600, description="How often the retained status is refreshed."
    )
    fast_receive: bool = Field(
        default=True,
        description="Decode frame chunks with ingestor/netio.py (large reads, batched "
        "PUBACKs); false: paho's own receive path.",
    )
    partitions: list[Annotated[int, Field(ge=0, le=63)]] | None = Field(
        default=None, min_length=1, max_length=64,
        description="broker.engine = nats: the frame partitions this ingestor owns; it "
        "subscribes p/<n>/<prefix>/+/frame for each (docs/scaling.md). None: every "
        "device's <prefix>/+/frame (Mosquitto).")
    handoff: HandoffSettings | None = Field(
        default=None, description="NATS engine: partitions moving to or from another "
        "ingestor at a capture-time fence (docs/scaling.md).")
    one_filter: bool = Field(
        default=False,
        description="NATS engine, owning all 64 partitions: subscribe p/+/<prefix>/+/frame "
        "once instead of one filter per partition. One consumer, whose window is the "
        "session's: no delivery stall (docs/scaling.md). Switching a session's filters "
        "(either way) deletes what the old ones had queued: switch on a new or drained "
        "session. camstack renders it true into a new ingestor config only.")

    @model_validator(mode="after")
    def _device_within_global(self) -> IngestSettings:
        if self.partitions is not None and len(set(self.partitions)) != len(self.partitions):
            raise ValueError("partitions must not repeat")
        if self.handoff is not None and not set(self.handoff.partitions) <= set(
                self.partitions or []):
            raise ValueError("handoff.partitions must be a subset of partitions")
        if self.one_filter and (self.handoff is not None
                                or sorted(self.partitions or []) != list(range(PARTITIONS))):
            # One wildcard cannot leave some partitions out, nor release some (a handoff).
            raise ValueError("one_filter needs partitions = all 64 and no handoff")
        if self.max_device_inflight_bytes > self.max_inflight_bytes:
            raise ValueError("max_device_inflight_bytes must not exceed max_inflight_bytes")
        if self.max_device_inflight_bytes < self.max_frame_bytes:
            raise ValueError("max_device_inflight_bytes must hold at least one max_frame_bytes")
        if self.max_partial_chunks > self.receive_maximum:
            raise ValueError("max_partial_chunks must not exceed receive_maximum")
        return self


class EncodeSettings(_Section):
    """PyAV / libx264 options of the encoder."""

    fps: float = Field(default=30.0, gt=0, le=240, description="Playback rate of the timelapse.")
    timing: Literal["fixed", "capture"] = Field(
        default="fixed", description="fixed: every frame 1/fps; capture: real capture_ms timing."
    )
    preset: Literal[
        "ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower"
    ] = "veryfast"
    crf: int = Field(default=23, ge=0, le=51)
    gop: int = Field(default=60, ge=1, le=10_000)
    threads: int = Field(default=0, ge=0, le=64, description="0: let FFmpeg choose.")
    thumbnail_width: int = Field(default=320, ge=16, le=4096)
    decode_threads: int = Field(
        default=0, ge=0, le=64, description="Parallel JPEG decoders; 0: one per usable CPU."
    )


class EncoderWorkSettings(_Section):
    """How the encoder takes, retries and finds work (docs/encoder.md)."""

    receive_maximum: int = Field(
        default=1, ge=1, le=100,
        description="MQTT 5 Receive Maximum: ready events the broker hands us before our ack.",
    )
    max_attempts: int = Field(
        default=3, ge=1, le=100,
        description="Tries of one batch (crashes included) before it is quarantined.",
    )
    retry_backoff_s: float = Field(default=5.0, ge=0, le=3600)
    publish_timeout_s: float = Field(
        default=10.0, gt=0, le=600, description="Wait for the video event's PUBACK per try."
    )
    rescan_interval_s: float = Field(
        default=300.0, ge=0,
        description="Look for sealed batches nobody announced; 0: only at start.",
    )
    rescan_min_age_s: float = Field(
        default=600.0, ge=0, description="A rescan takes only batches sealed this long ago."
    )
    backlog_interval_s: float = Field(
        default=15.0, gt=0, le=3600,
        description="How often the encode backlog gauges are read from the catalog.")
    parallel_batches: int = Field(
        default=1, ge=1, le=16,
        description="Batches encoded at once by this process (K). With K > 1 and "
        "encode.threads = 0, each encode gets max(1, CPUs // K) x264 threads "
        "(docs/scaling.md has the measured split).",
    )


class RetentionSettings(_Section):
    """When old videos are deleted."""

    max_age_days: float | None = Field(
        default=None, gt=0, le=36500,
        description="Delete videos whose last frame is older than this (local files, or "
        "the store's objects and the catalog row marked deleted with store.backend s3).")
    max_disk_percent: float | None = Field(
        default=None, gt=0, le=100, description="Delete oldest videos above this disk usage "
        "(filesystem backend only; refused with store.backend s3)."
    )
    interval_s: float = Field(default=300.0, gt=0)


# --- Object storage and metadata database (issue 12). New sections only, appended. ---

S3_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
"""An S3 bucket name (3 to 63 lower-case letters, digits, dots and hyphens)."""


class S3Settings(_Section):
    """An S3-compatible object store (AWS S3, R2, B2, SeaweedFS, MinIO)."""

    endpoint_url: str | None = Field(
        default=None, max_length=2048, pattern=r"^https?://[^\s]+$",
        description="http(s)://host[:port] of the S3 API; none: AWS S3 of `region`.",
    )
    bucket: str = Field(default="", max_length=63, description="Bucket (must exist).")
    region: str = Field(default="us-east-1", pattern=r"^[a-z0-9-]{1,32}$")
    access_key_id: str = Field(
        default="", max_length=256, description="Access key id; empty: credentials_file or "
        "the AWS environment (AWS_ACCESS_KEY_ID, AWS_PROFILE, instance role).")
    secret_access_key: SecretStr = Field(default=SecretStr(""), description="Secret key.")
    credentials_file: Path | None = Field(
        default=None, description="AWS-style INI credentials file (aws_access_key_id, "
        "aws_secret_access_key), read instead of the two keys above.")
    credentials_profile: str = Field(
        default="default", pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="Section of credentials_file.")
    addressing_style: Literal["auto", "path", "virtual"] = Field(
        default="auto", description="path: http://host/bucket/key (SeaweedFS, MinIO).")
    connect_timeout_s: float = Field(
        default=5.0, gt=0, le=120,
        description="Wait this long for a connection to the store, per try.")
    read_timeout_s: float = Field(
        default=30.0, gt=0, le=600,
        description="Wait this long for the store's answer or the next bytes of a body, "
        "per try: a stalled store is an error (retried later), never a hang.")
    max_attempts: int = Field(
        default=3, ge=1, le=10, description="Tries of one request (first try included; "
        "botocore's standard mode, jittered backoff between tries). Callers retry failed "
        "requests themselves with their own backoff (ingest.upload_retry_s, "
        "work.retry_backoff_s).")
    presign_expires_s: int = Field(default=3600, ge=1, le=7 * 24 * 3600)

    @model_validator(mode="after")
    def _keys_together(self) -> S3Settings:
        if bool(self.access_key_id) != bool(self.secret_access_key.get_secret_value()):
            raise ValueError("access_key_id and secret_access_key must be given together")
        if self.access_key_id and self.credentials_file is not None:
            raise ValueError("give either the keys or credentials_file, not both")
        return self


class ObjectStoreSettings(_Section):
    """Where packs, videos and thumbnails are stored (docs/storage.md, backends)."""

    backend: Literal["filesystem", "s3"] = "filesystem"
    root: Path = Field(
        default=Path("data/objects"), description="Folder of the filesystem backend.")
    s3: S3Settings = S3Settings()
    pack_prefix: str = Field(
        default="packs/", pattern=r"^[A-Za-z0-9_-]{1,64}/$",
        description="Key prefix of batch packs (the lifecycle rule applies to it).")
    pack_expire_days: int = Field(
        default=14, ge=1, le=3650,
        description="Lifecycle backstop: the store deletes packs older than this.")

    @model_validator(mode="after")
    def _s3_needs_bucket(self) -> ObjectStoreSettings:
        if self.backend == "s3" and not S3_BUCKET_RE.fullmatch(self.s3.bucket):
            raise ValueError("backend s3 needs s3.bucket (3-63 of a-z 0-9 . -)")
        return self


class CatalogSettings(_Section):
    """The metadata database: batches and videos (docs/storage.md, catalog)."""

    backend: Literal["sqlite", "postgres"] = "sqlite"
    path: Path = Field(
        default=Path("data/catalog.sqlite3"),
        description="SQLite file. Not set in a service's file: `<storage.root>/state/"
        "catalog.sqlite3`, the one file the ingestor, the encoder and the web page share.")
    dsn: SecretStr = Field(
        default=SecretStr(""),
        description="PostgreSQL connection string (libpq); prefer dsn_file.")
    dsn_file: Path | None = Field(
        default=None, description="Read the PostgreSQL connection string from this file.")
    connect_timeout_s: float = Field(default=5.0, gt=0, le=120)
    busy_timeout_ms: int = Field(
        default=5000, ge=0, le=600_000, description="SQLite: wait this long for a lock.")

    @model_validator(mode="after")
    def _postgres_needs_dsn(self) -> CatalogSettings:
        if self.backend == "postgres" and not (self.dsn.get_secret_value() or self.dsn_file):
            raise ValueError("backend postgres needs dsn or dsn_file")
        if self.dsn.get_secret_value() and self.dsn_file is not None:
            raise ValueError("give either dsn or dsn_file, not both")
        return self

    def resolved_dsn(self) -> str:
        """The connection string, read from ``dsn_file`` when one is set.

        Returns:
            The DSN without a trailing newline.
        """
        if self.dsn_file is not None:
            return self.dsn_file.read_text(encoding="utf-8").strip()
        return self.dsn.get_secret_value()


def nats_inbox_prefix(user: str) -> str:
    """Reply subjects of ``user``'s NATS connections: ``_INBOX.<user>`` (``_INBOX`` if none).

    On the NATS cluster engine each service account may subscribe only its own inbox
    subtree (broker/natscluster.py), so no account reads another's replies.
    """
    return f"_INBOX.{user}" if user else "_INBOX"


class JobQueueSettings(_Section):
    """The JetStream work queue of encode jobs (docs/scaling.md)."""

    servers: list[str] = Field(
        default_factory=lambda: ["nats://127.0.0.1:4222"], min_length=1, max_length=16,
        description="NATS server URLs (nats:// or tls://).")
    stream: str = Field(default="CAMSTACK_JOBS", pattern=r"^[A-Za-z0-9_-]{1,64}$",
                        description="JetStream stream holding the jobs (WorkQueue retention).")
    subject_prefix: str = Field(
        default="camstack.jobs.encode",
        pattern=r"^[A-Za-z0-9_-]{1,32}(\.[A-Za-z0-9_-]{1,32}){0,7}$",
        description="Jobs go to <subject_prefix>.<device>.")
    consumer: str = Field(default="encoders", pattern=r"^[A-Za-z0-9_-]{1,64}$",
                          description="Durable pull consumer shared by every worker.")
    duplicate_window_s: float = Field(
        default=3600.0, gt=0, le=7 * 86_400,
        description="The server drops a second job with the same batch id within this long.")
    ack_wait_s: float = Field(
        default=60.0, ge=0.5, le=3600,
        description="A job not acked (nor heartbeated) within this long is redelivered.")
    heartbeat_s: float = Field(
        default=20.0, gt=0, le=1200,
        description="While a job runs, tell the server it is still in progress this often.")
    max_deliver: int = Field(
        default=5, ge=1, le=1000,
        description="Deliveries of one job before it is quarantined instead of handled.")
    retry_delay_s: float = Field(
        default=10.0, ge=0, le=3600, description="Redelivery delay of a job that asked to retry.")
    fetch_timeout_s: float = Field(
        default=5.0, gt=0, le=300, description="Longest wait of one pull for a job.")
    publish_timeout_s: float = Field(default=10.0, gt=0, le=300)
    start_wait_s: float = Field(
        default=60.0, ge=0, le=3600,
        description="At start, keep trying this long while NATS does not answer (a "
        "cluster just started may still be electing the job stream's leader).")
    max_job_bytes: int = Field(default=4096, ge=256, le=1024 * 1024,
                               description="Larger job messages are rejected unread.")
    credentials_file: Path | None = Field(
        default=None, description="NATS .creds file (JWT + NKey seed); none: no auth.")
    user: str = Field(
        default="", pattern=r"^[A-Za-z0-9_-]{0,32}$",
        description="NATS user name (the service account on the NATS cluster engine; "
        "with password_file). Empty: no user/password login.")
    password_file: Path | None = Field(
        default=None, description="File holding the user's password (one line).")
    replicas: int = Field(
        default=1, ge=1, le=5,
        description="Replicas of the job stream: 1 on a single server, the cluster's "
        "stream replicas (broker.nats.stream_replicas) on the NATS cluster engine.")
    tls: bool = Field(default=False, description="Require TLS to the servers.")
    tls_ca_file: Path | None = Field(default=None, description="CA of the servers' certificate.")
    tls_cert_file: Path | None = Field(default=None, description="Client certificate (mTLS).")
    tls_key_file: Path | None = Field(default=None, description="Its private key.")

    @model_validator(mode="after")
    def _consistent(self) -> JobQueueSettings:
        if self.heartbeat_s >= self.ack_wait_s:
            raise ValueError("heartbeat_s must be below ack_wait_s")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file must be given together")
        if bool(self.user) != (self.password_file is not None):
            raise ValueError("jobqueue.user and jobqueue.password_file must be given together")
        if self.user and self.credentials_file is not None:
            raise ValueError("jobqueue: give credentials_file or user/password_file, not both")
        for url in self.servers:
            if not re.fullmatch(r"(nats|tls)://[A-Za-z0-9.:\[\]_-]{1,253}", url):
                raise ValueError(f"servers: {url[:80]!r} is not nats://host[:port] "
                                 "or tls://host[:port]")
        return self

    def resolved_password(self) -> str:
        """The password in ``password_file`` without a trailing newline ("" without one)."""
        if self.password_file is None:
            return ""
        return self.password_file.read_text(encoding="utf-8").rstrip("\r\n")


class LeaseSettings(_Section):
    """Partition leases of the NATS engine: one owner per partition (docs/scaling.md).

    The ingestor claims one key per owned partition in a JetStream key-value bucket on
    the cluster (over its ``[jobqueue]`` connection) before it subscribes, refreshes
    them, and deletes them on a clean stop or a handoff release. A partition another
    live ingestor holds ends the start (exit 2, naming the partition and its owner); a
    crashed owner's keys expire after ``ttl_s`` (the bucket's max age).
    """

    enabled: bool = Field(
        default=False, description="Claim the partitions (ingest.partitions) before "
        "subscribing; needs runner = \"jetstream\" (the [jobqueue] connection).")
    bucket: str = Field(default="camstack_partitions", pattern=r"^[A-Za-z0-9_-]{1,64}$",
                        description="The key-value bucket (created with ttl_s).")
    ttl_s: float = Field(
        default=30.0, ge=2.0, le=3600,
        description="A lease not refreshed for this long expires (a crashed owner's); "
        "the bucket's max age, fixed when the bucket is created.")
    refresh_s: float = Field(default=10.0, gt=0, le=1200,
                             description="Refresh every lease this often (below ttl_s / 2).")
    claim_wait_s: float = Field(
        default=60.0, ge=0, le=3600,
        description="At start, keep trying this long while the cluster does not answer "
        "(a cluster just started may still be electing the bucket's leader); a partition "
        "another owner holds ends the start at once.")

    @model_validator(mode="after")
    def _refresh_below_ttl(self) -> LeaseSettings:
        if self.refresh_s * 2 >= self.ttl_s:
            raise ValueError("leases.refresh_s must be below half of leases.ttl_s")
        return self


SHARED_CATALOG = Path("state") / "catalog.sqlite3"
"""Where the services' SQLite catalog is, relative to the storage root, by default."""


def _default_catalog_path(catalog: CatalogSettings, storage: StorageSettings) -> CatalogSettings:
    """``catalog`` with ``path`` defaulting to ``<storage.root>/state/catalog.sqlite3``."""
    if "path" in catalog.model_fields_set:
        return catalog
    return catalog.model_copy(update={"path": storage.root / SHARED_CATALOG})


def _check_runner(runner: str, store: ObjectStoreSettings) -> None:
    # A JetStream worker may run anywhere: it reads packs from the object store, never
    # the ingestor's disk, so the filesystem backend cannot feed it.
    if runner == "jetstream" and store.backend != "s3":
        raise ValueError('runner "jetstream" needs store.backend = "s3"')


class _ServiceSettings(BaseSettings):
    """Base of the per-service models: ``CAM_`` environment, nested with ``__``."""

    model_config = SettingsConfigDict(
        env_prefix="CAM_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The TOML file arrives as init kwargs; the environment overrides it.
        return (env_settings, init_settings)


class IngestorSettings(_ServiceSettings):
    """Everything the ingestor reads."""

    mqtt: MqttSettings = MqttSettings(username="ingestor", client_id="ingestor")
    storage: StorageSettings = StorageSettings()
    log: LogSettings = LogSettings()
    metrics: MetricsSettings = MetricsSettings(port=9101)
    ingest: IngestSettings = IngestSettings()
    store: ObjectStoreSettings = ObjectStoreSettings()
    catalog: CatalogSettings = CatalogSettings()
    runner: Literal["mqtt", "jetstream"] = Field(
        default="mqtt",
        description="How encode work is handed over: `mqtt` (ready events to the "
        "encoders' shared subscription) or `jetstream` (also one NATS JetStream job per "
        "sealed batch; needs store.backend = \"s3\"). docs/scaling.md.")
    jobqueue: JobQueueSettings = JobQueueSettings()
    leases: LeaseSettings = LeaseSettings()

    @model_validator(mode="after")
    def _shared_catalog(self):  # type: ignore[no-untyped-def]
        # One SQLite file beside the storage root unless the file names another.
        object.__setattr__(self, "catalog", _default_catalog_path(self.catalog, self.storage))
        return self

    @model_validator(mode="after")
    def _runner_needs_store(self):  # type: ignore[no-untyped-def]
        _check_runner(self.runner, self.store)
        return self

    @model_validator(mode="after")
    def _leases_need_the_cluster(self):  # type: ignore[no-untyped-def]
        if self.leases.enabled and self.runner != "jetstream":
            raise ValueError('leases.enabled needs runner = "jetstream" (the leases use '
                             "the [jobqueue] connection to the cluster)")
        if self.leases.enabled and self.ingest.partitions is None:
            raise ValueError("leases.enabled needs ingest.partitions (the NATS engine)")
        return self


class EncoderSettings(_ServiceSettings):
    """Everything the encoder reads."""

    mqtt: MqttSettings = MqttSettings(username="encoder")
    storage: StorageSettings = StorageSettings()
    log: LogSettings = LogSettings()
    metrics: MetricsSettings = MetricsSettings(port=9102)
    encode: EncodeSettings = EncodeSettings()
    retention: RetentionSettings = RetentionSettings()
    work: EncoderWorkSettings = EncoderWorkSettings()
    share_group: str = Field(default="encoders", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    store: ObjectStoreSettings = ObjectStoreSettings()
    catalog: CatalogSettings = CatalogSettings()
    runner: Literal["mqtt", "jetstream"] = Field(
        default="mqtt",
        description="How encode work is handed over: `mqtt` (ready events to the "
        "encoders' shared subscription) or `jetstream` (pull jobs from NATS JetStream, one per "
        "sealed batch; needs store.backend = \"s3\"). docs/scaling.md.")
    jobqueue: JobQueueSettings = JobQueueSettings()
    signing_key_file: Path = Field(
        default=Path("data/pki/video-signing.key"),
        description="Ed25519 key (PKCS#8 PEM, created 0600 when missing) signing each video "
        "row; its public key is written beside it as `.pub` (docs/storage.md).")

    @model_validator(mode="after")
    def _retention_fits_the_store(self) -> EncoderSettings:
        # An object store has no disk to fill: a watermark would never be right.
        if self.store.backend == "s3" and self.retention.max_disk_percent is not None:
            raise ValueError(
                "retention.max_disk_percent does not apply with store.backend = \"s3\" "
                "(no disk to watch); remove it and use retention.max_age_days")
        return self

    @model_validator(mode="after")
    def _shared_catalog(self):  # type: ignore[no-untyped-def]
        # One SQLite file beside the storage root unless the file names another.
        object.__setattr__(self, "catalog", _default_catalog_path(self.catalog, self.storage))
        return self

    @model_validator(mode="after")
    def _runner_needs_store(self):  # type: ignore[no-untyped-def]
        _check_runner(self.runner, self.store)
        return self

    @model_validator(mode="after")
    def _runner_fits_the_protocol(self) -> EncoderSettings:
        # NATS (the 3.1.1 engine) has no MQTT shared subscriptions: it refuses
        # $share/<group>/cam/+/ready (SUBACK 0x80; tests/integration/test_nats_services.py).
        if self.mqtt.protocol == "3.1.1" and self.runner == "mqtt":
            raise ValueError(
                'runner = "mqtt" needs MQTT 5 shared subscriptions ($share/...), which the '
                'NATS engine (mqtt.protocol = "3.1.1") does not have: set runner = '
                '"jetstream" (with store.backend = "s3" and [jobqueue]), docs/scaling.md')
        return self


class BrokerSettings(_ServiceSettings):
    """How the local broker is rendered and run (``camstack``, ``python -m broker``)."""

    engine: Literal["mosquitto", "nats"] = Field(
        default="mosquitto",
        description="mosquitto: one Mosquitto (default). nats: a NATS cluster with "
        "JetStream and an MQTT listener per node, frames partitioned by device "
        "(the [broker.nats] section, docs/scaling.md).")
    nats: NatsClusterSettings = Field(
        default_factory=lambda: NatsClusterSettings(),  # noqa: PLW0108 (defined below)
        description="The NATS cluster, used when engine is nats.")
    data_dir: Path = Field(default=Path("data"), description="Broker state, PKI and accounts.")
    tls_port: int = Field(default=8883, ge=1, le=65535)
    tls_bind: str = Field(default="0.0.0.0", description="Interface of the device listener.")
    local_port: int | None = Field(
        default=1883, ge=1, le=65535, description="Plain listener on loopback; none to disable."
    )
    server_names: list[str] = Field(
        default_factory=lambda: ["localhost", "127.0.0.1"],
        min_length=1,
        description="DNS names / IPs written into the server certificate.",
    )
    topic_prefix: TopicPrefix = "cam"
    run_as_root: bool = Field(
        default=False, description="Write 'user root' (local and test runs started as root)."
    )
    max_packet_bytes: int = Field(default=256 * 1024, ge=1024, le=268_435_455)
    max_queued_messages: int = Field(
        default=200_000, ge=0,
        description="Messages queued per subscriber session beyond its in-flight window "
        "(0: no limit). Sized from the device budget: one device at full budget needs over "
        "10 minutes to fill it alone (docs/security.md).",
    )
    max_queued_bytes: int = Field(
        default=1024 * 1024 * 1024, ge=0,
        description="Payload bytes queued per subscriber session (0: no limit); see "
        "max_queued_messages.",
    )
    max_inflight_messages: int = Field(default=1000, ge=0, le=65535)
    autosave_interval_s: int = Field(default=30, ge=0)
    sys_interval_s: int = Field(
        default=10, ge=1, le=3600,
        description="Period of the broker's $SYS topics, e.g. "
        "$SYS/broker/publish/messages/dropped (the monitor alerts on it).",
    )
    tls_max_connections: int = Field(
        default=2000, ge=1, le=1_000_000,
        description="Most sockets the device (TLS) listener holds, logged in or not; past "
        "it new connections are closed at once. The loopback listener, which local services "
        "use, is not counted. Keep it below the broker's open-file limit (docs/security.md).",
    )
    guard_enabled: bool = Field(
        default=True,
        description="Load the camstack guard plugin (per-device budgets, no $share for "
        "devices, no retained frames). Off only to show what it prevents.",
    )
    guard_plugin: Path | None = Field(
        default=None,
        description="Path of camstack_guard.so; default: broker/plugin/build/ in the source "
        "tree (make -C broker/plugin), else /usr/lib/camstack/camstack_guard.so.",
    )
    device_msgs_per_s: float = Field(
        default=300.0, gt=0, le=1_000_000,
        description="Sustained messages per second a device may publish; over budget it is "
        "disconnected without a PUBACK and resends later (docs/security.md).",
    )
    device_burst_msgs: int = Field(
        default=600, ge=1, le=10_000_000,
        description="Messages a device may publish at once above its rate (offline-queue "
        "flush after an outage).",
    )
    device_bytes_per_s: int = Field(
        default=1536 * 1024, ge=1024, le=10 * 1024**3,
        description="Sustained payload bytes per second a device may publish.",
    )
    device_burst_bytes: int = Field(
        default=4 * 1024 * 1024, ge=1024, le=100 * 1024**3,
        description="Payload bytes a device may publish at once above its rate; at least "
        "max_packet_bytes, or a large message could never pass.",
    )
    guard_publish_interval_s: float = Field(
        default=10.0, ge=0, le=3600,
        description="At most one update of $SYS/broker/camstack/guard/... per this period.",
    )
    guard_max_clients: int = Field(
        default=4096, ge=2, le=10_000_000,
        description="Clients the guard remembers (idle ones are forgotten first).",
    )
    guard_max_kicked: int = Field(
        default=256, ge=0, le=1_000_000,
        description="Kicked clients whose own count is published under "
        "$SYS/broker/camstack/guard/kicked/<id>; below guard_max_clients.",
    )

    @model_validator(mode="after")
    def _ports_differ(self) -> BrokerSettings:
        if self.local_port is not None and self.local_port == self.tls_port:
            raise ValueError("local_port and tls_port must differ")
        if self.device_burst_bytes < self.max_packet_bytes:
            raise ValueError("device_burst_bytes must be at least max_packet_bytes")
        if self.guard_max_kicked >= self.guard_max_clients:
            raise ValueError("guard_max_kicked must be below guard_max_clients")
        return self


class AlertSettings(_Section):
    """Thresholds of the alert rules evaluated by ``python -m monitor``."""

    device_offline_s: float = Field(
        default=300.0, gt=0, description="Alert when a device has been offline this long."
    )
    no_frame_s: float = Field(
        default=600.0, gt=0, description="Alert when an online device sent no frame this long."
    )
    rejection_rate: float = Field(
        default=0.05, gt=0, le=1, description="Alert above this share of rejected frames."
    )
    rejection_min_frames: int = Field(
        default=50, ge=1, description="Frames (stored + rejected) needed before judging the rate."
    )
    disk_percent: float = Field(
        default=90.0, gt=0, le=100, description="Alert above this usage of the storage disk."
    )
    service_offline_s: float = Field(
        default=60.0, gt=0, description="Alert when a known service has been offline this long."
    )
    webhook_url: str | None = Field(
        default=None, pattern=r"^https?://[^\s]+$", max_length=2048,
        description="Also POST raised and cleared alerts here, in Alertmanager's webhook "
        "format (none: MQTT only).",
    )
    webhook_token_file: Path | None = Field(
        default=None, description="File holding a bearer token sent with each POST.")
    webhook_queue: int = Field(
        default=100, ge=1, le=100_000,
        description="Notifications waiting for delivery at most; more are dropped (counted).")
    webhook_timeout_s: float = Field(default=5.0, gt=0, le=120, description="Per request.")
    webhook_max_attempts: int = Field(
        default=5, ge=1, le=100,
        description="Tries of one notification (network errors, 429, 5xx) before giving up.")
    webhook_backoff_s: float = Field(
        default=1.0, gt=0, le=600, description="First wait between tries, doubled each time.")


class HomeAssistantSettings(_Section):
    """Home Assistant MQTT discovery, published by ``python -m monitor`` (opt-in)."""

    enabled: bool = Field(
        default=False, description="Publish discovery configs and states for every camera.")
    discovery_prefix: TopicPrefix = Field(
        default="homeassistant",
        description="Home Assistant's discovery prefix (the operator ACL allows homeassistant/#).")
    web_base_url: str | None = Field(
        default=None, pattern=r"^https?://[^\s]+$", max_length=1024,
        description="Base URL of the web page: the image entity points at its thumbnails "
        "when the monitor cannot read them from storage.root (none: no image entity then).")
    image_max_bytes: int = Field(
        default=200_000, ge=1024, le=4 * 1024 * 1024,
        description="Largest thumbnail sent as an MQTT image (below the broker's max packet).")
    accounts_file: Path | None = Field(
        default=None,
        description="The broker's accounts.json, if readable: revoked cameras are removed "
        "from Home Assistant at once (otherwise when their retained status is deleted).")


class MonitorSettings(_ServiceSettings):
    """Everything ``camstack status`` and ``python -m monitor`` read."""

    mqtt: MqttSettings = MqttSettings(username="operator-monitor")
    storage: StorageSettings = StorageSettings()
    log: LogSettings = LogSettings()
    metrics: MetricsSettings = MetricsSettings(port=9103)
    alerts: AlertSettings = AlertSettings()
    homeassistant: HomeAssistantSettings = HomeAssistantSettings()
    interval_s: float = Field(default=15.0, gt=0, le=3600, description="Rule evaluation period.")
    alert_prefix: str = Field(
        default="alerts", pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="Alerts go to <alert_prefix>/<rule>/<subject>, retained.",
    )


# --- Web service (issue 15). New sections only, appended. ---


class HttpSettings(_Section):
    """The web service's HTTP(S) listener, accounts, sessions and login limits."""

    host: str = Field(default="127.0.0.1", min_length=1, max_length=255,
                      description="Interface to listen on.")
    port: int = Field(default=8080, ge=0, le=65535, description="0 picks a free port.")
    tls_cert_file: Path | None = Field(
        default=None, description="Server certificate (PEM, e.g. data/pki/server.crt); "
        "with tls_key_file the page is served over HTTPS and cookies are Secure.")
    tls_key_file: Path | None = Field(default=None, description="Its private key (PEM).")
    users_file: Path = Field(
        default=Path("data/web/users.json"),
        description="Accounts of the page (`python -m web user add NAME --role ...`).")
    session_secret_file: Path = Field(
        default=Path("data/web/session.key"),
        description="Key signing session cookies and CSRF tokens (created 0600 when missing).")
    session_max_age_s: int = Field(default=12 * 3600, ge=60, le=30 * 86_400)
    login_max_failures: int = Field(
        default=5, ge=1, le=1000,
        description="Failed logins allowed per client IP and per account within the window.")
    login_window_s: float = Field(default=300.0, gt=0, le=86_400)
    page_size: int = Field(default=60, ge=1, le=1000, description="Cameras per grid page.")
    presign_expires_s: int = Field(
        default=300, ge=10, le=3600, description="Life of a presigned S3 URL for a video.")
    max_event_clients: int = Field(
        default=100, ge=1, le=10_000, description="Live-update (SSE) connections at once.")
    video_public_key_file: Path | None = Field(
        default=Path("data/pki/video-signing.pub"),
        description="Ed25519 public key (PEM) for the tamper-evidence check (the encoder "
        "writes it beside its `signing_key_file`; a missing file turns the check off).")

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> HttpSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file must be given together")
        return self


class LiveSettings(_Section):
    """Bounds of the web service's live picture (from the retained topics)."""

    max_devices: int = Field(default=10_000, ge=1, le=1_000_000)
    max_services: int = Field(default=256, ge=1, le=10_000)
    max_alerts: int = Field(default=10_000, ge=1, le=1_000_000)
    history: int = Field(
        default=30, ge=1, le=1000, description="Status changes kept per device.")


class WebSettings(_ServiceSettings):
    """Everything ``python -m web`` reads."""

    mqtt: MqttSettings = MqttSettings(username="operator-web", client_id="operator-web")
    storage: StorageSettings = StorageSettings()
    catalog: CatalogSettings = CatalogSettings()
    store: ObjectStoreSettings = ObjectStoreSettings()
    log: LogSettings = LogSettings()
    http: HttpSettings = HttpSettings()
    live: LiveSettings = LiveSettings()
    alert_prefix: str = Field(
        default="alerts", pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="Alerts are read from <alert_prefix>/#.")

    @model_validator(mode="after")
    def _shared_catalog(self):  # type: ignore[no-untyped-def]
        # The same SQLite file as the ingestor and the encoder unless the file names one.
        object.__setattr__(self, "catalog", _default_catalog_path(self.catalog, self.storage))
        return self


# --- NATS cluster broker engine (issue 17). New sections only, appended. ---


class NatsGuardSettings(_Section):
    """The NATS engine's guard (``python -m natsguard``, docs/security.md).

    Per-device budgets (``broker.device_*``) and client-id checks, enforced by closing
    connections.

    Every ``interval_s`` it asks every node for its connections over the NATS protocol,
    as user ``guard`` of the system account, and closes (``$SYS.REQ.SERVER.<id>.KICK``,
    nats-server 2.10 or later) a device connection over budget or under another client
    id. It acts after the fact: a flooder gets through what it sends until the next round.
    A device closed over budget is then banned (its logins refused on every node) until
    it has paid that back, so a reconnect loop averages about its budget.
    """

    enabled: bool = Field(
        default=True, description="make up runs the guard with the cluster nodes.")
    interval_s: float = Field(
        default=1.0, ge=0.1, le=60,
        description="Seconds between two rounds (ask every node, charge, kick). A flooder "
        "gets through up to its send rate times this before it is closed.")
    reply_timeout_s: float = Field(
        default=0.5, gt=0, le=10,
        description="How long a round waits for the nodes' answers (one per node).")
    page_size: int = Field(
        default=1024, ge=16, le=10_000,
        description="Connections asked per CONNZ request; a node with more is asked again "
        "for the next page (offset).")
    max_connections: int = Field(
        default=200_000, ge=1, le=10_000_000,
        description="Connections whose counters are tracked; past it new ones are not "
        "metered (counted in camstack_natsguard_untracked_total).")
    max_accounts: int = Field(
        default=100_000, ge=1, le=10_000_000,
        description="Device accounts whose buckets are remembered (idle full ones are "
        "forgotten first).")
    max_debt_s: float = Field(
        default=60.0, ge=0, le=86_400,
        description="An account over budget owes at most this many seconds of its rate; "
        "while it owes, any publish gets it closed again.")
    ban_max_devices: int = Field(
        default=1000, ge=0, le=100_000,
        description="Devices banned at once at most: a device kicked over budget is taken "
        "out of the accounts file every node includes (and every node reloaded) until its "
        "bucket is back at zero, so a reconnect loop averages about its budget. Past it a "
        "ban is refused (counted in camstack_natsguard_bans_refused_total); 0: never ban, "
        "kick only. The guard needs write access to <broker.data_dir>/broker.")
    ban_max_s: float = Field(
        default=3600.0, gt=0, le=7 * 86_400,
        description="The longest one ban lasts (a ban lasts what the device owes: the "
        "messages or bytes it sent over its budget divided by its rate).")
    servers: list[str] = Field(
        default_factory=list, max_length=64,
        description="NATS URLs of the nodes' client ports; empty: every node's loopback "
        "port (port_base + 10*i).")
    password_file: Path | None = Field(
        default=None,
        description="Password of the system-account user guard; default "
        "<broker.data_dir>/secrets/guard.pass (written by camstack init).")
    metrics_host: str = Field(default="127.0.0.1", description="Prometheus endpoint host.")
    metrics_port: int = Field(
        default=9104, ge=0, le=65535, description="Prometheus endpoint port (0: a free one).")


class NatsClusterSettings(_Section):
    """The NATS cluster run when ``broker.engine = "nats"`` (docs/scaling.md).

    Node ``i`` (0-based) listens for MQTT over TLS on ``mqtt_port_base + i`` (on
    ``broker.tls_bind``), for NATS clients on ``port_base + 10*i`` (``client_bind``), for
    cluster routes on ``port_base + 10*i + 1`` (``route_bind``; the others dial
    ``hosts[i]``) and HTTP monitoring on ``port_base + 10*i + 2`` (loopback).
    """

    nodes: int = Field(default=3, ge=1, le=7, description="NATS servers in the cluster.")
    mqtt_port_base: int = Field(
        default=8883, ge=1, le=65535 - 7,
        description="MQTT (TLS) port of node 0; node i listens on mqtt_port_base + i.")
    port_base: int = Field(
        default=14220, ge=1, le=65535 - 72,
        description="Loopback ports of node i: client port_base + 10*i, cluster route + 1, "
        "HTTP monitoring + 2.")
    partitions: Literal[64] = Field(
        default=64,
        description="Partitions of the frame subjects (cam.<id>.frame -> "
        "p.<partition>.cam.<id>.frame). Fixed: changing it moves most devices.")
    stream_replicas: int | None = Field(
        default=None, ge=1, le=7,
        description="Replicas of the MQTT streams (sessions, retained and QoS 1 messages); "
        "at most nodes; none: min(3, nodes).")
    max_ack_pending: int = Field(
        default=1000, ge=1, le=65535,
        description="Unacknowledged messages NATS sends per MQTT subscription; summed over "
        "a session's subscriptions at most 65,535: an ingestor owning k partitions needs "
        "k * max_ack_pending <= 65535, else a SUBACK is refused (0x80). It is also the "
        "session's window over all its subscriptions: NATS counts deliveries past it as "
        "sent and drops them until ack_wait_s (docs/scaling.md, the delivery stall).")
    ack_wait_s: float = Field(
        default=5.0, ge=1.0, le=3600.0,
        description="NATS's MQTT ack_wait: an unacknowledged QoS 1 delivery is sent again "
        "after this long. It bounds the delivery stall of a session on many partitions "
        "(docs/scaling.md; NATS's own default is 30 s); lower means more redeliveries of "
        "chunks the ingestor holds longer (a slow disk).")
    data_dir: Path | None = Field(
        default=None,
        description="Node folders (config, JetStream store, log, pid); default "
        "<broker.data_dir>/nats.")
    guard: NatsGuardSettings = Field(
        default_factory=NatsGuardSettings,
        description="The guard service: per-device budgets and client ids on NATS.")
    hosts: list[HostName] = Field(
        default_factory=list, max_length=7,
        description="Host name (or address) of node i, as the other nodes reach its "
        "route port and as it advertises itself: one per node, e.g. [\"nats-0\", "
        "\"nats-1\", \"nats-2\"] in Compose. Empty: every node on this machine's "
        "loopback (127.0.0.1).")
    route_bind: str | None = Field(
        default=None,
        description="Interface of the route listener; none: 127.0.0.1 without hosts, "
        "0.0.0.0 with them.")
    client_bind: str = Field(
        default="127.0.0.1",
        description="Interface of the NATS client port (the guard and the job queue log "
        "in there); 0.0.0.0 when they run on other hosts or containers.")
    secure_routes: bool | None = Field(
        default=None,
        description="Routes with TLS (the project CA; a route certificate naming the "
        "hosts, verified both ways) and a route user and password "
        "(<broker.data_dir>/secrets/nats-route.pass). None: on when hosts is set, off on "
        "loopback.")

    @model_validator(mode="after")
    def _consistent(self) -> NatsClusterSettings:
        if self.stream_replicas is not None and self.stream_replicas > self.nodes:
            raise ValueError("stream_replicas must be at most nodes")
        lo, hi = self.port_base, self.port_base + 10 * self.nodes
        if lo <= self.mqtt_port_base + self.nodes - 1 and self.mqtt_port_base < hi:
            raise ValueError("the MQTT ports (mqtt_port_base + i) overlap the loopback "
                             "ports (port_base + 10*i + 0..2)")
        if self.hosts and len(self.hosts) != self.nodes:
            raise ValueError("hosts must name every node (one per node) or be empty")
        if len(set(self.hosts)) != len(self.hosts):
            raise ValueError("hosts must differ")
        if self.max_ack_pending * self.partitions > 65535:
            raise ValueError("max_ack_pending * partitions must be at most 65535 (an "
                             "ingestor owning every partition could not subscribe them all)")
        return self

    @property
    def route_hosts(self) -> list[str]:
        """Node i's route host: ``hosts[i]``, else loopback."""
        return list(self.hosts) if self.hosts else ["127.0.0.1"] * self.nodes

    @property
    def route_listen_host(self) -> str:
        """Interface of the route listener (``route_bind``, else by ``hosts``)."""
        if self.route_bind is not None:
            return self.route_bind
        return "0.0.0.0" if self.hosts else "127.0.0.1"

    @property
    def routes_secured(self) -> bool:
        """TLS and a password on routes (``secure_routes``, else when hosts is set)."""
        return self.secure_routes if self.secure_routes is not None else bool(self.hosts)

    @property
    def replicas(self) -> int:
        """Replicas of the MQTT streams: ``stream_replicas``, else min(3, nodes)."""
        return self.stream_replicas if self.stream_replicas is not None else min(3, self.nodes)


BrokerSettings.model_rebuild()
