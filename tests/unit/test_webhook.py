"""Alert delivery to a real local HTTP server, in Alertmanager's webhook format."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from prometheus_client import generate_latest

from monitor.health import Alert
from monitor.metrics import MonitorMetrics
from monitor.webhook import ZERO_TIME, WebhookSender, alertmanager_payload, fingerprint

T0 = 1_795_515_300_000

# Alertmanager's webhook body (prometheus.io, "webhook_config"; version 4).
TOP_KEYS = {"version", "groupKey", "truncatedAlerts", "status", "receiver", "groupLabels",
            "commonLabels", "commonAnnotations", "externalURL", "alerts"}
ALERT_KEYS = {"status", "labels", "annotations", "startsAt", "endsAt", "generatorURL",
              "fingerprint"}


class Receiver:
    """A local webhook receiver; ``fail_first`` answers 503 to that many requests."""

    def __init__(self, fail_first: int = 0, delay_s: float = 0.0) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.fail_left = fail_first
        self.delay_s = delay_s
        self.cond = threading.Condition()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                time.sleep(outer.delay_s)
                with outer.cond:
                    if outer.fail_left > 0:
                        outer.fail_left -= 1
                        self.send_response(503)
                        self.end_headers()
                        return
                    outer.bodies.append(json.loads(body))
                    outer.headers.append(dict(self.headers))
                    outer.cond.notify_all()
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_a: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.bodies) >= n, timeout), self.bodies
            return list(self.bodies)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(fail_first=2)
    yield r
    r.server.shutdown()


def _check_format(body: dict[str, Any], status: str) -> None:
    assert set(body) == TOP_KEYS and body["version"] == "4" and body["status"] == status
    for a in body["alerts"]:
        assert set(a) == ALERT_KEYS and a["status"] == status
        assert a["fingerprint"] == fingerprint(a["labels"]) and len(a["fingerprint"]) == 16
        assert all(isinstance(v, str) for v in [*a["labels"].values(),
                                                *a["annotations"].values()])


def test_firing_then_resolved_reach_a_real_server_after_retries(receiver: Receiver) -> None:
    metrics = MonitorMetrics()
    sender = WebhookSender(receiver.url, metrics, token="s3cret", max_attempts=4,
                           backoff_s=0.05).start()
    try:
        offline = Alert("device_offline", "cam01", "cam01 offline for 5m00s", 300.0, 300.0,
                        since_ms=T0)
        disk = Alert("disk_full", "storage", "storage 95% full", 95.0, 90.0, "critical", T0)
        assert sender.notify([offline, disk], "firing", T0 + 1000)
        assert sender.notify([offline], "resolved", T0 + 60_000)
        firing, resolved = receiver.wait(2)
    finally:
        sender.stop()
    _check_format(firing, "firing")
    _check_format(resolved, "resolved")
    assert [a["labels"]["alertname"] for a in firing["alerts"]] == ["device_offline",
                                                                    "disk_full"]
    a = firing["alerts"][0]
    assert a["labels"] == {"alertname": "device_offline", "subject": "cam01",
                           "severity": "warning", "service": "camstack"}
    assert a["annotations"]["summary"] == "cam01 offline for 5m00s"
    assert a["startsAt"] == "2026-11-24T10:15:00.000Z" and a["endsAt"] == ZERO_TIME
    assert firing["commonLabels"] == {"service": "camstack"} and firing["groupLabels"] == {}
    r = resolved["alerts"][0]
    assert r["fingerprint"] == a["fingerprint"] and r["endsAt"] == "2026-11-24T10:16:00.000Z"
    assert resolved["groupLabels"] == {"alertname": "device_offline"}
    assert resolved["groupKey"] == '{}:{alertname="device_offline"}'
    assert receiver.headers[0]["Authorization"] == "Bearer s3cret"
    text = generate_latest(metrics.registry).decode()
    assert 'camstack_monitor_webhook_notifications_total{status="firing"} 1.0' in text
    assert 'camstack_monitor_webhook_notifications_total{status="resolved"} 1.0' in text
    assert "camstack_monitor_webhook_failures_total 0.0" in text


def test_failures_are_counted_and_a_full_queue_drops_without_blocking() -> None:
    slow = Receiver(fail_first=100, delay_s=0.3)
    metrics = MonitorMetrics()
    sender = WebhookSender(slow.url, metrics, queue_size=2, max_attempts=2,
                           backoff_s=0.01).start()
    try:
        alert = Alert("no_frame", "cam02", "quiet", 1.0, 1.0, since_ms=T0)
        t = time.monotonic()
        results = [sender.notify([alert], "firing", T0) for _ in range(10)]
        assert time.monotonic() - t < 0.2  # never waits for the server
        assert results.count(False) >= 7
        deadline = time.monotonic() + 10
        while "camstack_monitor_webhook_failures_total 0.0" in generate_latest(
                metrics.registry).decode():
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        sender.stop(0.1)
        slow.server.shutdown()
    text = generate_latest(metrics.registry).decode()
    assert "camstack_monitor_webhook_dropped_total" in text
    assert not slow.bodies


def test_payload_of_nothing_and_unreachable_url_do_not_raise() -> None:
    body = alertmanager_payload([], "firing", T0)
    assert body["alerts"] == [] and body["commonLabels"] == {}
    metrics = MonitorMetrics()
    sender = WebhookSender("http://127.0.0.1:9/none", metrics, max_attempts=1,
                           timeout_s=0.5).start()
    assert sender.notify([], "firing", T0)  # nothing to send
    assert sender.notify([Alert("disk_full", "storage", "x", 1, 1)], "firing", T0)
    sender.stop(5)
    assert "camstack_monitor_webhook_failures_total 1.0" in generate_latest(
        metrics.registry).decode()
