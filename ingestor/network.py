"""The ingestor's network thread: the only code that calls paho.

It reads the socket (``FastReader`` or paho's own reads), feeds the assembler, holds
ack tokens in the :class:`AckLedger`, hands complete frames to the writer through the
:class:`WriteQueue` and acts on the writer's :class:`Mailbox` messages: release acks,
publish ready events (retried until the broker acks them), refresh the retained
status. paho runs without ``loop_start()``: this ``select`` loop can stop *reading* while
too many frames wait for the disk, and still write acks and pings.
"""

from __future__ import annotations

import contextlib
import select
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from config.settings import IngestorSettings
from contract.events import ReadyEvent
from contract.ids import is_device_id
from contract.layout import FrameKey, FrameMeta, frame_time
from contract.partition import (
    PARTITIONS,
    all_partitions_frame_filter,
    device_partition,
    parse_partition_frame_topic,
    partition_frame_filter,
)
from contract.topics import all_devices, parse_device_topic, ready_topic, service_status_topic
from ingestor.acks import AckLedger, AckToken
from ingestor.assembler import Assembler, CompleteFrame, Drop, FeedResult, Status
from ingestor.handoff import Release, keeps
from ingestor.messages import (
    AckTokens,
    Announce,
    Job,
    Mailbox,
    Sealed,
    StorageState,
    UploadState,
    WriteQueue,
)
from ingestor.metrics import IngestMetrics
from ingestor.netio import FastReader, queue_pubacks, supported
from ingestor.writer import Counters
from mqttclient import connect_properties, make_client, publish_json

log = structlog.get_logger("ingestor")

MAX_DEVICE_COUNTS = 10_000
"""Devices whose frames and rejections are counted (account ids; later ones are not)."""
STATUS_DEVICES = 32
"""Devices with the most rejections listed in the retained status (for the monitor)."""

NO_TOKEN = AckToken(generation=-1, serial=0, mid=0)
"""Token of a QoS 0 message: nothing to acknowledge (the ledger ignores other generations)."""


@dataclass(slots=True)
class _Pending:
    event: ReadyEvent
    info: mqtt.MQTTMessageInfo | None = None
    sent_at: float = 0.0


