"""Health of devices and services: what the retained topics say, alert rules, the table.

Pure: no paho, no filesystem. ``monitor/service.py`` feeds MQTT messages and storage
facts in; ``camstack status`` prints :func:`format_status`; ``python -m monitor``
publishes what :class:`AlertBook` reports on ``alerts/<rule>/<subject>``.

Times are Unix epoch milliseconds. A state seen first as a *retained* message has no
known start (the broker does not say when it was published): rules then count from
the moment the observer started, which errs on the late side, never the early one.
"""

from __future__ import annotations

import datetime as dt
import io
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

from config.settings import AlertSettings
from contract.events import MAX_JSON_INT, Status, safe_text
from contract.ids import DEVICE_ID_RE

ONLINE = "online"
OFFLINE = "offline"
UNKNOWN = "unknown"

RULE_DEVICE_OFFLINE = "device_offline"
RULE_NO_FRAME = "no_frame"
RULE_REJECTION_RATE = "rejection_rate"
RULE_DISK_FULL = "disk_full"
RULE_SERVICE_OFFLINE = "service_offline"
RULE_BROKER_DROPPING = "broker_dropping"
RULE_DEVICE_THROTTLED = "device_throttled"
RULES = (RULE_DEVICE_OFFLINE, RULE_NO_FRAME, RULE_REJECTION_RATE, RULE_DISK_FULL,
         RULE_SERVICE_OFFLINE, RULE_BROKER_DROPPING, RULE_DEVICE_THROTTLED)
"""Every rule name; the second level of an alert topic."""

STORAGE_SUBJECT = "storage"
BROKER_SUBJECT = "broker"

SYS_DROPPED_TOPIC = "$SYS/broker/publish/messages/dropped"
"""Mosquitto's count of messages it could not queue for a subscriber (queue full)."""
SYS_GUARD_KICKED_PREFIX = "$SYS/broker/camstack/guard/kicked/"
"""Per-client count of disconnects by the broker's ingress guard (broker/plugin)."""
SYS_GUARD_KICKS_TOPIC = "$SYS/broker/camstack/guard/kicks"
"""Total disconnects by the ingress guard since the broker started."""
SYS_LOAD_PREFIX = "$SYS/broker/load/"
"""Mosquitto's moving averages: ``load/<what>/<1min|5min|15min>`` (per minute)."""

BROKER_SYS: dict[str, tuple[str, str, str]] = {
    # $SYS topic (Mosquitto 2.0.11 src/sys_tree.c, and the guard plugin): metric name
    # after camstack_broker_, kind, help.
    "$SYS/broker/clients/connected": ("clients_connected", "gauge", "Clients connected."),
    "$SYS/broker/clients/disconnected": (
        "clients_disconnected", "gauge", "Persistent clients (sessions) not connected."),
    "$SYS/broker/clients/maximum": (
        "clients_maximum", "gauge", "Most clients connected at once since the start."),
    "$SYS/broker/messages/received": (
        "messages_received", "counter", "MQTT packets of any kind received."),
    "$SYS/broker/messages/sent": ("messages_sent", "counter", "MQTT packets of any kind sent."),
    "$SYS/broker/publish/messages/received": (
        "publish_received", "counter", "PUBLISH messages received."),
    "$SYS/broker/publish/messages/sent": ("publish_sent", "counter", "PUBLISH messages sent."),
    SYS_DROPPED_TOPIC: (
        "publish_dropped", "counter",
        "PUBLISH messages dropped for a subscriber whose queue was full (or offline)."),
    "$SYS/broker/bytes/received": ("bytes_received", "counter", "Bytes received."),
    "$SYS/broker/bytes/sent": ("bytes_sent", "counter", "Bytes sent."),
    "$SYS/broker/retained messages/count": (
        "retained_messages", "gauge", "Retained messages held."),
    "$SYS/broker/subscriptions/count": ("subscriptions", "gauge", "Subscriptions."),
    "$SYS/broker/store/messages/bytes": (
        "stored_message_bytes", "gauge", "Payload bytes of messages held (retained, queued)."),
    "$SYS/broker/uptime": ("uptime_seconds", "gauge", "Seconds since the broker started."),
    SYS_GUARD_KICKS_TOPIC: (
        "guard_kicks", "counter", "Clients disconnected by the ingress guard (over budget)."),
}
"""The broker figures the monitor exports as ``camstack_broker_*``."""

SYS_TOPICS = (*BROKER_SYS, SYS_GUARD_KICKED_PREFIX + "+", SYS_LOAD_PREFIX + "#")
"""``$SYS`` topics the monitor follows."""

MAX_SYS_VALUES = 256
"""Distinct ``$SYS`` readings kept (the known topics and the load averages)."""


