"""Prometheus metrics of the monitor and of the broker (``camstack_monitor_*``, ``_broker_*``).

The broker's figures come from its ``$SYS`` topics, which the monitor follows anyway:
they are read from the health model at scrape time (a collector), so a scrape never
shows a value older than the broker's last ``$SYS`` publication.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from monitor.health import (
    BROKER_SYS,
    RULES,
    SYS_LOAD_PREFIX,
    Alert,
    HealthModel,
    device_health,
)


class BrokerCollector(Collector):
    """``camstack_broker_*`` from the latest ``$SYS`` readings.

    Args:
        values: Returns a copy of ``HealthModel.broker_values`` (taken under the lock).
    """

    def __init__(self, values: Callable[[], Mapping[str, float]]) -> None:
        self._values = values

    def collect(self) -> Iterable[Metric]:
        """One family per known ``$SYS`` topic (empty until it was read), and the load."""
        values = self._values()
        for topic, (name, kind, text) in BROKER_SYS.items():
            fam: Metric
            if kind == "counter":
                fam = CounterMetricFamily(f"camstack_broker_{name}", text)
            else:
                fam = GaugeMetricFamily(f"camstack_broker_{name}", text)
            if topic in values:
                fam.add_metric([], values[topic])
            yield fam
        load = GaugeMetricFamily(
            "camstack_broker_load",
            "Mosquitto's moving average per minute of what (messages/received, bytes/sent, "
            "publish/dropped, connections…) over a window (1min, 5min, 15min).",
            labels=["what", "window"])
        for topic, value in sorted(values.items()):
            if topic.startswith(SYS_LOAD_PREFIX):
                what, _, window = topic[len(SYS_LOAD_PREFIX):].rpartition("/")
                load.add_metric([what, window], value)
        yield load


class MonitorMetrics:
    """Every metric ``python -m monitor`` exports.

    Args:
        registry: Where to register; a fresh private one by default.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.alerts_active = Gauge("camstack_monitor_alerts_active",
                                   "Alerts holding now, by rule.", ["rule"], registry=r)
        self.devices = Gauge("camstack_monitor_devices", "Devices known, by state.", ["state"],
                             registry=r)
        self.last_evaluation = Gauge("camstack_monitor_last_evaluation_timestamp_seconds",
                                     "Unix time of the last rule evaluation.", registry=r)
        self.messages_rejected = Counter(
            "camstack_monitor_messages_rejected_total",
            "Messages on followed topics the monitor could not use (bad payload or name).",
            registry=r)
        self.webhook_sent = Counter(
            "camstack_monitor_webhook_notifications",
            "Alert notifications delivered to the webhook, by status (firing, resolved).",
            ["status"], registry=r)
        self.webhook_failures = Counter(
            "camstack_monitor_webhook_failures",
            "Notifications given up after every retry (or refused by the receiver).",
            registry=r)
        self.webhook_dropped = Counter(
            "camstack_monitor_webhook_dropped",
            "Notifications dropped because the delivery queue was full.", registry=r)
        self.webhook_queue = Gauge("camstack_monitor_webhook_queue",
                                   "Notifications waiting for delivery.", registry=r)
        self.device_health = Gauge(
            "camstack_monitor_device_health",
            "1 for each camera's current health cause (ok, offline, brownout, panic, "
            "watchdog, weak_wifi, reconnects, rejections, frame_gap); `camstack status` "
            "and Home Assistant say it in words.", ["device", "cause"], registry=r)
        self._health: dict[str, str] = {}
        self._states: set[str] = set()
        for rule in RULES:
            self.alerts_active.labels(rule).set(0)

    def watch_broker(self, values: Callable[[], Mapping[str, float]]) -> None:
        """Export ``camstack_broker_*`` from ``values`` (called at each scrape).

        Args:
            values: Returns a copy of the latest ``$SYS`` readings.
        """
        self.registry.register(BrokerCollector(values))

    def evaluated(self, model: HealthModel, active: Iterable[Alert], now_ms: int) -> None:
        """Refresh the gauges after one evaluation.

        Args:
            model: The monitor's picture (read under its lock).
            active: Alerts active after the evaluation.
            now_ms: Evaluation time.
        """
        by_rule = dict.fromkeys(RULES, 0)
        for a in active:
            by_rule[a.rule] = by_rule.get(a.rule, 0) + 1
        for rule, n in by_rule.items():
            self.alerts_active.labels(rule).set(n)
        states: dict[str, int] = {}
        for dev in model.devices.values():
            # Any text a device sends as its state is not a label value: bounded set.
            state = dev.state if dev.state in ("online", "offline") else "unknown"
            states[state] = states.get(state, 0) + 1
        for state in self._states | set(states):
            self.devices.labels(state).set(states.get(state, 0))
        self._states |= set(states)
        health = {d: device_health(model, dev, now_ms).kind for d, dev in model.devices.items()}
        for device, kind in self._health.items():
            if health.get(device) != kind:
                self.device_health.remove(device, kind)
        for device, kind in health.items():
            self.device_health.labels(device, kind).set(1)
        self._health = health
        self.last_evaluation.set(now_ms / 1000)