class NetworkLoop:
    """The network thread's work.

    Args:
        settings: The ingestor's settings.
        queue: Complete frames to the writer.
        mailbox: Messages from the writer.
        metrics: Metrics.
        counters: Status totals.
        stored: Whether a frame is durable already (the store's index).
        draining: Set when the service stops: read no more, ack what becomes durable.
        writer_done: Set once the writer has finished: say goodbye and return.
    """

    def __init__(self, settings: IngestorSettings, *, queue: WriteQueue, mailbox: Mailbox,
                 metrics: IngestMetrics, counters: Counters, stored: Callable[[FrameKey], bool],
                 draining: threading.Event, writer_done: threading.Event) -> None:
        self.settings = settings
        self.ing = settings.ingest
        self.prefix = settings.mqtt.topic_prefix
        self.name = settings.mqtt.username or "ingestor"
        self.status_topic = service_status_topic(self.name)
        # Mosquitto: every device's frames. NATS engine: the partitions this one owns.
        self.partitions = self.ing.partitions
        # one_filter: one wildcard, one consumer whose window is the session's. Per
        # partition, NATS lets every consumer send max_ack_pending while the session
        # takes max_ack_pending in all and drops the rest until ack_wait (the stall,
        # docs/scaling.md).
        self.one_filter = self.ing.one_filter and self.partitions is not None
        self.frame_filters = (
            [all_devices(self.prefix, "frame")] if self.partitions is None
            else [all_partitions_frame_filter(self.prefix)] if self.one_filter
            else [partition_frame_filter(self.prefix, n) for n in self.partitions])
        self.frame_filter = ",".join(self.frame_filters)
        """Logged (``ingestor_ready``, ``subscribed``)."""
        # Partitions owned now (a release removes the moving ones); None: Mosquitto.
        self.owned: set[int] | None = (None if self.partitions is None
                                       else set(self.partitions))
        self.handoff = self.ing.handoff
        self.moving: set[int] = set(self.handoff.partitions) if self.handoff else set()
        self.release: Release | None = (
            Release(self.handoff.at_ms, self.handoff.release_after_s)
            if self.handoff is not None and self.handoff.role == "release" else None)
        self.handed_off = 0
        """Frames of moving partitions acknowledged without storing (the other's)."""
        self.on_released: Callable[[list[int]], None] | None = None
        """Told the partitions a handoff released (their leases are deleted)."""
        self._not_owned: set[int] = set()
        self._subscribing: dict[int, list[str]] = {}
        self._refused: list[str] = []
        self._resubscribe_at = 0.0
        self.queue = queue
        self.mailbox = mailbox
        self.metrics = metrics
        self.counters = counters
        self.draining = draining
        self.writer_done = writer_done
        self._stored = stored
        self.ledger = AckLedger()
        self.assembler: Assembler[AckToken] = Assembler(
            max_frame_bytes=self.ing.max_frame_bytes,
            partial_timeout_s=self.ing.partial_timeout_s,
            max_inflight_bytes=self.ing.max_inflight_bytes,
            max_device_inflight_bytes=self.ing.max_device_inflight_bytes,
            max_partial_chunks=self.ing.max_partial_chunks,
            done=self._is_done,
        )
        self.ready_info: dict[str, Any] = {}
        """Logged with ``ingestor_ready`` (storage root, metrics port)."""
        self._storage_ok = True
        self._upload_ok = True
        self._upload_reason = ""
        self._connected = False
        self._ready_logged = False
        self._announces: dict[str, _Pending] = {}
        self._status_at = 0.0
        self._received = 0
        # Per-device frames (complete) and rejections, for the monitor's health causes.
        self._device_frames: dict[str, int] = {}
        self._device_rejected: dict[str, int] = {}
        self._client = make_client(settings.mqtt, manual_ack=True, will_topic=self.status_topic)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        # Fewer socket calls per chunk (ingestor/netio.py); paho's own calls otherwise.
        self._reader: FastReader | None = None
        self._ack_mids: list[int] | None = None
        if self.ing.fast_receive and supported(self._client):
            self._reader = FastReader(self._client)
            self._ack_mids = []
        self._ever_connected = False

    # ----------------------------------------------------------------- shared state
    def _is_done(self, key: FrameKey) -> bool:
        with self.queue.lock:
            return self.queue.is_pending(key) or self._stored(key)

    def announce(self, event: ReadyEvent) -> None:
        """Publish ``event`` until the broker acks it (this thread, or before it starts)."""
        self._announces[event.batch] = _Pending(event)

    @property
    def partial_frames(self) -> int:
        """Frames being reassembled."""
        return self.assembler.partial_frames

    # ----------------------------------------------------------------- the loop
    def run(self) -> None:
        """Connect, read and ack until the writer is done (the thread's target)."""
        mq = self.settings.mqtt
        delay = mq.reconnect_min_s
        next_house = 0.0
        waker = self.mailbox.waker
        while True:
            if self.writer_done.is_set():
                self._run_messages()
                self._say_goodbye()
                return
            sock = self._client.socket()
            if sock is None:
                if self.draining.is_set():
                    # Nothing can be acked without a connection; just wait for the writer.
                    self.mailbox.wait(0.2)
                    self._run_messages()
                    continue
                if self._connect_once():
                    delay = mq.reconnect_min_s
                else:
                    log.warning("mqtt_reconnect_wait", seconds=round(delay, 2))
                    self.mailbox.wait(delay)
                    delay = min(delay * 2, mq.reconnect_max_s)
                continue
            self._run_messages()
            paused = self._reading_paused()
            self.metrics.paused.set(1 if paused else 0)
            pending_tls = 0 if paused else self._buffered(sock)
            rlist: list[Any] = [waker] if paused else [waker, sock]
            wlist: list[Any] = [sock] if self._client.want_write() else []
            timeout = 0.0 if pending_tls else 0.2
            try:
                readable, writable, _ = select.select(rlist, wlist, [], timeout)
            except (OSError, ValueError):
                readable, writable = [], []
            if waker in readable:
                self.mailbox.clear_wake()
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
            self._run_messages()
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

    def _reading_paused(self) -> bool:
        return self.draining.is_set() or len(self.queue) >= self.ing.max_pending_frames

    def _connect_once(self) -> bool:
        mq = self.settings.mqtt
        props = connect_properties(mq, receive_maximum=self.ing.receive_maximum)
        if self._reader is not None:
            self._reader.reset()
        if self._ack_mids is not None:
            self._ack_mids.clear()  # packet ids of the old connection mean nothing now
        try:
            if not self._ever_connected and mq.protocol == "3.1.1":
                # The session is kept by the client's clean-session flag (False).
                self._client.connect(mq.host, mq.port, keepalive=mq.keepalive_s)
                self._ever_connected = True
            elif not self._ever_connected:
                self._client.connect(mq.host, mq.port, keepalive=mq.keepalive_s,
                                     clean_start=False, properties=props)
                self._ever_connected = True
            else:
                self._client.reconnect()
        except (OSError, ValueError) as exc:
            log.warning("mqtt_connect_failed", host=mq.host, port=mq.port, error=str(exc))
            return False
        return True

    # ----------------------------------------------------------------- paho callbacks
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
        self._unsubscribe_unowned()
        self._subscribe(self.owned_filters())
        self._publish_status()
        for a in self._announces.values():
            a.info = None  # publish again on this connection

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: mqtt.DisconnectFlags,
                       rc: ReasonCode, _p: Properties | None) -> None:
        self._connected = False
        self.metrics.connected.set(0)
        log.warning("mqtt_disconnected", reason=str(rc), unacked=self.ledger.held)

    def owned_filters(self) -> list[str]:
        """The frame filters to subscribe: every device's, or the partitions owned."""
        if self.owned is None or self.one_filter:
            return list(self.frame_filters)
        return [partition_frame_filter(self.prefix, n) for n in self.partitions or []
                if n in self.owned]

    def _other_shape(self) -> list[str]:
        """Frame filters of the other shape (per partition / one wildcard) to drop."""
        if self.owned is None:
            return []
        if self.one_filter:
            return [partition_frame_filter(self.prefix, n) for n in range(PARTITIONS)]
        return [all_partitions_frame_filter(self.prefix)]

    def _unsubscribe_unowned(self) -> None:
        # A persistent session's subscriptions come back at every reconnect (measured,
        # docs/scaling.md): a partition this ingestor no longer owns would keep coming.
        # UNSUBSCRIBE deletes what the session had not acknowledged for it: the
        # procedure (docs/scaling.md) makes sure another ingestor has those frames.
        if self.owned is None:
            return
        gone = [partition_frame_filter(self.prefix, n) for n in range(PARTITIONS)
                if n not in self.owned]
        if gone:
            self._client.unsubscribe(gone)

    def _subscribe(self, filters: list[str]) -> None:
        """One SUBSCRIBE of ``filters`` at QoS 1; each SUBACK code is checked."""
        self._subscribing.clear()  # a new connection: older SUBACKs never come
        if not filters:  # every partition released: nothing to read
            return
        rc, mid = self._client.subscribe([(f, 1) for f in filters])
        if rc == mqtt.MQTT_ERR_SUCCESS and mid is not None:
            self._subscribing[mid] = list(filters)

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, mid: int, rcs: list[ReasonCode],
                      _p: Properties | None) -> None:
        filters = self._subscribing.pop(mid, [])
        # One code per filter, in order. A refusal (0x80) is not an ingestor that works:
        # NATS refuses a subscription past 65,535 unacknowledged messages per session
        # (max_ack_pending x partitions), and frames of a partition nobody subscribes
        # are acknowledged to the cameras and dropped. Logged, in the status, retried.
        refused = [f for f, r in zip(filters, rcs, strict=False) if r.is_failure]
        if len(rcs) != len(filters) and filters:
            refused = list(filters)
        if refused or any(r.is_failure for r in rcs):
            self._refused = refused or list(self.frame_filters)
            self._resubscribe_at = time.monotonic() + self.ing.announce_retry_s
            log.error("subscribe_refused", topics=self._refused,
                      reasons=[str(r) for r in rcs])
            self._publish_status()
            return
        self._refused = []
        if filters and filters == self.owned_filters() and self._other_shape():
            # Only now, with the new shape's consumers in place: before the SUBACK a
            # message matching no subscription of the session would not be kept. The
            # old shape's queued messages go with it (docs/scaling.md, one_filter).
            self._client.unsubscribe(self._other_shape())
        if (self.handoff is not None and self.handoff.role == "acquire"
                and time.time() * 1000 >= self.handoff.at_ms
                and not self._ready_logged):
            log.error("handoff_subscribed_late", at_ms=self.handoff.at_ms,
                      partitions=sorted(self.moving))
        if not self._ready_logged:
            self._ready_logged = True
            log.info("ingestor_ready", topic=self.frame_filter, **self.ready_info)
        else:
            log.info("subscribed", topic=self.frame_filter)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self._chunk(msg.topic, bytes(msg.payload), msg.qos, msg.mid, bool(msg.retain))

    # ----------------------------------------------------------------- chunks
    def _chunk(self, topic: str, payload: bytes, qos: int, mid: int, retain: bool) -> None:
        # Every chunk comes here: from FastReader.pump, or paho's on_message.
        self._received += 1
        self.metrics.chunks.inc()
        token = self.ledger.hold(mid) if qos > 0 else NO_TOKEN
        parts = topic.split("/")
        if self.partitions is None:
            device = parts[1] if len(parts) == 3 else topic
            parsed = parse_device_topic(topic, self.prefix)
            # The metric label: an account id (the ACL lets only it publish there), else "-".
            account = parsed[0] if parsed is not None and parsed[1] == "frame" else None
        else:
            # p/<n>/<prefix>/<id>/frame: the device id still comes from the topic (the
            # broker lets only account <id> publish there, docs/scaling.md).
            device = parts[3] if len(parts) == 5 else topic
            by_part = parse_partition_frame_topic(topic, self.prefix)
            account = by_part[1] if by_part is not None else None
            if by_part is not None and self.owned is not None and by_part[0] not in self.owned:
                # A partition released or no longer configured, still in flight: the
                # owner's session has its own copy. Acknowledged, not stored.
                if by_part[0] not in self._not_owned:
                    self._not_owned.add(by_part[0])
                    log.warning("partition_not_owned", partition=by_part[0])
                self.metrics.discarded.inc()
                self._release([token])
                return
        if retain:
            # A retained frame is a replay the broker keeps for every new subscriber,
            # not a capture: it would come back after each restart (docs/security.md).
            self._reject_chunk(device, "retained", "retained message on a frame topic", token,
                               account)
            return
        try:
            res = self.assembler.feed(device, payload, token, time.monotonic())
            self._handle(res, token, account)
        except Exception as exc:  # one message never stops the service
            log.exception("chunk_failed", device=device)
            self._reject_chunk(device, "internal_error", type(exc).__name__, token, account)

    def _reject_chunk(self, device: str, reason: str, detail: str, token: AckToken,
                      account: str | None) -> None:
        # Acknowledged at once: a message that can never be stored must not come back.
        self.counters.rejected += 1
        self.metrics.rejected(reason, account)
        self._count_device(self._device_rejected, account)
        log.warning("frame_rejected", device=device, reason=reason, detail=detail)
        self._release([token])

    def _handle(self, res: FeedResult[AckToken], token: AckToken,
                account: str | None = None) -> None:
        st = res.status
        if st is Status.COMPLETE and res.frame is not None:
            self._submit(res.frame)
        elif st is Status.DUPLICATE:
            self.metrics.duplicates.inc()
        elif st is Status.DONE and res.key is not None:
            self.metrics.duplicates.inc()
            if not self.queue.wait_with(res.key, token):
                self._release([token])  # that frame is durable already
        elif st is Status.REJECTED and res.reason is not None:
            self.counters.rejected += 1
            self.metrics.rejected(res.reason.value, account)
            self._count_device(self._device_rejected, account)
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

    def _release(self, tokens: list[AckToken] | tuple[AckToken, ...]) -> None:
        out = self._ack_mids
        for t in tokens:
            for _ in range(self.ledger.release(t)):
                if out is not None:
                    out.append(t.mid)  # sent together by _flush_acks
                else:
                    self._client.ack(t.mid, 1)

    @staticmethod
    def _count_device(counts: dict[str, int], account: str | None) -> None:
        if account is not None and (account in counts or len(counts) < MAX_DEVICE_COUNTS):
            counts[account] = counts.get(account, 0) + 1

    def _device_rejections(self) -> dict[str, dict[str, int]]:
        worst = sorted(self._device_rejected.items(), key=lambda kv: (-kv[1], kv[0]))
        worst = worst[:STATUS_DEVICES]
        return {"device_rejected": dict(worst),
                "device_frames": {d: self._device_frames.get(d, 0) for d, _ in worst}}

    def _submit(self, frame: CompleteFrame[AckToken]) -> None:
        if self.handoff is not None and device_partition(frame.device) in self.moving:
            if self.release is not None:
                self.release.frame(frame.device, frame.capture_ms, frame.clock_synced)
            if not keeps(self.handoff.role, self.handoff.at_ms, frame.capture_ms,
                         frame.clock_synced):
                self.handed_off += 1
                log.info("frame_handed_off", device=frame.device, boot_id=frame.boot_id,
                         seq=frame.frame_seq, capture_ms=frame.capture_ms)
                self._release(frame.tokens)
                return
        if is_device_id(frame.device):
            self._count_device(self._device_frames, frame.device)
        t = frame_time(frame.capture_ms, frame.clock_synced, int(time.time() * 1000))
        if frame.clock_synced and not t.clock_synced:
            self.metrics.clock_untrusted.labels(frame.device).inc()
            log.warning("capture_time_untrusted", device=frame.device, boot_id=frame.boot_id,
                        seq=frame.frame_seq, capture_ms=frame.capture_ms)
        meta = FrameMeta(frame.device, frame.boot_id, frame.frame_seq, t.capture_ms,
                         t.clock_synced, t.ts_ms, len(frame.data), frame.crc32)
        self.queue.submit(Job(frame, meta, time.monotonic()))

    # ----------------------------------------------------------------- the writer's news
    def _run_messages(self) -> None:
        while (msg := self.mailbox.take()) is not None:
            if isinstance(msg, AckTokens):
                self._release(msg.tokens)
            elif isinstance(msg, Announce):
                self.announce(msg.event)
                self._announce_due(time.monotonic())
            elif isinstance(msg, StorageState):
                self._storage_ok = msg.ok
                self._publish_status()
            elif isinstance(msg, UploadState):
                self._upload_ok, self._upload_reason = msg.ok, msg.reason
                self._publish_status()
            elif isinstance(msg, Sealed):
                self._publish_status()
        self._flush_acks()

    def _housekeeping(self, now: float) -> None:
        if not self.draining.is_set():
            self._dropped(self.assembler.expire(now))
        self.metrics.partial_frames.set(self.assembler.partial_frames)
        self.metrics.inflight_bytes.set(self.assembler.inflight_bytes)
        self.metrics.unacked.set(self.ledger.held)
        self.metrics.pending_frames.set(len(self.queue))
        self._announce_due(now)
        if (self._connected and self._refused and not self._subscribing
                and now >= self._resubscribe_at):
            log.warning("subscribe_retry", topics=self._refused)
            self._subscribe(self._refused)
        if (self.release is not None and self._connected
                and self.release.due(int(time.time() * 1000))):
            self._release_moving()
        if self._connected and now - self._status_at >= self.ing.status_interval_s:
            self._publish_status()

    def _release_moving(self) -> None:
        """UNSUBSCRIBE the partitions handed off (release role), once it is safe."""
        assert self.release is not None and self.owned is not None
        self.release.done = True
        self.owned -= self.moving
        self._client.unsubscribe([partition_frame_filter(self.prefix, n)
                                  for n in sorted(self.moving)])
        log.info("handoff_released", partitions=sorted(self.moving),
                 crossed=len(self.release.crossed), waiting=sorted(self.release.waiting))
        if self.on_released is not None:  # their leases go too (ingestor/leases.py)
            self.on_released(sorted(self.moving))
        self._publish_status()

    def _announce_due(self, now: float) -> None:
        if not self._connected:
            return
        for batch, a in list(self._announces.items()):
            ev = a.event
            if a.info is not None and a.info.is_published():
                del self._announces[batch]
                self.metrics.batches_announced.inc()
                log.info("batch_announced", device=ev.device, batch=batch, frames=ev.frames,
                         topic=ready_topic(self.prefix, ev.device))
                continue
            if a.info is None or now - a.sent_at >= self.ing.announce_retry_s:
                if a.info is not None:
                    log.warning("announce_retry", device=ev.device, batch=batch)
                a.info = self._client.publish(ready_topic(self.prefix, ev.device),
                                              ev.to_json(), qos=1)
                a.sent_at = now

    def _status_payload(self, state: str) -> dict[str, Any]:
        c = self.counters
        return {
            "state": state, "frames_stored": c.frames_stored, "bytes_stored": c.bytes_stored,
            "rejected": c.rejected, "dropped": c.dropped, "batches_sealed": c.batches_sealed,
            "partial_frames": self.assembler.partial_frames,
            "pending_frames": len(self.queue), "unacked_chunks": self.ledger.held,
            "storage_ok": self._storage_ok, "upload_ok": self._upload_ok,
            **({"reason": self._upload_reason} if not self._upload_ok else {}),
            **({"refused_topics": self._refused[:64]} if self._refused else {}),
            **({"partitions": sorted(self.owned)} if self.owned is not None else {}),
            **({"handoff": {"role": self.handoff.role, "partitions": sorted(self.moving),
                            "at_ms": self.handoff.at_ms, "handed_off": self.handed_off,
                            "released": bool(self.release and self.release.done)}}
               if self.handoff is not None else {}),
            "ts_ms": int(time.time() * 1000),
            **self._device_rejections(),
        }

    def _publish_status(self, state: str | None = None) -> mqtt.MQTTMessageInfo | None:
        if not self._connected:
            return None
        if state is None:
            ok = self._storage_ok and self._upload_ok and not self._refused
            state = "online" if ok else "degraded"
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


def _ssl_pending(sock: Any) -> int:
    pending = getattr(sock, "pending", None)
    if pending is None:
        return 0
    try:
        return int(pending())
    except (OSError, ValueError):
        return 0
