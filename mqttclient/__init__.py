"""paho-mqtt helpers every service and tool shares (MQTT 5, TLS, sessions, JSON).

One exception root, :class:`MqttError`, raised only by these helpers; callers convert
it at their boundary (a service logs and retries, a CLI prints one line).
"""

from mqttclient.client import (
    MqttConnectError,
    MqttError,
    connect_blocking,
    connect_properties,
    make_client,
    offline_payload,
    publish_json,
    session_client_id,
    wait_published,
)

__all__ = [
    "MqttConnectError",
    "MqttError",
    "connect_blocking",
    "connect_properties",
    "make_client",
    "offline_payload",
    "publish_json",
    "session_client_id",
    "wait_published",
]
