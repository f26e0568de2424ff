"""``camstack status`` and ``python -m monitor``: MQTT and storage wiring around health.py.

``status`` connects once (account ``operator-status``), reads every retained status and
video event, scans the storage root when this machine can see it, and prints the table.
``monitor`` runs until SIGTERM with its own account (``operator-monitor``): it keeps the
same picture up to date, evaluates the alert rules every ``interval_s`` and publishes
each alert retained on ``alerts/<rule>/<subject>``, clearing it (empty retained
message) when it resolves. It publishes its own retained ``svc/operator-monitor/status``
with a last will, like every service.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from prometheus_client import start_http_server

from config.metrics import metrics_port_guard
from config.settings import MonitorSettings, MqttSettings
from contract.events import safe_text
from contract.topics import HA_STATE_PREFIX
from contract.topics import service_status_topic as svc_status_topic
from monitor.health import (
    SYS_TOPICS,
    Alert,
    AlertBook,
    DeviceView,
    DiskUsage,
    HealthModel,
    alert_topic,
    evaluate,
    format_status,
)
from monitor.homeassistant import Image, Publisher, is_camera
from monitor.metrics import MonitorMetrics
from monitor.webhook import WebhookSender
from mqttclient import (
    MqttConnectError,
    connect_blocking,
    make_client,
    publish_json,
    wait_published,
)

log = structlog.get_logger("monitor")

MONITOR_ACCOUNT = "operator-monitor"
"""The long-running monitor's own account (the operator role, its own client id)."""

STATUS_ACCOUNT = "operator-status"
"""Account of the one-shot ``camstack status`` (it may run beside the monitor)."""



def now_ms() -> int:
    """Wall clock in Unix milliseconds."""
    return int(time.time() * 1000)


@dataclass(frozen=True)
class StorageFacts:
    """What the storage root says about one device."""

    last_frame_ms: int | None
    frames_today: int
    last_video: dict[str, Any] | None


def _name_ts(name: str) -> int | None:
    head = name.split("_", 1)[0]
    return int(head) if head.isdigit() else None


def _jpgs(folder: Path) -> list[str]:
    try:
        return [n for n in (p.name for p in folder.iterdir()) if n.endswith(".jpg")]
    except OSError:
        return []


def _subdirs(folder: Path) -> list[Path]:
    try:
        return [p for p in folder.iterdir() if p.is_dir()]
    except OSError:
        return []


