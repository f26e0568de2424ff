"""The encoder service: a runner around :class:`encoder.jobs.BatchProcessor`.

Two runners (``runner``, docs/scaling.md):

* ``mqtt`` (default): ready events come through a shared subscription with manual
  acks; ``work.parallel_batches`` (K) worker threads each handle one batch at a time and
  ack its ready event when done. The MQTT 5 Receive Maximum (at least K) keeps the
  broker from handing this process more unacked events than that, so the local queue
  never overflows. The first worker also rescans for batches nobody announced.
* ``jetstream``: K pull workers on the NATS JetStream job queue
  (:mod:`encoder.jetstream`); MQTT only carries the status and the video events.

Besides: paho's network thread (callbacks only enqueue), a retention thread, and a
backlog thread that exports the age of the oldest batch waiting for a video.
"""

from __future__ import annotations

import collections
import os
import queue
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psutil
import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from prometheus_client import CollectorRegistry, start_http_server

from catalog import CatalogError, SqlCatalog, open_catalog
from catalog.signing import load_or_create_key, public_key_pem
from config.settings import EncoderSettings
from contract.events import MalformedEventError, ReadyEvent
from contract.topics import all_devices, service_status_topic, shared, video_topic
from encoder import retention
from encoder.batch import Storage
from encoder.cloud import CloudJob
from encoder.jetstream import JetStreamRunner
from encoder.jobs import BatchProcessor, Job, Outcome
from encoder.metrics import EncoderMetrics
from encoder.muxer import EncodeOptions
from jobqueue.backlog import encode_backlog
from jobqueue.metrics import JobQueueMetrics
from jobqueue.queue import JobPublisher
from mqttclient import (
    MqttConnectError,
    connect_blocking,
    make_client,
    publish_json,
    wait_published,
)
from objstore import ObjectStore, open_store

log = structlog.get_logger("encoder")


def _signing_key(path: Path) -> Ed25519PrivateKey:
    """Load (or create, 0600) the video signing key and write its ``.pub`` beside it.

    Raises:
        ValueError: Naming ``signing_key_file`` when it cannot be read or made.
    """
    try:
        key = load_or_create_key(path)
        pub = path.with_suffix(".pub")
        if not pub.exists():
            tmp = pub.with_name(f".{pub.name}.tmp")
            tmp.write_bytes(public_key_pem(key))
            tmp.replace(pub)
    except (OSError, ValueError, TypeError) as exc:
        raise ValueError(f"signing_key_file: {path}: {exc}") from None
    return key


def _own_scratch(parent: Path) -> Path:
    """``<parent>/<pid>``, after removing the folders of encoders no longer running.

    Several encoders may share one storage root: each works in a folder of its own and
    only removes what a dead process left behind (a crash mid-encode).
    """
    if parent.is_dir():
        for d in parent.iterdir():
            # Non-numeric names: the single scratch folder of earlier versions.
            dead = not d.name.isdigit() or (int(d.name) != os.getpid()
                                            and not psutil.pid_exists(int(d.name)))
            if dead:
                shutil.rmtree(d, ignore_errors=True)
    return parent / str(os.getpid())