def _parse_sys_number(payload: bytes) -> float | None:
    """A ``$SYS`` reading: ``"123"``, ``"12.34"`` or ``"5 seconds"`` (the uptime)."""
    if len(payload) > 32:
        return None
    try:
        text = payload.decode("ascii").strip()
    except UnicodeDecodeError:
        return None
    text = text.removesuffix(" seconds")
    try:
        value = float(text)
    except ValueError:
        return None
    return value if 0 <= value <= MAX_JSON_INT else None


_MAX_INTERVAL_S = 7 * 86_400.0
"""A device's own capture interval stretches its no-frame limit at most this far."""

# Counter names a service status may carry for the rejection-rate rule: (accepted, rejected).
_COUNTER_KEYS: tuple[tuple[str, str], ...] = (
    ("frames_stored", "frames_rejected"),
    ("frames_stored", "rejected"),
    ("frames_accepted", "frames_rejected"),
    ("frames", "rejected"),
)


@dataclass
class DeviceView:
    """What is known about one device."""

    device: str
    state: str = UNKNOWN
    since_ms: int | None = None
    status: dict[str, Any] = field(default_factory=dict)
    last_frame_ms: int | None = None
    frames_today: int | None = None
    last_video: dict[str, Any] | None = None
    boot_id: int | None = None
    resets: deque[tuple[int | None, str]] = field(default_factory=lambda: deque(maxlen=64))
    """``(time or None when seen retained, reset_reason)`` of each boot seen."""
    drops: deque[int] = field(default_factory=lambda: deque(maxlen=64))
    """Times the device went from online to offline while observed."""


@dataclass
class ServiceView:
    """What is known about one service (``svc/<name>/status``)."""

    name: str
    state: str = UNKNOWN
    since_ms: int | None = None
    status: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DiskUsage:
    """Usage of the file system holding the storage root."""

    path: str
    total_bytes: int
    used_bytes: int
    free_bytes: int

    @property
    def percent(self) -> float:
        """Used share in percent, as ``df`` counts it (used / (used + available))."""
        denom = self.used_bytes + self.free_bytes
        return 100.0 * self.used_bytes / denom if denom > 0 else 0.0


@dataclass(frozen=True)
class Alert:
    """One firing rule for one subject."""

    rule: str
    subject: str
    message: str
    value: float
    threshold: float
    severity: str = "warning"
    since_ms: int = 0

    def payload(self) -> dict[str, Any]:
        """The JSON body published on the alert topic."""
        return {"rule": self.rule, "subject": self.subject, "severity": self.severity,
                "message": self.message, "value": self.value, "threshold": self.threshold,
                "since_ms": self.since_ms}


def alert_topic(prefix: str, rule: str, subject: str) -> str:
    """Topic of an alert.

    Args:
        prefix: Alert prefix (``alerts``).
        rule: Rule name.
        subject: Device id, service name or ``storage``.

    Returns:
        ``<prefix>/<rule>/<subject>``.
    """
    return f"{prefix}/{rule}/{subject}"


def _parse_json(payload: bytes) -> dict[str, Any] | None:
    # Every field is checked where it enters (contract.events.clean_fields): numbers
    # within 2^53, printable bounded text, one level of nesting at most.
    status = Status.parse(payload)
    return status.to_obj() if status is not None else None


def parse_alert(rule: str, subject: str, payload: bytes) -> Alert | None:
    """An alert from its retained body (``Alert.payload()``); None for an empty payload.

    Args:
        rule: Rule from the topic.
        subject: Subject from the topic.
        payload: The body.

    Returns:
        The alert (fields the body lacks or spoils are zero or empty).
    """
    body = _parse_json(payload) if payload else None
    if body is None:
        return None
    since = body.get("since_ms")
    value, threshold = body.get("value"), body.get("threshold")
    return Alert(rule, subject, str(body.get("message", "")),
                 float(value) if isinstance(value, int | float) else 0.0,
                 float(threshold) if isinstance(threshold, int | float) else 0.0,
                 severity=str(body.get("severity", "warning")),
                 since_ms=since if isinstance(since, int) else 0)


def _parse_count(payload: bytes) -> int | None:
    text = payload[:24].strip()
    if not text.isdigit() or len(payload) > 24:
        return None
    value = int(text)
    return value if value <= MAX_JSON_INT else None


class CounterWindow:
    """Increase of a cumulative counter (a ``$SYS`` count) over a sliding window."""

    def __init__(self, window_ms: int) -> None:
        self.window_ms = window_ms
        self._samples: deque[tuple[int, int]] = deque(maxlen=1024)

    def add(self, now_ms: int, value: int) -> None:
        """Record a reading; a decrease (broker restart) starts from zero again."""
        if self._samples and value < self._samples[-1][1]:
            self._samples.clear()
            self._samples.append((now_ms, 0))
        self._samples.append((now_ms, value))

    def increase(self, now_ms: int) -> int:
        """How much the counter grew within the window ending at ``now_ms``."""
        while len(self._samples) > 1 and now_ms - self._samples[1][0] >= self.window_ms:
            self._samples.popleft()
        if len(self._samples) < 2:
            return 0
        return self._samples[-1][1] - self._samples[0][1]


