"""The monitor's metrics: $SYS readings into camstack_broker_*, alerts and devices."""

from __future__ import annotations

import json

from prometheus_client import generate_latest

from monitor.health import (
    SYS_DROPPED_TOPIC,
    SYS_GUARD_KICKS_TOPIC,
    Alert,
    HealthModel,
)
from monitor.metrics import MonitorMetrics

T0 = 1_795_515_300_000


def _sample(text: str, line_start: str) -> float:
    line = next(x for x in text.splitlines() if x.startswith(line_start + " "))
    return float(line.split()[-1])


def test_sys_readings_become_broker_metrics() -> None:
    m = HealthModel(started_ms=T0)
    assert m.apply("$SYS/broker/clients/connected", b"12", T0)
    assert m.apply("$SYS/broker/uptime", b"3600 seconds", T0)
    assert m.apply("$SYS/broker/load/bytes/received/1min", b"1234.56", T0)
    assert m.apply(SYS_DROPPED_TOPIC, b"7", T0)
    assert m.apply(SYS_GUARD_KICKS_TOPIC, b"2", T0)
    assert m.apply("$SYS/broker/retained messages/count", b"40", T0)
    assert not m.apply("$SYS/broker/clients/connected", b"lots", T0)
    assert not m.apply("$SYS/broker/bytes/sent", b"-1", T0)
    assert not m.apply("$SYS/broker/load/x", b"1", T0)  # not <what>/<window>
    assert not m.apply("$SYS/broker/version", b"mosquitto version 2.0.11", T0)
    mm = MonitorMetrics()
    mm.watch_broker(lambda: dict(m.broker_values))
    text = generate_latest(mm.registry).decode()
    assert _sample(text, "camstack_broker_clients_connected") == 12
    assert _sample(text, "camstack_broker_uptime_seconds") == 3600
    assert _sample(text, "camstack_broker_publish_dropped_total") == 7
    assert _sample(text, "camstack_broker_guard_kicks_total") == 2
    assert _sample(text, "camstack_broker_retained_messages") == 40
    assert _sample(text, 'camstack_broker_load{what="bytes/received",window="1min"}') == 1234.56
    # Never read: the family is declared, with no sample.
    assert not any(x.startswith("camstack_broker_bytes_sent_total") for x in text.splitlines())


def test_sys_values_are_bounded() -> None:
    m = HealthModel(started_ms=T0)
    for i in range(400):
        m.apply(f"$SYS/broker/load/thing{i}/1min", b"1", T0)
    assert len(m.broker_values) <= 256
    assert m.apply("$SYS/broker/clients/connected", b"1", T0)  # known ones still update


def test_alerts_by_rule_and_devices_by_state() -> None:
    m = HealthModel(started_ms=T0)
    m.apply("cam/a/status", json.dumps({"state": "online"}).encode(), T0)
    m.apply("cam/b/status", json.dumps({"state": "offline"}).encode(), T0)
    m.apply("cam/c/status", json.dumps({"state": "\u202eweird"}).encode(), T0)
    mm = MonitorMetrics()
    mm.evaluated(m, [Alert("device_offline", "b", "x", 1, 1), Alert("no_frame", "a", "x", 1, 1),
                     Alert("no_frame", "c", "x", 1, 1)], T0)
    text = generate_latest(mm.registry).decode()
    assert _sample(text, 'camstack_monitor_alerts_active{rule="no_frame"}') == 2
    assert _sample(text, 'camstack_monitor_alerts_active{rule="disk_full"}') == 0
    assert _sample(text, 'camstack_monitor_devices{state="unknown"}') == 1
    assert _sample(text, "camstack_monitor_last_evaluation_timestamp_seconds") == T0 / 1000
    m.apply("cam/b/status", json.dumps({"state": "online"}).encode(), T0)
    mm.evaluated(m, [], T0 + 1)
    text = generate_latest(mm.registry).decode()
    assert _sample(text, 'camstack_monitor_devices{state="offline"}') == 0
    assert _sample(text, 'camstack_monitor_alerts_active{rule="no_frame"}') == 0


def test_device_health_cause_is_one_bounded_label_per_device() -> None:
    m = HealthModel(started_ms=T0)
    m.apply("cam/a/status", json.dumps({"state": "online", "rssi": -60}).encode(), T0)
    mm = MonitorMetrics()
    mm.evaluated(m, [], T0)
    text = generate_latest(mm.registry).decode()
    assert _sample(text, 'camstack_monitor_device_health{cause="ok",device="a"}') == 1
    m.apply("cam/a/status", json.dumps({"state": "online", "rssi": -85}).encode(), T0)
    mm.evaluated(m, [], T0)
    text = generate_latest(mm.registry).decode()
    assert _sample(text, 'camstack_monitor_device_health{cause="weak_wifi",device="a"}') == 1
    assert 'cause="ok"' not in text
