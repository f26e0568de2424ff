"""Home Assistant discovery against the real broker: retained, and cleared when a camera goes."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from camstack.brokerproc import BrokerHandle
from camstack.mqttwait import Collector
from camstack.sim import SimCamera, SimConfig
from config.settings import AlertSettings, HomeAssistantSettings, MonitorSettings, StorageSettings
from monitor.service import Monitor
from tests.unit.test_homeassistant import validate

pytestmark = pytest.mark.integration

MARKER = "svc/operator-hamon/status"  # the monitor's retained status
JPEG = b"\xff\xd8\xff\xe0" + bytes(300) + b"\xff\xd9"


def _retained(broker: BrokerHandle, account: str) -> dict[str, bytes]:
    """Every retained HA message a new subscriber gets (topic -> payload).

    The broker answers subscriptions in order, each with its retained messages, so the
    monitor's own retained status, subscribed last, marks the end of the HA ones: no fixed
    wait, which the session broker (holding other tests' topics too) could outlast."""
    c = broker.client(account, client_id=account)
    col = Collector(c)
    col.subscribe("homeassistant/#")
    col.subscribe("camstack/ha/#")
    col.subscribe(MARKER)
    assert col.wait_for(lambda ms: any(m.topic == MARKER for m in ms), timeout=20)
    c.disconnect()
    c.loop_stop()
    with col.lock:  # live updates after the retained ones are left out
        return {m.topic: bytes(m.payload) for m in col.messages
                if m.retain and m.topic != MARKER}


def _ours(topics: dict[str, bytes], device: str) -> dict[str, bytes]:
    return {t: p for t, p in topics.items()
            if f"/camstack_{device}/" in t or t.startswith(f"camstack/ha/{device}/")}


def _latest(ms: list[mqtt.MQTTMessage]) -> dict[str, bytes]:
    return {m.topic: bytes(m.payload) for m in ms}


def test_discovery_is_retained_and_cleared_when_a_camera_is_revoked_or_disappears(
        broker: BrokerHandle, tmp_path: Path) -> None:
    devs = {"ha-a": broker.add_device("ha-a"), "ha-b": broker.add_device("ha-b")}
    for name in ("operator-hamon", "operator-hawatch", "operator-haread"):
        if name not in {a.name for a in broker.store.list()}:
            broker.add_service(name)
    for dev, pw in devs.items():
        cam = SimCamera(dev, broker.mqtt_settings(dev, pw), SimConfig(fps=5, frames=2)).start()
        assert cam.finished.wait(20)
        cam.stop()
    # A video of ha-a with its thumbnail beside it, as the encoder leaves them.
    day = tmp_path / "storage" / "videos" / "ha-a" / "2026-11-30"
    day.mkdir(parents=True)
    (day / "ha-a_b1.json").write_text(json.dumps({
        "location": "videos/ha-a/2026-11-30/ha-a_b1.mp4", "batch": "b1", "frames": 3,
        "last_capture_ms": 1_795_515_300_000}))
    (day / "ha-a_b1.jpg").write_bytes(JPEG)
    settings = MonitorSettings(
        mqtt=broker.mqtt_settings("operator-hamon", client_id="operator-hamon"),
        storage=StorageSettings(root=tmp_path / "storage"), interval_s=0.3,
        alerts=AlertSettings(device_offline_s=0.5, no_frame_s=3600, service_offline_s=3600),
        homeassistant=HomeAssistantSettings(enabled=True,
                                            accounts_file=broker.store.registry))
    watcher = broker.client("operator-hawatch", client_id="operator-hawatch")
    col = Collector(watcher)
    col.subscribe("homeassistant/#")
    col.subscribe("camstack/ha/#")
    mon = Monitor(settings)
    runner = threading.Thread(target=mon.run, daemon=True)
    runner.start()
    try:
        def settled(t: dict[str, bytes]) -> bool:
            """Every device's discovery, state and raised alert, and ha-a's thumbnail."""
            return all(t.get(f"homeassistant/binary_sensor/camstack_{d}/alert_device_offline/"
                             "config") and t.get(f"camstack/ha/{d}/alert/device_offline") == b"ON"
                       and b'"offline"' in t.get(f"camstack/ha/{d}/state", b"")
                       for d in devs) and bool(t.get("camstack/ha/ha-a/image"))

        assert col.wait_for(lambda ms: settled(_latest(ms)), timeout=20), \
            sorted(_latest(col.messages))
        retained = _retained(broker, "operator-haread")
        for dev in devs:
            mine = _ours(retained, dev)
            configs = {t: validate(t, p) for t, p in mine.items() if t.endswith("/config")}
            assert {t.split("/")[3] for t in configs} >= {
                "online", "rssi", "heap", "queue", "frames", "health", "alert_device_offline"}
            state = json.loads(mine[f"camstack/ha/{dev}/state"])
            assert state["online"] == "OFF" and state["health"] == "offline"
            assert mine[f"camstack/ha/{dev}/alert/device_offline"] == b"ON"
            assert all(c["availability"][0]["topic"] == "svc/operator-hamon/status"
                       for c in configs.values())
        assert retained["camstack/ha/ha-a/image"] == JPEG
        assert "homeassistant/image/camstack_ha-a/thumbnail/config" in retained
        assert "homeassistant/image/camstack_ha-b/thumbnail/config" not in retained  # no video

        # A device may not write discovery configs or states (the ACL).
        dc = broker.client("ha-b", devs["ha-b"], client_id="ha-b")
        for topic in ("homeassistant/sensor/camstack_ha-a/rssi/config", "camstack/ha/ha-a/state"):
            dc.publish(topic, b'{"fake":1}', qos=1, retain=True).wait_for_publish(5)

        # ha-a is revoked: its entities go. ha-b's retained status is deleted: so do its.
        broker.revoke("ha-a")
        dc.publish("cam/ha-b/status", b"", qos=1, retain=True).wait_for_publish(5)
        dc.disconnect()
        dc.loop_stop()

        def cleared(ms: list[mqtt.MQTTMessage]) -> bool:
            t = _latest(ms)
            return all(not p for d in devs for p in _ours(t, d).values())

        assert col.wait_for(cleared, timeout=20), {
            t: p[:40] for t, p in _latest(col.messages).items() if p and "ha-" in t}
        left = _retained(broker, "operator-haread")
        assert _ours(left, "ha-a") == {} and _ours(left, "ha-b") == {}
    finally:
        mon.stop_event.set()
        runner.join(15)
        watcher.disconnect()
        watcher.loop_stop()
    assert not runner.is_alive()
