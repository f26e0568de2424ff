"""Faults under load on the NATS cluster engine, with the real ingestors.

Marked cameras (tests/support/fleet.py) publish QoS 1 continuously; what the cameras
got PUBACKs for is what must survive. Each check waits for a positive signal (the
ingestors' ``frame_stored`` events covering every acknowledged frame), never a sleep.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from camstack.procs import ServiceProcess
from camstack.servers import NatsClusterHandle, start_nats_cluster
from config.settings import MqttSettings, TlsSettings
from contract.partition import device_partition
from tests.integration.test_nats_cluster import _stream_leader
from tests.integration.test_nats_ingestor import start_ingestor
from tests.support.faults import audit, wait_until
from tests.support.fleet import Fleet, FrameKey, MarkedCamera

pytestmark = pytest.mark.integration

LOW = list(range(32))
HIGH = list(range(32, 64))


ACK_WAIT_S = 5.0
"""The nodes' MQTT ``ack_wait`` here, pinned (it is also the production default,
``broker.nats.ack_wait_s``; NATS's own is 30 s): a message delivered but not
acknowledged before a SIGKILL is sent again only once it expires, even to a session
that reconnected at once (measured: see docs/scaling.md)."""


def start_cluster(base: Path, **kwargs: Any) -> NatsClusterHandle:
    """A ready 3-node cluster whose MQTT ``ack_wait`` is :data:`ACK_WAIT_S`."""
    return start_nats_cluster(base, 3, ack_wait_s=ACK_WAIT_S, **kwargs)


def devices_in(parts: list[int], n: int, tag: str) -> list[str]:
    """``n`` device ids whose partition is in ``parts``."""
    want = set(parts)
    return [d for d in (f"{tag}{k}" for k in range(1000)) if device_partition(d) in want][:n]


def camera(cluster: NatsClusterHandle, node: int, index: int, device: str,
           fps: float) -> MarkedCamera:
    password = cluster.add_device(device)
    s = MqttSettings(host="127.0.0.1", port=cluster.mqtt_port(node), username=device,
                     password=password, client_id=device, protocol="3.1.1", keepalive_s=30,
                     tls=TlsSettings(enabled=True, ca_file=cluster.ca_file))
    return MarkedCamera(index, device, s, fps=fps)


def again(svc: ServiceProcess, tag: str) -> ServiceProcess:
    """The same ingestor (account, config, client id, session) started again, its log in
    a file of its own."""
    return ServiceProcess("ingestor", svc.config,
                          svc.log_path.with_suffix(f".{tag}.log")).start()


def stored_keys(*runs: ServiceProcess) -> Counter[FrameKey]:
    """Every ``frame_stored`` event of these ingestor runs, counted by frame key."""
    out: Counter[FrameKey] = Counter()
    for svc in runs:
        for e in svc.events():
            if e.get("event") == "frame_stored":
                out[(str(e["device"]), int(e["boot_id"]), int(e["seq"]))] += 1
    return out


def settle(fleet: Fleet, runs: list[ServiceProcess], timeout: float = 120.0) -> None:
    """Stop the cameras (every in-flight frame acknowledged), then wait until every
    acknowledged frame has been stored by one of ``runs``."""
    assert fleet.finish(30) == 0, "frames left without PUBACK"
    assert not fleet.errors(), fleet.errors()
    acked = fleet.acked()
    try:
        wait_until(lambda: acked <= set(stored_keys(*runs)), timeout,
                   "every acknowledged frame stored")
    except AssertionError:
        missing = sorted(acked - set(stored_keys(*runs)))
        raise AssertionError(f"{len(missing)} acknowledged frames never stored: "
                             f"{missing[:20]}") from None


def check(fleet: Fleet, owners: dict[str, tuple[Path, list[ServiceProcess]]]) -> None:
    """Every acknowledged frame on exactly one ingestor's disk, intact, stored once.

    Per ingestor, the audit (tests/support/faults.py) of the devices it stored frames
    of: no frame twice on its disk, none different from what was sent, and every frame
    it misses stored by another one; across every run of every ingestor each frame was
    stored once, and the files on all disks are exactly those.
    """
    keys = stored_keys(*[r for _, runs in owners.values() for r in runs])
    assert not [k for k, n in keys.items() if n > 1], "a frame stored twice"
    on_disk = 0
    for root, runs in owners.values():
        mine = {e["device"] for r in runs for e in r.events() if e.get("event") == "frame_stored"}
        sub = Fleet([c for c in fleet.cameras if c.device in mine])
        a = audit(root, sub)
        assert not a.duplicates and not a.corrupt, a.problems()
        here = set(stored_keys(*runs))
        assert set(a.lost) <= set(keys) - here, "an acknowledged frame on no disk"
        assert a.on_disk == len(here)
        on_disk += a.on_disk
    assert on_disk == len(keys)
    assert fleet.acked() <= set(keys)


def test_sigkill_of_an_ingestor_under_load_loses_and_duplicates_nothing(
        tmp_path: Path, cleanup: list[Any]) -> None:
    cluster = start_cluster(tmp_path / "cluster")
    cleanup.append(cluster)
    a = start_ingestor(cluster, 1, "ingestor-a", tmp_path, LOW)
    b = start_ingestor(cluster, 2, "ingestor-b", tmp_path, HIGH)
    cleanup += [a, b]
    a.wait_event("ingestor_ready", 30)
    b.wait_event("ingestor_ready", 30)
    low, high = devices_in(LOW, 3, "kl"), devices_in(HIGH, 2, "kh")
    fleet = Fleet([camera(cluster, i % 3, i, d, 10.0) for i, d in enumerate(low + high)])
    cleanup.append(fleet)
    fleet.start()
    # Killed mid-stream, with frames of its devices coming in.
    wait_until(lambda: len(stored_keys(a)) >= 40, 30, "frames stored by A")
    a.kill()
    killed_at = len(stored_keys(a))
    b_before = len(stored_keys(b))
    # The cameras keep publishing (their frames queue in A's persistent session); B's
    # partitions are not affected.
    wait_until(lambda: len(stored_keys(b)) >= b_before + 20, 30, "B storing meanwhile")
    a2 = again(a, "2")
    cleanup.append(a2)
    ready = a2.wait_event("mqtt_connected", 30)
    assert ready["session_present"] is True
    # Frames captured while A was down arrive after the restart.
    wait_until(lambda: len(stored_keys(a2)) >= 30, 30, "A's backlog and new frames")
    settle(fleet, [a, a2, b])
    check(fleet, {"a": (tmp_path / "ingestor-a" / "store", [a, a2]),
                  "b": (tmp_path / "ingestor-b" / "store", [b])})
    print(f"\nSIGKILL ingestor: acked {len(fleet.acked())} frames, A stored {killed_at} "
          f"before the kill and {len(stored_keys(a2))} after, B {len(stored_keys(b))}; "
          f"0 lost, 0 stored twice")
    assert a2.stop() == 0 and b.stop() == 0


def test_sigkill_of_a_nats_node_under_load_with_two_ingestors(
        tmp_path: Path, cleanup: list[Any]) -> None:
    cluster = start_cluster(tmp_path / "cluster")
    cleanup.append(cluster)
    # The MQTT streams exist once a first client of the account connected.
    a = start_ingestor(cluster, 0, "ingestor-a", tmp_path, LOW)
    cleanup.append(a)
    a.wait_event("ingestor_ready", 30)
    leader: list[str] = []

    def found() -> bool:
        name = _stream_leader(cluster, 0, "$MQTT_msgs")
        leader[:] = [name] if name else []
        return bool(name)

    wait_until(found, 30, "a leader of $MQTT_msgs")
    victim = next(n.index for n in cluster.plan if n.name == leader[0])
    n1, n2 = [i for i in range(3) if i != victim]
    if victim == 0:  # A must not be on the node that dies: move it
        assert a.stop() == 0
        a.config.write_text(a.config.read_text().replace(
            f"port = {cluster.mqtt_port(0)}", f"port = {cluster.mqtt_port(n1)}"))
        a = again(a, "moved")
        cleanup.append(a)
        a.wait_event("ingestor_ready", 30)
    runs_a = [r for r in cleanup if isinstance(r, ServiceProcess)]
    b = start_ingestor(cluster, n2, "ingestor-b", tmp_path, HIGH)
    cleanup.append(b)
    b.wait_event("ingestor_ready", 30)
    low, high = devices_in(LOW, 2, "nl"), devices_in(HIGH, 2, "nh")
    nodes = [n1, n2]
    fleet = Fleet([camera(cluster, nodes[i % 2], i, d, 10.0)
                   for i, d in enumerate(low + high)])
    cleanup.append(fleet)
    fleet.start()
    wait_until(lambda: len(stored_keys(*runs_a)) >= 20 and len(stored_keys(b)) >= 20, 30,
               "both ingestors storing")
    cluster.stop_node(victim, kill=True)  # the stream's leader, mid-stream
    before = len(stored_keys(*runs_a, b))
    # Positive signal that the survivors carry on: more frames stored after the kill.
    wait_until(lambda: len(stored_keys(*runs_a, b)) >= before + 40, 60,
               "frames stored after the kill")
    new_leader = _stream_leader(cluster, n1, "$MQTT_msgs")
    assert new_leader in {cluster.plan[n1].name, cluster.plan[n2].name}
    settle(fleet, [*runs_a, b])
    check(fleet, {"a": (tmp_path / "ingestor-a" / "store", runs_a),
                  "b": (tmp_path / "ingestor-b" / "store", [b])})
    print(f"\nSIGKILL NATS node (stream leader): acked {len(fleet.acked())} frames, "
          f"{before} stored before the kill; 0 lost, 0 stored twice")
    cluster.start_node(victim)
    assert all(r.stop() == 0 for r in [*runs_a, b])
