"""Home Assistant discovery payloads checked against Home Assistant's documented keys."""

from __future__ import annotations

import json
from typing import Any

from monitor.health import Alert, HealthModel
from monitor.homeassistant import Image, Publisher

T0 = 1_795_515_300_000

# From home-assistant.io/integrations/{sensor,binary_sensor,image}.mqtt/ ("Configuration
# Variables") and the MQTT discovery page (device, origin, availability blocks).
COMMON = {"availability", "availability_mode", "availability_template", "availability_topic",
          "default_entity_id", "device", "enabled_by_default", "encoding", "entity_category",
          "entity_picture", "icon", "json_attributes_template", "json_attributes_topic",
          "name", "object_id", "origin", "payload_available", "payload_not_available", "qos",
          "unique_id"}
PLATFORM_KEYS = {
    "sensor": COMMON | {"device_class", "expire_after", "force_update",
                        "last_reset_value_template", "options", "state_class", "state_topic",
                        "suggested_display_precision", "unit_of_measurement",
                        "value_template"},
    "binary_sensor": COMMON | {"device_class", "expire_after", "force_update", "off_delay",
                               "payload_off", "payload_on", "state_topic", "value_template"},
    "image": COMMON | {"content_type", "image_encoding", "image_topic", "url_template",
                       "url_topic"},
}
REQUIRED = {"sensor": {"state_topic"}, "binary_sensor": {"state_topic"}, "image": set()}
DEVICE_KEYS = {"configuration_url", "connections", "hw_version", "identifiers", "manufacturer",
               "model", "model_id", "name", "serial_number", "suggested_area", "sw_version",
               "via_device"}
AVAILABILITY_KEYS = {"payload_available", "payload_not_available", "topic", "value_template"}
ORIGIN_KEYS = {"name", "sw_version", "support_url"}
DEVICE_CLASSES: dict[str, set[str | None]] = {"sensor": {"signal_strength", "data_size", None},
                  "binary_sensor": {"connectivity", "problem"}, "image": {None}}
STATE_CLASSES = {"measurement", "total", "total_increasing", "measurement_angle"}


def validate(topic: str, payload: bytes) -> dict[str, Any]:
    """Check one discovery config as Home Assistant would; returns the parsed body."""
    prefix, component, node, obj, tail = topic.split("/")
    assert prefix == "homeassistant" and tail == "config" and component in PLATFORM_KEYS
    for part in (node, obj):
        assert part.replace("_", "").replace("-", "").isalnum(), part
    body: dict[str, Any] = json.loads(payload)
    keys = set(body)
    assert keys <= PLATFORM_KEYS[component], (topic, keys - PLATFORM_KEYS[component])
    assert REQUIRED[component] <= keys, topic
    if component == "image":
        assert ("image_topic" in body) != ("url_topic" in body), topic
    assert set(body["device"]) <= DEVICE_KEYS and body["device"]["identifiers"]
    assert "availability" in body and "availability_topic" not in body
    for a in body["availability"]:
        assert set(a) <= AVAILABILITY_KEYS and "topic" in a
    assert set(body["origin"]) <= ORIGIN_KEYS and "name" in body["origin"]
    assert body.get("device_class") in DEVICE_CLASSES[component], topic
    assert body.get("state_class", "measurement") in STATE_CLASSES
    assert body.get("entity_category", "diagnostic") in {"config", "diagnostic"}
    assert isinstance(body["unique_id"], str) and isinstance(body["name"], str)
    for k in ("state_topic", "image_topic", "url_topic", "json_attributes_topic"):
        if k in body:
            assert "+" not in body[k] and "#" not in body[k]
    return body


def _model() -> HealthModel:
    m = HealthModel(started_ms=T0)
    m.apply("cam/cam01/status", json.dumps({"state": "online", "rssi": -82, "heap_free": 1234,
                                            "queue": 2, "fw": "1.2.0"}).encode(), T0)
    m.apply("cam/cam02/status", b'{"state":"offline"}', T0)
    return m


