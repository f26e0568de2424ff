"""The real ingestor process on the NATS cluster engine: partitions, MQTT 3.1.1, SUBACKs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from camstack.jpegs import make_jpeg
from camstack.procs import ServiceProcess
from camstack.servers import NatsClusterHandle, start_nats_cluster
from config.loader import to_toml
from contract.codec import split_frame
from contract.partition import device_partition
from tests.integration.test_nats_cluster import Client

pytestmark = pytest.mark.integration


@pytest.fixture
def procs() -> Iterator[list[ServiceProcess]]:
    made: list[ServiceProcess] = []
    yield made
    for p in reversed(made):
        p.close()


def password_file(tmp: Path, account: str) -> Path:
    """Where :func:`start_ingestor` writes the account's password."""
    return tmp / f"{account}.pass"


def start_ingestor(cluster: NatsClusterHandle, node: int, account: str, tmp: Path,
                   partitions: list[int], *, sections: dict[str, Any] | None = None,
                   **ingest: Any) -> ServiceProcess:
    """Add the account, write its config (``sections``: more top-level keys) and start it."""
    password = cluster.store.add(account, "service")
    cluster.reload()
    pw_file = password_file(tmp, account)
    pw_file.write_text(password + "\n")
    pw_file.chmod(0o600)
    cfg = {
        "mqtt": {"host": "127.0.0.1", "port": cluster.mqtt_port(node), "username": account,
                 "password_file": str(pw_file), "client_id": account, "protocol": "3.1.1",
                 "reconnect_min_s": 0.2, "reconnect_max_s": 2.0,
                 "tls": {"enabled": True, "ca_file": str(cluster.ca_file)}},
        "storage": {"root": str(tmp / account / "store")},
        "log": {"level": "info", "format": "json"},
        "metrics": {"enabled": False},
        "ingest": {"partitions": partitions, "frames_per_video": 1000, **ingest},
        **(sections or {}),
    }
    path = tmp / f"{account}.toml"
    path.write_text(to_toml(cfg), encoding="utf-8")
    return ServiceProcess("ingestor", path, tmp / f"{account}.log").start()


def stored(svc: ServiceProcess) -> list[dict[str, Any]]:
    return [e for e in svc.events() if e.get("event") == "frame_stored"]


@pytest.mark.parametrize("fast_receive", [True, False], ids=["netio", "paho"])
def test_two_ingestors_each_store_exactly_their_partitions(
        tmp_path: Path, procs: list[ServiceProcess], fast_receive: bool) -> None:
    cluster = start_nats_cluster(tmp_path / "cluster", 3)
    clients: list[Client] = []
    try:
        # Devices on both halves of the partitions.
        low = [d for d in (f"nc{k}" for k in range(100)) if device_partition(d) < 32][:2]
        high = [d for d in (f"nc{k}" for k in range(100)) if device_partition(d) >= 32][:2]
        a = start_ingestor(cluster, 1, "ingestor-a", tmp_path, list(range(32)),
                           fast_receive=fast_receive)
        b = start_ingestor(cluster, 2, "ingestor-b", tmp_path, list(range(32, 64)),
                           fast_receive=fast_receive)
        procs += [a, b]
        # Logged only once every SUBACK code of the 32 filters granted QoS 1.
        ready = a.wait_event("ingestor_ready", 30)
        assert "p/0/cam/+/frame" in ready["topic"] and "p/31/cam/+/frame" in ready["topic"]
        b.wait_event("ingestor_ready", 30)
        good: dict[tuple[str, int], bytes] = {}
        for k, d in enumerate(low + high):
            cam = Client(cluster, k % 3, d, cluster.add_device(d)).connected()
            clients.append(cam)
            for seq in range(3):
                jpeg = make_jpeg(160, 120, k * 10 + seq)
                good[(d, seq)] = jpeg
                for chunk in split_frame(jpeg, boot_id=5, frame_seq=seq, chunk_data=700):
                    cam.publish(f"cam/{d}/frame", chunk)
        for svc, devs in ((a, low), (b, high)):
            svc.wait_event(lambda e, devs=devs, svc=svc: len(  # type: ignore[misc]
                stored(svc)) >= 3 * len(devs), 30)
        for svc, devs, account in ((a, low, "ingestor-a"), (b, high, "ingestor-b")):
            assert {e["device"] for e in stored(svc)} == set(devs)
            files = sorted((tmp_path / account / "store").rglob("*.jpg"))
            assert len(files) == 3 * len(devs)
            by_content = {f.read_bytes() for f in files}
            assert by_content == {good[(d, s)] for d in devs for s in range(3)}
            assert all(f.relative_to(tmp_path / account / "store").parts[1] in devs
                       for f in files)
        assert a.stop() == 0 and b.stop() == 0
    finally:
        for c in clients:
            c.close()
        cluster.close()