def scan_device(root: Path, device: str, now: int) -> StorageFacts:
    """Newest frame, today's frame count and newest video of ``device`` on disk.

    Frame file names start with their 13-digit ``ts_ms`` (docs/storage.md), so no file
    is opened except video events.

    Args:
        root: Storage root.
        device: Device id.
        now: Reference time (its UTC date is "today").

    Returns:
        The facts.
    """
    today = dt.datetime.fromtimestamp(now / 1000, dt.UTC).strftime("%Y-%m-%d")
    day_start = int(dt.datetime.strptime(today, "%Y-%m-%d").replace(tzinfo=dt.UTC)
                    .timestamp() * 1000)
    last: int | None = None
    count = 0
    names: list[str] = []
    for day in _subdirs(root / "frames" / device):
        day_names = _jpgs(day)
        names += day_names
    for batch in _subdirs(root / "batches" / device):
        names += _jpgs(batch / "frames")
    for n in names:
        ts = _name_ts(n)
        if ts is None:
            continue
        last = ts if last is None or ts > last else last
        count += ts >= day_start
    video: dict[str, Any] | None = None
    days = sorted(_subdirs(root / "videos" / device), key=lambda p: p.name)
    for day in days[-2:]:
        for meta in sorted(day.glob("*.json")):
            try:
                ev = json.loads(meta.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if not isinstance(ev, dict):
                continue
            if day.name == today and isinstance(ev.get("frames"), int):
                count += ev["frames"]
            lc = ev.get("last_capture_ms")
            if isinstance(lc, int):
                last = lc if last is None or lc > last else last
                if video is None or lc >= video.get("last_capture_ms", 0):
                    video = ev
    return StorageFacts(last, count, video)


def storage_devices(root: Path) -> set[str]:
    """Device ids that have anything under the storage root."""
    out: set[str] = set()
    for kind in ("frames", "batches", "videos"):
        out |= {p.name for p in _subdirs(root / kind)}
    return out


def disk_usage(root: Path) -> DiskUsage | None:
    """Usage of the file system holding ``root``, or None when it is not reachable."""
    try:
        u = shutil.disk_usage(root)
    except OSError:
        return None
    return DiskUsage(str(root), u.total, u.used, u.free)


def apply_storage(model: HealthModel, root: Path, now: int) -> None:
    """Add what the storage root says to ``model`` (nothing when it is not reachable).

    Args:
        model: The model to update.
        root: Storage root.
        now: Reference time.
    """
    model.disk = disk_usage(root) if root.is_dir() else None
    if model.disk is None:
        return
    model.frames_observable = True
    for device in sorted(storage_devices(root) | set(model.devices)):
        facts = scan_device(root, device, now)
        model.note_storage(device, last_frame_ms=facts.last_frame_ms,
                           frames_today=facts.frames_today)
        dev = model.device(device)
        if dev.last_video is None and facts.last_video is not None:
            dev.last_video = facts.last_video


def apply_message(model: HealthModel, msg: mqtt.MQTTMessage) -> bool:
    """Take one message into ``model``; a message that fails is logged and skipped.

    Args:
        model: The picture to update.
        msg: A status, video or ``$SYS`` message.

    Returns:
        False when the message could not be used (bad name or payload, or it failed).
    """
    try:
        return model.apply(msg.topic, bytes(msg.payload), now_ms(), retained=bool(msg.retain))
    except Exception as exc:  # one message never stops the monitor or the report
        log.warning("message_rejected", topic=safe_text(msg.topic), error=type(exc).__name__)
        return False


def _topics(prefix: str) -> list[str]:
    return [f"{prefix}/+/status", f"{prefix}/+/video", "svc/+/status"]


def broker_sys_topics(mqtt_settings: MqttSettings) -> tuple[str, ...]:
    """The ``$SYS`` topics to follow: none on MQTT 3.1.1 (``broker.engine = "nats"``).

    NATS grants a ``$SYS/...`` subscription over MQTT but never publishes on it (its
    system account is not reachable over MQTT; checked against a real cluster,
    tests/integration/test_nats_services.py): the broker figures and the
    ``broker_dropping`` rule are then unavailable, said once at start, and every other
    rule works as on Mosquitto.
    """
    return () if mqtt_settings.protocol == "3.1.1" else SYS_TOPICS


def collect_status(settings: MonitorSettings, *, account: str = STATUS_ACCOUNT,
                   quiet_s: float = 0.5, max_s: float = 3.0) -> HealthModel:
    """Read every retained status once (and the storage), then disconnect.

    Args:
        settings: Monitor settings (broker, storage root).
        account: Account to use; its password file sits beside the configured one.
        quiet_s: Stop after this long without a new retained message.
        max_s: Stop after this long in any case.

    Returns:
        The picture.
    """
    m = settings.mqtt
    pw_file = (m.password_file.with_name(f"{account}.pass")
               if m.password_file is not None else None)
    mqtt_settings = m.model_copy(update={"username": account, "client_id": account,
                                         "password_file": pw_file, "session_expiry_s": 0})
    started = now_ms()
    model = HealthModel(m.topic_prefix, started_ms=started)
    last_msg = [time.monotonic()]
    lock = threading.Lock()

    alert_prefix = settings.alert_prefix

    def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with lock:
            parts = msg.topic.split("/")
            if parts[0] == alert_prefix:
                if len(parts) == 3 and msg.retain:
                    model.apply_alert(parts[1], parts[2], bytes(msg.payload))
            else:
                apply_message(model, msg)
            last_msg[0] = time.monotonic()

    topics = [*_topics(m.topic_prefix), *broker_sys_topics(m), f"{alert_prefix}/#"]
    subacks = threading.Semaphore(0)
    client = make_client(mqtt_settings, clean_session=True)
    client.on_message = on_message
    client.on_subscribe = lambda *_a: subacks.release()
    connect_blocking(client, mqtt_settings, clean_start=True)
    try:
        begin = time.monotonic()
        for topic in topics:
            client.subscribe(topic, qos=1)
        # Retained messages follow their SUBACK: on a busy broker the first may take
        # longer than quiet_s, so the quiet period starts once every SUBACK is in.
        for _ in topics:
            subacks.acquire(timeout=max(0.0, max_s - (time.monotonic() - begin)))
        with lock:
            last_msg[0] = time.monotonic()
        while time.monotonic() - begin < max_s + quiet_s:
            time.sleep(0.05)
            with lock:
                if time.monotonic() - last_msg[0] >= quiet_s:
                    break
    finally:
        client.disconnect()
        client.loop_stop()
    apply_storage(model, settings.storage.root, now_ms())
    return model


@dataclass(frozen=True)
class StatusAlerts:
    """The alerts ``camstack status`` shows and where they come from."""

    alerts: list[Alert]
    source: str
    """``monitor`` (its retained alerts) or ``evaluated`` (from this one snapshot)."""
    note: str


def status_alerts(model: HealthModel, settings: MonitorSettings, now: int) -> StatusAlerts:
    """What the monitor published, or (no monitor status retained) the rules evaluated here.

    Args:
        model: The picture from :func:`collect_status` (retained alerts included).
        settings: Monitor settings (its account names the monitor's status topic).
        now: Reference time.

    Returns:
        The alerts, their source and a one-line note saying so.
    """
    account = settings.mqtt.username or MONITOR_ACCOUNT
    mon = model.services.get(account)
    topic = svc_status_topic(account)
    if mon is not None and mon.state != "unknown":
        alerts = sorted(model.published.values(), key=lambda a: (a.rule, a.subject))
        note = (f"alerts as published by the monitor ({settings.alert_prefix}/#, retained; "
                f"{topic} says {mon.state})")
        if mon.state != "online":
            note += ": it is not running, they may be out of date"
        return StatusAlerts(alerts, "monitor", note)
    evaluated = {(a.rule, a.subject): a for a in evaluate(model, settings.alerts, now)}
    stale = [a for k, a in model.published.items() if k not in evaluated]
    note = (f"no monitor status retained ({topic}): alerts evaluated from this one-shot "
            "snapshot (states seen retained count from now, so time-based rules stay quiet)")
    if stale:
        note += f"; {len(stale)} more found retained on {settings.alert_prefix}/#"
    alerts = sorted([*evaluated.values(), *stale], key=lambda a: (a.rule, a.subject))
    return StatusAlerts(alerts, "evaluated", note)


def status_report(settings: MonitorSettings, *, account: str = STATUS_ACCOUNT) -> str:
    """The ``camstack status`` text (with the monitor's alerts, or evaluated ones).

    Args:
        settings: Monitor settings.
        account: Account to read with.

    Returns:
        The report.
    """
    model = collect_status(settings, account=account)
    t = now_ms()
    shown = status_alerts(model, settings, t)
    return format_status(model, t, shown.alerts, alerts_note=shown.note)


def webhook_sender(settings: MonitorSettings, metrics: MonitorMetrics) -> WebhookSender | None:
    """The webhook delivery of ``[alerts] webhook_url``, or None when it is not set.

    Args:
        settings: Monitor settings.
        metrics: Where deliveries are counted.

    Returns:
        The (not yet started) sender.

    Raises:
        SystemExit: When the token file cannot be read (exit 2, one line).
    """
    a = settings.alerts
    if a.webhook_url is None:
        return None
    token = None
    if a.webhook_token_file is not None:
        try:
            token = a.webhook_token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SystemExit(f"error: alerts.webhook_token_file {a.webhook_token_file}: "
                             f"{exc.strerror or exc}") from None
    return WebhookSender(a.webhook_url, metrics, token=token, queue_size=a.webhook_queue,
                         timeout_s=a.webhook_timeout_s, max_attempts=a.webhook_max_attempts,
                         backoff_s=a.webhook_backoff_s)


class Monitor:
    """The long-running alert evaluator.

    Args:
        settings: Monitor settings.
    """

    def __init__(self, settings: MonitorSettings, *, metrics: MonitorMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or MonitorMetrics()
        self.metrics_port: int | None = None
        self.account = settings.mqtt.username or "operator-monitor"
        self.prefix = settings.mqtt.topic_prefix
        self.model = HealthModel(self.prefix, started_ms=now_ms())
        self.book = AlertBook()
        self.stop_event = threading.Event()
        self._lock = threading.Lock()
        # Nothing queued for us is worth keeping: every topic we read is retained.
        self._client = make_client(settings.mqtt, will_topic=svc_status_topic(self.account),
                                   clean_session=True)
        if settings.mqtt.protocol == "3.1.1":
            log.warning("broker_sys_unavailable", protocol="3.1.1",
                        detail="no $SYS over MQTT 3.1.1 (NATS engine): camstack_broker_* "
                        "metrics and the broker_dropping alert are off")
        self._client.on_message = self._on_message
        self._client.on_connect = self._on_connect
        self._connected = threading.Event()
        self.metrics.watch_broker(self._broker_values)
        self.webhook = webhook_sender(settings, self.metrics)
        ha = settings.homeassistant
        self.ha = (Publisher(ha.discovery_prefix, svc_status_topic(self.account))
                   if ha.enabled else None)
        self._images: dict[str, tuple[str, Image | None]] = {}

    def _broker_values(self) -> dict[str, float]:
        with self._lock:
            return dict(self.model.broker_values)

    def start_metrics(self) -> None:
        """Serve ``/metrics`` when ``[metrics] enabled`` (call it in the main thread).

        A port already taken is one line naming the setting and exit 2.
        """
        m = self.settings.metrics
        if not m.enabled:
            return
        with metrics_port_guard(m):
            server, _thread = start_http_server(m.port, addr=m.host,
                                                registry=self.metrics.registry)
        self.metrics_port = int(server.server_port)
        log.info("metrics_listening", host=m.host, port=self.metrics_port)

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: mqtt.ConnectFlags,
                    rc: ReasonCode, _p: Properties | None) -> None:
        if rc.is_failure:
            log.warning("mqtt_refused", reason=str(rc))
            return
        topics = [*_topics(self.prefix), *broker_sys_topics(self.settings.mqtt),
                  f"{self.settings.alert_prefix}/#"]
        if self.ha is not None:
            # Our retained configs and states from an earlier run: kept or cleared.
            topics += [f"{self.ha.prefix}/+/+/+/config", f"{HA_STATE_PREFIX}/#"]
        for topic in topics:
            client.subscribe(topic, qos=1)
        self._connected.set()
        log.info("mqtt_connected")

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        parts = msg.topic.split("/")
        with self._lock:
            if self.ha is not None and self.ha.owns(msg.topic):
                if msg.retain:
                    self.ha.adopt(msg.topic, bytes(msg.payload))
            elif self.ha is not None and parts[0] == self.ha.prefix:
                pass  # another integration's discovery config
            elif parts[0] != self.settings.alert_prefix:
                if not apply_message(self.model, msg):
                    self.metrics.messages_rejected.inc()
            elif len(parts) == 3 and msg.retain:
                # Our own alerts, retained from an earlier run (or echoed back now).
                try:
                    self.book.adopt(parts[1], parts[2], bytes(msg.payload))
                except Exception as exc:  # one message never stops the monitor
                    log.warning("message_rejected", topic=safe_text(msg.topic),
                                error=type(exc).__name__)

    def _connect(self) -> bool:
        delay = self.settings.mqtt.reconnect_min_s
        while not self.stop_event.is_set():
            try:
                connect_blocking(self._client, self.settings.mqtt, clean_start=True)
                return True
            except MqttConnectError as exc:
                log.warning("broker_unreachable", error=str(exc), retry_s=delay)
                self._client.loop_stop()
            if self.stop_event.wait(delay):
                return False
            delay = min(delay * 2, self.settings.mqtt.reconnect_max_s)
        return False

    def _status(self, state: str) -> dict[str, Any]:
        return {"state": state, "role": "monitor", "alerts": len(self.book.active),
                "devices": len(self.model.devices), "ts_ms": now_ms()}

    def evaluate_once(self) -> list[Alert]:
        """Scan storage, evaluate the rules, publish raised and cleared alerts.

        Returns:
            The alerts active afterwards.
        """
        t = now_ms()
        with self._lock:
            apply_storage(self.model, self.settings.storage.root, t)
            changes = self.book.update(evaluate(self.model, self.settings.alerts, t), t)
            active = list(self.book.active.values())
            self.metrics.evaluated(self.model, active, t)
        prefix = self.settings.alert_prefix
        for a in changes.raised:
            log.warning("alert_raised", rule=a.rule, subject=a.subject, message=a.message,
                        value=a.value, threshold=a.threshold)
            publish_json(self._client, alert_topic(prefix, a.rule, a.subject), a.payload(),
                         retain=True)
        if self.webhook is not None:
            # Queued only: delivery happens on its own thread, never here.
            self.webhook.notify(changes.raised, "firing", t)
            self.webhook.notify(changes.cleared, "resolved", t)
        for a in changes.cleared:
            log.info("alert_cleared", rule=a.rule, subject=a.subject)
            # An empty retained message deletes the retained alert.
            self._client.publish(alert_topic(prefix, a.rule, a.subject), b"", qos=1,
                                 retain=True)
        publish_json(self._client, svc_status_topic(self.account), self._status("online"),
                     retain=True)
        if self.ha is not None:
            self._publish_homeassistant(active, t)
        return active

    def _image(self, dev: DeviceView) -> Image | None:
        """The camera's latest thumbnail for Home Assistant (read once per video)."""
        video = dev.last_video or {}
        loc, batch = video.get("location"), video.get("batch")
        key = f"{loc}|{batch}"
        cached = self._images.get(dev.device)
        if cached is not None and cached[0] == key:
            return cached[1]
        ha = self.settings.homeassistant
        image: Image | None = None
        if isinstance(loc, str) and loc.endswith(".mp4") and ".." not in loc.split("/"):
            thumb = self.settings.storage.root / (loc[:-4] + ".jpg")
            try:
                if thumb.stat().st_size <= ha.image_max_bytes:
                    image = Image(jpeg=thumb.read_bytes())
            except OSError:
                pass
        if image is None and ha.web_base_url and isinstance(batch, str) and batch:
            image = Image(url=f"{ha.web_base_url.rstrip('/')}/thumbs/{dev.device}/{batch}.jpg")
        if image is None and cached is None:
            log.info("homeassistant_no_image", device=dev.device,
                     reason="no readable thumbnail under storage.root and no "
                     "homeassistant.web_base_url" if loc else "no video yet")
        self._images[dev.device] = (key, image)
        return image

    def _revoked(self) -> set[str]:
        path = self.settings.homeassistant.accounts_file
        if path is None:
            return set()
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return set()
        if not isinstance(raw, dict):
            return set()
        return {name for name, acc in raw.items()
                if isinstance(acc, dict) and acc.get("kind") == "device" and acc.get("revoked")}

    def _publish_homeassistant(self, active: list[Alert], t: int) -> None:
        assert self.ha is not None
        gone = self._revoked()
        with self._lock:
            cams = [dev for dev in self.model.devices.values() if is_camera(dev)]
        images = {dev.device: self._image(dev) for dev in cams}
        with self._lock:
            desired = self.ha.desired(self.model, active, t, images, gone)
            changes = self.ha.changes(desired)
        for topic, payload in changes:
            self._client.publish(topic, payload, qos=1, retain=True)
        if changes:
            log.info("homeassistant_published", messages=len(changes),
                     removed=sum(1 for _t, p in changes if not p))

    def run(self) -> int:
        """Connect (retrying until the broker answers), evaluate until stopped.

        Returns:
            Exit code: 0 after a stop.
        """
        if self.webhook is not None:
            self.webhook.start()
        if not self._connect():
            if self.webhook is not None:
                self.webhook.stop()
            return 0
        # Let the retained picture (and our old alerts) arrive before judging.
        self._connected.wait(5)
        self.stop_event.wait(min(2.0, self.settings.interval_s))
        log.info("monitor_ready", interval_s=self.settings.interval_s,
                 storage=str(self.settings.storage.root))
        while not self.stop_event.is_set():
            self.evaluate_once()
            self.stop_event.wait(self.settings.interval_s)
        info = publish_json(self._client, svc_status_topic(self.account),
                            self._status("offline"), retain=True)
        wait_published(info, 5.0)
        self._client.disconnect()
        self._client.loop_stop()
        if self.webhook is not None:
            self.webhook.stop(self.settings.alerts.webhook_timeout_s)
        log.info("monitor_stopped")
        return 0