def test_every_config_matches_the_documented_keys() -> None:
    m = _model()
    pub = Publisher("homeassistant", "svc/operator-monitor/status", "0.1.0")
    alerts = [Alert("device_offline", "cam02", "cam02 offline", 1, 1, since_ms=T0),
              Alert("disk_full", "storage", "full", 95, 90, "critical", T0)]
    desired = pub.desired(m, alerts, T0, {"cam01": Image(jpeg=b"\xff\xd8jpeg"),
                                          "cam02": Image(url="http://h/thumbs/cam02/b.jpg")})
    configs = {t: validate(t, p) for t, p in desired.items() if t.endswith("/config")}
    uids = [c["unique_id"] for c in configs.values()]
    assert len(uids) == len(set(uids))
    comps = {(t.split("/")[1], t.split("/")[3]) for t in configs if "camstack_cam01/" in t}
    assert comps == {("binary_sensor", "online"), ("sensor", "rssi"), ("sensor", "heap"),
                     ("sensor", "queue"), ("sensor", "frames"), ("sensor", "health"),
                     ("image", "thumbnail")}
    img = configs["homeassistant/image/camstack_cam01/thumbnail/config"]
    assert img["image_topic"] == "camstack/ha/cam01/image" and img["content_type"] == "image/jpeg"
    assert desired["camstack/ha/cam01/image"] == b"\xff\xd8jpeg"
    assert configs["homeassistant/image/camstack_cam02/thumbnail/config"]["url_topic"] == (
        "camstack/ha/cam02/image_url")
    state = json.loads(desired["camstack/ha/cam01/state"])
    assert state == {"online": "ON", "rssi": -82, "heap": 1234, "queue": 2, "frames": None,
                     "health": "weak Wi-Fi (\u221282 dBm)", "health_kind": "weak_wifi"}
    prob = configs["homeassistant/binary_sensor/camstack_cam02/alert_device_offline/config"]
    assert prob["device_class"] == "problem"
    assert desired[prob["state_topic"]] == b"ON"
    hub = configs["homeassistant/binary_sensor/camstack/alert_disk_full_storage/config"]
    assert hub["device"]["identifiers"] == ["camstack"]
    assert all(c["availability"] == [{"topic": "svc/operator-monitor/status",
                                      "value_template": "{{ value_json.state }}"}]
               for c in configs.values())


def test_no_image_entity_without_a_thumbnail() -> None:
    pub = Publisher("homeassistant", "svc/m/status")
    desired = pub.desired(_model(), [], T0, {})
    assert not any("/image/" in t for t in desired)


def test_changes_publish_once_and_remove_what_is_gone() -> None:
    m = _model()
    pub = Publisher("homeassistant", "svc/m/status")
    alert = Alert("device_offline", "cam02", "x", 1, 1)
    first = pub.changes(pub.desired(m, [alert], T0, {}))
    assert first and all(p for _t, p in first)
    configs = [i for i, (t, _p) in enumerate(first) if t.endswith("/config")]
    assert max(configs) < min(i for i, (t, _p) in enumerate(first) if not t.endswith("/config"))
    assert pub.changes(pub.desired(m, [alert], T0, {})) == []  # nothing changed
    # The alert clears and cam02's retained status is deleted: all of it goes.
    m.apply("cam/cam02/status", b"", T0)
    gone = pub.changes(pub.desired(m, [], T0, {}))
    assert gone and all(p == b"" for _t, p in gone)
    assert {t for t, _p in gone} >= {
        "homeassistant/binary_sensor/camstack_cam02/alert_device_offline/config",
        "homeassistant/binary_sensor/camstack_cam02/online/config", "camstack/ha/cam02/state"}
    assert not any("cam01" in t for t, _p in gone)
    # Revoked: cam01 goes too.
    assert any("cam01" in t for t, _p in pub.changes(pub.desired(m, [], T0, {}, {"cam01"})))


def test_adopts_only_its_own_retained_messages() -> None:
    pub = Publisher("homeassistant", "svc/m/status")
    pub.adopt("homeassistant/sensor/camstack_old/rssi/config", b"{}")
    pub.adopt("homeassistant/sensor/zigbee_x/temp/config", b"{}")
    pub.adopt("camstack/ha/old/state", b"{}")
    assert set(pub.published) == {"homeassistant/sensor/camstack_old/rssi/config",
                                  "camstack/ha/old/state"}
    assert sorted(pub.changes({})) == [("camstack/ha/old/state", b""),
                                       ("homeassistant/sensor/camstack_old/rssi/config", b"")]
