"""The delivery stall of one MQTT session on many partitions (docs/scaling.md).

nats-server 2.15.1 gives every QoS 1 subscription of a session its own JetStream consumer
allowed ``max_ack_pending`` unacknowledged messages, but lets the *session* hold only
``max_ack_pending`` unacknowledged deliveries in all (``mqttSession.trackPublish``,
server/mqtt.go: past ``sess.maxp`` it returns no packet id and the message is not
sent). The consumer still counts such a message as delivered, so it comes again only
at ``ack_wait``. With k subscriptions up to (k - 1) x max_ack_pending messages are
"delivered" into nothing. Measured here with plain paho clients on a real 1-node
cluster, a small window (20) to keep it short, and the production ``ack_wait``
(``broker.nats.ack_wait_s``), which bounds the pause.
"""

from __future__ import annotations

import ssl
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from camstack.jpegs import make_jpeg
from camstack.procs import ServiceProcess
from camstack.servers import NatsClusterHandle, start_nats_cluster
from config.loader import to_toml
from config.settings import NatsClusterSettings
from contract.codec import split_frame
from contract.partition import device_partition, partition_frame_filter
from tests.integration.test_nats_cluster import Client, wait_until
from tests.integration.test_nats_faults import again
from tests.integration.test_nats_ingestor import start_ingestor, stored

pytestmark = pytest.mark.integration

WINDOW = 20
"""max_ack_pending of the test cluster: per subscription, and (the cause) per session."""
PER_DEVICE = WINDOW
"""Messages each device publishes: one subscription's whole window."""
LONGEST_PAUSE_S = 10.0
"""What the defaults must bound the stall to (NATS's own ack_wait, 30 s, does not)."""


class Session:
    """A persistent MQTT 3.1.1 session that acknowledges only when told to."""

    def __init__(self, cluster: NatsClusterHandle, user: str, password: str) -> None:
        self.cond = threading.Condition()
        self.got: list[tuple[int, bytes, bool]] = []
        self.subacks: dict[int, list[int]] = {}
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{user}-session",
                             protocol=mqtt.MQTTv311, clean_session=False, manual_ack=True)
        self.c.username_pw_set(user, password)
        self.c.tls_set(ca_certs=str(cluster.ca_file), cert_reqs=ssl.CERT_REQUIRED,
                       tls_version=ssl.PROTOCOL_TLS_CLIENT)
        self.c.on_message = self._on_message
        self.c.on_subscribe = self._on_subscribe
        self.c.connect("127.0.0.1", cluster.mqtt_port(0), keepalive=30)
        self.c.loop_start()

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self.cond:
            self.got.append((msg.mid, bytes(msg.payload), bool(msg.dup)))
            self.cond.notify_all()

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, mid: int, codes: list[ReasonCode],
                      _p: Properties) -> None:
        with self.cond:
            self.subacks[mid] = [int(rc.value) for rc in codes]
            self.cond.notify_all()

    def subscribe(self, filters: list[str]) -> list[int]:
        _, mid = self.c.subscribe([(f, 1) for f in filters])
        assert mid is not None
        self.wait(lambda: mid in self.subacks, "SUBACK")
        return self.subacks[mid]

    def wait(self, pred: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
        with self.cond:
            assert self.cond.wait_for(pred, timeout), f"timed out waiting for {what}"

    def payloads(self) -> set[bytes]:
        with self.cond:
            return {p for _, p, _ in self.got}

    def ack_all(self) -> None:
        with self.cond:
            mids = [m for m, _, _ in self.got]
        for m in mids:
            self.c.ack(m, 1)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def _consumers(cluster: NatsClusterHandle) -> list[tuple[int, int]]:
    """(ack pending, pending) of each consumer of ``$MQTT_msgs``."""
    _, jsz = cluster.http(0, "/jsz?accounts=true&streams=true&consumers=true")
    for acc in (jsz or {}).get("account_details") or []:
        for st in acc.get("stream_detail") or []:
            if st.get("name") == "$MQTT_msgs":
                return [(int(c["num_ack_pending"]), int(c["num_pending"]))
                        for c in st.get("consumer_detail") or []]
    return []


def _two_partitions() -> list[str]:
    """Two device ids on different partitions."""
    out: dict[int, str] = {}
    i = 0
    while len(out) < 2:
        d = f"stall{i:03d}"
        out.setdefault(device_partition(d), d)
        i += 1
    return list(out.values())


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsClusterHandle]:
    # The production ack_wait (no ack_wait_s given): the fix under test is that default.
    h = start_nats_cluster(tmp_path / "cluster", 1, max_ack_pending=WINDOW)
    yield h
    h.close()