class RateWindow:
    """Rejected share of frames over a sliding window of cumulative counter samples."""

    def __init__(self, window_ms: int) -> None:
        self.window_ms = window_ms
        self._samples: deque[tuple[int, int, int]] = deque(maxlen=4096)

    def add(self, now_ms: int, accepted: int, rejected: int) -> None:
        """Record cumulative counters; a decrease (service restart) starts a new window.

        Args:
            now_ms: Sample time.
            accepted: Frames accepted so far.
            rejected: Frames rejected so far.
        """
        if self._samples:
            _, a0, r0 = self._samples[-1]
            if accepted < a0 or rejected < r0:
                self._samples.clear()
        self._samples.append((now_ms, accepted, rejected))
        while len(self._samples) > 2 and now_ms - self._samples[1][0] >= self.window_ms:
            self._samples.popleft()

    def rate(self) -> tuple[float, int]:
        """Rejected share and frame count across the window.

        Returns:
            ``(rejected / total, total)``; ``(0.0, 0)`` before two samples.
        """
        if len(self._samples) < 2:
            return 0.0, 0
        _, a0, r0 = self._samples[0]
        _, a1, r1 = self._samples[-1]
        total = (a1 - a0) + (r1 - r0)
        return ((r1 - r0) / total if total > 0 else 0.0), total


def service_counters(status: dict[str, Any]) -> tuple[int, int] | None:
    """Cumulative (accepted, rejected) frame counters from a service status, if any.

    Args:
        status: The ``svc/<name>/status`` JSON.

    Returns:
        The counters, or None when the status carries none.
    """
    for acc_key, rej_key in _COUNTER_KEYS:
        acc, rej = status.get(acc_key), status.get(rej_key)
        if isinstance(rej, dict):
            rej = sum(v for v in rej.values() if isinstance(v, int))
        if isinstance(acc, int) and isinstance(rej, int):
            return acc, rej
    return None


