"""Prometheus metrics of one encoder, in a private registry (several per test process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class EncoderMetrics:
    """Every counter the encoder keeps; names start with ``camstack_encoder_``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.batches = Counter(
            "camstack_encoder_batches", "Batches handled, by outcome.", ["outcome"], registry=r)
        self.frames_encoded = Counter(
            "camstack_encoder_frames_encoded", "Frames written into videos.", registry=r)
        self.frames_skipped = Counter(
            "camstack_encoder_frames_skipped", "Frames left out of videos, by reason.",
            ["reason"], registry=r)
        self.encode_seconds = Histogram(
            "camstack_encoder_encode_seconds", "Wall time to encode one batch.",
            buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600), registry=r)
        self.encode_fps = Gauge(
            "camstack_encoder_encode_fps", "Frames per second achieved on the last batch.",
            registry=r)
        self.queue_depth = Gauge(
            "camstack_encoder_queue_depth", "Ready events received and not yet handled.",
            registry=r)
        self.quarantined = Counter(
            "camstack_encoder_quarantined", "Batches moved to quarantine, by reason.",
            ["reason"], registry=r)
        self.malformed = Counter(
            "camstack_encoder_ready_malformed", "Ready events refused, by reason.",
            ["reason"], registry=r)
        self.failures = Counter(
            "camstack_encoder_failures", "Errors while handling a batch, by step.",
            ["step"], registry=r)
        self.video_bytes = Counter(
            "camstack_encoder_video_bytes", "Bytes of MP4 written.", registry=r)
        self.retention_deleted = Counter(
            "camstack_encoder_retention_deleted", "Videos deleted by retention, by rule.",
            ["rule"], registry=r)
        self.retention_bytes = Counter(
            "camstack_encoder_retention_freed_bytes", "Bytes freed by retention.", registry=r)
        self.dropped = Counter(
            "camstack_encoder_ready_dropped",
            "Ready events refused because the local queue was full (left unacked).",
            registry=r)
