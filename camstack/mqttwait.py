"""Small helpers to collect messages from a real broker in tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode


class Collector:
    """Subscribes and records every message it receives."""

    def __init__(self, client: mqtt.Client) -> None:
        self.client = client
        self.messages: list[mqtt.MQTTMessage] = []
        self.lock = threading.Lock()
        self.suback: list[list[ReasonCode]] = []
        self._subacked = threading.Event()
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append(msg)

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _mid: int, rcs: list[ReasonCode],
                      _p: Any) -> None:
        self.suback.append(list(rcs))
        self._subacked.set()

    def subscribe(self, topic: str, qos: int = 1, timeout: float = 5.0) -> list[ReasonCode]:
        """Subscribe and wait for SUBACK; returns its reason codes."""
        self._subacked.clear()
        self.client.subscribe(topic, qos=qos)
        assert self._subacked.wait(timeout), "no SUBACK"
        return self.suback[-1]

    def wait_for(self, pred: Callable[[list[mqtt.MQTTMessage]], bool],
                 timeout: float = 10.0) -> bool:
        """Wait until ``pred(messages)`` holds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if pred(self.messages):
                    return True
            time.sleep(0.02)
        with self.lock:
            return pred(self.messages)

    def topics(self) -> list[str]:
        """Topics received so far."""
        with self.lock:
            return [m.topic for m in self.messages]


def disconnected_event(client: mqtt.Client) -> threading.Event:
    """An event set when the client loses its connection."""
    ev = threading.Event()

    def on_disconnect(*_a: Any) -> None:
        ev.set()

    client.on_disconnect = on_disconnect
    return ev
