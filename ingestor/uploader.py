"""The ingestor's finisher thread: catalog row, pack upload, local release, announce.

Every sealed batch passes through here, in seal order, on its own thread so that the
writer thread keeps committing frames whatever the catalog or the object store do:

1. ``record_sealed`` in the catalog (idempotent);
2. with ``store.backend = "s3"`` only: the batch folder becomes one pack
   (objstore/pack.py) by the upload child process (ingestor/uploadproc.py) and uploaded with its
   SHA-256 to ``packs/<id>/<batch>.tar``; ``mark_uploaded``; then the local batch folder
   is **released** (one rename into ``state/ingestor/trash/``, then deleted);
3. with ``runner = "jetstream"`` only: one encode job is published to NATS JetStream
   (message id ``<device>/<batch>``, so the server keeps one per batch);
4. the ready event is handed to the network thread.

A failure at any step (store or database down, wrong answer) is retried with a
doubling backoff (``ingest.upload_retry_s`` up to ``ingest.upload_retry_max_s``); the
batch stays on local disk meanwhile, the status says ``degraded`` with the reason, and
``camstack_ingestor_uploads_failed_total`` / ``camstack_ingestor_upload_backlog`` show
it. The local disk is bounded by the writer's existing back-pressure: when it fills,
frames stop being acknowledged and the broker keeps them.

It also re-announces batches still waiting for their video: on the filesystem while the
batch folder exists (the encoder removes it), on S3 while the catalog row is still
``sealed``/``uploaded``/``encoding``; with JetStream, each re-announce publishes the
job again (inside the duplicate window the server drops it; after it, a lost job comes
back).
"""

from __future__ import annotations

import collections
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import structlog

from catalog import CatalogError, InvalidValueError, SealedBatch, SqlCatalog
from config.settings import IngestSettings
from contract.events import Manifest, ReadyEvent
from contract.layout import BATCHES_DIR, STATE_DIR, pack_key
from ingestor import uploadproc
from ingestor.durable import fsync_dir
from ingestor.messages import Announce, Mailbox, UploadState
from ingestor.metrics import IngestMetrics
from jobqueue import JobQueueError
from objstore import ObjectStore, ObjectStoreError

log = structlog.get_logger("ingestor.uploader")

T = TypeVar("T")
PublishJob = Callable[[str, str, "str | None"], None]
"""``publish_job(device, batch, pack_sha256)``: store one encode job (raises
:class:`jobqueue.JobQueueError` when NATS does not confirm it)."""
PENDING_STATES = frozenset({"sealed", "uploaded", "encoding"})


class StoppedError(Exception):
    """The service stops while a step is being retried (the batch stays local)."""


@dataclass(slots=True)
class _Unfinished:
    event: ReadyEvent
    due: float
    interval: float


