"""The ingestor process: two threads wired together, start-up scan, metrics, stop.

* the **network thread** (:mod:`ingestor.network`) owns paho: it reads chunks, feeds
  the assembler, holds acks and publishes;
* the **writer thread** (:mod:`ingestor.writer`) owns the disk: group commits, seals,
  re-announces.

They share only the typed :mod:`ingestor.messages`: complete frames go one way through
the :class:`WriteQueue`, acks/announces/storage state the other way through the
:class:`Mailbox`. A chunk's PUBACK is sent only when its frame is durable on disk, or at
once when its frame is rejected, expired or evicted (it can never become valid).
docs/ingestor.md has the picture.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable
from typing import Any

import structlog
from prometheus_client import start_http_server

from catalog import SqlCatalog, open_catalog
from config.metrics import metrics_port_guard
from config.settings import IngestorSettings
from ingestor.batcher import Batcher
from ingestor.leases import PartitionLeases
from ingestor.messages import Mailbox, WriteQueue
from ingestor.metrics import IngestMetrics
from ingestor.network import NetworkLoop
from ingestor.store import Store
from ingestor.uploader import Finisher
from ingestor.writer import Counters, Writer
from jobqueue import EncodeJob, MalformedJobError
from jobqueue.queue import JobPublisher
from objstore import ObjectStore, open_store

log = structlog.get_logger("ingestor")


class IngestorService:
    """One ingestor instance.

    Args:
        settings: Validated settings (loaded once in ``__main__``).
        metrics: Metrics holder; a fresh private registry by default.

    Raises:
        catalog.CatalogConfigError: The catalog cannot be opened (names the setting).
        objstore.StoreConfigError: The object store is not usable (names the setting).
    """

    def __init__(self, settings: IngestorSettings, metrics: IngestMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or IngestMetrics()
        # Both are checked now: a wrong key, a missing bucket or an unreachable database
        # ends the process at start with the setting named, before a frame is taken.
        self.catalog: SqlCatalog = open_catalog(settings.catalog)
        self.objects: ObjectStore | None = None
        if settings.store.backend == "s3":
            try:
                self.objects = open_store(settings.store)
            except BaseException:
                self.catalog.close()
                raise
        self.jobs: JobPublisher | None = None
        if settings.runner == "jetstream":
            try:
                # Connects now: NATS still away after jobqueue.start_wait_s ends the
                # process naming the setting.
                self.jobs = JobPublisher(settings.jobqueue, name="camstack-ingestor")
            except BaseException:
                self.catalog.close()
                if self.objects is not None:
                    self.objects.close()
                raise
        self.leases: PartitionLeases | None = None
        self._lease_lost = False
        if settings.leases.enabled:
            # Before anything subscribes: a partition another live ingestor owns ends
            # the start here (two owners would store its frames twice).
            handoff = settings.ingest.handoff
            later = handoff.partitions if handoff and handoff.role == "acquire" else []
            self.leases = PartitionLeases(settings.leases, settings.jobqueue,
                                          owner=settings.mqtt.username,
                                          partitions=settings.ingest.partitions or [],
                                          later=later, on_lost=self._on_lease_lost)
            try:
                self.leases.claim()
            except BaseException:
                self.catalog.close()
                if self.objects is not None:
                    self.objects.close()
                if self.jobs is not None:
                    self.jobs.close()
                raise
        self.store = Store(settings.storage.root)
        self.counters = Counters()
        self.queue = WriteQueue()
        self.mailbox = Mailbox()
        self._stop = threading.Event()
        self._draining = threading.Event()
        self._writer_done = threading.Event()
        ing = settings.ingest
        self._finisher_stop = threading.Event()
        self.finisher = Finisher(ing, settings.storage.root, catalog=self.catalog,
                                 store=self.objects, pack_prefix=settings.store.pack_prefix,
                                 mailbox=self.mailbox, metrics=self.metrics,
                                 stop=self._finisher_stop,
                                 publish_job=self._publish_job if self.jobs else None)
        self.writer = Writer(ing, self.store,
                             batcher=Batcher(ing.frames_per_video, ing.idle_seal_s),
                             queue=self.queue, mailbox=self.mailbox, metrics=self.metrics,
                             counters=self.counters, draining=self._draining,
                             finisher=self.finisher)
        self.network = NetworkLoop(settings, queue=self.queue, mailbox=self.mailbox,
                                   metrics=self.metrics, counters=self.counters,
                                   stored=self.store.contains, draining=self._draining,
                                   writer_done=self._writer_done)
        if self.leases is not None:
            self.network.on_released = self.leases.release
        self._metrics_server: Any = None
        self.metrics_port: int | None = None

    def _on_lease_lost(self, partition: int, owner: str) -> None:
        # Another ingestor holds the partition now: stop rather than store twice.
        log.error("ingestor_stopping_lease_lost", partition=partition, owner=owner)
        self._lease_lost = True
        self.stop()

    def _publish_job(self, device: str, batch: str, sha256: str | None) -> None:
        assert self.jobs is not None
        try:
            job = EncodeJob.for_batch(device, batch, sha256=sha256,
                                      prefix=self.settings.store.pack_prefix)
        except MalformedJobError as exc:
            # Not for want of NATS: retrying cannot help. The ids were checked where they
            # entered, so this is a bug; the batch stays `uploaded` in the catalog.
            log.error("job_refused", device=device, batch=batch, error=str(exc))
            return
        res = self.jobs.publish(job)
        log.info("job_published", device=device, batch=batch, seq=res.seq,
                 duplicate=res.duplicate)

    def stop(self) -> None:
        """Ask :meth:`run` to finish (safe from a signal handler)."""
        self._stop.set()
        self.mailbox.wake()

    def run(self) -> int:
        """Scan the disk, connect, work until :meth:`stop`, then shut down gracefully.

        Returns:
            The process exit code (0).
        """
        self._start_metrics()
        self._startup_scan()
        self.network.ready_info = {"storage": str(self.store.root),
                                   "metrics_port": self.metrics_port,
                                   "store": self.settings.store.backend,
                                   "catalog": self.catalog.backend}
        finisher = self._thread(self.finisher.run, "ingestor-finisher")
        writer = self._thread(self.writer.run, "ingestor-writer")
        net = self._thread(self.network.run, "ingestor-net")
        self._stop.wait()
        log.info("ingestor_stopping", pending_frames=len(self.queue),
                 partial_frames=self.network.partial_frames)
        # Stop reading first; then let the writer make everything complete durable, and
        # the network thread send those acks before it says goodbye.
        self._draining.set()
        self.mailbox.wake()
        self.queue.wake_all()
        writer.join(timeout=max(30.0, 3 * self.settings.ingest.storage_retry_s))
        # Let the finisher announce what it can in a few seconds; batches it has not
        # finished stay on local disk and are taken up again at the next start.
        deadline = time.monotonic() + 5.0
        while not self.finisher.idle() and time.monotonic() < deadline:
            time.sleep(0.05)
        self._finisher_stop.set()
        self.finisher.wake()
        finisher.join(timeout=30.0)
        self._writer_done.set()
        self.mailbox.wake()
        net.join(timeout=30.0)
        self.store.close()
        self.catalog.close()
        if self.objects is not None:
            self.objects.close()
        if self.jobs is not None:
            self.jobs.close()
        if self.leases is not None:  # after the last frame stored: free for another
            self.leases.close()
        self.mailbox.close()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
        log.info("ingestor_stopped", frames_stored=self.counters.frames_stored,
                 unflushed_frames=len(self.queue))
        return 2 if self._lease_lost else 0

    def _thread(self, target: Callable[[], None], name: str) -> threading.Thread:
        def main() -> None:
            try:
                target()
            except Exception:  # pragma: no cover - a bug; keep the process honest
                log.exception("thread_crashed", thread=name)
                self.stop()

        # Each thread runs in a copy of this context so log events keep bound fields.
        t = threading.Thread(target=contextvars.copy_context().run, args=(main,), name=name,
                             daemon=True)
        t.start()
        return t

    def _start_metrics(self) -> None:
        m = self.settings.metrics
        if not m.enabled:
            return
        # A port already taken is one line naming the setting, exit 2 (main thread).
        with metrics_port_guard(m):
            server, _thread = start_http_server(m.port, addr=m.host,
                                                registry=self.metrics.registry)
        self._metrics_server = server
        self.metrics_port = int(server.server_port)
        log.info("metrics_listening", host=m.host, port=self.metrics_port)

    def _startup_scan(self) -> None:
        t0 = time.monotonic()
        res = self.store.scan()
        now = time.monotonic()
        for device in sorted(set(res.unsealed) | set(res.counters)):
            self.writer.batcher.restore(device, res.unsealed.get(device, []),
                                        res.counters.get(device, 0), now)
        self.finisher.prepare()
        for man in res.sealed:
            self.finisher.submit(man)
        log.info("storage_scanned", root=str(self.store.root), frames_indexed=self.store.indexed,
                 unsealed=sum(len(v) for v in res.unsealed.values()),
                 sealed_batches=len(res.sealed), rolled_back=len(res.rolled_back),
                 temp_removed=res.temp_removed, metadata_recovered=res.metadata_recovered,
                 seconds=round(time.monotonic() - t0, 3))