class HealthModel:
    """Everything the retained topics (and storage) say, as it changes.

    Args:
        prefix: Device topic prefix (``cam``).
        started_ms: When observation began; the start of states first seen retained.
        rate_window_ms: Window of the rejection-rate rule.
    """

    def __init__(self, prefix: str = "cam", *, started_ms: int = 0,
                 rate_window_ms: int = 15 * 60 * 1000) -> None:
        self.prefix = prefix
        self.started_ms = started_ms
        self.devices: dict[str, DeviceView] = {}
        self.services: dict[str, ServiceView] = {}
        self.disk: DiskUsage | None = None
        self.rate_window_ms = rate_window_ms
        self.rates: dict[str, RateWindow] = {}
        self.device_rates: dict[str, RateWindow] = {}
        """Per-device rejected share (the ingestor's ``device_rejected``/``device_frames``)."""
        self.broker_dropped = CounterWindow(rate_window_ms)
        self.guard_kicks: dict[str, CounterWindow] = {}
        self.broker_values: dict[str, float] = {}
        """Latest reading of each followed ``$SYS`` topic (:data:`BROKER_SYS`, load)."""
        self.published: dict[tuple[str, str], Alert] = {}
        """Alerts found retained on the alert topics (what the monitor published)."""
        self.frames_observable = False
        """Frames can be seen (storage scanned, or frame topics followed); without it the
        no-frame rule stays silent rather than cry wolf."""

    def device(self, device: str) -> DeviceView:
        """The view of ``device``, created on first use."""
        view = self.devices.get(device)
        if view is None:
            view = self.devices[device] = DeviceView(device)
        return view

    def apply(self, topic: str, payload: bytes, now_ms: int, *, retained: bool = False) -> bool:
        """Take one MQTT message into account.

        Args:
            topic: Its topic.
            payload: Its payload (empty: a retained message was deleted).
            now_ms: Arrival time.
            retained: Delivered from the broker's retained store (state start unknown).

        Returns:
            True when the topic is one this model follows.
        """
        if topic.startswith("$SYS/"):
            return self._apply_sys(topic, payload, now_ms)
        parts = topic.split("/")
        if len(parts) != 3 or not DEVICE_ID_RE.fullmatch(parts[1]):
            # Ids name accounts (DEVICE_ID_RE); anything else is nobody's status.
            return False
        if parts[0] == self.prefix and parts[2] == "frame":
            self.frames_observable = True
            self.note_frame(parts[1], now_ms)
            return True
        if parts[0] == self.prefix and parts[2] == "status":
            dev = self.device(parts[1])
            body = _parse_json(payload) if payload else None
            # The will says only {"state":"offline"}: keep the last known rssi, heap…
            dev.status = {**dev.status, **body} if body else {}
            self._note_boot(dev, body or {}, now_ms, retained)
            was = dev.state
            self._set_state(dev, (body or {}).get("state", UNKNOWN), now_ms, retained)
            if was == ONLINE and dev.state == OFFLINE and not retained:
                dev.drops.append(now_ms)
            return True
        if parts[0] == self.prefix and parts[2] == "video":
            body = _parse_json(payload) if payload else None
            self.device(parts[1]).last_video = body
            return True
        if parts[0] == "svc" and parts[2] == "status":
            svc = self.services.get(parts[1]) or ServiceView(parts[1])
            self.services[parts[1]] = svc
            body = _parse_json(payload) if payload else None
            svc.status = body or {}
            self._set_state(svc, (body or {}).get("state", UNKNOWN), now_ms, retained)
            self._note_device_rejections(svc.status, now_ms)
            counters = service_counters(svc.status)
            if counters is not None:
                rw = self.rates.setdefault(parts[1], RateWindow(self.rate_window_ms))
                rw.add(now_ms, *counters)
            return True
        return False

    def _note_boot(self, dev: DeviceView, body: dict[str, Any], now_ms: int,
                   retained: bool) -> None:
        boot = body.get("boot_id")
        if not isinstance(boot, int) or boot == dev.boot_id:
            return
        reason = body.get("reset_reason")
        dev.boot_id = boot
        dev.resets.append((None if retained else now_ms,
                           reason if isinstance(reason, str) else UNKNOWN))

    def _note_device_rejections(self, status: dict[str, Any], now_ms: int) -> None:
        rejected, frames = status.get("device_rejected"), status.get("device_frames")
        if not isinstance(rejected, dict):
            return
        frames = frames if isinstance(frames, dict) else {}
        for device, rej in rejected.items():
            acc = frames.get(device, 0)
            if not (isinstance(rej, int) and isinstance(acc, int)
                    and DEVICE_ID_RE.fullmatch(device)):
                continue
            window = self.device_rates.get(device)
            if window is None:
                if len(self.device_rates) >= 10_000:
                    continue
                window = self.device_rates[device] = RateWindow(self.rate_window_ms)
            window.add(now_ms, acc, rej)

    def apply_alert(self, rule: str, subject: str, payload: bytes) -> bool:
        """Take a retained alert (``<alert prefix>/<rule>/<subject>``) into account.

        Args:
            rule: Rule from the topic.
            subject: Subject from the topic.
            payload: The body (empty: the alert was cleared).

        Returns:
            True when the names are valid ones.
        """
        if not (DEVICE_ID_RE.fullmatch(rule) and DEVICE_ID_RE.fullmatch(subject)):
            return False
        alert = parse_alert(rule, subject, payload)
        if alert is None:
            self.published.pop((rule, subject), None)
        elif len(self.published) < 100_000:
            self.published[(rule, subject)] = alert
        return True

    def _apply_sys(self, topic: str, payload: bytes, now_ms: int) -> bool:
        count = _parse_count(payload)
        if topic in BROKER_SYS or (topic.startswith(SYS_LOAD_PREFIX)
                                   and topic.count("/") == 5):
            value = _parse_sys_number(payload)
            if value is None:
                return False
            if topic in self.broker_values or len(self.broker_values) < MAX_SYS_VALUES:
                self.broker_values[topic] = value
            if topic == SYS_DROPPED_TOPIC and count is not None:
                self.broker_dropped.add(now_ms, count)
            return True
        if topic.startswith(SYS_GUARD_KICKED_PREFIX):
            client = topic[len(SYS_GUARD_KICKED_PREFIX):]
            if count is None or not DEVICE_ID_RE.fullmatch(client):
                return False
            window = self.guard_kicks.get(client)
            if window is None:
                if len(self.guard_kicks) >= 10_000:
                    return False  # bounded: the broker publishes only kicked clients
                window = self.guard_kicks[client] = CounterWindow(self.rate_window_ms)
            window.add(now_ms, count)
            return True
        return False

    def _set_state(self, view: DeviceView | ServiceView, state: object, now_ms: int,
                   retained: bool) -> None:
        new = state if isinstance(state, str) else UNKNOWN
        if new != view.state or view.since_ms is None:
            if new != view.state:
                view.since_ms = None if retained else now_ms
            view.state = new

    def note_frame(self, device: str, ts_ms: int) -> None:
        """A frame of ``device`` was seen at ``ts_ms`` (kept if newer than known).

        Args:
            device: Device id.
            ts_ms: Frame time.
        """
        dev = self.device(device)
        if dev.last_frame_ms is None or ts_ms > dev.last_frame_ms:
            dev.last_frame_ms = ts_ms

    def note_storage(self, device: str, *, last_frame_ms: int | None,
                     frames_today: int | None) -> None:
        """Facts about ``device`` read from the storage root.

        Args:
            device: Device id.
            last_frame_ms: Time of its newest stored frame, if any.
            frames_today: Frames stored with today's (UTC) date.
        """
        dev = self.device(device)
        if last_frame_ms is not None:
            self.note_frame(device, last_frame_ms)
        dev.frames_today = frames_today

    def since(self, view: DeviceView | ServiceView) -> int:
        """When ``view``'s state began, or the observation start when unknown."""
        return view.since_ms if view.since_ms is not None else self.started_ms


