"""Prometheus metrics of the encode backlog and the job queue (issue 13).

``JobQueueMetrics`` owns its families in a registry the lead registers with the process
that exports them (the encoder or a worker pool): ``observe_backlog`` after each
:func:`jobqueue.backlog.encode_backlog`, and ``on_event`` as the ``JobWorker``'s hook.
Alert rules on these names: deploy/prometheus/camstack-rules.yml.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from jobqueue.backlog import Backlog

BACKLOG_OLDEST = "camstack_encode_backlog_oldest_seconds"
JOBS_QUARANTINED = "camstack_encode_jobs_quarantined"


class JobQueueMetrics:
    """The families; pass ``registry`` to add them to an existing one."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.backlog_oldest = Gauge(
            BACKLOG_OLDEST, "Age of the oldest batch waiting to be encoded (sealed or "
            "uploaded); 0 when none waits.", registry=r)
        self.backlog_batches = Gauge(
            "camstack_encode_backlog_batches", "Batches waiting to be encoded.", registry=r)
        self.jobs_quarantined = Gauge(
            JOBS_QUARANTINED, "Batches in quarantine: they will not become videos by "
            "themselves.", registry=r)
        self.jobs_pending = Gauge(
            "camstack_encode_jobs_pending", "Jobs in the JetStream consumer not finished "
            "yet (waiting + unacknowledged).", registry=r)
        self.jobs = Counter(
            "camstack_jobqueue_jobs", "Job deliveries handled by this worker, by outcome.",
            ["outcome"], registry=r)
        self.malformed = Counter(
            "camstack_jobqueue_malformed", "Job messages rejected as malformed, by reason.",
            ["reason"], registry=r)

    def observe_backlog(self, backlog: Backlog) -> None:
        """Set the gauges from one backlog reading."""
        self.backlog_oldest.set(backlog.oldest_seconds)
        self.backlog_batches.set(backlog.waiting_batches)
        self.jobs_quarantined.set(backlog.quarantined)
        if backlog.pending_jobs is not None:
            self.jobs_pending.set(backlog.pending_jobs)

    def on_event(self, kind: str, detail: str) -> None:
        """``JobWorker(on_event=...)``: count outcomes and malformed messages."""
        if kind == "malformed":
            self.malformed.labels(reason=detail[:32]).inc()
        elif kind in ("ok", "retry", "poison", "quarantined", "error"):
            self.jobs.labels(outcome=kind).inc()