class EncoderService:
    """One encoder process's worth of work."""

    def __init__(self, settings: EncoderSettings,
                 registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.account = settings.mqtt.username or "encoder"
        self.prefix = settings.mqtt.topic_prefix
        self.ready_filter = shared(settings.share_group, all_devices(self.prefix, "ready"))
        self.metrics = EncoderMetrics(registry)
        self.job_metrics = JobQueueMetrics(self.metrics.registry)
        self.storage = Storage(settings.storage.root)
        # Checked at start: a wrong key, a missing bucket, an unreachable database or an
        # unreadable signing key end the process with the setting named.
        self.catalog: SqlCatalog = open_catalog(settings.catalog)
        self.objects: ObjectStore | None = None
        try:
            self.signing_key = _signing_key(settings.signing_key_file)
            if settings.store.backend == "s3":
                self.objects = open_store(settings.store)
            self.jobq: JobPublisher | None = None
            if settings.runner == "jetstream":
                # Connects, creates the stream and the consumer: NATS still away after
                # jobqueue.start_wait_s ends the process naming jobqueue.servers. Kept
                # for the queue depth.
                self.jobq = JobPublisher(settings.jobqueue, name=f"{self.account}-depth")
        except BaseException:
            self.catalog.close()
            if self.objects is not None:
                self.objects.close()
            raise
        self.parallel = settings.work.parallel_batches
        self.options = EncodeOptions.from_settings(settings.encode).shared_by(
            self.parallel, len(os.sched_getaffinity(0)))
        self.stop_event = threading.Event()
        self.ready = threading.Event()
        self.metrics_port: int | None = None
        rm = max(settings.work.receive_maximum, self.parallel)
        self.receive_maximum = rm
        # A reconnect re-sends the unacked events we already hold: room for both.
        self._queue: queue.Queue[mqtt.MQTTMessage] = queue.Queue(maxsize=2 * rm)
        self._backlog: collections.deque[tuple[str, str]] = collections.deque()
        self._next_scan = 0.0
        self._resync = threading.Event()
        self._threads: list[threading.Thread] = []
        self._http: Any = None
        self._scan_lock = threading.Lock()
        self.cloud: CloudJob | None = None
        if self.objects is not None:
            # The encoder's own scratch folder; it never reads the ingestor's disk.
            self.cloud = CloudJob(
                store=self.objects, catalog=self.catalog,
                scratch=_own_scratch(settings.storage.root / "state" / "encoder" / "scratch"),
                options=self.options,
                signing_key=self.signing_key, pack_prefix=settings.store.pack_prefix,
                max_attempts=settings.work.max_attempts, account=self.account,
                metrics=self.metrics, cancel=self.stop_event,
                retry_max_s=max(0.5, settings.work.retry_backoff_s * 6))
        self.processor = BatchProcessor(self.storage, settings, self.metrics,
                                        self._publish_video, account=self.account,
                                        cancel=self.stop_event, catalog=self.catalog,
                                        signing_key=self.signing_key, cloud=self.cloud,
                                        options=self.options)
        self.jobs: JetStreamRunner | None = None
        if self.jobq is not None:
            assert self.cloud is not None  # the settings refuse jetstream without s3
            self.jobs = JetStreamRunner(
                settings.jobqueue, self.processor, self.cloud, self.job_metrics,
                parallel=self.parallel, name=self.account,
                pack_prefix=settings.store.pack_prefix, stop=self.stop_event)
        self.client = make_client(settings.mqtt, client_id=self.account, manual_ack=True,
                                  will_topic=service_status_topic(self.account))
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Prepare storage, serve metrics, connect (retrying) and start the threads.

        Returns once connected, or at once when stopped while still connecting.
        """
        self.storage.prepare()
        self.serve_metrics()
        delay = self.settings.mqtt.reconnect_min_s
        while not self.stop_event.is_set():
            try:
                connect_blocking(self.client, self.settings.mqtt, clean_start=False,
                                 receive_maximum=self.receive_maximum)
                break
            except MqttConnectError as exc:
                log.warning("mqtt_connect_failed", error=str(exc), retry_s=delay)
                self.stop_event.wait(delay)
                delay = min(delay * 2, self.settings.mqtt.reconnect_max_s)
        if self.stop_event.is_set():
            return
        if self.jobs is not None:
            self.jobs.start()
            self.ready.set()
            log.info("encoder_ready", runner="jetstream", parallel=self.parallel,
                     stream=self.settings.jobqueue.stream, account=self.account)
        else:
            for i in range(self.parallel):
                self._threads.append(threading.Thread(
                    target=self._work, args=(i,), name=f"encoder-worker-{i}", daemon=True))
        self._threads.append(threading.Thread(target=self._watch_backlog,
                                              name="encoder-backlog", daemon=True))
        r = self.settings.retention
        # With S3, only max_age_days applies (the settings refuse max_disk_percent).
        if r.max_age_days is not None or (self.objects is None
                                          and r.max_disk_percent is not None):
            self._threads.append(threading.Thread(target=self._retain,
                                                  name="encoder-retention", daemon=True))
        for t in self._threads:
            t.start()

    def serve_metrics(self) -> None:
        """Start the Prometheus endpoint once, when enabled.

        ``python -m encoder`` calls it first, in the main thread, so a port already
        taken ends the process with one line (config/metrics.py).

        Raises:
            OSError: When the port cannot be bound.
        """
        if not self.settings.metrics.enabled or self._http is not None:
            return
        server, _ = start_http_server(self.settings.metrics.port,
                                      addr=self.settings.metrics.host,
                                      registry=self.metrics.registry)
        self._http = server
        self.metrics_port = int(server.server_port)
        log.info("metrics_listening", host=self.settings.metrics.host, port=self.metrics_port)

    def stop(self) -> None:
        """Finish (or abandon, unacked) the batch in hand, go offline, disconnect."""
        self.stop_event.set()
        for t in self._threads:
            t.join(timeout=30)
        if self.jobs is not None:
            self.jobs.join(timeout=30)
        if self.jobq is not None:
            self.jobq.close()
        if self.client.is_connected():
            info = publish_json(self.client, service_status_topic(self.account),
                                {"state": "offline"}, retain=True)
            wait_published(info, 5.0)
            self.client.disconnect()
        self.client.loop_stop()
        self.catalog.close()
        if self.objects is not None:
            self.objects.close()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        log.info("encoder_stopped")

    # --- MQTT callbacks (network thread: enqueue only) -----------------------------------

    def _on_connect(self, client: mqtt.Client, _u: Any, flags: mqtt.ConnectFlags,
                    rc: ReasonCode, _p: Properties | None) -> None:
        if rc.is_failure:
            log.warning("mqtt_refused", reason=str(rc))
            return
        log.info("mqtt_connected", session_present=flags.session_present)
        publish_json(client, service_status_topic(self.account),
                     {"state": "online", "pid": os.getpid(), "role": "encoder",
                      "share_group": self.settings.share_group,
                      "runner": self.settings.runner}, retain=True)
        if self.jobs is None:
            client.subscribe(self.ready_filter, qos=1)

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _mid: int, rcs: list[ReasonCode],
                      _p: Properties | None) -> None:
        if any(rc.is_failure for rc in rcs):
            log.error("subscribe_refused", reasons=[str(rc) for rc in rcs])
            return
        if not self.ready.is_set():
            self.ready.set()
            log.info("encoder_ready", topic=self.ready_filter,
                     account=self.account)
        else:
            # Mosquitto 2.0 does not restore a shared subscription after a broker
            # restart (measured: docs/reliability.md): ready events published before this
            # SUBSCRIBE reached nobody. Their batches were sealed before being announced,
            # so a scan now finds every one of them.
            self._resync.set()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: mqtt.DisconnectFlags,
                       rc: ReasonCode, _p: Properties | None) -> None:
        if not self.stop_event.is_set():
            log.warning("mqtt_disconnected", reason=str(rc))

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            self._queue.put_nowait(msg)
        except queue.Full:
            # Unacked, so the broker re-sends it after the next reconnect.
            self.metrics.dropped.inc()
            log.warning("ready_dropped", topic=msg.topic, queue=self._queue.qsize())
        self.metrics.queue_depth.set(self._queue.qsize() + len(self._backlog))

    # --- publishing the video event -----------------------------------------------------

    def _publish_video(self, device: str, event: dict[str, Any]) -> bool:
        """Publish retained QoS 1 and wait for the PUBACK, as long as it takes."""
        topic = video_topic(self.prefix, device)
        timeout = self.settings.work.publish_timeout_s
        info = publish_json(self.client, topic, event, retain=True, qos=1)
        while not self.stop_event.is_set():
            if wait_published(info, timeout):
                return True
            if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                # Refused locally (queue full, …): try again. Otherwise paho re-sends
                # the queued message itself after reconnecting.
                info = publish_json(self.client, topic, event, retain=True, qos=1)
            self.metrics.failures.labels("publish").inc()
            log.warning("video_publish_waiting", device=device, batch=event.get("batch"))
        return False

    # --- the worker --------------------------------------------------------------------

    def _work(self, index: int = 0) -> None:
        # Worker 0 also owns the scans; the others only take events and the backlog.
        scanner = index == 0
        if scanner:
            self.processor.publish_unannounced()
        self._next_scan = time.monotonic()
        first_scan = True
        while not self.stop_event.is_set():
            if scanner and self._resync.is_set():
                self._resync.clear()
                self._scan(first=False, resubscribed=True)
            try:
                msg = self._queue.get_nowait()
            except queue.Empty:
                msg = None
            if msg is not None:
                self._handle_message(msg)
            elif self._backlog:
                try:
                    device, batch = self._backlog.popleft()
                except IndexError:  # another worker took the last one
                    continue
                self._run(Job(device=device, batch=batch, source="scan"))
            elif scanner and time.monotonic() >= self._next_scan:
                self._scan(first=first_scan)
                first_scan = False
            else:
                try:
                    msg = self._queue.get(timeout=0.5)
                except queue.Empty:
                    continue
                self._handle_message(msg)
            self.metrics.queue_depth.set(self._queue.qsize() + len(self._backlog))

    def _scan(self, *, first: bool, resubscribed: bool = False) -> None:
        work = self.settings.work
        min_age = 0.0 if first or resubscribed else work.rescan_min_age_s
        queued = set(self._backlog)
        found = [b for b in self._sealed(min_age) if b not in queued]
        self._backlog.extend(found)
        if found or first or resubscribed:
            log.info("batches_scanned", found=len(found), startup=first,
                     resubscribed=resubscribed)
        if not first:
            self.processor.publish_unannounced()
        if not work.rescan_interval_s:
            self._next_scan = float("inf")
        else:
            self._next_scan = time.monotonic() + work.rescan_interval_s

    def _sealed(self, min_age_s: float) -> list[tuple[str, str]]:
        """Batches waiting for a video: folders on disk, or catalog rows with S3."""
        if self.objects is None:
            return self.storage.sealed_batches(min_age_s=min_age_s)
        cutoff = time.time_ns() // 1_000_000 - int(min_age_s * 1000)
        out: list[tuple[str, str]] = []
        try:
            for state in ("uploaded", "encoding"):
                out += [(r.device, r.batch) for r in self.catalog.list_batches(
                    state=state, limit=10_000) if r.updated_ms <= cutoff]
        except CatalogError as exc:
            log.warning("catalog_unavailable", step="scan", error=str(exc)[:300])
        return out

    def _handle_message(self, msg: mqtt.MQTTMessage) -> None:
        try:
            ev = ReadyEvent.parse(msg.topic, bytes(msg.payload), self.prefix)
        except MalformedEventError as exc:
            log.warning("ready_malformed", topic=msg.topic, reason=exc.reason.value,
                        detail=exc.detail)
            self.metrics.malformed.labels(exc.reason.value).inc()
            self.client.ack(msg.mid, msg.qos)
            return
        except Exception as exc:  # a parser bug: reject this message, keep the service up
            log.exception("ready_malformed", topic=msg.topic, reason="internal_error",
                          detail=type(exc).__name__)
            self.metrics.malformed.labels("internal_error").inc()
            self.client.ack(msg.mid, msg.qos)
            return
        job = Job(device=ev.device, batch=ev.batch, source="ready",
                  first_ms=ev.first_capture_ms, last_ms=ev.last_capture_ms)
        if self._run(job) is not Outcome.STOPPED:
            self.client.ack(msg.mid, msg.qos)

    def _run(self, job: Job) -> Outcome:
        """Handle a job, retrying in place after a transient failure."""
        while True:
            try:
                outcome = self.processor.handle(job)
            except Exception as exc:
                # Not expected (the processor catches batch problems): keep the service
                # alive, leave the batch on disk for a later scan.
                log.exception("job_crashed", device=job.device, batch=job.batch,
                              error=str(exc))
                self.metrics.failures.labels("job").inc()
                return Outcome.FAILED
            if outcome is not Outcome.RETRY:
                return outcome
            if self.stop_event.wait(self.settings.work.retry_backoff_s):
                return Outcome.STOPPED

    # --- backlog -----------------------------------------------------------------------

    def _watch_backlog(self) -> None:
        """Export the encode backlog (oldest batch waiting, quarantined, queued jobs)."""
        while not self.stop_event.is_set():
            try:
                rows = []
                for state in ("sealed", "uploaded", "quarantined"):
                    rows += self.catalog.list_batches(state=state, limit=10_000)
                pending = self.jobq.depth().pending if self.jobq is not None else None
                self.job_metrics.observe_backlog(encode_backlog(
                    rows, now_ms=time.time_ns() // 1_000_000, pending_jobs=pending))
            except Exception as exc:  # the database or NATS away: try at the next tick
                log.warning("backlog_unavailable", error=str(exc)[:300])
            self.stop_event.wait(self.settings.work.backlog_interval_s)

    # --- retention ---------------------------------------------------------------------

    def _retain(self) -> None:
        interval = self.settings.retention.interval_s
        while not self.stop_event.is_set():
            try:
                if self.objects is None:
                    retention.sweep(self.storage.videos, self.settings.retention, self.metrics,
                                    catalog=self.catalog)
                else:
                    retention.sweep_store(self.objects, self.catalog, self.settings.retention,
                                          self.metrics, stop=self.stop_event)
            except retention.UNAVAILABLE as exc:
                # The store or the database is away: the next sweep resumes.
                log.warning("retention_unavailable", error=str(exc)[:300])
                self.metrics.failures.labels("retention").inc()
            except Exception as exc:
                log.exception("retention_failed", error=str(exc))
                self.metrics.failures.labels("retention").inc()
            self.stop_event.wait(interval)
