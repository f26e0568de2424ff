"""``camstack status`` shows the alerts a real monitor published (retained), not its own guess."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from camstack.brokerproc import BrokerHandle
from camstack.cli import _status
from camstack.mqttwait import Collector
from camstack.sim import SimCamera, SimConfig
from config.settings import AlertSettings, MetricsSettings, MonitorSettings, StorageSettings
from monitor.service import STATUS_ACCOUNT, Monitor
from tests.unit.test_webhook import Receiver

pytestmark = pytest.mark.integration


def _account(broker: BrokerHandle, name: str) -> None:
    if name not in {a.name for a in broker.store.list()}:
        broker.add_service(name)


def test_status_lists_the_three_alerts_the_monitor_published(
        broker: BrokerHandle, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    devices = ["simst-a", "simst-b"]
    for name in ("operator-stmon", "operator-stwatch", "operator-nomon", STATUS_ACCOUNT):
        _account(broker, name)
    for dev in devices:
        pw = broker.add_device(dev)
        cam = SimCamera(dev, broker.mqtt_settings(dev, pw), SimConfig(fps=5, frames=2)).start()
        assert cam.finished.wait(20)
        cam.stop()  # leaves the retained {"state":"offline"}
    storage = tmp_path / "storage"
    storage.mkdir()
    hook = Receiver()
    mon_settings = MonitorSettings(
        mqtt=broker.mqtt_settings("operator-stmon", client_id="operator-stmon"),
        storage=StorageSettings(root=storage), interval_s=0.3,
        metrics=MetricsSettings(port=0),
        alerts=AlertSettings(device_offline_s=0.5, no_frame_s=3600, service_offline_s=3600,
                             disk_percent=0.01, webhook_url=hook.url))
    expected = {f"device_offline/{d}" for d in devices} | {"disk_full/storage"}
    watcher = broker.client("operator-stwatch", client_id="operator-stwatch")
    col = Collector(watcher)
    col.subscribe("alerts/#")

    def published(ms: list) -> set[str]:  # type: ignore[type-arg]
        latest = {m.topic: bool(m.payload) for m in ms}
        return {t.split("/", 1)[1] for t, present in latest.items() if present}

    mon = Monitor(mon_settings)
    mon.start_metrics()
    runner = threading.Thread(target=mon.run, daemon=True)
    runner.start()
    try:
        assert col.wait_for(lambda ms: expected <= published(ms), timeout=20), published(
            col.messages)
        # The same alerts went to the webhook, in Alertmanager's format.
        def hooked() -> set[str]:
            return {f"{a['labels']['alertname']}/{a['labels']['subject']}"
                    for b in hook.bodies if b["status"] == "firing" for a in b["alerts"]}

        deadline = time.monotonic() + 10
        while not expected <= hooked():
            assert time.monotonic() < deadline, hook.bodies
            time.sleep(0.05)
        assert all(b["version"] == "4" for b in hook.bodies)

        # The status command with the thresholds of a default config: evaluated on its
        # own from a one-shot snapshot, none of the three would fire (retained offline
        # states count from now, the disk is not 90 % full). It shows what was published.
        status_settings = mon_settings.model_copy(update={"alerts": AlertSettings()})
        capsys.readouterr()
        assert _status(status_settings, as_json=False) == 0
        text = capsys.readouterr().out
        for name in expected:
            assert name in text, text
        assert "alerts as published by the monitor" in text
        assert "svc/operator-stmon/status says online" in text
        assert _status(status_settings, as_json=True) == 0
        doc = json.loads(capsys.readouterr().out)
        assert doc["alerts_source"] == "monitor"
        assert expected <= {f"{a['rule']}/{a['subject']}" for a in doc["alerts"]}
        offline = next(a for a in doc["alerts"] if a["subject"] == devices[0])
        assert offline["since_ms"] > 0 and offline["severity"] == "warning"

        # No monitor status under the configured account: it evaluates, and says so.
        other = status_settings.model_copy(update={"mqtt": broker.mqtt_settings(
            "operator-nomon", client_id="operator-nomon")})
        assert _status(other, as_json=False) == 0
        text = capsys.readouterr().out
        assert "no monitor status retained (svc/operator-nomon/status)" in text
        assert "3 more found retained on alerts/#" in text or "more found retained" in text

        # The monitor's endpoint: its alerts by rule, devices by state, and the broker's
        # $SYS figures (published every sys_interval_s).
        def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
            url = f"http://127.0.0.1:{mon.metrics_port}/metrics"
            with urllib.request.urlopen(url, timeout=5) as resp:
                fams = text_string_to_metric_families(resp.read().decode())
                return {(x.name, tuple(sorted(x.labels.items()))): x.value
                        for f in fams for x in f.samples}

        deadline = time.monotonic() + 30
        m = scrape()
        while (("camstack_broker_clients_connected", ()) not in m
               or ("camstack_broker_messages_received_total", ()) not in m):
            assert time.monotonic() < deadline, sorted(k[0] for k in m)
            time.sleep(0.5)
            m = scrape()
        assert m[("camstack_monitor_alerts_active", (("rule", "device_offline"),))] >= 2
        assert m[("camstack_monitor_alerts_active", (("rule", "disk_full"),))] == 1
        assert m[("camstack_monitor_devices", (("state", "offline"),))] >= 2
        assert m[("camstack_monitor_last_evaluation_timestamp_seconds", ())] > time.time() - 60
        assert m[("camstack_broker_clients_connected", ())] >= 2  # monitor, watcher
        assert m[("camstack_broker_messages_received_total", ())] > 0
        assert any(k[0] == "camstack_broker_load" and ("window", "1min") in k[1] for k in m)
    finally:
        mon.stop_event.set()
        runner.join(15)
        for name in expected:  # leave no retained alert behind for other tests
            watcher.publish(f"alerts/{name}", b"", qos=1, retain=True).wait_for_publish(5)
        watcher.disconnect()
        watcher.loop_stop()
        hook.server.shutdown()
    assert not runner.is_alive()
