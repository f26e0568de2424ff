"""The ingestor process: paho wiring, manual acks, writer thread, status and metrics.

Two threads do the work (docs/ingestor.md has the picture):

* the **network thread** owns the paho client and everything paho touches: it reads
  the socket, feeds the assembler, holds ack tokens in the :class:`AckLedger`, sends
  PUBACKs and publishes. It never touches the disk and never waits for it. paho runs
  without ``loop_start()`` here: our own ``select`` loop can stop *reading* the socket
  while too many frames wait for the disk, and still write acks and pings.
* the **writer thread** owns the :class:`Store` and the :class:`Batcher`: it group-commits
  completed frames, seals batches, and hands back "these tokens may be acked" and
  "announce this batch" as commands to the network thread through a queue and a wake-up
  socket. Only the network thread ever calls paho, so no paho call is shared between
  threads at all.

A chunk's PUBACK is sent only when its frame is durable on disk, or at once when its
frame is rejected, expired or evicted (it can never become valid).
"""

from __future__ import annotations

import contextlib
import contextvars
import select
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from prometheus_client import start_http_server

from config.settings import IngestorSettings
from contract.layout import FrameKey, FrameMeta, frame_time
from contract.topics import service_status_topic
from ingestor.acks import AckLedger, AckToken
from ingestor.assembler import Assembler, CompleteFrame, Drop, FeedResult, Status
from ingestor.batcher import Batcher, SealPlan, ready_event
from ingestor.metrics import IngestMetrics
from ingestor.netio import FastReader, queue_pubacks, supported
from ingestor.store import PendingFrames, Store
from mqttclient import connect_properties, make_client, publish_json

log = structlog.get_logger("ingestor")

_NO_TOKEN = AckToken(generation=-1, serial=0, mid=0)
"""Token of a QoS 0 message: nothing to acknowledge (the ledger ignores other generations)."""


@dataclass(slots=True)
class _Job:
    frame: CompleteFrame[AckToken]
    meta: FrameMeta
    completed_at: float


@dataclass(slots=True)
class _Announce:
    topic: str
    payload: dict[str, Any]
    info: mqtt.MQTTMessageInfo | None = None
    sent_at: float = 0.0


@dataclass(slots=True)
class _Unfinished:
    event: dict[str, Any]
    due: float
    interval: float


@dataclass
class _Counters:
    frames_stored: int = 0
    bytes_stored: int = 0
    rejected: int = 0
    dropped: int = 0
    batches_sealed: int = 0