def test_a_refused_partition_is_logged_degraded_and_retried(
        tmp_path: Path, procs: list[ServiceProcess]) -> None:
    # 2 x 40000 unacknowledged > 65,535 per session: NATS refuses the second (0x80).
    cluster = start_nats_cluster(tmp_path / "cluster", 1, max_ack_pending=40000)
    clients: list[Client] = []
    try:
        svc = start_ingestor(cluster, 0, "ingestor", tmp_path, [3, 4], announce_retry_s=0.5,
                             status_interval_s=0.5)
        procs.append(svc)
        refused = svc.wait_event("subscribe_refused", 30)
        assert refused["topics"] == ["p/4/cam/+/frame"]
        assert refused["reasons"][-1] == "Unspecified error"  # paho's name of 0x80
        svc.wait_event("subscribe_retry", 30)  # it keeps asking
        assert not any(e.get("event") == "ingestor_ready" for e in svc.events())
        op = Client(cluster, 0, "operator", cluster.add_service("operator")).connected()
        clients.append(op)
        assert op.subscribe(["svc/ingestor/status"]) == [1]
        op.wait(lambda: any(json.loads(p).get("refused_topics") == ["p/4/cam/+/frame"]
                            for p in op.payloads()), "a degraded status naming the topic")
        status = json.loads(op.payloads()[-1])
        assert status["state"] == "degraded"
        assert svc.stop() == 0
    finally:
        for c in clients:
            c.close()
        cluster.close()


def test_a_device_using_the_ingestors_name_as_client_id_cannot_touch_its_session(
        tmp_path: Path, procs: list[ServiceProcess]) -> None:
    # The gap pinned in test_nats_cluster.py, closed for services: their 3.1.1 client
    # id carries a suffix derived from their password (mqttclient.session_client_id).
    cluster = start_nats_cluster(tmp_path / "cluster", 1)
    clients: list[Client] = []
    try:
        dev = next(d for d in (f"sc{k}" for k in range(100)) if device_partition(d) < 8)
        svc = start_ingestor(cluster, 0, "ingestor", tmp_path, list(range(8)))
        procs.append(svc)
        svc.wait_event("ingestor_ready", 30)
        _, connz = cluster.http(0, "/connz?auth=true")
        ids = {c.get("authorized_user"): c.get("mqtt_client") for c in connz["connections"]}
        assert ids["ingestor"].startswith("ingestor-") and len(ids["ingestor"]) == 25
        thief = Client(cluster, 0, "thief01", cluster.add_device("thief01"),
                       client_id="ingestor")
        clients.append(thief)
        thief.wait(lambda: thief.connack is not None, "CONNACK")
        assert thief.connack == 0  # its own session, not the ingestor's
        thief.close()
        cam = Client(cluster, 0, dev, cluster.add_device(dev)).connected()
        clients.append(cam)
        for chunk in split_frame(make_jpeg(160, 120, 1), boot_id=1, frame_seq=0,
                                 chunk_data=700):
            cam.publish(f"cam/{dev}/frame", chunk)
        svc.wait_event("frame_stored", 30)
        assert not any(e.get("event") == "mqtt_disconnected" for e in svc.events())
        assert svc.stop() == 0
    finally:
        for c in clients:
            c.close()
        cluster.close()