class Finisher:
    """The finisher thread's work (see the module docstring).

    Args:
        ing: ``[ingest]`` settings.
        root: Storage root (the ingestor's local disk).
        catalog: The catalog (always on).
        store: The object store, or ``None`` on the filesystem backend (batches stay in
            ``batches/`` for the encoder).
        pack_prefix: ``store.pack_prefix``.
        mailbox: Messages to the network thread.
        metrics: Metrics.
        stop: Set when the service stops.
        publish_job: Hands each uploaded batch to the JetStream runner; ``None`` with the
            MQTT runner.
    """

    def __init__(self, ing: IngestSettings, root: Path, *, catalog: SqlCatalog,
                 store: ObjectStore | None, pack_prefix: str, mailbox: Mailbox,
                 metrics: IngestMetrics, stop: threading.Event,
                 publish_job: PublishJob | None = None) -> None:
        self.ing = ing
        self.root = root
        self.catalog = catalog
        self.store = store
        self.pack_prefix = pack_prefix
        self.mailbox = mailbox
        self.metrics = metrics
        self.stop = stop
        self.publish_job = publish_job
        self.uploads_dir = root / STATE_DIR / "ingestor" / "uploads"
        self.trash_dir = root / STATE_DIR / "ingestor" / "trash"
        self._cond = threading.Condition()
        self._pending: collections.deque[Manifest] = collections.deque()
        self._queued: set[str] = set()
        self._busy = 0
        self._failing = ""
        self._unfinished: dict[str, _Unfinished] = {}
        self.uploaded = 0
        # S3: packs are built and uploaded by a child process (ingestor/uploadproc.py).
        spec = uploadproc.store_spec(store) if store is not None and ing.upload_process \
            else None
        self.upload_process = None if spec is None else uploadproc.UploadProcess(
            spec, self.uploads_dir, nice=ing.upload_nice,
            on_restart=metrics.upload_process_restarts.inc)

    # ----------------------------------------------------------------- intake
    def submit(self, man: Manifest) -> None:
        """Finish ``man``'s batch (thread-safe; a batch already queued is ignored)."""
        with self._cond:
            if man.batch in self._queued:
                return
            self._queued.add(man.batch)
            self._pending.append(man)
            self._set_backlog()
            self._cond.notify()

    @property
    def backlog(self) -> int:
        """Batches sealed and not yet finished (queued or in hand)."""
        with self._cond:
            return len(self._pending) + self._busy

    def _set_backlog(self) -> None:
        self.metrics.upload_backlog.set(len(self._pending) + self._busy)

    def idle(self) -> bool:
        """Nothing queued and nothing in hand."""
        return self.backlog == 0

    def wake(self) -> None:
        """Wake the thread (stop)."""
        with self._cond:
            self._cond.notify_all()

    # ----------------------------------------------------------------- start-up
    def prepare(self) -> None:
        """Remove leftovers of an earlier run (partial packs, trash); track uploaded batches.

        Batches the catalog says are uploaded but not yet encoded are announced again
        (their local folder is already gone, so the disk scan cannot find them).
        """
        for d in (self.uploads_dir, self.trash_dir):
            if d.is_dir():
                shutil.rmtree(d, ignore_errors=True)
        if self.store is None:
            return
        if self.upload_process is not None:
            self.upload_process.start()  # its imports now, not during the first upload
        now = time.monotonic()
        for state in ("uploaded", "encoding"):
            try:
                rows = self.catalog.list_batches(state=state, limit=10_000)
            except CatalogError as exc:
                log.warning("catalog_unavailable_at_start", error=str(exc))
                return
            for r in rows:
                ev = ReadyEvent(device=r.device, batch=r.batch, frames=r.frames,
                                first_capture_ms=r.first_capture_ms,
                                last_capture_ms=r.last_capture_ms)
                self._unfinished[r.batch] = _Unfinished(ev, now, self.ing.reannounce_s)

    # ----------------------------------------------------------------- the loop
    def run(self) -> None:
        """Finish batches in order until stopped (the thread's target)."""
        try:
            self._run()
        finally:
            if self.upload_process is not None:
                self.upload_process.close()

    def _run(self) -> None:
        while not self.stop.is_set():
            with self._cond:
                if not self._pending:
                    self._cond.wait(timeout=0.5)
                man = self._pending.popleft() if self._pending else None
                if man is not None:
                    self._busy = 1
            if man is not None:
                try:
                    self._finish(man)
                except StoppedError:
                    return
                finally:
                    with self._cond:
                        self._busy = 0
                        self._queued.discard(man.batch)
                        self._set_backlog()
            self._reannounce_due(time.monotonic())

    def _finish(self, man: Manifest) -> None:
        sealed = SealedBatch(device=man.device, batch=man.batch, frames=len(man.frames),
                             first_capture_ms=man.first_capture_ms,
                             last_capture_ms=man.last_capture_ms)
        self._retry("catalog", man, lambda: self.catalog.record_sealed(sealed))
        if self.store is not None:
            folder = self.root / BATCHES_DIR / man.device / man.batch
            if not folder.is_dir():
                log.info("batch_already_released", device=man.device, batch=man.batch)
            else:
                key = pack_key(man.device, man.batch, self.pack_prefix)
                sha, size = self._retry("upload", man, lambda: self._upload(folder, key))
                self._retry("catalog", man, lambda: self.catalog.mark_uploaded(
                    man.device, man.batch, pack_key=key, pack_sha256=sha, pack_bytes=size))
                self._retry("release", man, lambda: self._release(folder))
                self.uploaded += 1
                log.info("batch_uploaded", device=man.device, batch=man.batch, key=key,
                         bytes=size, sha256=sha)
                publish = self.publish_job
                if publish is not None:
                    self._retry("jobqueue", man, lambda: publish(man.device, man.batch, sha))
                    self.metrics.jobs_published.inc()
        self.mailbox.post(Announce(ReadyEvent.of(man)))
        first = self.ing.reannounce_s
        self._unfinished[man.batch] = _Unfinished(ReadyEvent.of(man),
                                                  time.monotonic() + first, first)

    def _retry(self, what: str, man: Manifest, fn: Callable[[], T]) -> T:
        delay = self.ing.upload_retry_s
        while True:
            try:
                result = fn()
            except InvalidValueError as exc:
                # A value the catalog refuses will be refused forever: log it, go on
                # (the frames are safe; only the row is missing).
                log.error("catalog_value_refused", device=man.device, batch=man.batch,
                          step=what, error=str(exc))
                return None  # type: ignore[return-value]
            except (CatalogError, ObjectStoreError, JobQueueError, OSError) as exc:
                if what == "upload":
                    self.metrics.uploads_failed.inc()
                reason = f"{what} failing: {type(exc).__name__}: {str(exc)[:200]}"
                log.error("batch_finish_failed", device=man.device, batch=man.batch,
                          step=what, error=str(exc)[:500], retry_in_s=round(delay, 2),
                          backlog=self.backlog)
                if self._failing != reason:
                    self._failing = reason
                    self.mailbox.post(UploadState(ok=False, reason=reason))
                with self._cond:
                    self._cond.wait_for(self.stop.is_set, timeout=delay)
                if self.stop.is_set():
                    raise StoppedError from None
                delay = min(delay * 2, self.ing.upload_retry_max_s)
                continue
            if self._failing:
                log.info("batch_finish_recovered", step=what, backlog=self.backlog)
                self._failing = ""
                self.mailbox.post(UploadState(ok=True))
            return result

    def _upload(self, folder: Path, key: str) -> tuple[str, int]:
        """Pack and upload ``folder``: in the child process, or here without one."""
        assert self.store is not None
        if self.upload_process is None:
            return uploadproc.upload_pack(self.store, folder, key, self.uploads_dir)
        try:
            return self.upload_process.upload(folder, key, self.stop)
        except uploadproc.UploadInterruptedError:
            raise StoppedError from None

    def _release(self, folder: Path) -> None:
        """Take the batch folder out of ``batches/`` with one rename, then delete it."""
        self.trash_dir.mkdir(parents=True, exist_ok=True)
        dest = self.trash_dir / folder.name
        n = 1
        while dest.exists():
            n += 1
            dest = self.trash_dir / f"{folder.name}-{n}"
        try:
            os.rename(folder, dest)
        except FileNotFoundError:
            return
        fsync_dir(folder.parent)
        fsync_dir(self.trash_dir)
        shutil.rmtree(dest, ignore_errors=True)

    # ----------------------------------------------------------------- re-announce
    def _still_pending(self, ev: ReadyEvent) -> bool:
        if self.store is None:
            return (self.root / BATCHES_DIR / ev.device / ev.batch).is_dir()
        try:
            row = self.catalog.get_batch(ev.device, ev.batch)
        except CatalogError:
            return True
        return row is not None and row.state.value in PENDING_STATES

    def _reannounce_due(self, now: float) -> None:
        for batch, u in list(self._unfinished.items()):
            if now < u.due:
                continue
            if not self._still_pending(u.event):
                del self._unfinished[batch]
                continue
            u.interval = min(u.interval * 2, self.ing.reannounce_max_s)
            u.due = now + u.interval
            self.metrics.batches_reannounced.inc()
            log.info("batch_reannounced", device=u.event.device, batch=batch,
                     next_in_s=round(u.interval, 1))
            self.mailbox.post(Announce(u.event, again=True))
            if self.publish_job is not None:
                try:
                    self.publish_job(u.event.device, batch, None)
                except JobQueueError as exc:  # the next re-announce tries again
                    log.warning("job_republish_failed", device=u.event.device, batch=batch,
                                error=str(exc)[:300])