def evaluate(model: HealthModel, rules: AlertSettings, now_ms: int) -> list[Alert]:
    """Every alert that holds right now.

    Args:
        model: Current knowledge.
        rules: Thresholds.
        now_ms: Evaluation time.

    Returns:
        The firing alerts, sorted by (rule, subject).
    """
    out: list[Alert] = []
    for dev in model.devices.values():
        if dev.state == OFFLINE:
            gone_s = (now_ms - model.since(dev)) / 1000
            if gone_s >= rules.device_offline_s:
                out.append(Alert(RULE_DEVICE_OFFLINE, dev.device,
                                 f"{dev.device} offline for {format_duration(gone_s)}",
                                 round(gone_s, 1), rules.device_offline_s))
        elif dev.state == ONLINE and model.frames_observable:
            # A timelapse camera taking one frame every 10 min is not silent after 5 min.
            interval = dev.status.get("interval_ms")
            limit = rules.no_frame_s
            if isinstance(interval, int | float) and interval > 0:
                limit = max(limit, min(3 * interval / 1000, _MAX_INTERVAL_S))
            last = max(dev.last_frame_ms or 0, model.since(dev))
            quiet_s = (now_ms - last) / 1000
            if quiet_s >= limit:
                out.append(Alert(RULE_NO_FRAME, dev.device,
                                 f"{dev.device} online but no frame for "
                                 f"{format_duration(quiet_s)}", round(quiet_s, 1), limit))
    for svc in model.services.values():
        # "degraded" (the ingestor cannot write its storage) is as bad as gone.
        if svc.state not in (ONLINE, UNKNOWN):
            gone_s = (now_ms - model.since(svc)) / 1000
            if gone_s >= rules.service_offline_s:
                out.append(Alert(RULE_SERVICE_OFFLINE, svc.name,
                                 f"service {svc.name} {svc.state} for {format_duration(gone_s)}",
                                 round(gone_s, 1), rules.service_offline_s, severity="critical"))
    for name, rw in model.rates.items():
        rate, total = rw.rate()
        if total >= rules.rejection_min_frames and rate > rules.rejection_rate:
            out.append(Alert(RULE_REJECTION_RATE, name,
                             f"{name} rejected {rate:.1%} of {total} frames",
                             round(rate, 4), rules.rejection_rate))
    dropped = model.broker_dropped.increase(now_ms)
    if dropped > 0:
        # Every queued QoS 1 frame the broker drops was already PUBACKed to its camera.
        out.append(Alert(RULE_BROKER_DROPPING, BROKER_SUBJECT,
                         f"broker dropped {dropped} message(s) for slow or offline "
                         f"subscribers in the last {format_duration(model.rate_window_ms / 1000)}",
                         float(dropped), 0.0, severity="critical"))
    for client, window in sorted(model.guard_kicks.items()):
        kicks = window.increase(now_ms)
        if kicks > 0:
            out.append(Alert(RULE_DEVICE_THROTTLED, client,
                             f"{client} disconnected {kicks} time(s) for sending over its "
                             f"budget in the last {format_duration(model.rate_window_ms / 1000)}",
                             float(kicks), 0.0))
    if model.disk is not None and model.disk.percent >= rules.disk_percent:
        out.append(Alert(RULE_DISK_FULL, STORAGE_SUBJECT,
                         f"storage {model.disk.path} {model.disk.percent:.1f}% full, "
                         f"{format_bytes(model.disk.free_bytes)} free",
                         round(model.disk.percent, 1), rules.disk_percent, severity="critical"))
    return sorted(out, key=lambda a: (a.rule, a.subject))


@dataclass
class AlertChanges:
    """What to publish after one evaluation."""

    raised: list[Alert] = field(default_factory=list)
    cleared: list[Alert] = field(default_factory=list)


class AlertBook:
    """Active alerts, so each is published once when raised and once when cleared."""

    def __init__(self) -> None:
        self.active: dict[tuple[str, str], Alert] = {}
        self._adopted: set[tuple[str, str]] = set()

    def adopt(self, rule: str, subject: str, payload: bytes) -> None:
        """Take over an alert found retained from an earlier monitor run.

        It stays active (with its original start) if it still holds at the next
        evaluation, and is cleared otherwise.

        Args:
            rule: Rule from the topic.
            subject: Subject from the topic.
            payload: The retained body (empty: nothing to adopt).
        """
        alert = parse_alert(rule, subject, payload)
        if alert is None:
            self.active.pop((rule, subject), None)
            self._adopted.discard((rule, subject))
            return
        self._adopted.add((rule, subject))
        self.active[(rule, subject)] = Alert(rule, subject, alert.message, 0.0, 0.0,
                                             severity=alert.severity, since_ms=alert.since_ms)

    def update(self, current: list[Alert], now_ms: int) -> AlertChanges:
        """Diff the firing alerts against the active ones.

        Args:
            current: From :func:`evaluate`.
            now_ms: Evaluation time (start of newly raised alerts).

        Returns:
            Raised (new, or adopted and still firing: re-published with fresh values)
            and cleared alerts.
        """
        changes = AlertChanges()
        seen: set[tuple[str, str]] = set()
        for alert in current:
            key = (alert.rule, alert.subject)
            seen.add(key)
            old = self.active.get(key)
            since = old.since_ms if old is not None and old.since_ms else now_ms
            fresh = Alert(alert.rule, alert.subject, alert.message, alert.value,
                          alert.threshold, alert.severity, since)
            if old is None or key in self._adopted:
                changes.raised.append(fresh)
                self._adopted.discard(key)
            self.active[key] = fresh
        for key in sorted(set(self.active) - seen):
            changes.cleared.append(self.active.pop(key))
            self._adopted.discard(key)
        return changes


