"""Home Assistant MQTT discovery: each camera as a device with its entities (pure).

For every camera the monitor knows (one with a status), it publishes retained discovery
configs under ``<discovery prefix>/<component>/camstack_<id>/<object>/config``:

* ``binary_sensor`` *online* (device class ``connectivity``);
* ``sensor`` *RSSI* (dBm), *free heap* (bytes), *send queue*, *frames today* and
  *health* (the cause in words, e.g. ``weak Wi-Fi (-82 dBm)``);
* ``image`` *latest thumbnail*: ``image_topic`` with the JPEG itself when the monitor
  can read it from the storage root, else ``url_topic`` with the web page's thumbnail
  URL when ``web_base_url`` is set, else no image entity (logged once);
* a ``binary_sensor`` *problem* per active alert on the camera (alerts on services,
  storage or the broker go to one ``camstack`` device).

Every entity has the same ``device`` block and ``availability`` on the monitor's own
``svc/<account>/status`` (its last will says offline, so Home Assistant shows the
entities unavailable while the monitor is down). States live under ``camstack/ha/``.

:class:`Publisher` keeps what is published and returns only changes: new or changed
retained messages, and empty retained messages for what must go (a camera whose
status was deleted or whose account was revoked, a cleared alert).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from contract.topics import HA_STATE_PREFIX, ha_state_topic
from monitor.health import UNKNOWN, Alert, DeviceView, HealthModel, device_health

HUB_NODE = "camstack"
"""Node id of the device holding alerts on services, storage and the broker."""
HUB_STATE = f"{HA_STATE_PREFIX}/.hub"
"""State topics of the hub device ('.' is never in a device id: no collision)."""


@dataclass(frozen=True)
class Image:
    """How a camera's thumbnail reaches Home Assistant."""

    jpeg: bytes | None = None
    """The JPEG itself (``image_topic``)."""
    url: str | None = None
    """Or its URL (``url_topic``)."""


def node_id(device: str) -> str:
    """The discovery node id of a camera."""
    return f"camstack_{device}"


