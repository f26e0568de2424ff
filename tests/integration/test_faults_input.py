"""Bad input on every topic the services read, through the real broker, while good
cameras stream.

* ``cam/<id>/frame`` (ingestor): a compromised device publishes thousands of mutated
  chunks (bit flips, cuts, header fields replaced, spliced data, random bytes) and
  floods one chunk thousands of times (each copy an unacked message it holds), with
  the ingestor's window set small enough for that flood to overflow it.
* ``cam/<id>/ready`` (encoder): an account with the right to announce batches
  publishes hundreds of malformed events (deep JSON, wrong types, huge numbers,
  paths out of the storage root, batches that do not exist, not UTF-8).
* ``cam/<id>/status`` (monitor, ``camstack status``): the device leaves
  retained garbage statuses; the status report still works.
* A payload over the broker's ``max_packet_size``: refused, sender disconnected.

Neither service may crash or restart, every good frame the broker acknowledged must
be in exactly one video, every malformed event must be acknowledged and counted, and
no unacknowledged chunk may stay behind (the broker's window would clog).
"""

from __future__ import annotations

import json
import os
import random
import struct
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from camstack.brokerproc import BrokerHandle, start_broker
from camstack.mqttwait import disconnected_event
from camstack.procs import scrape
from config.settings import MonitorSettings, StorageSettings
from contract.codec import HEADER_LEN, split_frame
from monitor.service import status_report
from tests.support.faults import (
    ServiceStack,
    VideoWatcher,
    audit,
    env_int,
    metric_sum,
    print_row,
    settled,
    video_locations,
    wait_until,
)
from tests.support.fleet import Fleet, MarkedCamera, marker_jpeg

pytestmark = pytest.mark.integration

BASE_SEED = env_int("CAM_FAULT_SEED", int.from_bytes(os.urandom(3), "big"))
FUZZ_CHUNKS = env_int("CAM_FAULT_FUZZ_CHUNKS", 3000)
FLOOD = 1500
WINDOW = 500  # ingest.max_partial_chunks for this test: the flood overflows it
FIELDS = [(0, "<2s"), (2, "<B"), (3, "<B"), (4, "<I"), (8, "<I"), (12, "<H"), (14, "<H"),
          (16, "<I"), (20, "<I"), (24, "<I"), (28, "<Q")]
NASTY: list[Any] = [None, True, -1, 0, 2**64, 10**400, 1.5, float("inf"), "", "..",
                    "../../etc/passwd", "/etc", "batches/x/../../..", "x" * 5000,
                    "cam01\u0000", [], {}, [[[[]]]], {"a": {"b": {}}}]


def mutated_chunks(rng: random.Random, n: int) -> list[bytes]:
    """``n`` payloads made from valid chunks of the attacker's own frames."""
    valid = [p for seq in range(4)
             for p in split_frame(marker_jpeg(200, seq), boot_id=rng.choice([1, 2]),
                                  frame_seq=seq, chunk_data=rng.randrange(300, 3000))]
    out = []
    for _ in range(n):
        base = bytearray(rng.choice(valid))
        kind = rng.randrange(7)
        if kind == 0:
            pos = rng.randrange(len(base))
            base[pos] ^= 1 << rng.randrange(8)
        elif kind == 1:
            base = base[:rng.randrange(len(base))]
        elif kind == 2:
            base += rng.randbytes(rng.randrange(1, 200))
        elif kind in (3, 4):
            offset, fmt = rng.choice(FIELDS)
            size = struct.calcsize(fmt)
            value: Any = (rng.randbytes(2) if fmt == "<2s"
                          else rng.choice([0, 1, 2 ** (8 * size) - 1,
                                           rng.randrange(2 ** (8 * size))]))
            struct.pack_into(fmt, base, offset, value)
        elif kind == 5:
            base = base[:HEADER_LEN] + bytearray(rng.choice(valid)[HEADER_LEN:])
        else:
            base = bytearray(rng.randbytes(rng.randrange(0, 300)))
        out.append(bytes(base))
    return out