# ------------------------------------------------------------------ device health
WEAK_RSSI_DBM = -75
"""Below this RSSI a camera's Wi-Fi is weak (retries, slow uploads, drops)."""
RESET_WINDOW_MS = 24 * 3600 * 1000
"""Resets are counted over this window (24h, as the cause says)."""
DROP_WINDOW_MS = 3600 * 1000
"""Reconnects (online → offline while observed) are counted over this window (1h)."""
MAX_DROPS = 3
"""This many reconnects within :data:`DROP_WINDOW_MS` is a problem."""
SICK_REJECTION_RATE = 0.05
"""A camera whose rejected share is above this (over the rate window) is sick…"""
SICK_REJECTION_MIN_FRAMES = 20
"""…once this many of its frames were judged."""
MIN_FRAME_GAP_S = 120.0
"""A frame gap is a problem beyond 3 frame intervals, and never below this."""

BAD_RESETS: dict[str, tuple[str, str]] = {
    # ESP-IDF's esp_reset_reason() names (the firmware's reset_reason): (kind, words).
    "brownout": ("brownout", "brown-out"),
    "panic": ("panic", "crash (panic)"),
    "task_wdt": ("watchdog", "task watchdog"),
    "int_wdt": ("watchdog", "interrupt watchdog"),
    "wdt": ("watchdog", "watchdog"),
}
"""Reset reasons that say something is wrong (power-on, software and deep-sleep do not)."""

HEALTH_KINDS = ("ok", "offline", "brownout", "panic", "watchdog", "weak_wifi", "reconnects",
                "rejections", "frame_gap")
"""Every problem kind: the bounded ``cause`` label of the health metric."""


@dataclass(frozen=True)
class Problem:
    """One reason a camera is sick."""

    kind: str
    """One of :data:`HEALTH_KINDS`."""
    text: str
    """Short words for people: ``brown-out resets (3 in 24h)``, ``weak Wi-Fi (\u221282 dBm)``."""


@dataclass(frozen=True)
class DeviceHealth:
    """A camera's health: its problems, most telling first."""

    problems: tuple[Problem, ...] = ()

    @property
    def ok(self) -> bool:
        """No problem."""
        return not self.problems

    @property
    def kind(self) -> str:
        """The first problem's kind, or ``ok``."""
        return self.problems[0].kind if self.problems else "ok"

    @property
    def cause(self) -> str:
        """The problems in words (``ok`` when there is none)."""
        return "; ".join(p.text for p in self.problems) or "ok"


def _reset_problems(model: HealthModel, dev: DeviceView, now_ms: int) -> list[Problem]:
    out: list[Problem] = []
    recent: dict[str, list[int | None]] = {}
    for ts, reason in dev.resets:
        # A reset seen retained happened before observation began: it ages from there.
        at = ts if ts is not None else model.started_ms
        if reason in BAD_RESETS and now_ms - at <= RESET_WINDOW_MS:
            recent.setdefault(reason, []).append(ts)
    for reason, times in sorted(recent.items(), key=lambda kv: -len(kv[1])):
        kind, words = BAD_RESETS[reason]
        if len(times) > 1:
            text = f"{words} resets ({len(times)} in 24h)"
        elif times[0] is not None:
            text = f"{words} reset {format_duration((now_ms - times[0]) / 1000)} ago"
        else:
            text = f"last reset: {words}"
        out.append(Problem(kind, text))
    return out


