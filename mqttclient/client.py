"""paho-mqtt client set-up shared by the services, tools and tests.

MQTT 5 by default: session expiry makes a service's session (and the QoS 1 messages
queued for it) outlive a crash; the broker uses our Receive Maximum (65535 by default
in paho) as its in-flight window towards us. ``mqtt.protocol = "3.1.1"`` (for the NATS
engine, which speaks only 3.1.1): no CONNECT properties; the session is kept or
cleaned by the clean-session flag, chosen when the client is made; the client id gets a
suffix derived from the password (:func:`session_client_id`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import ssl
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from config.settings import MqttSettings


class MqttError(Exception):
    """Base of every error the MQTT helpers raise."""


class MqttConnectError(MqttError):
    """The broker refused or never answered our connection."""


def offline_payload() -> bytes:
    """The last-will payload every status topic falls back to."""
    return b'{"state":"offline"}'


def session_client_id(client_id: str, password: str) -> str:
    """The client id an MQTT 3.1.1 client sends: ``<id>-<16 hex of HMAC(password, id)>``.

    NATS, the broker that speaks 3.1.1 here, has no ``use_username_as_clientid``: any
    account may connect under any client id, and one that takes a service's id with a
    clean session deletes that session and the frames queued in it (measured,
    tests/integration/test_nats_cluster.py). An id derived from the account's password
    is the same after every restart (the session is found again) and cannot be guessed
    by a device. Changing the password starts a new session: drain the old one first.

    Args:
        client_id: The configured id.
        password: The account's password; empty: the id is returned unchanged.

    Returns:
        The id to send.
    """
    if not password:
        return client_id
    tag = hmac.new(password.encode(), client_id.encode(), hashlib.sha256).hexdigest()[:16]
    return f"{client_id}-{tag}"


def make_client(
    settings: MqttSettings,
    *,
    client_id: str | None = None,
    manual_ack: bool = False,
    will_topic: str | None = None,
    clean_session: bool = False,
) -> mqtt.Client:
    """A configured, unconnected MQTT client (version from ``settings.protocol``).

    Args:
        settings: Connection settings.
        client_id: Overrides ``settings.client_id``.
        manual_ack: Hold QoS 1 acks until ``client.ack()`` (paho ``manual_ack``).
        will_topic: Retained ``{"state":"offline"}`` last will on this topic.
        clean_session: MQTT 3.1.1 only (fixed here for every connection): start without
            the previous session, and let the broker drop it at disconnect. MQTT 5
            chooses at each connect (``clean_start``).

    Returns:
        The client.
    """
    cid = client_id or settings.client_id or settings.username or ""
    if settings.protocol == "3.1.1":
        password = settings.resolved_password() if settings.username else ""
        cid = session_client_id(cid, password)
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid,
                             protocol=mqtt.MQTTv311, clean_session=clean_session,
                             manual_ack=manual_ack)
    else:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=cid,
            protocol=mqtt.MQTTv5,
            manual_ack=manual_ack,
        )
    if settings.username:
        client.username_pw_set(settings.username, settings.resolved_password())
    if settings.tls.enabled:
        client.tls_set(
            ca_certs=str(settings.tls.ca_file) if settings.tls.ca_file else None,
            certfile=str(settings.tls.cert_file) if settings.tls.cert_file else None,
            keyfile=str(settings.tls.key_file) if settings.tls.key_file else None,
            cert_reqs=ssl.CERT_REQUIRED,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
    if will_topic is not None:
        client.will_set(will_topic, offline_payload(), qos=1, retain=True)
    client.reconnect_delay_set(
        min_delay=max(1, int(settings.reconnect_min_s)), max_delay=int(settings.reconnect_max_s)
    )
    return client


def connect_properties(settings: MqttSettings, *, receive_maximum: int | None = None) -> Properties:
    """CONNECT properties: the session expiry that keeps our queue while we are away.

    Args:
        settings: Connection settings.
        receive_maximum: MQTT 5 Receive Maximum (1..65535). paho sends none by default,
            and Mosquitto 2.0 then falls back to its ``max_inflight_messages`` (measured:
            see docs/ingestor.md); a subscriber that holds acks sets it explicitly.

    Returns:
        The properties.
    """
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = settings.session_expiry_s
    if receive_maximum is not None:
        props.ReceiveMaximum = receive_maximum
    return props


def connect_blocking(
    client: mqtt.Client,
    settings: MqttSettings,
    *,
    clean_start: bool = False,
    timeout: float = 10.0,
    receive_maximum: int | None = None,
) -> None:
    """Connect, start the network thread and wait for CONNACK.

    Args:
        client: From :func:`make_client`.
        settings: Connection settings.
        clean_start: False keeps the previous session (and its queued messages). MQTT
            3.1.1: must equal the client's clean-session flag (:func:`make_client`).
        timeout: Seconds to wait for CONNACK.
        receive_maximum: MQTT 5 Receive Maximum (see :func:`connect_properties`).

    Raises:
        MqttConnectError: Refused, unreachable or no answer in time.
        ValueError: MQTT 3.1.1 and ``clean_start`` differs from the client's flag.
    """
    # paho keeps a 3.1.1 client's flag in ``_clean_session`` (the version is pinned).
    if (settings.protocol == "3.1.1"
            and bool(getattr(client, "_clean_session", clean_start)) != clean_start):
        raise ValueError(f"clean_start={clean_start} needs make_client(..., "
                         f"clean_session={clean_start}) with MQTT 3.1.1")
    done = threading.Event()
    result: dict[str, Any] = {}
    previous = client.on_connect

    def on_connect(c: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags,
                   rc: ReasonCode, props: Properties | None) -> None:
        result["rc"] = rc
        done.set()
        if previous is not None:
            previous(c, userdata, flags, rc, props)  # type: ignore[call-arg,arg-type]

    client.on_connect = on_connect
    try:
        if settings.protocol == "3.1.1":
            # No properties, no clean start: the client's clean-session flag decides.
            client.connect(settings.host, settings.port, keepalive=settings.keepalive_s)
        else:
            props = connect_properties(settings, receive_maximum=receive_maximum)
            client.connect(settings.host, settings.port, keepalive=settings.keepalive_s,
                           clean_start=clean_start, properties=props)
    except (OSError, ssl.SSLError) as exc:
        client.on_connect = previous
        raise MqttConnectError(f"cannot reach {settings.host}:{settings.port}: {exc}") from exc
    client.loop_start()
    ok = done.wait(timeout)
    client.on_connect = previous
    if not ok:
        client.loop_stop()
        raise MqttConnectError(f"no CONNACK from {settings.host}:{settings.port} in {timeout}s")
    rc = result["rc"]
    if rc.is_failure:
        client.loop_stop()
        client.disconnect()
        raise MqttConnectError(f"connection refused by broker: {rc}")


def publish_json(
    client: mqtt.Client, topic: str, obj: Any, *, retain: bool = False, qos: int = 1
) -> mqtt.MQTTMessageInfo:
    """Publish ``obj`` as compact JSON.

    Args:
        client: Connected client.
        topic: Topic.
        obj: JSON-serialisable value.
        retain: Retained message.
        qos: QoS level.

    Returns:
        paho's message info (``wait_for_publish()`` waits for the PUBACK).
    """
    payload = json.dumps(obj, separators=(",", ":"), sort_keys=True)
    return client.publish(topic, payload, qos=qos, retain=retain)


def wait_published(info: mqtt.MQTTMessageInfo, timeout: float) -> bool:
    """Wait for a QoS 1 PUBACK without raising when the client is disconnected.

    Args:
        info: From ``publish``.
        timeout: Seconds.

    Returns:
        True when acknowledged in time.
    """
    if info.rc == mqtt.MQTT_ERR_NO_CONN:
        # paho keeps a QoS 1 message published while disconnected, sends it after the
        # reconnect and marks it published on the PUBACK, but its is_published() raises
        # for as long as rc says NO_CONN, even once delivered (paho 2.2, tested).
        info.rc = mqtt.MQTT_ERR_SUCCESS
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if info.is_published():
            return True
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            return False
        time.sleep(0.005)
    return info.is_published()
