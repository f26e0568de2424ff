"""The JetStream runner: K pull workers calling the encode function (docs/scaling.md).

Each of the ``work.parallel_batches`` threads runs one :class:`jobqueue.worker.JobWorker`
bound to the shared durable consumer, so a process takes at most K jobs at a time and
any number of such processes, on any machines, share the queue. A job is handed to
:meth:`encoder.jobs.BatchProcessor.handle` (the same code as the MQTT runner, reading
the pack from the object store, never the ingestor's disk) and its outcome becomes the
worker's ack, nak or term:

==========================================  ==================================
``BatchProcessor`` outcome                  job
==========================================  ==================================
encoded, already_done, quarantined,         ``OK``: acked, gone from the queue
missing (no row, or already handled)
retry, failed, busy, unsealed, stopped      ``RETRY``: nak'ed, delivered again
==========================================  ==================================

A job delivered more than ``jobqueue.max_deliver`` times is quarantined without being
run again (:func:`encoder.cloud.quarantine_batch`: catalog state, ``reason.json``,
``camstack_encoder_quarantined_total{reason="delivered_too_often"}``).
"""

from __future__ import annotations

import threading

import structlog

from config.settings import JobQueueSettings
from encoder.cloud import BatchRef, CloudJob, quarantine_batch
from encoder.jobs import BatchProcessor, Job
from encoder.jobs import Outcome as BatchOutcome
from jobqueue import EncodeJob, JobQueueError
from jobqueue.job import Outcome
from jobqueue.metrics import JobQueueMetrics
from jobqueue.worker import run_worker_blocking

log = structlog.get_logger("encoder.jetstream")

ACKED = frozenset({BatchOutcome.ENCODED, BatchOutcome.ALREADY_DONE,
                   BatchOutcome.QUARANTINED, BatchOutcome.MISSING})
"""Outcomes after which the job is finished; every other one asks for a redelivery."""


def job_outcome(outcome: BatchOutcome) -> Outcome:
    """The queue's view of a batch outcome (the table above)."""
    return Outcome.OK if outcome in ACKED else Outcome.RETRY


class JetStreamRunner:
    """K worker threads pulling encode jobs until ``stop`` is set.

    Args:
        settings: ``[jobqueue]``.
        processor: The encode function's owner (with a :class:`CloudJob`).
        cloud: Store, catalog and scratch of the processor (for quarantine).
        metrics: Job counters (outcomes, malformed messages).
        parallel: K.
        name: Connection name prefix (the service account).
        pack_prefix: ``store.pack_prefix``.
        stop: Set when the service stops.
    """

    def __init__(self, settings: JobQueueSettings, processor: BatchProcessor, cloud: CloudJob,
                 metrics: JobQueueMetrics, *, parallel: int, name: str, pack_prefix: str,
                 stop: threading.Event) -> None:
        self.settings = settings
        self.processor = processor
        self.cloud = cloud
        self.metrics = metrics
        self.parallel = parallel
        self.name = name
        self.pack_prefix = pack_prefix
        self.stop = stop
        self.threads: list[threading.Thread] = []

    def handle(self, job: EncodeJob) -> Outcome:
        """Run one job through the batch processor (called in a worker thread)."""
        outcome = self.processor.handle(Job(device=job.device, batch=job.batch,
                                            source="jetstream"))
        log.info("job_handled", device=job.device, batch=job.batch, outcome=outcome.value)
        return job_outcome(outcome)

    def quarantine(self, job: EncodeJob, deliveries: int) -> None:
        """Give up on a job delivered too often (raises when the catalog is away)."""
        quarantine_batch(BatchRef(job.device, job.batch), self.cloud, "delivered_too_often",
                         deliveries=deliveries)
        self.processor.metrics.batches.labels(BatchOutcome.QUARANTINED.value).inc()

    def start(self) -> None:
        """Start the K worker threads."""
        for i in range(self.parallel):
            t = threading.Thread(target=self._run, args=(i,), name=f"encoder-job-{i}",
                                 daemon=True)
            self.threads.append(t)
            t.start()

    def join(self, timeout: float) -> None:
        """Wait for the threads (each finishes its job in hand first)."""
        for t in self.threads:
            t.join(timeout=timeout)

    def _run(self, index: int) -> None:
        delay = 1.0
        while not self.stop.is_set():
            try:
                stats = run_worker_blocking(
                    self.settings, self.handle, self.quarantine, self.stop,
                    name=f"{self.name}-{index}", pack_prefix=self.pack_prefix,
                    on_event=self.metrics.on_event)
            except JobQueueError as exc:
                # NATS away at the (re)connect: keep trying; the jobs wait in the stream.
                log.warning("jobqueue_unavailable", worker=index, error=str(exc)[:300],
                            retry_s=delay)
                self.stop.wait(delay)
                delay = min(delay * 2, 30.0)
                continue
            except Exception as exc:  # a bug in one worker must not end the others
                log.exception("job_worker_crashed", worker=index, error=str(exc)[:300])
                self.stop.wait(delay)
                delay = min(delay * 2, 30.0)
                continue
            log.info("job_worker_stopped", worker=index, ok=stats.ok, retried=stats.retried,
                     quarantined=stats.quarantined, malformed=stats.malformed)
            delay = 1.0
