"""Alert delivery to a webhook in Alertmanager's format, beside the MQTT alerts.

The body is what Alertmanager's webhook receiver POSTs (``version`` "4": ``status``,
``receiver``, ``groupLabels``, ``commonLabels``, ``commonAnnotations``, ``externalURL``,
``groupKey``, ``truncatedAlerts`` and ``alerts[]`` with ``status``, ``labels``,
``annotations``, ``startsAt``, ``endsAt``, ``generatorURL``, ``fingerprint``), so any
receiver written for Alertmanager (ntfy, Matrix and chat bridges, incident tools) takes
it as it is.

Delivery never blocks the monitor: :meth:`WebhookSender.notify` only puts the
notification on a bounded queue (a full queue drops it, counted and logged); one thread
POSTs them in order, retrying network errors, 429 and 5xx answers with exponential
backoff, and counts what it gives up.
"""

from __future__ import annotations

import datetime as dt
import json
import queue
import threading
import urllib.error
import urllib.request
from collections.abc import Iterable
from typing import Any

import structlog

from monitor.health import Alert
from monitor.metrics import MonitorMetrics

log = structlog.get_logger("monitor")

ZERO_TIME = "0001-01-01T00:00:00Z"
"""Alertmanager's ``endsAt`` of an alert still firing (Go's zero time)."""