def bad_ready_events(rng: random.Random, device: str, n: int) -> list[bytes]:
    batch = f"{device}-20261124T101500Z-0001"
    good: dict[str, Any] = {"v": 1, "device": device, "batch": batch, "frames": 3,
                            "first_capture_ms": 1795515300000,
                            "last_capture_ms": 1795515302000,
                            "location": f"batches/{device}/{batch}"}
    out: list[bytes] = [b"[" * 100_000 + b"]" * 100_000, b"\xff\xfe\x00", b"", b"null",
                        json.dumps(good).encode()]  # valid, but no such batch
    while len(out) < n:
        ev = dict(good)
        for _ in range(rng.randrange(1, 3)):
            ev[rng.choice([*good, "extra"])] = rng.choice(NASTY)
        raw = json.dumps(ev).encode()
        if rng.random() < 0.2:
            raw = raw[:rng.randrange(len(raw))]
        out.append(raw)
    return out


# The empty payload comes first: as the last retained message it would clear the topic,
# and the report would then have no garbage left to read.
BAD_STATUSES: list[bytes] = [
    b"",
    b"[" * 100_000 + b"]" * 100_000,
    b'{"state":"online","heap_free":' + b"9" * 400 + b',"rssi":"x","queue":[1]}',
    b'{"state":["online"],"uptime_s":-1,"frames_sent":1e999}',
    b"\xff\xfe",
]


def publish_all(client: mqtt.Client, topic: str, payloads: list[bytes], *,
                retain: bool = False) -> None:
    infos = [client.publish(topic, p, qos=1, retain=retain) for p in payloads]
    for i in infos:
        i.wait_for_publish(60)


@pytest.fixture
def unmetered_broker(tmp_path: Path) -> Iterator[BrokerHandle]:
    """A broker whose guard lets a device send as fast as it likes.

    The guard would disconnect this test's attacker long before its thousands of chunks
    reach the ingestor (tests/integration/test_broker_guard.py proves that); here the
    ingestor's own defences are under test, so every chunk must get through.
    """
    handle = start_broker(tmp_path / "broker", device_msgs_per_s=1e6, device_burst_msgs=10**6,
                          device_bytes_per_s=8 * 1024**3, device_burst_bytes=10**10)
    yield handle
    handle.close()


