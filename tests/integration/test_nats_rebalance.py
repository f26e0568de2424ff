"""Moving partitions between ingestors on the NATS engine (docs/scaling.md).

First what NATS (2.15.1) does with a persistent MQTT session's subscriptions, measured
with plain paho clients: it decides which orders of steps can move a partition without
losing or duplicating an acknowledged frame. Then the procedure, with the real
ingestors under load.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from camstack.servers import NatsClusterHandle, start_nats_cluster
from contract.partition import device_partition, partition_frame_filter
from tests.integration.test_nats_cluster import TIMEOUT, Client, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def clients() -> Iterator[list[Client]]:
    made: list[Client] = []
    yield made
    for c in reversed(made):
        c.close()


def _msgs_stream(cluster: NatsClusterHandle) -> tuple[int, list[tuple[int, int]]]:
    """Messages in ``$MQTT_msgs`` and (ack pending, pending) of each of its consumers."""
    _, jsz = cluster.http(0, "/jsz?accounts=true&streams=true&consumers=true")
    for acc in (jsz or {}).get("account_details") or []:
        for st in acc.get("stream_detail") or []:
            if st.get("name") == "$MQTT_msgs":
                return int(st["state"]["messages"]), [
                    (int(c["num_ack_pending"]), int(c["num_pending"]))
                    for c in st.get("consumer_detail") or []]
    return 0, []


def gone(cluster: NatsClusterHandle, user: str) -> None:
    """Wait until the server has no connection of ``user`` (its DISCONNECT handled)."""
    def none_left() -> bool:
        _, connz = cluster.http(0, "/connz?auth=true")
        return not any(c.get("authorized_user") == user
                       for c in (connz or {}).get("connections") or [])
    wait_until(none_left, f"{user} disconnected")


class Holder:
    """A persistent-session 3.1.1 subscriber that never acknowledges (manual ack)."""

    def __init__(self, cluster: NatsClusterHandle, user: str, password: str) -> None:
        self.got: list[bytes] = []
        self.cond = threading.Condition()
        self.unsubacks: set[int] = set()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=user,
                             protocol=mqtt.MQTTv311, clean_session=False, manual_ack=True)
        self.c.username_pw_set(user, password)
        self.c.tls_set(ca_certs=str(cluster.ca_file), cert_reqs=ssl.CERT_REQUIRED)
        self.c.on_message = self._on_message
        self.c.on_unsubscribe = self._on_unsubscribe
        self.c.on_subscribe = self._on_unsubscribe  # a SUBACK: its mid is recorded too
        self.c.connect("127.0.0.1", cluster.mqtt_port(0), keepalive=30)
        self.c.loop_start()

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self.cond:
            self.got.append(bytes(msg.payload))
            self.cond.notify_all()

    def _on_unsubscribe(self, _c: object, _u: object, mid: int, *_a: object) -> None:
        with self.cond:
            self.unsubacks.add(mid)
            self.cond.notify_all()

    def wait(self, n: int) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.got) >= n, TIMEOUT), self.got

    def subscribe(self, topic: str) -> None:
        rc, mid = self.c.subscribe(topic, 1)
        assert rc == mqtt.MQTT_ERR_SUCCESS and mid is not None
        with self.cond:
            assert self.cond.wait_for(lambda: mid in self.unsubacks, TIMEOUT), "SUBACK"

    def unsubscribe(self, topic: str) -> None:
        rc, mid = self.c.unsubscribe(topic)
        assert rc == mqtt.MQTT_ERR_SUCCESS and mid is not None
        with self.cond:
            assert self.cond.wait_for(lambda: mid in self.unsubacks, TIMEOUT), "UNSUBACK"

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def test_what_nats_does_with_a_sessions_subscriptions(tmp_path: Path,
                                                      clients: list[Client]) -> None:
    cluster = start_nats_cluster(tmp_path / "cluster", 1)
    try:
        pw_a = cluster.store.add("ingestor-a", "service")
        pw_b = cluster.store.add("ingestor-b", "service")
        dev = Client(cluster, 0, "mv01", cluster.add_device("mv01")).connected()
        clients.append(dev)
        part = partition_frame_filter("cam", device_partition("mv01"))

        # 1. A persistent session's subscriptions come back on reconnect, without a
        # SUBSCRIBE: an ingestor restarted with fewer partitions still gets the others.
        a = Client(cluster, 0, "ingestor-a", pw_a, clean_session=False).connected()
        assert a.subscribe([part]) == [1]
        a.close()
        gone(cluster, "ingestor-a")
        dev.publish("cam/mv01/frame", b"while-away")
        a = Client(cluster, 0, "ingestor-a", pw_a, clean_session=False).connected()
        assert a.session_present
        dev.publish("cam/mv01/frame", b"restored")
        a.wait(lambda: a.payloads() == [b"while-away", b"restored"], "the old subscription")
        a.close()
        gone(cluster, "ingestor-a")

        # 2. Two sessions subscribed to one partition both get every message (so an
        # overlap stores frames twice), and each keeps its copy while the other
        # unsubscribes.
        holder = Holder(cluster, "ingestor-a", pw_a)  # same session, holds every message
        b = Client(cluster, 0, "ingestor-b", pw_b, clean_session=False).connected()
        assert b.subscribe([part]) == [1]
        b.close()  # B's copy stays queued in its session while it is away
        gone(cluster, "ingestor-b")
        for k in range(5):
            dev.publish("cam/mv01/frame", f"u{k}".encode())
        holder.wait(5)
        wait_until(lambda: _msgs_stream(cluster)[0] == 5, "5 messages kept for A and B")
        # 3. UNSUBSCRIBE deletes the session's consumer and every message it had not
        # acknowledged (delivered or not) that no other consumer wants: A's copy is gone,
        # B's stays.
        holder.unsubscribe(part)
        wait_until(lambda: _msgs_stream(cluster)[1] == [(0, 5)], "only B's consumer left")
        b = Client(cluster, 0, "ingestor-b", pw_b, clean_session=False).connected()
        clients.append(b)
        b.wait(lambda: len(b.payloads()) >= 5, "B's copy")
        assert b.payloads() == [f"u{k}".encode() for k in range(5)]
        # ... and nothing comes back to A when it subscribes again: a new subscription
        # starts with the messages published after its SUBACK.
        holder.subscribe(part)
        dev.publish("cam/mv01/frame", b"after")
        holder.wait(6)
        assert holder.got == [f"u{k}".encode() for k in range(5)] + [b"after"]
        holder.close()
        gone(cluster, "ingestor-a")
        b.wait(lambda: b"after" in b.payloads(), "B's after")
        # 4. With no subscription at all, a publish is PUBACKed and nothing is kept.
        holder = Holder(cluster, "ingestor-a", pw_a)
        holder.unsubscribe(part)
        holder.close()
        b.c.unsubscribe(part)
        wait_until(lambda: _msgs_stream(cluster)[1] == [], "no consumer left")
        dev.publish("cam/mv01/frame", b"into-the-void")  # PUBACKed (publish() checks)
        assert _msgs_stream(cluster)[0] == 0
        assert b.subscribe([part]) == [1]
        dev.publish("cam/mv01/frame", b"sentinel")
        b.wait(lambda: b"sentinel" in b.payloads(), "the sentinel")
        assert b"into-the-void" not in b.payloads()
    finally:
        for c in clients:
            c.close()
        clients.clear()
        cluster.close()