def _publish(cluster: NatsClusterHandle, devices: list[str], passwords: dict[str, str],
             closing: list[Client]) -> set[bytes]:
    sent: set[bytes] = set()
    for d in devices:
        cam = Client(cluster, 0, d, passwords[d]).connected()
        closing.append(cam)
        for n in range(PER_DEVICE):
            body = f"{d}:{n}".encode()
            cam.publish(f"cam/{d}/frame", body)  # waits for its PUBACK
            sent.add(body)
    return sent


def test_a_session_on_two_partitions_gets_one_window_and_the_rest_after_ack_wait(
        cluster: NatsClusterHandle, cleanup: list[Client]) -> None:
    ack_wait = cluster.ack_wait_s
    assert ack_wait == NatsClusterSettings().ack_wait_s  # the production default
    devices = _two_partitions()
    passwords = {d: cluster.store.add(d, "device") for d in devices}
    ipw = cluster.store.add("ingestor", "service")
    cluster.reload()
    session = Session(cluster, "ingestor", ipw)
    try:
        filters = [partition_frame_filter("cam", device_partition(d)) for d in devices]
        assert session.subscribe(filters) == [1, 1]
        sent = _publish(cluster, devices, passwords, cleanup)
        published_at = time.monotonic()
        # The cause: the server counts every message as delivered (two consumers, a full
        # window each, nothing pending) ...
        wait_until(lambda: sorted(_consumers(cluster)) == [(PER_DEVICE, 0)] * 2,
                   "both consumers: everything delivered, unacknowledged", timeout=10)
        # ... but the session sent one window only: the other half went nowhere.
        session.wait(lambda: len(session.got) >= WINDOW, "one window of messages")
        assert len(session.got) == WINDOW
        session.ack_all()
        # They come again at ack_wait (counted from their first delivery): the default
        # must bound that pause.
        session.wait(lambda: session.payloads() == sent, "the dropped half, redelivered",
                     timeout=LONGEST_PAUSE_S)
        took = time.monotonic() - published_at
        assert took >= ack_wait - 1.0, f"redelivered after {took:.1f} s: not at ack_wait"
        assert any(dup for _, _, dup in session.got)  # a redelivery, flagged DUP
    finally:
        session.close()


def test_one_subscription_keeps_the_rest_queued(cluster: NatsClusterHandle,
                                                cleanup: list[Client]) -> None:
    # The same two partitions through one wildcard subscription: one consumer, its
    # window equal to the session's, so the rest stays queued (num_pending), is not
    # "delivered", and comes as soon as the window frees: no stall.
    devices = _two_partitions()
    passwords = {d: cluster.store.add(d, "device") for d in devices}
    ipw = cluster.store.add("ingestor", "service")
    cluster.reload()
    session = Session(cluster, "ingestor", ipw)
    try:
        assert session.subscribe(["p/+/cam/+/frame"]) == [1]
        sent = _publish(cluster, devices, passwords, cleanup)
        wait_until(lambda: _consumers(cluster) == [(WINDOW, 2 * PER_DEVICE - WINDOW)],
                   "one window delivered, the rest queued", timeout=10)
        session.wait(lambda: len(session.got) >= WINDOW, "one window of messages")
        assert len(session.got) == WINDOW
        started = time.monotonic()
        session.ack_all()
        session.wait(lambda: session.payloads() == sent, "the queued rest", timeout=10)
        assert time.monotonic() - started < cluster.ack_wait_s  # no redelivery needed
    finally:
        session.close()


def _devices(n: int) -> list[str]:
    """``n`` device ids on ``n`` different partitions."""
    devices: list[str] = []
    parts: set[int] = set()
    i = 0
    while len(devices) < n:
        d = f"back{i:03d}"
        if device_partition(d) not in parts:
            parts.add(device_partition(d))
            devices.append(d)
        i += 1
    return devices


def _queue_backlog(cluster: NatsClusterHandle, devices: list[str], frames: int,
                   closing: list[Client]) -> int:
    """Publish ``frames`` frames of every device (4 chunks each); chunks left queued."""
    for d in devices:
        cam = Client(cluster, 0, d, cluster.add_device(d)).connected()
        closing.append(cam)
        for seq in range(frames):
            for chunk in split_frame(make_jpeg(160, 120, seq), boot_id=1, frame_seq=seq,
                                     chunk_data=700):
                cam.publish(f"cam/{d}/frame", chunk)  # waits for its PUBACK
    return sum(p for _, p in _consumers(cluster))


