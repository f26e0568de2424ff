"""`camstack cmd` against the real broker: the device receives exactly the valid commands.

A subscriber logged in as the device itself (its ACL allows reading its own cmd
topic) collects what arrives. Invalid commands are sent first: had any of them left
the tool, it would arrive before the valid one that follows.
"""

from __future__ import annotations

import json
import queue
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from camstack.brokerproc import BrokerHandle
from camstack.cli import main

pytestmark = pytest.mark.integration


def _cmd(broker: BrokerHandle, *args: str) -> int:
    return main(["--data-dir", str(broker.data_dir), "cmd", *args, "--mqtt-host", "127.0.0.1",
                 "--port", str(broker.tls_port)])


def test_cmd_reaches_the_device_and_bad_values_never_leave(
        broker: BrokerHandle, capsys: pytest.CaptureFixture[str]) -> None:
    device = "cmdcam1"
    password = broker.add_device(device)
    got: queue.Queue[tuple[str, bytes, int]] = queue.Queue()

    def hook(c: mqtt.Client) -> None:
        def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
            got.put((msg.topic, bytes(msg.payload), msg.qos))
        c.on_message = on_message

    sub = broker.client(device, password, before_connect=hook)
    try:
        res = sub.subscribe(f"cam/{device}/cmd", qos=1)
        assert res[0] == mqtt.MQTT_ERR_SUCCESS
        # The broker handles one connection's packets in order: once this PUBACK is
        # back, the subscription is in place.
        sub.publish(f"cam/{device}/status", b"{}", qos=1).wait_for_publish(10)

        assert _cmd(broker, device, "set", "--interval-ms", "50") == 2
        assert "interval_ms must be an integer 100..86400000" in capsys.readouterr().err
        assert _cmd(broker, device, '{"cmd":"set","fps":3}') == 2
        assert "unknown field 'fps'" in capsys.readouterr().err
        assert _cmd(broker, device, "set", "--frame-size", "UXGA", "--jpeg-quality", "4") == 2
        capsys.readouterr()

        assert _cmd(broker, device, "set", "--interval-ms", "1000", "--frame-size", "SVGA",
                    "--jpeg-quality", "12") == 0
        assert "the broker acknowledged it" in capsys.readouterr().out
        topic, body, qos = got.get(timeout=10)
        assert topic == f"cam/{device}/cmd" and qos == 1
        assert json.loads(body) == {"cmd": "set", "interval_ms": 1000, "frame_size": "SVGA",
                                    "jpeg_quality": 12}
        for verb in ("reboot", "status"):
            assert _cmd(broker, device, verb) == 0
            assert json.loads(got.get(timeout=10)[1]) == {"cmd": verb}
        assert got.empty()
        # A device that does not exist (or was revoked) is refused before connecting.
        assert _cmd(broker, "nosuchcam", "status") == 1
        assert "no active device 'nosuchcam'" in capsys.readouterr().err
    finally:
        sub.disconnect()
        sub.loop_stop()