class IngestorService:
    """One ingestor instance.

    Args:
        settings: Validated settings (loaded once in ``__main__``).
        metrics: Metrics holder; a fresh private registry by default.
    """

    def __init__(self, settings: IngestorSettings, metrics: IngestMetrics | None = None) -> None:
        self.settings = settings
        self.ing = settings.ingest
        self.prefix = settings.mqtt.topic_prefix
        self.name = settings.mqtt.username or "ingestor"
        self.status_topic = service_status_topic(self.name)
        self.metrics = metrics or IngestMetrics()
        self.store = Store(settings.storage.root, disk_process=True)
        self.batcher = Batcher(self.ing.frames_per_video, self.ing.idle_seal_s)
        self.ledger = AckLedger()
        self.assembler: Assembler[AckToken] = Assembler(
            max_frame_bytes=self.ing.max_frame_bytes,
            partial_timeout_s=self.ing.partial_timeout_s,
            max_inflight_bytes=self.ing.max_inflight_bytes,
            max_device_inflight_bytes=self.ing.max_device_inflight_bytes,
            max_partial_chunks=self.ing.max_partial_chunks,
            done=self._is_done,
        )
        self.counters = _Counters()
        # Guards _pending, _jobs and the store index transition (pending -> durable).
        self._lock = threading.Lock()
        self._jobs_cv = threading.Condition(self._lock)
        self._jobs: deque[_Job] = deque()
        self._pending: dict[FrameKey, list[AckToken]] = {}
        # Writer -> network thread commands.
        self._commands: deque[tuple[str, Any]] = deque()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._stop = threading.Event()
        self._draining = threading.Event()
        self._writer_done = threading.Event()
        self._net_done = threading.Event()
        self._storage_ok = True
        self._connected = False
        self._ready_logged = False
        self._subscribed = False
        self._announces: dict[str, _Announce] = {}
        # Writer thread only: sealed batches whose folder is still there (no video yet).
        self._unfinished: dict[str, _Unfinished] = {}
        self._status_at = 0.0
        self._received = 0
        self._client = make_client(settings.mqtt, manual_ack=True, will_topic=self.status_topic)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        # Fewer socket calls per chunk (ingestor/netio.py); paho's own calls otherwise.
        self._reader: FastReader | None = None
        self._ack_mids: list[int] | None = None
        if settings.ingest.fast_receive and supported(self._client):
            self._reader = FastReader(self._client)
            self._ack_mids = []
        self._ever_connected = False
        self._metrics_server: Any = None
        self.metrics_port: int | None = None

    # ================================================================= lifecycle
    def stop(self) -> None:
        """Ask :meth:`run` to finish (safe from a signal handler)."""
        self._stop.set()
        self._wake()

    def run(self) -> int:
        """Scan the disk, connect, work until :meth:`stop`, then shut down gracefully.

        Returns:
            The process exit code (0).
        """
        if self.settings.metrics.enabled:
            server, _thread = start_http_server(self.settings.metrics.port,
                                                addr=self.settings.metrics.host,
                                                registry=self.metrics.registry)
            self._metrics_server = server
            self.metrics_port = int(server.server_port)
            log.info("metrics_listening", host=self.settings.metrics.host, port=self.metrics_port)
        self._startup_scan()
        # Each thread runs in a copy of this context so log events keep bound fields.
        writer = threading.Thread(target=contextvars.copy_context().run, args=(self._writer_main,),
                                  name="ingestor-writer", daemon=True)
        net = threading.Thread(target=contextvars.copy_context().run, args=(self._net_main,),
                               name="ingestor-net", daemon=True)
        writer.start()
        net.start()
        self._stop.wait()
        log.info("ingestor_stopping", pending_frames=len(self._pending),
                 partial_frames=self.assembler.partial_frames)
        # Stop reading first; then let the writer make everything complete durable, and
        # the network thread send those acks before it says goodbye.
        self._draining.set()
        self._wake()
        with self._jobs_cv:
            self._jobs_cv.notify_all()
        writer.join(timeout=max(30.0, 3 * self.ing.storage_retry_s))
        self._writer_done.set()
        self._wake()
        net.join(timeout=30.0)
        self.store.close()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
        log.info("ingestor_stopped", frames_stored=self.counters.frames_stored,
                 unflushed_frames=len(self._pending))
        return 0

    def _startup_scan(self) -> None:
        t0 = time.monotonic()
        res = self.store.scan()
        now = time.monotonic()
        for device in sorted(set(res.unsealed) | set(res.counters)):
            self.batcher.restore(device, res.unsealed.get(device, []),
                                 res.counters.get(device, 0), now)
        for man in res.sealed:
            self._queue_announce(man)
            self._track_unfinished(man, now)
        log.info("storage_scanned", root=str(self.store.root), frames_indexed=self.store.indexed,
                 unsealed=sum(len(v) for v in res.unsealed.values()),
                 sealed_batches=len(res.sealed), rolled_back=len(res.rolled_back),
                 temp_removed=res.temp_removed, metadata_recovered=res.metadata_recovered,
                 seconds=round(time.monotonic() - t0, 3))

    # ================================================================= shared helpers
    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def _post(self, kind: str, arg: Any) -> None:
        self._commands.append((kind, arg))
        self._wake()

    def _is_done(self, key: FrameKey) -> bool:
        with self._lock:
            return key in self._pending or self.store.contains(key)

    def _queue_announce(self, man: dict[str, Any]) -> None:
        self._queue_event(ready_event(man))

    def _queue_event(self, event: dict[str, Any]) -> None:
        topic = f"{self.prefix}/{event['device']}/ready"
        # Runs on the network thread, or before it starts (startup scan).
        self._announces[str(event["batch"])] = _Announce(topic, event)

    def _track_unfinished(self, man: dict[str, Any], now: float) -> None:
        event = ready_event(man)
        first = self.ing.reannounce_s
        self._unfinished[str(event["batch"])] = _Unfinished(event, now + first, first)

    def _reannounce_due(self, now: float) -> None:
        """Announce again every sealed batch still waiting for its video (writer thread).

        A ready event can be lost after the broker took it (a subscriber that drops it, a
        shared subscription not restored after a broker restart); the batch folder, which
        the encoder removes only once the video is durable, is the truth. Each batch backs
        off on its own, so a long encode backlog costs few duplicate events.
        """
        for batch, u in list(self._unfinished.items()):
            if now < u.due:
                continue
            device = str(u.event["device"])
            if not self.store.batch_exists(device, batch):
                del self._unfinished[batch]
                continue
            u.interval = min(u.interval * 2, self.ing.reannounce_max_s)
            u.due = now + u.interval
            self.metrics.batches_reannounced.inc()
            log.info("batch_reannounced", device=device, batch=batch,
                     next_in_s=round(u.interval, 1))
            self._post("reannounce", u.event)

    # ================================================================= network thread
    def _net_main(self) -> None:
        try:
            self._net_loop()
        except Exception:  # pragma: no cover - a bug; keep the process honest
            log.exception("network_thread_crashed")
            self._stop.set()
        finally:
            self._net_done.set()

    def _net_loop(self) -> None:
        mq = self.settings.mqtt
        delay = mq.reconnect_min_s
        next_house = 0.0
        while True:
            if self._writer_done.is_set():
                self._run_commands()
                self._say_goodbye()
                return
            sock = self._client.socket()
            if sock is None:
                if self._draining.is_set():
                    # Nothing can be acked without a connection; just wait for the writer.
                    self._wait_wake(0.2)
                    self._run_commands()
                    continue
                if self._connect_once():
                    delay = mq.reconnect_min_s
                else:
                    log.warning("mqtt_reconnect_wait", seconds=round(delay, 2))
                    self._wait_wake(delay)
                    delay = min(delay * 2, mq.reconnect_max_s)
                continue
            self._run_commands()
            paused = self._reading_paused()
            self.metrics.paused.set(1 if paused else 0)
            pending_tls = 0 if paused else self._buffered(sock)
            rlist: list[Any] = [self._wake_r] if paused else [self._wake_r, sock]
            wlist: list[Any] = [sock] if self._client.want_write() else []
            timeout = 0.0 if pending_tls else 0.2
            try:
                readable, writable, _ = select.select(rlist, wlist, [], timeout)
            except (OSError, ValueError):
                readable, writable = [], []
            if self._wake_r in readable:
                with contextlib.suppress(OSError):
                    self._wake_r.recv(65536)
            rc = mqtt.MQTT_ERR_SUCCESS
            if not paused and self._reader is not None and (sock in readable or pending_tls):
                rc = MQTTErrorCode(self._reader.pump(self._chunk, 256,
                                                     self._reading_paused)[1])
            elif not paused and (sock in readable or pending_tls):
                # Read packets while they keep coming (a burst), without asking the TLS
                # layer between packets: every such call drops and retakes the GIL,
                # which the writer thread then holds for a while.
                rc = self._client.loop_read()
                n = 0
                while (rc == mqtt.MQTT_ERR_SUCCESS and n < 256 and self._client.socket()
                       and not self._reading_paused()):
                    before = self._received
                    rc = self._client.loop_read()
                    n += 1
                    if self._received == before:
                        break
            self._run_commands()
            self._flush_acks()
            if rc == mqtt.MQTT_ERR_SUCCESS and self._client.socket() is not None and (
                    writable or self._client.want_write()):
                rc = self._client.loop_write()
            if self._client.socket() is not None:
                self._client.loop_misc()
            now = time.monotonic()
            if now >= next_house:
                next_house = now + 0.25
                self._housekeeping(now)

    def _buffered(self, sock: Any) -> int:
        # Bytes already read (by us or the TLS layer) that select() cannot see.
        return int(self._reader is not None and self._reader.ready) + _ssl_pending(sock)

    def _flush_acks(self) -> None:
        if self._ack_mids:
            if self._client.socket() is not None:
                queue_pubacks(self._client, self._ack_mids)
            self._ack_mids.clear()

    def _wait_wake(self, seconds: float) -> None:
        with contextlib.suppress(OSError, ValueError):
            r, _, _ = select.select([self._wake_r], [], [], seconds)
            if r:
                self._wake_r.recv(65536)

    def _reading_paused(self) -> bool:
        return self._draining.is_set() or len(self._pending) >= self.ing.max_pending_frames

    def _connect_once(self) -> bool:
        mq = self.settings.mqtt
        props = connect_properties(mq, receive_maximum=self.ing.receive_maximum)
        if self._reader is not None:
            self._reader.reset()
        if self._ack_mids is not None:
            self._ack_mids.clear()  # packet ids of the old connection mean nothing now
        try:
            if not self._ever_connected:
                self._client.connect(mq.host, mq.port, keepalive=mq.keepalive_s,
                                     clean_start=False, properties=props)
                self._ever_connected = True
            else:
                self._client.reconnect()
        except (OSError, ValueError) as exc:
            log.warning("mqtt_connect_failed", host=mq.host, port=mq.port, error=str(exc))
            return False
        return True

    def _on_connect(self, client: mqtt.Client, _u: Any, flags: mqtt.ConnectFlags,
                    rc: ReasonCode, _p: Properties | None) -> None:
        if rc.is_failure:
            log.error("mqtt_connect_refused", reason=str(rc))
            client.disconnect()
            return
        voided = self.ledger.new_connection()
        self._connected = True
        self.metrics.connected.set(1)
        log.info("mqtt_connected", session_present=bool(flags.session_present),
                 voided_acks=voided, receive_maximum=self.ing.receive_maximum)
        client.subscribe(f"{self.prefix}/+/frame", qos=1)
        self._publish_status()
        for a in self._announces.values():
            a.info = None  # publish again on this connection

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: mqtt.DisconnectFlags,
                       rc: ReasonCode, _p: Properties | None) -> None:
        self._connected = False
        self._subscribed = False
        self.metrics.connected.set(0)
        log.warning("mqtt_disconnected", reason=str(rc), unacked=self.ledger.held)

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _mid: int, rcs: list[ReasonCode],
                      _p: Properties | None) -> None:
        if any(r.is_failure for r in rcs):
            log.error("subscribe_refused", reasons=[str(r) for r in rcs])
            return
        self._subscribed = True
        topic = f"{self.prefix}/+/frame"
        if not self._ready_logged:
            self._ready_logged = True
            log.info("ingestor_ready", topic=topic, storage=str(self.store.root),
                     metrics_port=self.metrics_port)
        else:
            log.info("subscribed", topic=topic)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self._chunk(msg.topic, bytes(msg.payload), msg.qos, msg.mid, bool(msg.retain))

    def _chunk(self, topic: str, payload: bytes, qos: int, mid: int, retain: bool) -> None:
        # Every chunk comes here: from FastReader.pump, or paho's on_message.
        self._received += 1
        self.metrics.chunks.inc()
        token = self.ledger.hold(mid) if qos > 0 else _NO_TOKEN
        parts = topic.split("/")
        device = parts[1] if len(parts) == 3 else topic
        if retain:
            # A retained frame is a replay the broker keeps for every new subscriber,
            # not a capture: it would come back after each restart (docs/security.md).
            self._reject_chunk(device, "retained", "retained message on a frame topic", token)
            return
        try:
            res = self.assembler.feed(device, payload, token, time.monotonic())
            self._handle(res, token)
        except Exception as exc:  # one message never stops the service
            log.exception("chunk_failed", device=device)
            self._reject_chunk(device, "internal_error", type(exc).__name__, token)

    def _reject_chunk(self, device: str, reason: str, detail: str, token: AckToken) -> None:
        # Acknowledged at once: a message that can never be stored must not come back.
        self.counters.rejected += 1
        self.metrics.rejections.labels(reason).inc()
        log.warning("frame_rejected", device=device, reason=reason, detail=detail)
        self._release([token])

    def _handle(self, res: FeedResult[AckToken], token: AckToken) -> None:
        st = res.status
        if st is Status.COMPLETE and res.frame is not None:
            self._submit(res.frame)
        elif st is Status.DUPLICATE:
            self.metrics.duplicates.inc()
        elif st is Status.DONE and res.key is not None:
            self.metrics.duplicates.inc()
            with self._lock:
                waiting = self._pending.get(res.key)
                if waiting is not None:
                    waiting.append(token)
                    token = _NO_TOKEN
            if token is not _NO_TOKEN:
                self._release([token])  # that frame is durable already
        elif st is Status.REJECTED and res.reason is not None:
            self.counters.rejected += 1
            self.metrics.rejections.labels(res.reason.value).inc()
            log.warning("frame_rejected", device=res.device, reason=res.reason.value,
                        detail=res.detail, boot_id=res.key[1] if res.key else None,
                        seq=res.key[2] if res.key else None)
        elif st is Status.DISCARDED:
            self.metrics.discarded.inc()
        self._release(res.release)
        self._dropped(res.drops)

    def _dropped(self, drops: list[Drop[AckToken]]) -> None:
        for d in drops:
            self.counters.dropped += 1
            self.metrics.drops.labels(d.reason.value).inc()
            log.warning("frame_dropped", device=d.key[0], boot_id=d.key[1], seq=d.key[2],
                        reason=d.reason.value, chunks=d.chunks, chunk_count=d.chunk_count,
                        held_bytes=d.held_bytes)
            self._release(list(d.tokens))

    def _release(self, tokens: list[AckToken]) -> None:
        out = self._ack_mids
        for t in tokens:
            for _ in range(self.ledger.release(t)):
                if out is not None:
                    out.append(t.mid)  # sent together by _flush_acks
                else:
                    self._client.ack(t.mid, 1)

    def _submit(self, frame: CompleteFrame[AckToken]) -> None:
        t = frame_time(frame.capture_ms, frame.clock_synced, int(time.time() * 1000))
        if frame.clock_synced and not t.clock_synced:
            self.metrics.clock_untrusted.labels(frame.device).inc()
            log.warning("capture_time_untrusted", device=frame.device, boot_id=frame.boot_id,
                        seq=frame.frame_seq, capture_ms=frame.capture_ms)
        meta = FrameMeta(frame.device, frame.boot_id, frame.frame_seq, t.capture_ms,
                         t.clock_synced, t.ts_ms, len(frame.data), frame.crc32)
        with self._jobs_cv:
            self._pending[frame.key] = []
            self._jobs.append(_Job(frame, meta, time.monotonic()))
            self._jobs_cv.notify()

    def _run_commands(self) -> None:
        while self._commands:
            kind, arg = self._commands.popleft()
            if kind == "ack":
                self._release(arg)
            elif kind == "announce":
                self._queue_announce(arg)
                self._announce_due(time.monotonic())
            elif kind == "reannounce":
                self._queue_event(arg)
                self._announce_due(time.monotonic())
            elif kind == "status":
                self._publish_status()
        self._flush_acks()

    def _housekeeping(self, now: float) -> None:
        if not self._draining.is_set():
            self._dropped(self.assembler.expire(now))
        self.metrics.partial_frames.set(self.assembler.partial_frames)
        self.metrics.inflight_bytes.set(self.assembler.inflight_bytes)
        self.metrics.unacked.set(self.ledger.held)
        self.metrics.pending_frames.set(len(self._pending))
        self._announce_due(now)
        if self._connected and now - self._status_at >= self.ing.status_interval_s:
            self._publish_status()

    def _announce_due(self, now: float) -> None:
        if not self._connected:
            return
        for batch, a in list(self._announces.items()):
            if a.info is not None and a.info.is_published():
                del self._announces[batch]
                self.metrics.batches_announced.inc()
                log.info("batch_announced", device=a.payload["device"], batch=batch,
                         frames=a.payload["frames"], topic=a.topic)
                continue
            if a.info is None or now - a.sent_at >= self.ing.announce_retry_s:
                if a.info is not None:
                    log.warning("announce_retry", device=a.payload["device"], batch=batch)
                a.info = publish_json(self._client, a.topic, a.payload, qos=1)
                a.sent_at = now

    def _status_payload(self, state: str) -> dict[str, Any]:
        c = self.counters
        return {
            "state": state, "frames_stored": c.frames_stored, "bytes_stored": c.bytes_stored,
            "rejected": c.rejected, "dropped": c.dropped, "batches_sealed": c.batches_sealed,
            "partial_frames": self.assembler.partial_frames,
            "pending_frames": len(self._pending), "unacked_chunks": self.ledger.held,
            "storage_ok": self._storage_ok, "ts_ms": int(time.time() * 1000),
        }

    def _publish_status(self, state: str | None = None) -> mqtt.MQTTMessageInfo | None:
        if not self._connected:
            return None
        if state is None:
            state = "online" if self._storage_ok else "degraded"
        self._status_at = time.monotonic()
        return publish_json(self._client, self.status_topic, self._status_payload(state),
                            retain=True, qos=1)

    def _say_goodbye(self) -> None:
        if self._client.socket() is None:
            return
        info = self._publish_status("offline")
        deadline = time.monotonic() + 5.0
        # Flush every queued PUBACK and the offline status before DISCONNECT.
        while time.monotonic() < deadline and self._client.socket() is not None:
            if info is not None and info.is_published() and not self._client.want_write():
                break
            rlist: list[Any] = [self._client.socket()]
            wlist: list[Any] = [self._client.socket()] if self._client.want_write() else []
            try:
                r, w, _ = select.select(rlist, wlist, [], 0.1)
            except (OSError, ValueError):
                break
            if w:
                self._client.loop_write()
            if r:
                # Only PUBACKs for our own publishes matter now; frames read here are
                # not acknowledged and come again next session.
                self._client.on_message = None
                self._client.loop_read()
        self._client.disconnect()
        with contextlib.suppress(Exception):
            self._client.loop_write()
        log.info("mqtt_goodbye", unacked_left=self.ledger.held)

    # ================================================================= writer thread
    def _writer_main(self) -> None:
        try:
            self._writer_loop()
        except Exception:  # pragma: no cover - a bug; keep the process honest
            log.exception("writer_thread_crashed")
            self._stop.set()

    def _take_group(self, wait: bool = True) -> list[_Job]:
        window = self.ing.fsync_interval_ms / 1000.0
        with self._jobs_cv:
            if not wait:
                # A group is in flight: take what is queued now, never wait (its acks
                # would wait too).
                group = list(self._jobs)
                self._jobs.clear()
                return group
            if not self._jobs:
                self._jobs_cv.wait(timeout=0.5)
            if self._jobs and window > 0 and not self._draining.is_set():
                # Group commit: gather what arrives within the window, one sync for all.
                deadline = time.monotonic() + window
                while len(self._jobs) < 512:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._jobs_cv.wait(timeout=left)
            group = list(self._jobs)
            self._jobs.clear()
        return group

    def _writer_loop(self) -> None:
        retry: list[_Job] = []
        # Two groups overlap: while one group's fsyncs run, the next group's files are
        # written (only when frames are already queued: a lone group is finished at
        # once). Groups finish, and are acknowledged, in order.
        inflight: tuple[list[_Job], PendingFrames] | None = None
        while True:
            group = retry + self._take_group(wait=inflight is None)
            retry = []
            failed: OSError | None = None
            started: PendingFrames | None = None
            isolate: list[_Job] = []
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
            self._reannounce_due(time.monotonic())
            if failed is not None:
                self._storage_failed("write", failed, len(retry))
                if self._draining.is_set() and self._stop_deadline_passed():
                    return
                self._writer_sleep(self.ing.storage_retry_s)
                continue
            if not self._seal_due():
                if self._draining.is_set() and self._stop_deadline_passed():
                    return
                self._writer_sleep(self.ing.storage_retry_s)
                continue
            if self._draining.is_set() and inflight is None:
                with self._lock:
                    if not self._jobs:
                        return

    def _write_one_by_one(self, jobs: list[_Job]) -> tuple[OSError | None, list[_Job]]:
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
                self._reject_job(j, exc)
            else:
                self._stored([j])
        return None, []

    def _reject_job(self, job: _Job, exc: Exception) -> None:
        # The frame can never be stored: acknowledge it so it does not come back forever.
        m = job.meta
        log.error("frame_rejected", device=m.device, boot_id=m.boot_id, seq=m.frame_seq,
                  reason="internal_error", detail=f"{type(exc).__name__}: {exc}")
        self.counters.rejected += 1
        self.metrics.rejections.labels("internal_error").inc()
        tokens = list(job.frame.tokens)
        with self._lock:
            tokens.extend(self._pending.pop(job.frame.key, ()))
        self._post("ack", tokens)

    _drain_deadline: float | None = None

    def _stop_deadline_passed(self) -> bool:
        if self._drain_deadline is None:
            self._drain_deadline = time.monotonic() + max(10.0, 2 * self.ing.storage_retry_s)
        return time.monotonic() >= self._drain_deadline

    def _writer_sleep(self, seconds: float) -> None:
        with self._jobs_cv:
            self._jobs_cv.wait(timeout=seconds)

    def _storage_failed(self, what: str, exc: OSError, frames: int) -> None:
        self.metrics.storage_errors.inc()
        self.metrics.storage_available.set(0)
        log.error("storage_unavailable", op=what, error=str(exc), errno=exc.errno,
                  pending_frames=len(self._pending), group=frames,
                  retry_in_s=self.ing.storage_retry_s)
        if self._storage_ok:
            self._storage_ok = False
            self._post("status", None)

    def _storage_recovered(self) -> None:
        if not self._storage_ok:
            self._storage_ok = True
            self.metrics.storage_available.set(1)
            log.info("storage_recovered", pending_frames=len(self._pending))
            self._post("status", None)

    def _stored(self, group: list[_Job]) -> None:
        self._storage_recovered()
        now = time.monotonic()
        wall = time.time()
        tokens: list[AckToken] = []
        with self._lock:
            for j in group:
                tokens.extend(j.frame.tokens)
                tokens.extend(self._pending.pop(j.frame.key, ()))
        self._post("ack", tokens)
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
            self.counters.batches_sealed += 1
            self.metrics.batches_sealed.labels(plan.device).inc()
            frames = man["frames"]
            log.info("batch_sealed", device=plan.device, batch=plan.batch,
                     frames=len(frames) if isinstance(frames, list) else 0,
                     reason=plan.reason, location=plan.location)
            self._post("announce", man)
            self._track_unfinished(man, time.monotonic())
        return True


def _ssl_pending(sock: Any) -> int:
    pending = getattr(sock, "pending", None)
    if pending is None:
        return 0
    try:
        return int(pending())
    except (OSError, ValueError):
        return 0