def _set_ingest(svc: ServiceProcess, **ingest: Any) -> None:
    cfg = tomllib.loads(svc.config.read_text())
    cfg["ingest"].update(ingest)
    svc.config.write_text(to_toml(cfg), encoding="utf-8")


def _store_all(svc: ServiceProcess, want: set[tuple[str, int]], timeout: float) -> float:
    """Seconds from ``ingestor_ready`` until every frame of ``want`` is stored."""
    svc.wait_event("ingestor_ready", 30)
    ready_at = time.monotonic()

    def all_stored() -> bool:
        return want <= {(e["device"], e["seq"]) for e in stored(svc)}

    wait_until(all_stored, "every queued frame stored", timeout=timeout)
    took = time.monotonic() - ready_at
    assert not [e for e in svc.events() if e.get("event") == "frame_dropped"]
    return took


def test_the_ingestor_restarted_with_a_backlog_on_many_partitions_stores_it_in_rounds(
        tmp_path: Path, cluster: NatsClusterHandle, cleanup: list[Client]) -> None:
    # The real ingestor owning all 64 partitions (as `make up` runs it) comes back to
    # a backlog queued on 5 partitions while it was stopped: every consumer pushes its
    # share at once, the session takes one window (WINDOW chunks) and the rest is
    # "delivered" into nothing; the frames it completes are stored, the others wait,
    # their first chunks held unacknowledged, until the redelivery at ack_wait: rounds of
    # about one window each (measured: 6 devices x 4 frames of 4 chunks took 5 rounds).
    # A backlog of about two windows needs one or two rounds: well before NATS's own
    # ack_wait (30 s) with the default.
    devices = _devices(5)
    svc = start_ingestor(cluster, 0, "ingestor", tmp_path, list(range(64)))
    try:
        svc.wait_event("ingestor_ready", 30)
        assert svc.stop() == 0  # its session and its 64 subscriptions stay
        frames = 2
        queued = _queue_backlog(cluster, devices, frames, cleanup)
        assert WINDOW < queued <= 2 * WINDOW, f"{queued} chunks queued: not about 2 windows"
        svc = again(svc, "again")
        took = _store_all(svc, {(d, q) for d in devices for q in range(frames)},
                          2 * LONGEST_PAUSE_S)
        assert svc.stop() == 0
        print(f"backlog of {queued} chunks stored {took:.1f} s after ingestor_ready")
    finally:
        svc.close()


def test_one_filter_drains_a_backlog_of_many_windows_without_waiting_for_ack_wait(
        tmp_path: Path, cluster: NatsClusterHandle, cleanup: list[Client]) -> None:
    # ingest.one_filter: the ingestor owning all 64 partitions subscribes p/+/cam/+/frame
    # once. Switched from per-partition filters, it drops them (only after the
    # wildcard's SUBACK); then a backlog of 5 windows, which per partition drains in
    # rounds of ack_wait, comes through the one consumer as fast as it is acknowledged.
    devices = _devices(5)
    svc = start_ingestor(cluster, 0, "ingestor", tmp_path, list(range(64)))
    try:
        svc.wait_event("ingestor_ready", 30)
        wait_until(lambda: len(_consumers(cluster)) == 64, "64 consumers", timeout=10)
        assert svc.stop() == 0
        _set_ingest(svc, one_filter=True)
        svc = again(svc, "one")
        svc.wait_event("ingestor_ready", 30)
        wait_until(lambda: len(_consumers(cluster)) == 1, "the session on one consumer",
                   timeout=10)
        assert svc.stop() == 0
        frames = 5
        queued = _queue_backlog(cluster, devices, frames, cleanup)
        assert queued >= 4 * WINDOW, f"{queued} chunks queued: not a backlog of windows"
        svc = again(svc, "backlog")
        took = _store_all(svc, {(d, q) for d in devices for q in range(frames)},
                          cluster.ack_wait_s)  # no redelivery round needed
        assert len(_consumers(cluster)) == 1
        assert svc.stop() == 0
        print(f"backlog of {queued} chunks stored {took:.1f} s after ingestor_ready")
    finally:
        svc.close()