def rfc3339(ms: int) -> str:
    """Unix milliseconds as RFC 3339 in UTC (``2026-11-24T10:03:53.123Z``)."""
    t = dt.datetime.fromtimestamp(ms / 1000, dt.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def alert_labels(alert: Alert) -> dict[str, str]:
    """The labels of an alert: ``alertname`` (the rule), ``subject``, ``severity``."""
    return {"alertname": alert.rule, "subject": alert.subject, "severity": alert.severity,
            "service": "camstack"}


def fingerprint(labels: dict[str, str]) -> str:
    """16 hex digits identifying a label set, FNV-1a 64 over the sorted pairs."""
    h = 0xCBF29CE484222325
    for key, value in sorted(labels.items()):
        for byte in f"{key}\xff{value}\xff".encode():
            h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def _common(maps: list[dict[str, str]]) -> dict[str, str]:
    if not maps:
        return {}
    return {k: v for k, v in maps[0].items() if all(m.get(k) == v for m in maps[1:])}


def alertmanager_payload(alerts: Iterable[Alert], status: str, now_ms: int, *,
                         receiver: str = "camstack", external_url: str = "") -> dict[str, Any]:
    """The webhook body for alerts that were raised (``firing``) or cleared (``resolved``).

    Args:
        alerts: The alerts.
        status: ``firing`` or ``resolved``.
        now_ms: When they were raised or cleared (``endsAt`` of resolved ones).
        receiver: The ``receiver`` name.
        external_url: ``externalURL`` (e.g. the web page), may be empty.

    Returns:
        The JSON object.
    """
    items: list[dict[str, Any]] = []
    label_sets: list[dict[str, str]] = []
    annotation_sets: list[dict[str, str]] = []
    for a in alerts:
        labels = alert_labels(a)
        annotations = {"summary": a.message,
                       "description": f"{a.rule} for {a.subject}: value {a.value:g}, "
                                      f"threshold {a.threshold:g}"}
        label_sets.append(labels)
        annotation_sets.append(annotations)
        items.append({
            "status": status, "labels": labels, "annotations": annotations,
            "startsAt": rfc3339(a.since_ms or now_ms),
            "endsAt": rfc3339(now_ms) if status == "resolved" else ZERO_TIME,
            "generatorURL": external_url, "fingerprint": fingerprint(labels),
        })
    common = _common(label_sets)
    group = {"alertname": common["alertname"]} if "alertname" in common else {}
    return {
        "version": "4",
        "groupKey": "{}:{" + ",".join(f'{k}="{v}"' for k, v in sorted(group.items())) + "}",
        "truncatedAlerts": 0,
        "status": status,
        "receiver": receiver,
        "groupLabels": group,
        "commonLabels": common,
        "commonAnnotations": _common(annotation_sets),
        "externalURL": external_url,
        "alerts": items,
    }


class _RetryableError(Exception):
    """A failure worth another try (network, 429, 5xx)."""


class WebhookSender:
    """A thread delivering notifications from a bounded queue.

    Args:
        url: Where to POST.
        metrics: Counters of deliveries, failures, drops.
        token: Bearer token (``Authorization: Bearer …``), if any.
        queue_size: Notifications waiting at most; more are dropped.
        timeout_s: Per request.
        max_attempts: Tries of one notification before it is given up.
        backoff_s: First wait between tries (doubled each time, at most 60 s).
    """

    def __init__(self, url: str, metrics: MonitorMetrics, *, token: str | None = None,
                 queue_size: int = 100, timeout_s: float = 5.0, max_attempts: int = 5,
                 backoff_s: float = 1.0) -> None:
        self.url = url
        self.metrics = metrics
        self.token = token
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="webhook", daemon=True)

    def start(self) -> WebhookSender:
        """Start the delivery thread."""
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Deliver what is queued within ``timeout``, then stop."""
        self._stop.set()
        self._thread.join(timeout)

    def notify(self, alerts: list[Alert], status: str, now_ms: int) -> bool:
        """Queue one notification; never blocks.

        Args:
            alerts: Raised (``firing``) or cleared (``resolved``) alerts; none: nothing.
            status: ``firing`` or ``resolved``.
            now_ms: When.

        Returns:
            False when the queue was full and the notification was dropped.
        """
        if not alerts:
            return True
        body = alertmanager_payload(alerts, status, now_ms)
        try:
            self._queue.put_nowait(body)
        except queue.Full:
            self.metrics.webhook_dropped.inc()
            log.warning("webhook_dropped", status=status, alerts=len(alerts),
                        reason="queue full")
            return False
        self.metrics.webhook_queue.set(self._queue.qsize())
        return True

    def _run(self) -> None:
        while True:
            try:
                body = self._queue.get(timeout=0.2)
            except queue.Empty:
                if self._stop.is_set():
                    return
                continue
            self._deliver(body)
            self.metrics.webhook_queue.set(self._queue.qsize())

    def _post(self, data: bytes) -> None:
        req = urllib.request.Request(self.url, data=data, method="POST",  # noqa: S310
                                     headers={"Content-Type": "application/json",
                                              "User-Agent": "camstack-monitor"})
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:  # noqa: S310
                resp.read(65536)
        except urllib.error.HTTPError as exc:
            if exc.code == 429 or exc.code >= 500:
                raise _RetryableError(f"HTTP {exc.code}") from None
            raise
        except (urllib.error.URLError, OSError) as exc:
            raise _RetryableError(str(getattr(exc, "reason", exc))) from None

    def _deliver(self, body: dict[str, Any]) -> None:
        data = json.dumps(body, separators=(",", ":")).encode()
        delay = self.backoff_s
        for attempt in range(1, self.max_attempts + 1):
            try:
                self._post(data)
            except _RetryableError as exc:
                log.warning("webhook_retry", attempt=attempt, error=str(exc), retry_s=delay)
                if attempt == self.max_attempts or self._stop.wait(delay):
                    break
                delay = min(delay * 2, 60.0)
                continue
            except urllib.error.HTTPError as exc:
                log.error("webhook_failed", status=body["status"], error=f"HTTP {exc.code}",
                          retry=False)
                self.metrics.webhook_failures.inc()
                return
            self.metrics.webhook_sent.labels(body["status"]).inc()
            log.info("webhook_sent", status=body["status"], alerts=len(body["alerts"]))
            return
        log.error("webhook_failed", status=body["status"], alerts=len(body["alerts"]),
                  attempts=self.max_attempts)
        self.metrics.webhook_failures.inc()
