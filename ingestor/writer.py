"""The ingestor's writer thread: group commits and seals.

It owns the :class:`Store` and the :class:`Batcher`. It takes complete frames from the
:class:`WriteQueue`, makes them durable in groups (one fsync round for many frames),
seals batches and tells the network thread what to do through the :class:`Mailbox`:
which tokens may be acked, which batch to announce (again), when storage fails or
recovers. It never calls paho.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import structlog

from config.settings import IngestSettings
from ingestor.batcher import Batcher, SealPlan
from ingestor.messages import AckTokens, Job, Mailbox, Sealed, StorageState, WriteQueue
from ingestor.metrics import IngestMetrics
from ingestor.store import PendingFrames, Store
from ingestor.uploader import Finisher

log = structlog.get_logger("ingestor")


@dataclass
class Counters:
    """Totals for the retained status (written by both threads, read by the network one)."""

    frames_stored: int = 0
    bytes_stored: int = 0
    rejected: int = 0
    dropped: int = 0
    batches_sealed: int = 0


class Writer:
    """The writer thread's work.

    Args:
        ing: ``[ingest]`` settings.
        store: Storage (this thread's alone).
        batcher: Batching rules (this thread's alone).
        queue: Frames from the network thread.
        mailbox: Messages to the network thread.
        metrics: Metrics.
        counters: Status totals.
        draining: Set when the service stops: finish what is queued, then return.
        finisher: Takes each sealed batch on (catalog row, upload, announce): its own
            thread, so that a slow store or database never holds frame commits.
    """

    def __init__(self, ing: IngestSettings, store: Store, *, batcher: Batcher,
                 queue: WriteQueue, mailbox: Mailbox, metrics: IngestMetrics,
                 counters: Counters, draining: threading.Event, finisher: Finisher) -> None:
        self.ing = ing
        self.store = store
        self.batcher = batcher
        self.queue = queue
        self.mailbox = mailbox
        self.metrics = metrics
        self.counters = counters
        self.draining = draining
        self.finisher = finisher
        self._storage_ok = True
        self._drain_deadline: float | None = None

    # ----------------------------------------------------------------- the loop
    def run(self) -> None:
        """Write, seal and re-announce until drained (the thread's target)."""
        retry: list[Job] = []
        window = self.ing.fsync_interval_ms / 1000.0
        # Two groups overlap: while one group's fsyncs run, the next group's files are
        # written (only when frames are already queued: a lone group is finished at
        # once). Groups finish, and are acknowledged, in order.
        inflight: tuple[list[Job], PendingFrames] | None = None
        while True:
            # With a group in flight, take what is queued now and never wait: its acks
            # would wait too.
            group = retry + self.queue.take_group(wait=inflight is None, window_s=window,
                                                  draining=self.draining.is_set())
            retry = []
            failed: OSError | None = None
            started: PendingFrames | None = None
            isolate: list[Job] = []
            if group:
                try:
                    started = self.store.begin_frames([(j.meta, j.frame.data) for j in group])
                except OSError as exc:
                    failed, retry = exc, group
                except Exception:
                    # Not the disk: something in one frame. Find it, frame by frame.
                    log.exception("write_group_failed", frames=len(group))
                    isolate = group
            if inflight is not None:
                jobs, pending = inflight
                inflight = None
                try:
                    self.store.finish_frames(pending)
                except OSError as exc:
                    if started is not None:
                        self.store.abort_frames(started)
                        started = None
                    failed, retry, isolate = exc, jobs + group, []
                else:
                    self._stored(jobs)
            if started is not None:
                inflight = (group, started)
            if isolate:
                failed, retry = self._write_one_by_one(isolate)
            if failed is not None:
                self._storage_failed("write", failed, len(retry))
                if self.draining.is_set() and self._stop_deadline_passed():
                    return
                self.queue.sleep(self.ing.storage_retry_s)
                continue
            if not self._seal_due():
                if self.draining.is_set() and self._stop_deadline_passed():
                    return
                self.queue.sleep(self.ing.storage_retry_s)
                continue
            if self.draining.is_set() and inflight is None and self.queue.idle():
                return

    def _write_one_by_one(self, jobs: list[Job]) -> tuple[OSError | None, list[Job]]:
        """Write ``jobs`` one at a time; reject any frame whose write fails but the disk's.

        Returns:
            The disk error that stopped the run (None when all were handled) and the jobs
            still to write.
        """
        for i, j in enumerate(jobs):
            try:
                self.store.finish_frames(self.store.begin_frames([(j.meta, j.frame.data)]))
            except OSError as exc:
                return exc, jobs[i:]
            except Exception as exc:
                self._reject(j, exc)
            else:
                self._stored([j])
        return None, []

    def _reject(self, job: Job, exc: Exception) -> None:
        # The frame can never be stored: acknowledge it so it does not come back forever.
        m = job.meta
        log.error("frame_rejected", device=m.device, boot_id=m.boot_id, seq=m.frame_seq,
                  reason="internal_error", detail=f"{type(exc).__name__}: {exc}")
        self.counters.rejected += 1
        self.metrics.rejections.labels("internal_error").inc()
        self.mailbox.post(AckTokens(tuple(self.queue.done([job]))))

    def _stop_deadline_passed(self) -> bool:
        if self._drain_deadline is None:
            self._drain_deadline = time.monotonic() + max(10.0, 2 * self.ing.storage_retry_s)
        return time.monotonic() >= self._drain_deadline

    def _storage_failed(self, what: str, exc: OSError, frames: int) -> None:
        self.metrics.storage_errors.inc()
        self.metrics.storage_available.set(0)
        log.error("storage_unavailable", op=what, error=str(exc), errno=exc.errno,
                  pending_frames=len(self.queue), group=frames,
                  retry_in_s=self.ing.storage_retry_s)
        if self._storage_ok:
            self._storage_ok = False
            self.mailbox.post(StorageState(ok=False))

    def _storage_recovered(self) -> None:
        if not self._storage_ok:
            self._storage_ok = True
            self.metrics.storage_available.set(1)
            log.info("storage_recovered", pending_frames=len(self.queue))
            self.mailbox.post(StorageState(ok=True))

    def _stored(self, group: list[Job]) -> None:
        self._storage_recovered()
        now = time.monotonic()
        wall = time.time()
        self.mailbox.post(AckTokens(tuple(self.queue.done(group))))
        self.metrics.group_size.observe(len(group))
        # Labelled metrics once per device and group (a label lookup per frame showed in
        # profiles); all of them before any frame_stored event is logged.
        per_device: dict[str, list[int]] = {}
        for j in group:
            m = j.meta
            agg = per_device.get(m.device)
            if agg is None:
                per_device[m.device] = [1, m.size]
            else:
                agg[0] += 1
                agg[1] += m.size
            self.metrics.store_latency.observe(now - j.completed_at)
        for device, (frames, size) in per_device.items():
            self.counters.frames_stored += frames
            self.counters.bytes_stored += size
            self.metrics.frames_stored.labels(device).inc(frames)
            self.metrics.bytes_stored.labels(device).inc(size)
            self.metrics.last_frame.labels(device).set(wall)
        for j in group:
            m = j.meta
            self.batcher.add(m, now)
            log.info("frame_stored", device=m.device, boot_id=m.boot_id, seq=m.frame_seq,
                     bytes=m.size, file=m.rel_path)

    def _seal_due(self) -> bool:
        # due() offers one batch per device; a device far past the threshold (after a
        # restart or a long outage) gets all its batches sealed in this pass.
        for _ in range(10_000):
            plans = self.batcher.due(time.monotonic())
            if not plans:
                return True
            if not self._seal_plans(plans):
                return False
        return True

    def _seal_plans(self, plans: list[SealPlan]) -> bool:
        sealed = False
        for plan in plans:
            try:
                man = self.store.seal(plan, int(time.time() * 1000))
            except OSError as exc:
                self._storage_failed("seal", exc, 0)
                return False
            except Exception as exc:  # a bug, not the disk: retried like a disk error
                log.exception("seal_failed", device=plan.device, batch=plan.batch)
                self._storage_failed("seal", OSError(0, f"{type(exc).__name__}: {exc}"), 0)
                return False
            self.batcher.commit(plan)
            if man is None:
                continue
            sealed = True
            self.counters.batches_sealed += 1
            self.metrics.batches_sealed.labels(plan.device).inc()
            log.info("batch_sealed", device=plan.device, batch=plan.batch,
                     frames=len(man.frames), reason=plan.reason, location=plan.location)
            self.finisher.submit(man)
        if sealed:
            # The retained status says how many batches were sealed: keep it current.
            self.mailbox.post(Sealed())
        return True