def device_health(model: HealthModel, dev: DeviceView, now_ms: int) -> DeviceHealth:
    """Why a camera is sick, from what it and the ingestor report.

    Looks at its state, its reset reasons (brown-out, panic, watchdogs), its RSSI, how
    often it dropped off, the share of its frames the ingestor rejected, and the gap
    since its last frame.

    Args:
        model: Current knowledge.
        dev: The camera.
        now_ms: Reference time.

    Returns:
        Its problems, most telling first (offline, resets, Wi-Fi, reconnects,
        rejections, frame gap).
    """
    problems: list[Problem] = []
    if dev.state == OFFLINE:
        problems.append(Problem("offline", "offline"))  # for how long: the FOR column
    problems += _reset_problems(model, dev, now_ms)
    rssi = dev.status.get("rssi")
    if isinstance(rssi, int | float) and not isinstance(rssi, bool) and rssi < WEAK_RSSI_DBM:
        problems.append(Problem("weak_wifi", f"weak Wi-Fi (\u2212{abs(round(rssi))} dBm)"))
    drops = sum(1 for t in dev.drops if now_ms - t <= DROP_WINDOW_MS)
    if drops >= MAX_DROPS:
        problems.append(Problem("reconnects", f"reconnects ({drops} in 1h)"))
    window = model.device_rates.get(dev.device)
    if window is not None:
        rate, total = window.rate()
        if total >= SICK_REJECTION_MIN_FRAMES and rate > SICK_REJECTION_RATE:
            problems.append(Problem("rejections", f"rejected frames {rate:.0%}"))
    if dev.state == ONLINE and model.frames_observable:
        interval = dev.status.get("interval_ms")
        limit = MIN_FRAME_GAP_S
        if isinstance(interval, int | float) and interval > 0:
            limit = max(limit, min(3 * interval / 1000, _MAX_INTERVAL_S))
        gap_s = (now_ms - max(dev.last_frame_ms or 0, model.since(dev))) / 1000
        if gap_s >= limit:
            problems.append(Problem("frame_gap", f"no frame for {format_duration(gap_s)}"))
    return DeviceHealth(tuple(problems))


