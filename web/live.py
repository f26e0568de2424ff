"""The live picture of devices, services and alerts, from the retained MQTT topics.

Pure logic (no paho, no I/O): :meth:`LiveModel.apply` takes one message (topic, payload,
arrival time) and returns the change to push to the browsers, or None. Every payload is
parsed with the contract's parsers (``Status.parse`` cleans every field; ``VideoEvent.
parse`` checks the location), every name in a topic is validated, and memory is bounded
(devices, services, alerts, and a short status history per device).
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from contract.events import (
    MalformedEventError,
    Status,
    VideoEvent,
    clean_fields,
    safe_text,
)
from contract.ids import is_device_id, is_safe_name
from contract.topics import SERVICE_PREFIX, parse_device_topic

CARD_FIELDS = ("rssi", "heap_free", "queue", "fw", "interval_ms", "frame_size",
               "jpeg_quality", "frames_sent", "frames_dropped", "uptime_s")
"""Status fields shown on a camera's card."""
HISTORY_FIELDS = ("rssi", "heap_free", "queue", "frames_sent", "frames_dropped")


@dataclass
class DeviceLive:
    """What the retained topics say about one camera."""

    device: str
    state: str = "unknown"
    since_ms: int | None = None
    status_ms: int | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    last_frame_ms: int | None = None
    video: VideoEvent | None = None
    history: deque[dict[str, Any]] = field(default_factory=deque)
    seq: int = 0
    """The model's change number when this camera last changed."""

    def card(self, alerts: int = 0) -> dict[str, Any]:
        """The JSON a browser's card shows."""
        v = self.video
        return {"type": "device", "id": self.device, "state": self.state,
                "since_ms": self.since_ms, "status_ms": self.status_ms,
                "last_frame_ms": self.last_frame_ms, "alerts": alerts,
                "thumb": (f"/thumbs/{self.device}/{v.batch}.jpg" if v is not None else None),
                "video_batch": v.batch if v is not None else None,
                **{k: self.fields.get(k) for k in CARD_FIELDS}}


