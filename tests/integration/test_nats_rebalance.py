"""Moving partitions between ingestors on the NATS engine (docs/scaling.md).

First what NATS (2.15.1) does with a persistent MQTT session's subscriptions, measured
with plain paho clients: it decides which orders of steps can move a partition without
losing or duplicating an acknowledged frame. Then the procedure, with the real
ingestors under load.
"""

from __future__ import annotations

import ssl
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from camstack.procs import ServiceProcess
from camstack.servers import NatsClusterHandle, start_nats_cluster
from config.loader import to_toml
from contract.partition import device_partition, partition_frame_filter
from tests.integration.test_nats_cluster import TIMEOUT, Client, wait_until
from tests.integration.test_nats_faults import (
    again,
    camera,
    check,
    devices_in,
    settle,
    start_cluster,
    stored_keys,
)
from tests.integration.test_nats_ingestor import start_ingestor
from tests.support.faults import wait_until as wait_for
from tests.support.fleet import Fleet, FrameKey

pytestmark = pytest.mark.integration


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
                                                      cleanup: list[Client]) -> None:
    cluster = start_nats_cluster(tmp_path / "cluster", 1)
    try:
        pw_a = cluster.store.add("ingestor-a", "service")
        pw_b = cluster.store.add("ingestor-b", "service")
        dev = Client(cluster, 0, "mv01", cluster.add_device("mv01")).connected()
        cleanup.append(dev)
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
        cleanup.append(b)
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
        for c in cleanup:
            c.close()
        cleanup.clear()
        cluster.close()


def _reconfigure(svc: ServiceProcess, tag: str, **ingest: Any) -> ServiceProcess:
    """Stop ``svc`` (SIGTERM: every durable frame acknowledged, its session kept), change
    its ``[ingest]`` settings (a value None removes the key), start it again."""
    assert svc.stop() == 0
    cfg = tomllib.loads(svc.config.read_text())
    for k, v in ingest.items():
        if v is None:
            cfg["ingest"].pop(k, None)
        else:
            cfg["ingest"][k] = v
    svc.config.write_text(to_toml(cfg), encoding="utf-8")
    return again(svc, tag)


def _capture_ms(root: Path, runs: list[ServiceProcess]) -> dict[FrameKey, int]:
    """Capture time (the file name's, trusted clocks here) of each frame the runs stored."""
    out: dict[FrameKey, int] = {}
    for r in runs:
        for e in r.events():
            if e.get("event") == "frame_stored":
                out[(str(e["device"]), int(e["boot_id"]), int(e["seq"]))] = int(
                    Path(str(e["file"])).name.split("_")[0])
    return out


def test_moving_partitions_under_load_loses_and_duplicates_nothing(
        tmp_path: Path, cleanup: list[Any]) -> None:
    cluster = start_cluster(tmp_path / "cluster")
    cleanup.append(cluster)
    moving = list(range(16, 32))
    a = start_ingestor(cluster, 1, "ingestor-a", tmp_path, list(range(48)))
    b = start_ingestor(cluster, 2, "ingestor-b", tmp_path, list(range(48, 64)))
    cleanup += [a, b]
    a.wait_event("ingestor_ready", 30)
    b.wait_event("ingestor_ready", 30)
    mv = devices_in(moving, 2, "mv")
    stay_a = devices_in(list(range(16)), 1, "sa")
    stay_b = devices_in(list(range(48, 64)), 1, "sb")
    fleet = Fleet([camera(cluster, i % 3, i, d, 10.0)
                   for i, d in enumerate(mv + stay_a + stay_b)])
    cleanup.append(fleet)
    fleet.start()
    wait_for(lambda: {k[0] for k in stored_keys(a)} >= set(mv + stay_a), 30,
               "A storing the moving devices' frames")
    # 1. The fence, a capture time ahead of both restarts. 2. B takes the partitions on
    # (subscribed before the fence), A is told to give them away at the fence.
    at_ms = int(time.time() * 1000) + 10_000
    handoff = {"partitions": moving, "at_ms": at_ms}
    b2 = _reconfigure(b, "2", partitions=list(range(16, 32)) + list(range(48, 64)),
                      handoff={**handoff, "role": "acquire"})
    cleanup.append(b2)
    b2.wait_event("ingestor_ready", 30)
    a2 = _reconfigure(a, "2", handoff={**handoff, "role": "release",
                                        "release_after_s": 60})
    cleanup.append(a2)
    a2.wait_event("ingestor_ready", 30)
    assert time.time() * 1000 < at_ms, "restarts slower than the fence's lead"
    assert not any(e.get("event") == "handoff_subscribed_late" for e in b2.events())
    # 3. A unsubscribes once every moving device sent it a frame captured after the fence.
    released = a2.wait_event("handoff_released", 40)
    assert released["partitions"] == moving and released["waiting"] == []
    assert released["crossed"] == len(mv)
    # Both applied the fence: B skipped frames from before it, A frames from after.
    assert any(e.get("event") == "frame_handed_off" for e in a2.events())
    assert any(e.get("event") == "frame_handed_off" for e in b2.events())
    n_b = len([k for k in stored_keys(b2) if k[0] in mv])
    wait_for(lambda: len([k for k in stored_keys(b2) if k[0] in mv]) >= n_b + 20, 30,
               "B storing the moved devices after the release")
    # 4. The settings made final at leisure (no handoff left): nothing moves any more.
    a3 = _reconfigure(a2, "3", partitions=list(range(16)) + list(range(32, 48)),
                      handoff=None)
    cleanup.append(a3)
    a3.wait_event("ingestor_ready", 30)
    b3 = _reconfigure(b2, "3", handoff=None)
    cleanup.append(b3)
    b3.wait_event("ingestor_ready", 30)
    n_b = len([k for k in stored_keys(b3) if k[0] in mv])
    wait_for(lambda: len([k for k in stored_keys(b3) if k[0] in mv]) >= n_b + 10, 30,
               "B storing the moved devices with its final settings")
    runs_a, runs_b = [a, a2, a3], [b, b2, b3]
    settle(fleet, runs_a + runs_b)
    # Every acknowledged frame stored, none twice, on one side of the fence each.
    check(fleet, {"a": (tmp_path / "ingestor-a" / "store", runs_a),
                  "b": (tmp_path / "ingestor-b" / "store", runs_b)})
    cap_a, cap_b = _capture_ms(tmp_path, runs_a), _capture_ms(tmp_path, runs_b)
    assert all(ms < at_ms for k, ms in cap_a.items() if k[0] in mv)
    assert all(ms >= at_ms for k, ms in cap_b.items() if k[0] in mv)
    assert {k[0] for k in cap_b} == set(mv + stay_b)
    print(f"\nhandoff: acked {len(fleet.acked())} frames; moving devices: A stored "
          f"{len([k for k in cap_a if k[0] in mv])} before the fence, B "
          f"{len([k for k in cap_b if k[0] in mv])} after; 0 lost, 0 stored twice")
    assert a3.stop() == 0 and b3.stop() == 0
