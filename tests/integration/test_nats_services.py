"""The encoder, monitor and web against a real NATS cluster (MQTT 3.1.1).

What NATS does with the MQTT features these services use on Mosquitto: shared
subscriptions (the encoder's MQTT runner) and ``$SYS`` (the monitor's broker figures).
Every wait is for a positive signal (a SUBACK, a message, a log event).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from camstack.procs import ServiceProcess
from camstack.servers import NatsClusterHandle, start_nats_cluster
from config.loader import to_toml
from tests.integration.test_nats_cluster import Client

pytestmark = pytest.mark.integration


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsClusterHandle]:
    c = start_nats_cluster(tmp_path / "cluster", 1)
    yield c
    c.close()


@pytest.fixture
def procs() -> Iterator[list[ServiceProcess]]:
    made: list[ServiceProcess] = []
    yield made
    for p in reversed(made):
        p.close()


def test_share_is_no_shared_subscription_on_nats(cluster: NatsClusterHandle) -> None:
    # The encoder's MQTT runner subscribes $share/<group>/cam/+/ready. NATS refuses it
    # for the encoder account (its subject would be "$share.encoders.cam.*.ready",
    # outside its rights); an account allowed ">" gets it granted as a plain subject
    # that never matches a ready event. Hence EncoderSettings refuses runner = "mqtt"
    # with mqtt.protocol = "3.1.1".
    clients: list[Client] = []
    try:
        enc = Client(cluster, 0, "encoder", cluster.add_service("encoder"),
                     clean_session=False).connected()
        op = Client(cluster, 0, "operator", cluster.add_service("operator")).connected()
        plain = Client(cluster, 0, "operator-b", cluster.add_service("operator-b")).connected()
        ing = Client(cluster, 0, "ingestor", cluster.add_service("ingestor")).connected()
        clients += [enc, op, plain, ing]
        assert enc.subscribe(["$share/encoders/cam/+/ready"]) == [0x80]
        assert op.subscribe(["$share/encoders/cam/+/ready"]) == [1]
        assert plain.subscribe(["cam/+/ready"]) == [1]
        for k in range(5):
            ing.publish(f"cam/d{k}/ready", b'{"batch":"b"}')
        plain.wait(lambda: len(plain.messages) == 5, "the plain subscriber's 5 events")
        assert op.messages == [] and enc.messages == []
        assert "Subscription Violation" in cluster.plan[0].log_file.read_text()
    finally:
        for c in clients:
            c.close()


def test_sys_is_granted_but_silent_on_nats(cluster: NatsClusterHandle) -> None:
    # The monitor's $SYS topics: granted, never published (the sentinel on a plain
    # topic arrives after a $SYS subscription that stays empty).
    op = Client(cluster, 0, "operator", cluster.add_service("operator")).connected()
    try:
        assert op.subscribe(["$SYS/#", "$SYS/broker/uptime", "svc/+/status"]) == [1, 1, 1]
        op.publish("svc/operator/status", b'{"state":"online"}', retain=True)
        op.wait(lambda: len(op.messages) >= 1, "the sentinel")
        assert all(not t.startswith("$SYS") for t, _ in op.messages)
    finally:
        op.close()


def _mqtt(cluster: NatsClusterHandle, tmp: Path, account: str) -> dict[str, Any]:
    password = cluster.add_service(account)
    pw = tmp / f"{account}.pass"
    pw.write_text(password + "\n")
    pw.chmod(0o600)
    return {"host": "127.0.0.1", "port": cluster.mqtt_port(0), "username": account,
            "password_file": str(pw), "client_id": account, "protocol": "3.1.1",
            "reconnect_min_s": 0.2, "reconnect_max_s": 2.0,
            "tls": {"enabled": True, "ca_file": str(cluster.ca_file)}}


def test_monitor_and_web_run_on_nats(cluster: NatsClusterHandle, tmp_path: Path,
                                     procs: list[ServiceProcess]) -> None:
    root = tmp_path / "store"
    mon_cfg = tmp_path / "monitor.toml"
    mon_cfg.write_text(to_toml({
        "mqtt": _mqtt(cluster, tmp_path, "operator-monitor"),
        "storage": {"root": str(root)}, "log": {"level": "info", "format": "json"},
        "metrics": {"enabled": False}}), encoding="utf-8")
    web_cfg = tmp_path / "web.toml"
    web_cfg.write_text(to_toml({
        "mqtt": _mqtt(cluster, tmp_path, "operator-web"),
        "storage": {"root": str(root)}, "log": {"level": "info", "format": "json"},
        "http": {"port": 0, "users_file": str(tmp_path / "users.json"),
                 "session_secret_file": str(tmp_path / "session.key")}}), encoding="utf-8")
    op = Client(cluster, 0, "operator", cluster.add_service("operator")).connected()
    dev = Client(cluster, 0, "natsdev1", cluster.add_device("natsdev1")).connected()
    try:
        assert op.subscribe(["svc/+/status", "alerts/#"]) == [1, 1]
        dev.publish("cam/natsdev1/status", b'{"state":"online","boot_id":1}', retain=True)
        mon = ServiceProcess("monitor", mon_cfg, tmp_path / "monitor.log").start()
        web = ServiceProcess("web", web_cfg, tmp_path / "web.log").start()
        procs += [mon, web]
        sys_off = mon.wait_event("broker_sys_unavailable", 30)
        assert "broker_dropping" in sys_off["detail"]
        mon.wait_event("mqtt_connected", 30)
        web.wait_event("web_mqtt_connected", 30)

        def online(name: str) -> bool:
            return any(json.loads(p).get("state") in ("online", "ok")
                       for p in op.payloads(f"svc/{name}/status"))
        op.wait(lambda: online("operator-monitor") and online("operator-web"),
                "monitor and web online")
        assert not any(e.get("event") == "mqtt_refused" for e in mon.events() + web.events())
        assert mon.stop() == 0
        assert web.stop() == 0
    finally:
        dev.close()
        op.close()