def test_bad_input_on_every_topic_crashes_nothing_and_loses_no_good_frame(
        unmetered_broker: BrokerHandle, tmp_path: Path, cleanup: list[Any]) -> None:
    broker = unmetered_broker
    seed = BASE_SEED
    rng = random.Random(seed)
    print(f"fault seed {seed}")
    tag = uuid.uuid4().hex[:6]
    root = tmp_path / "store"
    stack = ServiceStack(broker, tmp_path, root, tag=tag, ingest={
        "frames_per_video": 20, "idle_seal_s": 1.0, "partial_timeout_s": 3,
        "max_partial_chunks": WINDOW, "receive_maximum": 4 * WINDOW})
    cleanup.append(stack)
    watcher = VideoWatcher(broker, tag)
    cleanup.append(watcher)
    stack.start_all()
    ingestor, encoder = stack.current["ingestor"], stack.current["encoder"]
    assert ingestor is not None and encoder is not None
    good = [f"g{tag}{i}" for i in range(2)]
    attacker = f"x{tag}"
    passwords = {d: broker.store.add(d, "device") for d in [*good, attacker]}
    broker.reload()
    fleet = Fleet([MarkedCamera(i, d, broker.mqtt_settings(d, passwords[d]), fps=10)
                   for i, d in enumerate(good)])
    cleanup.append(fleet)
    fleet.start()
    wait_until(lambda: bool(video_locations(root)), 30, "a first video")

    bad = broker.client(attacker, passwords[attacker], client_id=attacker,
                        before_connect=lambda c: c.max_inflight_messages_set(1000))
    fuzz = mutated_chunks(rng, FUZZ_CHUNKS)
    flood_chunk = split_frame(marker_jpeg(201, 0), boot_id=9, frame_seq=0, chunk_data=500)[0]
    publish_all(bad, f"cam/{attacker}/frame", fuzz[: len(fuzz) // 2])
    publish_all(bad, f"cam/{attacker}/frame", [flood_chunk] * FLOOD)
    publish_all(bad, f"cam/{attacker}/frame", fuzz[len(fuzz) // 2:])
    publish_all(bad, f"cam/{attacker}/status", BAD_STATUSES, retain=True)
    # Over the broker's packet limit: refused, the sender is cut off.
    gone = disconnected_event(bad)
    bad.publish(f"cam/{attacker}/frame", b"x" * (broker.settings.max_packet_bytes + 1), qos=1)
    assert gone.wait(10), "the broker took a packet over max_packet_size"
    bad.loop_stop()

    forger_name = f"ingestor-f{tag}"
    broker.add_service(forger_name)
    forger = broker.client(forger_name, client_id=forger_name)
    bad_ready = bad_ready_events(rng, attacker, 300)
    publish_all(forger, f"cam/{attacker}/ready", bad_ready)
    publish_all(forger, f"cam/{good[0]}/ready", bad_ready[:50])
    forger.disconnect()
    forger.loop_stop()

    # The status report (monitor code) reads the retained garbage and still works.
    reporter = f"operator-r{tag}"
    broker.add_service(reporter)
    mon = MonitorSettings(mqtt=broker.mqtt_settings(reporter),
                          storage=StorageSettings(root=root))
    report = status_report(mon, account=reporter)
    assert attacker in report and good[0] in report

    time.sleep(1.0)
    unacked = fleet.finish(30)
    assert fleet.errors() == {} and unacked == 0
    wait_until(lambda: settled(root), 90, "every good frame sealed and encoded")
    wait_until(lambda: video_locations(root) <= watcher.seen(), 15, "every video announced")
    malformed_sent = len(bad_ready) + 50

    def malformed_counted() -> float:
        m = scrape(encoder)
        return metric_sum(m, "camstack_encoder_ready_malformed_total")

    wait_until(lambda: malformed_counted() >= malformed_sent, 60, "every bad event handled")
    # Partial junk frames time out (partial_timeout_s) and their chunks are acked.
    wait_until(lambda: scrape(ingestor)[("camstack_ingestor_unacked_chunks", ())] == 0, 20,
               "no chunk left unacknowledged")
    mi, me = scrape(ingestor), scrape(encoder)
    events = stack.events("ingestor")
    drops = [e for e in events if e.get("event") == "frame_dropped"]
    rejections = [e for e in events if e.get("event") == "frame_rejected"]
    assert stack.alive("ingestor") and stack.alive("encoder")
    assert [len(v) for v in stack.history.values()] == [1, 1], "a service restarted"
    assert stack.stop_all() == {"encoder": 0, "ingestor": 0}
    result = audit(root, fleet, ignore_devices={attacker}, announced=watcher.seen())
    print_row("bad_input", seed, {
        "fuzzed_chunks": len(fuzz), "flood_copies": FLOOD, "window": WINDOW,
        "rejected": len(rejections), "dropped": len(drops),
        "dropped_good": len([d for d in drops if d["device"] != attacker]),
        "chunks_received": int(mi[("camstack_ingestor_chunks_received_total", ())]),
        "bad_ready": malformed_sent,
        "ready_malformed_counted": int(metric_sum(me, "camstack_encoder_ready_malformed_total")),
        "bad_statuses": len(BAD_STATUSES)}, result)
    assert {e["device"] for e in rejections} == {attacker}
    assert drops and {d["device"] for d in drops} == {attacker}
    assert any(d["reason"] == "evicted_window" for d in drops), "the flood did not overflow"
    assert int(metric_sum(me, "camstack_encoder_ready_malformed_total")) == malformed_sent
    assert result.problems() == [], f"seed {seed}: {result.problems()}"
    assert result.acked == result.sent
    assert result.on_disk == 0 and result.in_videos == result.acked
