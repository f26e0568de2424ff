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

from config.metrics import metrics_port_guard
from config.settings import IngestorSettings
from contract.events import ReadyEvent
from ingestor.batcher import Batcher
from ingestor.messages import Mailbox, WriteQueue
from ingestor.metrics import IngestMetrics
from ingestor.network import NetworkLoop
from ingestor.store import Store
from ingestor.writer import Counters, Writer

log = structlog.get_logger("ingestor")


class IngestorService:
    """One ingestor instance.

    Args:
        settings: Validated settings (loaded once in ``__main__``).
        metrics: Metrics holder; a fresh private registry by default.
    """

    def __init__(self, settings: IngestorSettings, metrics: IngestMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or IngestMetrics()
        self.store = Store(settings.storage.root)
        self.counters = Counters()
        self.queue = WriteQueue()
        self.mailbox = Mailbox()
        self._stop = threading.Event()
        self._draining = threading.Event()
        self._writer_done = threading.Event()
        ing = settings.ingest
        self.writer = Writer(ing, self.store,
                             batcher=Batcher(ing.frames_per_video, ing.idle_seal_s),
                             queue=self.queue, mailbox=self.mailbox, metrics=self.metrics,
                             counters=self.counters, draining=self._draining)
        self.network = NetworkLoop(settings, queue=self.queue, mailbox=self.mailbox,
                                   metrics=self.metrics, counters=self.counters,
                                   stored=self.store.contains, draining=self._draining,
                                   writer_done=self._writer_done)
        self._metrics_server: Any = None
        self.metrics_port: int | None = None

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
                                   "metrics_port": self.metrics_port}
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
        self._writer_done.set()
        self.mailbox.wake()
        net.join(timeout=30.0)
        self.store.close()
        self.mailbox.close()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
        log.info("ingestor_stopped", frames_stored=self.counters.frames_stored,
                 unflushed_frames=len(self.queue))
        return 0

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
        for man in res.sealed:
            self.network.announce(ReadyEvent.of(man))
            self.writer.track_unfinished(man, now)
        log.info("storage_scanned", root=str(self.store.root), frames_indexed=self.store.indexed,
                 unsealed=sum(len(v) for v in res.unsealed.values()),
                 sealed_batches=len(res.sealed), rolled_back=len(res.rolled_back),
                 temp_removed=res.temp_removed, metadata_recovered=res.metadata_recovered,
                 seconds=round(time.monotonic() - t0, 3))
