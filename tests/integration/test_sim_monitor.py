"""The monitor and status commands against the real broker, driven by simulated cameras."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from camstack.brokerproc import BrokerHandle
from camstack.mqttwait import Collector
from camstack.sim import SimCamera, SimConfig
from config.settings import AlertSettings, MonitorSettings, StorageSettings
from monitor.service import STATUS_ACCOUNT, Monitor, status_report

pytestmark = pytest.mark.integration


def _account(broker: BrokerHandle, name: str) -> None:
    if name not in {a.name for a in broker.store.list()}:
        broker.add_service(name)


def _latest(messages: list[mqtt.MQTTMessage]) -> dict[str, dict[str, object] | None]:
    """Latest payload per topic (None: cleared). Called under the collector's lock."""
    return {m.topic: json.loads(m.payload) if m.payload else None for m in messages}


def test_monitor_raises_and_clears_alerts_and_status_reports(broker: BrokerHandle,
                                                             tmp_path: Path) -> None:
    dev = "simm-a"
    pw = broker.add_device(dev)
    _account(broker, "operator-montest")
    _account(broker, "operator-watch")
    _account(broker, STATUS_ACCOUNT)
    storage = tmp_path / "storage"
    (storage / "frames" / dev / "2026-11-24").mkdir(parents=True)
    settings = MonitorSettings(
        mqtt=broker.mqtt_settings("operator-montest", client_id="operator-montest"),
        storage=StorageSettings(root=storage), interval_s=0.3,
        alerts=AlertSettings(device_offline_s=1, no_frame_s=3600, service_offline_s=3600,
                             disk_percent=0.01),
    )
    watcher = broker.client("operator-watch", client_id="operator-watch")
    col = Collector(watcher)
    col.subscribe("alerts/#")
    col.subscribe("svc/operator-montest/status")
    cam = SimCamera(dev, broker.mqtt_settings(dev, pw), SimConfig(fps=5, frames=3)).start()
    assert cam.finished.wait(20)
    cam.stop()  # leaves the retained {"state":"offline"}

    mon = Monitor(settings)
    runner = threading.Thread(target=mon.run, daemon=True)
    runner.start()
    try:
        off = f"alerts/device_offline/{dev}"
        assert col.wait_for(lambda ms: (_latest(ms).get(off) or {}).get("rule")
                            == "device_offline", timeout=15), _latest(col.messages)
        alert = _latest(col.messages)[off]
        assert alert is not None and alert["subject"] == dev and alert["severity"] == "warning"
        assert col.wait_for(lambda ms: (_latest(ms).get("alerts/disk_full/storage") or {})
                            .get("rule") == "disk_full")
        # The status command sees the same picture, with its own account, beside the monitor.
        report = status_report(settings)
        row = next(line for line in report.splitlines() if line.startswith(dev + " "))
        assert row.split()[1] == "offline"
        assert "device_offline/simm-a" in report and "disk_full/storage" in report

        # The device comes back: the alert is cleared with an empty retained message.
        cam2 = SimCamera(dev, broker.mqtt_settings(dev, pw), SimConfig(fps=5)).start()
        try:
            assert col.wait_for(lambda ms: off in _latest(ms)
                                and _latest(ms)[off] is None, timeout=15)
        finally:
            cam2.stop()
    finally:
        mon.stop_event.set()
        runner.join(15)
    assert not runner.is_alive()
    assert col.wait_for(lambda ms: (_latest(ms).get("svc/operator-montest/status")
                                    or {}).get("state") == "offline")
    watcher.disconnect()
    watcher.loop_stop()
    # A new subscriber gets no retained device_offline alert for the device: it was cleared.
    late = broker.client("operator-watch", client_id="operator-watch")
    late_col = Collector(late)
    late_col.subscribe(f"alerts/device_offline/{dev}")
    assert not late_col.wait_for(bool, timeout=1.0)
    late.disconnect()
    late.loop_stop()
