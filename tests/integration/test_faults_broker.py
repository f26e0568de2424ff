"""The broker restarted gracefully (SIGTERM, then started again) in the middle of a stream.

The cameras, the ingestor and the encoder all lose their connection at once and must
come back on their own: the cameras re-send what the broker had not acknowledged,
the broker restores the services' persistent sessions from its persistence file, and
every frame the broker acknowledged before or after the restart must end up in exactly
one video. ``CAM_FAULT_RUNS`` repeats the test; ``CAM_FAULT_RESTARTS`` sets the restarts
per run (default 2); the seed (``CAM_FAULT_SEED``) sets when they happen.
"""

from __future__ import annotations

import functools
import json
import os
import random
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from camstack.brokerproc import BrokerHandle
from camstack.jpegs import make_jpeg, write_batch
from mqttclient import connect_blocking, make_client, wait_published
from tests.support.faults import (
    ServiceStack,
    audit,
    env_int,
    print_row,
    settled,
    start_scenario,
    video_locations,
    wait_until,
)

pytestmark = pytest.mark.integration

RUNS = env_int("CAM_FAULT_RUNS", 1)
RESTARTS = env_int("CAM_FAULT_RESTARTS", 2)
BASE_SEED = env_int("CAM_FAULT_SEED", int.from_bytes(os.urandom(3), "big"))


def reconnected(stack: ServiceStack, times: int) -> bool:
    return all(sum(1 for e in stack.events(name) if e.get("event") == "mqtt_connected") >= times
               for name in stack.NAMES)


@pytest.mark.parametrize("run", range(RUNS))
def test_broker_restart_mid_stream_loses_nothing_acknowledged(
        fresh_broker: BrokerHandle, tmp_path: Path, cleanup: list[Any], run: int) -> None:
    seed = BASE_SEED + run
    rng = random.Random(seed)
    print(f"fault seed {seed} (CAM_FAULT_SEED={BASE_SEED}, run {run})")
    root = tmp_path / "store"
    sc = start_scenario(fresh_broker, tmp_path, root, cleanup, letter="b", cameras=3, fps=12,
                        ingest={"frames_per_video": 20, "idle_seal_s": 1.0})
    stack, watcher, fleet = sc.stack, sc.watcher, sc.fleet
    wait_until(lambda: any(e.get("event") == "video_written" for e in stack.events("encoder")),
               30, "a first video")
    downtime = []
    for n in range(RESTARTS):
        time.sleep(rng.uniform(0.3, 2.0))
        fresh_broker.stop()  # SIGTERM: Mosquitto saves its persistence file and exits
        pause = rng.uniform(0.5, 2.5)
        downtime.append(round(pause, 2))
        time.sleep(pause)
        fresh_broker.start()
        wait_until(functools.partial(reconnected, stack, n + 2), 30,
                   f"both services reconnected after restart {n + 1}")
        assert stack.alive("ingestor") and stack.alive("encoder")
    acked_before_end = len(fleet.acked())
    time.sleep(1.5)
    unacked = fleet.finish(30)
    assert fleet.errors() == {}
    assert unacked == 0, "frames never acknowledged after the restarts"
    # The cameras kept streaming after the restarts: frames were acked afterwards.
    assert len(fleet.acked()) > acked_before_end
    wait_until(lambda: settled(root), 90, "every frame sealed and encoded")
    assert stack.stop_all() == {"encoder": 0, "ingestor": 0}
    wait_until(lambda: video_locations(root) <= watcher.seen(), 15, "every video announced")
    result = audit(root, fleet, announced=watcher.seen())
    print_row("broker_restart", seed, {"restarts": RESTARTS, "downtime_s": downtime}, result)
    assert result.problems() == [], f"seed {seed}: {result.problems()}"
    assert result.acked == result.sent
    assert result.on_disk == 0 and result.in_videos == result.acked


def test_encoder_finds_batches_announced_while_its_shared_subscription_was_gone(
        fresh_broker: BrokerHandle, tmp_path: Path, cleanup: list[Any]) -> None:
    # Found by the restart test above: Mosquitto 2.0 restores a persistent session after
    # a restart but not its shared subscription, so a ready event published before the
    # encoder has subscribed again reaches nobody (the ingestor got its PUBACK and will
    # not repeat it). The encoder now scans for sealed batches after every re-subscribe.
    tag = uuid.uuid4().hex[:6]
    root = tmp_path / "store"
    stack = ServiceStack(fresh_broker, tmp_path, root, tag=tag, work={"rescan_interval_s": 0})
    cleanup.append(stack)
    encoder = stack.start("encoder")
    fresh_broker.stop()
    event = write_batch(root, f"r{tag}", [make_jpeg(64, 48, i) for i in range(3)])
    fresh_broker.start()
    # paho waits at least a second before reconnecting: publish in that window.
    announcer = fresh_broker.client(stack.accounts["ingestor"],
                                    client_id=stack.accounts["ingestor"])
    announcer.publish(f"cam/r{tag}/ready", json.dumps(event), qos=1).wait_for_publish(5)
    announcer.disconnect()
    announcer.loop_stop()
    reconnects = [e for e in encoder.events() if e.get("event") == "mqtt_connected"]
    assert len(reconnects) == 1, "the encoder was back before the event: no proof"
    encoder.wait_event("video_written", 20)
    assert stack.stop_all() == {"encoder": 0}
    assert not (root / event["location"]).exists()


def test_video_event_published_while_the_broker_is_down_is_sent_after_reconnect(
        fresh_broker: BrokerHandle) -> None:
    # mqttclient.client.wait_published raised RuntimeError for a QoS 1 message published while
    # disconnected (paho's is_published() checks rc first), so the encoder's job crashed
    # and its ready event was acked with the video event unpublished.
    name = f"encoder-{uuid.uuid4().hex[:6]}"
    fresh_broker.add_service(name)
    settings = fresh_broker.mqtt_settings(name)
    client = make_client(settings, client_id=name)
    connect_blocking(client, settings, clean_start=False)
    try:
        fresh_broker.stop()
        info = client.publish("cam/x/video", b"{}", qos=1)
        assert info.rc == mqtt.MQTT_ERR_NO_CONN
        assert wait_published(info, 0.3) is False
        fresh_broker.start()
        assert wait_published(info, 15) is True
    finally:
        client.disconnect()
        client.loop_stop()
