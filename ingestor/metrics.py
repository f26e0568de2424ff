"""Prometheus metrics of one ingestor instance (a private registry per instance)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from contract.ids import is_device_id

NO_DEVICE = "-"
"""``device`` label of a rejection whose topic names no device account."""

MAX_DEVICE_LABELS = 10_000
"""Distinct ``device`` values of the rejection counter at most; later ones count as "-"."""


class IngestMetrics:
    """Every counter, gauge and histogram the ingestor exports.

    Args:
        registry: Where to register; a fresh private one by default.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.chunks = Counter("camstack_ingestor_chunks_received_total",
                              "Frame chunks received (duplicates included).", registry=r)
        self.duplicates = Counter("camstack_ingestor_duplicate_chunks_total",
                                  "Chunks received again (QoS 1 redelivery).", registry=r)
        self.frames_stored = Counter("camstack_ingestor_frames_stored_total",
                                     "Frames durably stored.", ["device"], registry=r)
        self.bytes_stored = Counter("camstack_ingestor_bytes_stored_total",
                                    "JPEG bytes durably stored.", ["device"], registry=r)
        self.rejections = Counter(
            "camstack_ingestor_rejections_total",
            "Frames or chunks refused, by reason and device (the account id of the frame "
            "topic; \"-\" for a topic that names none).", ["reason", "device"], registry=r)
        self.discarded = Counter("camstack_ingestor_chunks_discarded_total",
                                 "Further chunks of frames already rejected.", registry=r)
        self.drops = Counter("camstack_ingestor_drops_total",
                             "Incomplete frames given up (timeout, evictions).", ["reason"],
                             registry=r)
        self.partial_frames = Gauge("camstack_ingestor_partial_frames",
                                    "Frames being reassembled.", registry=r)
        self.inflight_bytes = Gauge("camstack_ingestor_inflight_bytes",
                                    "Chunk bytes held in partial frames.", registry=r)
        self.unacked = Gauge("camstack_ingestor_unacked_chunks",
                             "Chunks received and not yet acknowledged.", registry=r)
        self.pending_frames = Gauge("camstack_ingestor_pending_frames",
                                    "Complete frames waiting to be durable.", registry=r)
        self.store_latency = Histogram(
            "camstack_ingestor_store_seconds", "From a frame's completion to durable on disk.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r)
        self.group_size = Histogram(
            "camstack_ingestor_commit_group_frames", "Frames per group commit.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512), registry=r)
        self.batches_sealed = Counter("camstack_ingestor_batches_sealed_total",
                                      "Batches sealed.", ["device"], registry=r)
        self.batches_announced = Counter("camstack_ingestor_batches_announced_total",
                                         "Ready events acknowledged by the broker.", registry=r)
        self.last_frame = Gauge("camstack_ingestor_last_frame_timestamp_seconds",
                                "Unix time of the device's last stored frame.", ["device"],
                                registry=r)
        self.jobs_published = Counter(
            "camstack_ingestor_jobs_published_total",
            "Encode jobs stored in NATS JetStream (runner = jetstream), re-publishes "
            "excluded.", registry=r)
        self.batches_reannounced = Counter(
            "camstack_ingestor_batches_reannounced_total",
            "Ready events sent again because the batch still had no video.", registry=r)
        self.clock_untrusted = Counter(
            "camstack_ingestor_capture_time_untrusted_total",
            "Frames flagged clock-synced whose capture time was implausible (filed under "
            "their arrival time).", ["device"], registry=r)
        self.storage_errors = Counter("camstack_ingestor_storage_errors_total",
                                      "Failed writes or seals (retried).", registry=r)
        self.storage_available = Gauge("camstack_ingestor_storage_available",
                                       "1 while writes succeed, 0 while degraded.", registry=r)
        self.paused = Gauge("camstack_ingestor_reading_paused",
                            "1 while the socket is not read (too many pending frames).",
                            registry=r)
        self.connected = Gauge("camstack_ingestor_connected", "1 while connected to the broker.",
                               registry=r)
        self.uploads_failed = Counter(
            "camstack_ingestor_uploads_failed_total",
            "Failed pack uploads to the object store (retried; the batch stays local).",
            registry=r)
        self.upload_backlog = Gauge(
            "camstack_ingestor_upload_backlog",
            "Sealed batches not yet finished (catalog row, upload, release).", registry=r)
        self.upload_process_restarts = Counter(
            "camstack_ingestor_upload_process_restarts_total",
            "Upload child processes started again after one died (each death also "
            "counts as a failed upload).", registry=r)
        self.storage_available.set(1)
        self._rejecting: set[str] = set()

    def rejected(self, reason: str, device: str | None) -> None:
        """Count one rejection.

        The label set stays bounded: ``device`` is an account id (the broker's ACL lets
        only that account publish on ``<prefix>/<id>/frame``), anything else is ``-``,
        and at most :data:`MAX_DEVICE_LABELS` devices get a series of their own.

        Args:
            reason: Why (an enum value of the assembler or the ingestor).
            device: The device id parsed from the topic, or None.
        """
        label = NO_DEVICE
        if (device is not None and is_device_id(device)
                and (device in self._rejecting or len(self._rejecting) < MAX_DEVICE_LABELS)):
            self._rejecting.add(device)
            label = device
        self.rejections.labels(reason, label).inc()