@dataclass
class ServiceLive:
    """One service's retained status."""

    name: str
    state: str = "unknown"
    since_ms: int | None = None
    status_ms: int | None = None
    fields: dict[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        """The JSON a browser's row shows."""
        return {"type": "service", "name": self.name, "state": self.state,
                "since_ms": self.since_ms, "status_ms": self.status_ms,
                "fields": self.fields}


@dataclass
class AlertLive:
    """One firing alert (``<alert_prefix>/<rule>/<subject>``)."""

    rule: str
    subject: str
    fields: dict[str, Any]
    seen_ms: int

    def row(self, active: bool = True) -> dict[str, Any]:
        """The JSON a browser's row shows."""
        return {"type": "alert", "rule": self.rule, "subject": self.subject,
                "active": active, "severity": safe_text(self.fields.get("severity", ""), 20),
                "message": safe_text(self.fields.get("message", ""), 200),
                "since_ms": self.fields.get("since_ms"), "seen_ms": self.seen_ms}


@dataclass
class Counters:
    """What was refused or dropped (shown on the services page)."""

    messages: int = 0
    ignored: int = 0
    devices_dropped: int = 0
    services_dropped: int = 0
    alerts_dropped: int = 0


class LiveModel:
    """Devices, services and alerts as the retained topics say, bounded."""

    def __init__(self, prefix: str, alert_prefix: str, *, max_devices: int = 10_000,
                 max_services: int = 256, max_alerts: int = 10_000, history: int = 30) -> None:
        """Follow ``<prefix>/+/{status,video}``, ``svc/+/status``, ``<alert_prefix>/#``."""
        self.prefix = prefix
        self.alert_prefix = alert_prefix
        self.max_devices = max_devices
        self.max_services = max_services
        self.max_alerts = max_alerts
        self.history = history
        self.devices: dict[str, DeviceLive] = {}
        self.services: dict[str, ServiceLive] = {}
        self.alerts: dict[tuple[str, str], AlertLive] = {}
        self.alerts_by_subject: dict[str, int] = {}
        self.counters = Counters()
        self.seq = 0
        """Change number: one more for every message that changed something."""

    def topics(self) -> list[str]:
        """The subscriptions."""
        return [f"{self.prefix}/+/status", f"{self.prefix}/+/video",
                f"{SERVICE_PREFIX}/+/status", f"{self.alert_prefix}/#"]

    def _device(self, device: str) -> DeviceLive | None:
        d = self.devices.get(device)
        if d is None:
            if len(self.devices) >= self.max_devices:
                self.counters.devices_dropped += 1
                return None
            d = self.devices[device] = DeviceLive(device, history=deque(maxlen=self.history))
        return d

    def card(self, device: str) -> dict[str, Any] | None:
        """The card of one device, or None."""
        d = self.devices.get(device)
        return d.card(self.alerts_by_subject.get(device, 0)) if d is not None else None

    def apply(self, topic: str, payload: bytes, now_ms: int) -> dict[str, Any] | None:
        """Take one message; the change to push, or None when nothing changed.

        Never raises on any topic or payload.
        """
        self.counters.messages += 1
        try:
            change = self._apply(topic, payload, now_ms)
        except (MalformedEventError, ValueError, TypeError, RecursionError):
            change = None
        if change is None:
            self.counters.ignored += 1
            return None
        self.seq += 1
        # A device's card changes with its status, its video and its alerts' count.
        key = "id" if change.get("type") == "device" else "subject"
        d = self.devices.get(str(change.get(key)))
        if d is not None:
            d.seq = self.seq
        return change

    def cards_since(self, seq: int) -> list[dict[str, Any]]:
        """The cards of every camera that changed after change number ``seq``.

        A page is rendered at one change number and opens its event stream a moment
        later; what changed in between is sent first on the new stream, so no update
        falls between the two.
        """
        return [d.card(self.alerts_by_subject.get(d.device, 0))
                for d in self.devices.values() if d.seq > seq]

    def _apply(self, topic: str, payload: bytes, now_ms: int) -> dict[str, Any] | None:
        parsed = parse_device_topic(topic, self.prefix)
        if parsed is not None:
            device, kind = parsed
            if kind == "status":
                return self._device_status(device, payload, now_ms)
            if kind == "video":
                return self._video(device, payload)
            return None
        parts = topic.split("/")
        if len(parts) == 3 and parts[0] == SERVICE_PREFIX and parts[2] == "status":
            return self._service_status(parts[1], payload, now_ms)
        if len(parts) == 3 and parts[0] == self.alert_prefix:
            return self._alert(parts[1], parts[2], payload, now_ms)
        return None

    def _device_status(self, device: str, payload: bytes, now_ms: int) -> dict[str, Any] | None:
        st = Status.parse(payload)
        if st is None:
            return None
        d = self._device(device)
        if d is None:
            return None
        state = safe_text(st.state, 32)
        if state != d.state:
            d.since_ms = now_ms
        before = d.fields.get("frames_sent")
        sent = st.get("frames_sent")
        if (isinstance(sent, int) and isinstance(before, int) and not isinstance(sent, bool)
                and sent > before):
            d.last_frame_ms = max(d.last_frame_ms or 0, now_ms)
        d.state, d.status_ms = state, now_ms
        d.fields = {k: v for k, v in st.fields.items() if not isinstance(v, dict)}
        d.history.append({"t": now_ms, "state": state,
                          **{k: d.fields.get(k) for k in HISTORY_FIELDS}})
        return d.card(self.alerts_by_subject.get(device, 0))

    def _video(self, device: str, payload: bytes) -> dict[str, Any] | None:
        if not payload:
            return None
        ev = VideoEvent.parse(payload)
        if ev.device != device:
            return None
        d = self._device(device)
        if d is None:
            return None
        if d.video is None or ev.last_capture_ms >= d.video.last_capture_ms:
            d.video = ev
        d.last_frame_ms = max(d.last_frame_ms or 0, ev.last_capture_ms)
        return d.card(self.alerts_by_subject.get(device, 0))

    def _service_status(self, name: str, payload: bytes, now_ms: int) -> dict[str, Any] | None:
        if not is_safe_name(name) or len(name) > 64:
            return None
        st = Status.parse(payload)
        if st is None:
            return None
        s = self.services.get(name)
        if s is None:
            if len(self.services) >= self.max_services:
                self.counters.services_dropped += 1
                return None
            s = self.services[name] = ServiceLive(name)
        state = safe_text(st.state, 32)
        if state != s.state:
            s.since_ms = now_ms
        s.state, s.status_ms = state, now_ms
        s.fields = {k: v for k, v in st.fields.items() if not isinstance(v, dict)}
        return s.row()

    def _alert(self, rule: str, subject: str, payload: bytes,
               now_ms: int) -> dict[str, Any] | None:
        if not is_safe_name(rule) or not is_safe_name(subject):
            return None
        key = (rule, subject)
        if not payload:  # cleared
            old = self.alerts.pop(key, None)
            if old is None:
                return None
            self._count(subject, -1)
            return old.row(active=False)
        obj = json.loads(payload)
        if not isinstance(obj, dict):
            return None
        fields = clean_fields(obj)
        if key not in self.alerts:
            if len(self.alerts) >= self.max_alerts:
                self.counters.alerts_dropped += 1
                return None
            self._count(subject, +1)
        a = self.alerts[key] = AlertLive(rule, subject, fields, now_ms)
        return a.row()

    def _count(self, subject: str, delta: int) -> None:
        n = self.alerts_by_subject.get(subject, 0) + delta
        if n > 0:
            self.alerts_by_subject[subject] = n
        else:
            self.alerts_by_subject.pop(subject, None)

    def device_changes_for_alert(self, subject: str) -> dict[str, Any] | None:
        """The card of ``subject`` when it is a device (its alert count changed)."""
        return self.card(subject) if is_device_id(subject) else None

    def select(self, *, query: str = "", state: str = "", sick: bool = False
               ) -> list[DeviceLive]:
        """Devices matching a filter, sick ones (not online, or alerting) first."""
        q = query.lower()
        out = [d for d in self.devices.values()
               if (not q or q in d.device.lower()) and (not state or d.state == state)
               and (not sick or d.state != "online" or d.device in self.alerts_by_subject)]
        out.sort(key=lambda d: (d.state == "online" and d.device not in self.alerts_by_subject,
                                d.device))
        return out