def format_duration(seconds: float) -> str:
    """Exact short duration in its two largest units: ``42s``, ``5m07s``, ``1h02m``, ``3d04h``.

    Args:
        seconds: Duration (negative counts as zero).

    Returns:
        The text.
    """
    try:
        s = int(max(0.0, seconds))
    except (OverflowError, ValueError):
        return "?"
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86_400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86_400}d{s % 86_400 // 3600:02d}h"


def format_bytes(n: float) -> str:
    """Short human size in binary units.

    Args:
        n: Bytes.

    Returns:
        ``512 B``, ``1.5 KiB``, ``3.2 GiB``…
    """
    try:
        value = float(n)
    except (OverflowError, ValueError):
        # A device reports what it likes: {"heap_free": 1e400 as an integer} crashed
        # the status table.
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover - loop always returns


def _cell(value: object) -> str:
    return "-" if value is None or value == "" else safe_text(value)


RETAINED_MARK = "\u2265"
"""Prefix of a FOR cell whose state was already set when observation began."""

DETAILS_WIDTH = 72
"""Service details are wrapped between ``key=value`` pairs at about this width."""


def _for_cell(model: HealthModel, view: DeviceView | ServiceView, now_ms: int) -> str:
    if view.since_ms is not None:
        return format_duration((now_ms - view.since_ms) / 1000)
    # Seen first as a retained message: it held at least since observation began.
    return RETAINED_MARK + format_duration((now_ms - model.started_ms) / 1000)


def service_details(status: dict[str, Any], width: int = DETAILS_WIDTH) -> str:
    """Every scalar field of a service status but its state, sorted, never cut.

    Args:
        status: The ``svc/<name>/status`` JSON.
        width: Lines break between two ``key=value`` pairs beyond this width.

    Returns:
        ``key=value`` pairs, a comma between them, one line per row of the cell ("-": none).
    """
    pairs = [safe_text(f"{k}={v}") for k, v in sorted(status.items())
             if k != "state" and isinstance(v, int | float | str)]
    lines: list[str] = []
    for pair in pairs:
        if lines and len(lines[-1]) + 2 + len(pair) <= width:
            lines[-1] += ", " + pair
        else:
            if lines:
                lines[-1] += ","
            lines.append(pair)
    return "\n".join(lines) or "-"


def _video_cell(video: dict[str, Any] | None, now_ms: int) -> str:
    if not video:
        return "-"
    loc = str(video.get("location", "?"))
    name = safe_text(loc.rsplit("/", 1)[-1])
    last = video.get("last_capture_ms")
    age = (f", {format_duration((now_ms - last) / 1000)} ago"
           if isinstance(last, int) and 0 < last < 2 * now_ms else "")
    return f"{name} ({_cell(video.get('frames', '?'))} fr{age})"


DEVICE_HEADER = ["DEVICE", "STATE", "FOR", "LAST FRAME", "RSSI", "HEAP", "QUEUE",
                 "FRAMES TODAY", "LAST VIDEO", "HEALTH"]
SERVICE_HEADER = ["SERVICE", "STATE", "FOR", "DETAILS"]


def device_rows(model: HealthModel, now_ms: int) -> list[list[str]]:
    """Rows of the device table.

    Args:
        model: Current knowledge.
        now_ms: Reference time for ages.

    Returns:
        One row per device, sorted by id.
    """
    rows = []
    for dev in sorted(model.devices.values(), key=lambda d: d.device):
        st = dev.status
        age = (format_duration((now_ms - dev.last_frame_ms) / 1000) + " ago"
               if dev.last_frame_ms is not None else "never")
        heap = st.get("heap_free")
        rows.append([
            safe_text(dev.device), safe_text(dev.state), _for_cell(model, dev, now_ms), age,
            _cell(st.get("rssi")), format_bytes(heap) if isinstance(heap, int) else "-",
            _cell(st.get("queue")), _cell(dev.frames_today), _video_cell(dev.last_video, now_ms),
            safe_text(device_health(model, dev, now_ms).cause),
        ])
    return rows


def service_rows(model: HealthModel, now_ms: int) -> list[list[str]]:
    """Rows of the service table (details complete, wrapped between pairs).

    Args:
        model: Current knowledge.
        now_ms: Reference time for ages.

    Returns:
        One row per service, sorted by name.
    """
    return [[safe_text(svc.name), safe_text(svc.state), _for_cell(model, svc, now_ms),
             service_details(svc.status)]
            for svc in sorted(model.services.values(), key=lambda s: s.name)]


_STATE_STYLES = {ONLINE: "green", OFFLINE: "red", "degraded": "red"}


def _rich_table(header: list[str], rows: list[list[str]]) -> Table:
    table = Table(box=None, show_edge=False, pad_edge=False, padding=(0, 2, 0, 0),
                  header_style="bold")
    for h in header:
        table.add_column(h, overflow="fold", no_wrap=h != "DETAILS")
    for row in rows:
        table.add_row(*(Text(c, style=_STATE_STYLES.get(c, "") if i == 1 else "")
                        for i, c in enumerate(row)))
    return table


def status_renderables(model: HealthModel, now_ms: int, alerts: list[Alert] | None = None,
                       *, alerts_note: str | None = None) -> list[RenderableType]:
    """The ``camstack status`` report as rich renderables (tables and lines).

    Text from devices and services is always a :class:`rich.text.Text` (never markup),
    cleaned by :func:`safe_text`.

    Args:
        model: Current knowledge.
        now_ms: Reference time for ages.
        alerts: Alerts to list (none: the section is left out).
        alerts_note: Where the alerts come from (printed above them).

    Returns:
        What to print, in order.
    """
    when = dt.datetime.fromtimestamp(now_ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    out: list[RenderableType] = [Text(f"camstack status at {when}"), Text("")]
    out.append(_rich_table(DEVICE_HEADER, device_rows(model, now_ms)))
    if not model.devices:
        out.append(Text("(no device has reported yet)"))
    out.append(Text(""))
    out.append(_rich_table(SERVICE_HEADER, service_rows(model, now_ms)))
    if not model.services:
        out.append(Text("(no service has reported yet)"))
    views: list[DeviceView | ServiceView] = [*model.devices.values(), *model.services.values()]
    if any(v.since_ms is None for v in views):
        out.append(Text(f"{RETAINED_MARK}: the state was already set when observation began "
                        "(a retained message); counted since the start of observation"))
    out.append(Text(""))
    if model.disk is not None:
        d = model.disk
        out.append(Text(f"storage {d.path}: {d.percent:.1f}% used, "
                        f"{format_bytes(d.free_bytes)} free of {format_bytes(d.total_bytes)}"))
    else:
        out.append(Text("storage: not reachable from here"))
    if alerts is not None:
        out.append(Text(""))
        if alerts_note:
            out.append(Text(safe_text(alerts_note, 400)))
        if alerts:
            out.append(Text(f"{len(alerts)} alert(s):"))
            for a in sorted(alerts, key=lambda a: (a.rule, a.subject)):
                since = (f" for {format_duration((now_ms - a.since_ms) / 1000)}"
                         if 0 < a.since_ms <= now_ms else "")
                out.append(Text(safe_text(f"  [{a.severity}] {a.rule}/{a.subject}{since}: "
                                          f"{a.message}", 400),
                                style="red" if a.severity == "critical" else "yellow"))
        else:
            out.append(Text("no alerts"))
    return out


PLAIN_WIDTH = 250
"""Width of the plain-text report: wide enough that no table row is wrapped."""


def format_status(model: HealthModel, now_ms: int, alerts: list[Alert] | None = None,
                  *, alerts_note: str | None = None) -> str:
    """The ``camstack status`` report as plain text (no colours, no escape codes).

    Args:
        model: Current knowledge.
        now_ms: Reference time for ages.
        alerts: Alerts to list (none: the section is left out).
        alerts_note: Where the alerts come from.

    Returns:
        The text, ending with a newline.
    """
    console = Console(file=io.StringIO(), width=PLAIN_WIDTH, color_system=None,
                      force_terminal=False, markup=False, highlight=False, emoji=False,
                      soft_wrap=False)
    for item in status_renderables(model, now_ms, alerts, alerts_note=alerts_note):
        console.print(item)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    return "\n".join(line.rstrip() for line in text.splitlines()) + "\n"
