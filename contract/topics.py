"""Every MQTT topic and filter of the contract (docs/protocol.md), and the ACL lines.

The device topics are ``<prefix>/<id>/<kind>``; services report on
``svc/<name>/status``; alerts are ``<alert prefix>/<rule>/<subject>``. Only this module
spells them out.
"""

from __future__ import annotations

from typing import Literal

from contract.ids import is_device_id

DeviceTopicKind = Literal["frame", "status", "cmd", "ready", "video"]
DEVICE_KINDS: tuple[DeviceTopicKind, ...] = ("frame", "status", "cmd", "ready", "video")
SERVICE_PREFIX = "svc"
SHARE_PREFIX = "$share"


def device_topic(prefix: str, device: str, kind: DeviceTopicKind) -> str:
    """``<prefix>/<device>/<kind>``."""
    return f"{prefix}/{device}/{kind}"


def frame_topic(prefix: str, device: str) -> str:
    """Where a device publishes its frame chunks."""
    return device_topic(prefix, device, "frame")


def status_topic(prefix: str, device: str) -> str:
    """A device's retained status (and last will)."""
    return device_topic(prefix, device, "status")


def cmd_topic(prefix: str, device: str) -> str:
    """Commands to one device."""
    return device_topic(prefix, device, "cmd")


def ready_topic(prefix: str, device: str) -> str:
    """Where the ingestor announces a sealed batch of ``device``."""
    return device_topic(prefix, device, "ready")


def video_topic(prefix: str, device: str) -> str:
    """Where the encoder announces a video (retained)."""
    return device_topic(prefix, device, "video")


def all_devices(prefix: str, kind: DeviceTopicKind) -> str:
    """The filter of one kind for every device: ``<prefix>/+/<kind>``."""
    return f"{prefix}/+/{kind}"


def shared(group: str, topic_filter: str) -> str:
    """A shared-subscription filter: ``$share/<group>/<filter>``."""
    return f"{SHARE_PREFIX}/{group}/{topic_filter}"


def service_status_topic(service: str) -> str:
    """A service's retained status (and last will): ``svc/<service>/status``."""
    return f"{SERVICE_PREFIX}/{service}/status"


ALL_SERVICE_STATUS = f"{SERVICE_PREFIX}/+/status"
"""Every service's status."""


def alert_topic(alert_prefix: str, rule: str, subject: str) -> str:
    """An alert, retained while it holds: ``<alert_prefix>/<rule>/<subject>``."""
    return f"{alert_prefix}/{rule}/{subject}"


HA_DISCOVERY_PREFIX = "homeassistant"
"""Home Assistant's MQTT discovery prefix (its default); the monitor writes configs there."""
HA_STATE_PREFIX = "camstack/ha"
"""Where the monitor publishes the states its Home Assistant entities read."""


def ha_state_topic(device: str, name: str) -> str:
    """A Home Assistant state topic of one camera: ``camstack/ha/<device>/<name>``."""
    return f"{HA_STATE_PREFIX}/{device}/{name}"


def parse_device_topic(topic: str, prefix: str) -> tuple[str, DeviceTopicKind] | None:
    """``(device, kind)`` of a device topic, or None for anything else.

    Args:
        topic: A topic name (never a filter).
        prefix: The device topic prefix.

    Returns:
        The device id (a valid one) and the kind.
    """
    parts = topic.split("/")
    if len(parts) != 3 or parts[0] != prefix or not is_device_id(parts[1]):
        return None
    kind = parts[2]
    for k in DEVICE_KINDS:
        if k == kind:
            return parts[1], k
    return None


def device_acl_patterns(prefix: str) -> list[str]:
    """The ACL ``pattern`` lines that bind every device to its own topics (``%u``)."""
    return [
        f"pattern write {device_topic(prefix, '%u', 'frame')}",
        f"pattern write {device_topic(prefix, '%u', 'status')}",
        f"pattern read {device_topic(prefix, '%u', 'cmd')}",
    ]


def role_acl_lines(prefix: str) -> dict[str, list[str]]:
    """ACL lines of each service role; ``{name}`` stands for the account's name."""
    own = f"topic readwrite {SERVICE_PREFIX}/{{name}}/#"
    return {
        "ingestor": [f"topic read {all_devices(prefix, 'frame')}",
                     f"topic write {all_devices(prefix, 'ready')}", own],
        "encoder": [f"topic read {all_devices(prefix, 'ready')}",
                    f"topic write {all_devices(prefix, 'video')}", own],
        # The monitor (an operator) also writes Home Assistant's discovery configs and the
        # states they point at; devices have pattern lines only, so they never can.
        "operator": ["topic read #", "topic read $SYS/#",
                     f"topic write {all_devices(prefix, 'cmd')}", "topic readwrite alerts/#",
                     f"topic write {HA_DISCOVERY_PREFIX}/#", f"topic write {HA_STATE_PREFIX}/#",
                     own],
    }
