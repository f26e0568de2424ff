"""The NATS engine's wiring into the services and tools (issue 17): pure checks."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from config.settings import EncoderSettings, MqttSettings
from monitor.service import broker_sys_topics


def _s3() -> dict[str, object]:
    return {"backend": "s3", "s3": {"bucket": "camstack", "endpoint_url": "http://127.0.0.1:1"}}


def test_encoder_refuses_the_mqtt_runner_on_3_1_1() -> None:
    with pytest.raises(ValidationError, match=r"\$share.*runner = \"jetstream\""):
        EncoderSettings(mqtt=MqttSettings(protocol="3.1.1"))
    ok = EncoderSettings(mqtt=MqttSettings(protocol="3.1.1"), runner="jetstream",
                         store=_s3())
    assert ok.runner == "jetstream"
    assert EncoderSettings().runner == "mqtt"  # MQTT 5 unchanged


def test_monitor_follows_no_sys_on_3_1_1() -> None:
    assert broker_sys_topics(MqttSettings(protocol="3.1.1")) == ()
    assert "$SYS/broker/publish/messages/dropped" in broker_sys_topics(MqttSettings())