def _json(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


class Publisher:
    """Discovery configs and states of every camera, published as changes.

    Args:
        discovery_prefix: Home Assistant's discovery prefix.
        availability_topic: The monitor's status topic.
        sw_version: camstack's version (the ``origin`` block).
    """

    def __init__(self, discovery_prefix: str, availability_topic: str,
                 sw_version: str = "") -> None:
        self.prefix = discovery_prefix
        self.availability = [{"topic": availability_topic,
                              "value_template": "{{ value_json.state }}"}]
        self.origin = {"name": "camstack", **({"sw_version": sw_version} if sw_version else {})}
        self.published: dict[str, bytes] = {}
        """Retained topics this publisher owns, with their payloads."""

    def owns(self, topic: str) -> bool:
        """Whether ``topic`` is one of ours (for adopting retained ones after a restart)."""
        parts = topic.split("/")
        if topic.startswith(HA_STATE_PREFIX + "/"):
            return True
        return (len(parts) == 5 and parts[0] == self.prefix and parts[4] == "config"
                and (parts[2] == HUB_NODE or parts[2].startswith(HUB_NODE + "_")))

    def adopt(self, topic: str, payload: bytes) -> None:
        """A retained message of ours from an earlier run: kept, or cleared if stale."""
        if not self.owns(topic):
            return
        if payload:
            self.published[topic] = payload
        else:
            self.published.pop(topic, None)

    # ------------------------------------------------------------------ configs
    def _device_block(self, dev: DeviceView) -> dict[str, Any]:
        block: dict[str, Any] = {"identifiers": [node_id(dev.device)], "name": dev.device,
                                 "manufacturer": "camstack", "model": "ESP32-CAM"}
        fw = dev.status.get("fw")
        if isinstance(fw, str) and fw:
            block["sw_version"] = fw
        return block

    def _config(self, component: str, node: str, obj: str, device: dict[str, Any],
                **fields: Any) -> tuple[str, bytes]:
        topic = f"{self.prefix}/{component}/{node}/{obj}/config"
        body = {"unique_id": f"{node}_{obj}", "device": device,
                "availability": self.availability, "origin": self.origin, **fields}
        return topic, _json(body)

    def camera_configs(self, dev: DeviceView, image: Image | None) -> dict[str, bytes]:
        """Discovery configs of one camera (alerts apart).

        Args:
            dev: The camera.
            image: How its thumbnail is published (None: no image entity).

        Returns:
            ``{topic: payload}``.
        """
        node, device = node_id(dev.device), self._device_block(dev)
        state = ha_state_topic(dev.device, "state")
        out = dict([
            self._config("binary_sensor", node, "online", device, name="Online",
                         device_class="connectivity", state_topic=state,
                         value_template="{{ value_json.online }}",
                         payload_on="ON", payload_off="OFF"),
            self._config("sensor", node, "rssi", device, name="RSSI",
                         device_class="signal_strength", unit_of_measurement="dBm",
                         state_class="measurement", entity_category="diagnostic",
                         state_topic=state, value_template="{{ value_json.rssi }}"),
            self._config("sensor", node, "heap", device, name="Free heap",
                         device_class="data_size", unit_of_measurement="B",
                         state_class="measurement", entity_category="diagnostic",
                         state_topic=state, value_template="{{ value_json.heap }}"),
            self._config("sensor", node, "queue", device, name="Send queue",
                         unit_of_measurement="frames", state_class="measurement",
                         icon="mdi:tray-full", state_topic=state,
                         value_template="{{ value_json.queue }}"),
            self._config("sensor", node, "frames", device, name="Frames today",
                         unit_of_measurement="frames", state_class="total_increasing",
                         icon="mdi:image-multiple", state_topic=state,
                         value_template="{{ value_json.frames }}"),
            self._config("sensor", node, "health", device, name="Health",
                         icon="mdi:heart-pulse", state_topic=state,
                         value_template="{{ value_json.health }}",
                         json_attributes_topic=state,
                         json_attributes_template="{{ {'cause': value_json.health_kind} "
                                                  "| tojson }}"),
        ])
        if image is not None and image.jpeg is not None:
            out.update([self._config("image", node, "thumbnail", device, name="Latest thumbnail",
                                     image_topic=ha_state_topic(dev.device, "image"),
                                     content_type="image/jpeg")])
        elif image is not None and image.url is not None:
            out.update([self._config("image", node, "thumbnail", device, name="Latest thumbnail",
                                     url_topic=ha_state_topic(dev.device, "image_url"))])
        return out

    def alert_config(self, alert: Alert, camera: DeviceView | None) -> dict[str, bytes]:
        """Config and state of the problem sensor of one active alert.

        Args:
            alert: The alert.
            camera: The camera it is about, or None (a service, storage, the broker).

        Returns:
            ``{topic: payload}``.
        """
        if camera is not None:
            node, device = node_id(camera.device), self._device_block(camera)
            obj, state = f"alert_{alert.rule}", ha_state_topic(camera.device,
                                                                f"alert/{alert.rule}")
        else:
            node = HUB_NODE
            device = {"identifiers": [HUB_NODE], "name": "camstack", "manufacturer": "camstack",
                      "model": "camstack monitor"}
            obj = f"alert_{alert.rule}_{alert.subject}"
            state = f"{HUB_STATE}/alert/{alert.rule}/{alert.subject}"
        out = dict([self._config("binary_sensor", node, obj, device,
                                 name=f"{alert.rule.replace('_', ' ')}"
                                 + ("" if camera is not None else f" {alert.subject}"),
                                 device_class="problem", state_topic=state,
                                 payload_on="ON", payload_off="OFF",
                                 json_attributes_topic=state + "/attributes")])
        out[state] = b"ON"
        out[state + "/attributes"] = _json({"message": alert.message,
                                            "severity": alert.severity,
                                            "since_ms": alert.since_ms})
        return out

    # ------------------------------------------------------------------- states
    @staticmethod
    def camera_state(model: HealthModel, dev: DeviceView, now_ms: int) -> bytes:
        """The JSON the camera's entities read (``camstack/ha/<id>/state``)."""
        st = dev.status
        health = device_health(model, dev, now_ms)

        def num(key: str) -> int | float | None:
            v = st.get(key)
            return v if isinstance(v, int | float) and not isinstance(v, bool) else None

        return _json({"online": "ON" if dev.state == "online" else "OFF",
                      "rssi": num("rssi"), "heap": num("heap_free"), "queue": num("queue"),
                      "frames": dev.frames_today, "health": health.cause,
                      "health_kind": health.kind})

    def desired(self, model: HealthModel, alerts: Iterable[Alert], now_ms: int,
                images: Mapping[str, Image | None], gone: set[str] | frozenset[str] = frozenset()
                ) -> dict[str, bytes]:
        """Every retained message that should exist now.

        Args:
            model: Current knowledge.
            alerts: Active alerts.
            now_ms: Reference time.
            images: Thumbnail of each camera (absent or None: no image entity).
            gone: Cameras known revoked.

        Returns:
            ``{topic: payload}``.
        """
        cams = {d: dev for d, dev in model.devices.items() if is_camera(dev) and d not in gone}
        out: dict[str, bytes] = {}
        for device, dev in sorted(cams.items()):
            image = images.get(device)
            out.update(self.camera_configs(dev, image))
            out[ha_state_topic(device, "state")] = self.camera_state(model, dev, now_ms)
            if image is not None and image.jpeg is not None:
                out[ha_state_topic(device, "image")] = image.jpeg
            elif image is not None and image.url is not None:
                out[ha_state_topic(device, "image_url")] = image.url.encode()
        for alert in alerts:
            camera = cams.get(alert.subject)
            if camera is None and alert.subject in model.devices:
                continue  # an alert about a camera that is gone
            out.update(self.alert_config(alert, camera))
        return out

    def changes(self, desired: Mapping[str, bytes]) -> list[tuple[str, bytes]]:
        """What to publish (retained) to go from what is published to ``desired``.

        Configs are removed after their states and created before them, so Home
        Assistant never subscribes to a state that is about to disappear.

        Args:
            desired: From :meth:`desired`.

        Returns:
            ``(topic, payload)`` in publishing order; an empty payload deletes.
        """
        gone = [t for t in self.published if t not in desired]
        new = [t for t, p in desired.items() if self.published.get(t) != p]
        configs_last = sorted(gone, key=lambda t: t.endswith("/config"))
        configs_first = sorted(new, key=lambda t: not t.endswith("/config"))
        out = [(t, b"") for t in configs_last] + [(t, desired[t]) for t in configs_first]
        for t in gone:
            del self.published[t]
        self.published.update({t: desired[t] for t in new})
        return out


def is_camera(dev: DeviceView) -> bool:
    """A device with a status (a deleted retained status leaves none: the camera is gone)."""
    return bool(dev.status) or dev.state != UNKNOWN
