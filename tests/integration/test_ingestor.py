"""The real ingestor process against the real broker, on a real disk."""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from camstack.brokerproc import BrokerHandle
from camstack.jpegs import make_jpeg
from camstack.mqttwait import Collector
from camstack.procs import ServiceProcess, scrape, service_config
from contract.codec import ChunkHeader, crc32, pack_chunk, split_frame

pytestmark = pytest.mark.integration

T0 = 1795515300000


def uid() -> str:
    return uuid.uuid4().hex[:6]


def start_ingestor(broker: BrokerHandle, tmp: Path, account: str, **ingest: Any) -> ServiceProcess:
    broker.add_service(account)
    cfg = service_config(broker, account, tmp / "store", tmp / f"{account}.toml", ingest=ingest)
    svc = ServiceProcess("ingestor", cfg, tmp / f"{account}.log").start()
    svc.wait_event("ingestor_ready", 30)
    return svc


def on_disk(root: Path) -> dict[tuple[str, int, int], list[Path]]:
    """Frame files by (device, boot_id, seq), in frames/ and batches/."""
    found: dict[tuple[str, int, int], list[Path]] = {}
    for p in root.rglob("*.jpg"):
        rel = p.relative_to(root).parts
        device = rel[1]
        _ts, boot, seq = p.stem.split("_")
        found.setdefault((device, int(boot, 16), int(seq)), []).append(p)
    return found


def wait_until(pred: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    assert pred(), f"timed out waiting for {what}"


def publish_all(client: mqtt.Client, topic: str, payloads: list[bytes]) -> None:
    infos = [client.publish(topic, p, qos=1) for p in payloads]
    for i in infos:
        i.wait_for_publish(15)
        assert i.is_published()


@pytest.fixture
def operator(broker: BrokerHandle) -> Iterator[Collector]:
    name = f"operator-{uid()}"
    broker.add_service(name)
    c = broker.client(name, client_id=name)
    yield Collector(c)
    c.disconnect()
    c.loop_stop()


@pytest.mark.parametrize("fast_receive", [True, False], ids=["netio", "paho"])
def test_shuffled_duplicated_chunks_stored_byte_identical_bad_ones_rejected(
        broker: BrokerHandle, tmp_path: Path, operator: Collector, fast_receive: bool) -> None:
    # Both receive paths: the lean reader (default) and paho's own, the fallback.
    account = f"ingestor-{uid()}"
    svc = start_ingestor(broker, tmp_path, account, frames_per_video=1000,
                         fast_receive=fast_receive)
    devs = [f"cam{uid()}", f"cam{uid()}"]
    clients = {d: broker.client(d, broker.add_device(d), client_id=d) for d in devs}
    rnd = random.Random(1)
    good: dict[tuple[str, int, int], bytes] = {}
    stream: list[tuple[str, bytes]] = []
    for di, d in enumerate(devs):
        for seq in range(6):
            jpeg = make_jpeg(160, 120, di * 100 + seq)
            good[(d, 77, seq)] = jpeg
            stream += [(d, p) for p in split_frame(jpeg, boot_id=77, frame_seq=seq,
                                                   capture_ms=T0 + seq * 1000,
                                                   clock_synced=seq % 2 == 0, chunk_data=500)]
    bad_dev = devs[0]
    jpeg = make_jpeg(160, 120, 999)
    crc_bad = split_frame(jpeg, boot_id=78, frame_seq=0, chunk_data=500)
    crc_bad[1] = crc_bad[1][:-1] + bytes([crc_bad[1][-1] ^ 0xFF])
    not_jpeg = split_frame(b"GIF89a" + bytes(900), boot_id=78, frame_seq=1, chunk_data=500)
    mismatch = split_frame(jpeg, boot_id=78, frame_seq=2, chunk_data=500)
    mismatch[1] = split_frame(jpeg, boot_id=78, frame_seq=2, chunk_data=500, capture_ms=9)[1]
    too_large = [pack_chunk(ChunkHeader(0, 78, 3, 0, 2, 5 * 1024 * 1024, crc32(jpeg), 0, 0),
                            jpeg)]
    stream += [(bad_dev, p) for p in crc_bad + not_jpeg + mismatch + too_large]
    stream += [(bad_dev, b"\x00" * 10), (bad_dev, b"XX" + bytes(40))]
    stream += [rnd.choice(stream) for _ in range(len(stream) // 4)]  # QoS 1 style duplicates
    rnd.shuffle(stream)
    infos = [clients[d].publish(f"cam/{d}/frame", p, qos=1) for d, p in stream]
    for i in infos:
        i.wait_for_publish(15)
    root = tmp_path / "store"
    wait_until(lambda: len([e for e in svc.events() if e.get("event") == "frame_stored"])
               >= len(good), 30, "frames stored")
    wait_until(lambda: {"crc_mismatch", "not_jpeg", "header_mismatch", "too_large",
                        "short_header", "bad_magic"} <= {e["reason"] for e in svc.events()
                                                         if e.get("event") == "frame_rejected"},
               10, "rejections")
    rejected = [e for e in svc.events() if e.get("event") == "frame_rejected"]
    assert all(e["device"] == bad_dev for e in rejected)
    files = on_disk(root)
    assert set(files) == set(good)
    for key, paths in files.items():
        assert len(paths) == 1
        assert paths[0].read_bytes() == good[key]
        _d, _boot, seq = key
        if seq % 2 == 0:  # clock-synced frames are filed under their capture time
            assert paths[0].name.startswith(f"{T0 + seq * 1000:013d}_")
    m = scrape(svc)
    for reason in ("crc_mismatch", "not_jpeg", "header_mismatch", "too_large"):
        assert m[("camstack_ingestor_rejections_total",
                  (("device", bad_dev), ("reason", reason)))] == 1
    assert sum(v for (n, lab), v in m.items() if n == "camstack_ingestor_frames_stored_total") == 12
    # Gauges are refreshed a few times a second: wait, do not sample once.
    wait_until(lambda: scrape(svc)[("camstack_ingestor_unacked_chunks", ())] == 0, 10, "all acked")
    assert svc.stop() == 0
    operator.subscribe(f"svc/{account}/status")
    assert operator.wait_for(bool, 5)
    assert json.loads(operator.messages[-1].payload)["state"] == "offline"
    for c in clients.values():
        c.disconnect()
        c.loop_stop()


def test_ready_events_at_threshold_in_order(broker: BrokerHandle, tmp_path: Path,
                                            operator: Collector) -> None:
    account = f"ingestor-{uid()}"
    svc = start_ingestor(broker, tmp_path, account, frames_per_video=4)
    d = f"cam{uid()}"
    dev = broker.client(d, broker.add_device(d), client_id=d)
    operator.subscribe(f"cam/{d}/ready")
    jpegs = [make_jpeg(96, 64, i) for i in range(10)]
    for seq, j in enumerate(jpegs):
        publish_all(dev, f"cam/{d}/frame",
                    split_frame(j, boot_id=0xBEEF, frame_seq=seq, capture_ms=T0 + seq * 1000,
                                clock_synced=True, chunk_data=700))
    assert operator.wait_for(lambda ms: len(ms) >= 2, 30)
    events = [json.loads(m.payload) for m in operator.messages]
    root = tmp_path / "store"
    assert [e["batch"] for e in events] == [f"{d}-20261124T101500Z-0001",
                                            f"{d}-20261124T101504Z-0002"]
    for n, e in enumerate(events):
        assert e == {"v": 1, "device": d, "batch": e["batch"], "frames": 4,
                     "first_capture_ms": T0 + 4 * n * 1000,
                     "last_capture_ms": T0 + (4 * n + 3) * 1000,
                     "location": f"batches/{d}/{e['batch']}"}
        man = json.loads((root / e["location"] / "manifest.json").read_text())
        assert [f["frame_seq"] for f in man["frames"]] == [4 * n + i for i in range(4)]
        for f in man["frames"]:
            data = (root / e["location"] / f["file"]).read_bytes()
            assert data == jpegs[f["frame_seq"]]
            assert (f["bytes"], f["crc32"], f["clock_synced"]) == (len(data), crc32(data), True)
    left = sorted(p.name for p in (root / "frames" / d).rglob("*.jpg"))
    assert left == [f"{T0 + s * 1000:013d}_0000beef_{s:010d}.jpg" for s in (8, 9)]
    svc.wait_event(lambda e: e.get("event") == "batch_announced" and e["batch"].endswith("2"))
    assert svc.stop() == 0
    # A restart announces the sealed batches still on disk again (harmless twice).
    operator.messages.clear()
    svc2 = ServiceProcess("ingestor", svc.config, tmp_path / "second.log").start()
    svc2.wait_event("ingestor_ready", 30)
    assert operator.wait_for(lambda ms: len(ms) >= 2, 30)
    assert sorted(json.loads(m.payload)["batch"] for m in operator.messages) == [
        e["batch"] for e in events]
    assert svc2.stop() == 0
    dev.disconnect()
    dev.loop_stop()


def test_sigkill_mid_stream_loses_no_acknowledged_frame(broker: BrokerHandle,
                                                        tmp_path: Path) -> None:
    account = f"ingestor-{uid()}"
    svc = start_ingestor(broker, tmp_path, account, frames_per_video=5, fsync_interval_ms=5)
    devs = [f"cam{uid()}" for _ in range(3)]
    clients = {d: broker.client(d, broker.add_device(d), client_id=d) for d in devs}
    acked: dict[tuple[str, int, int], bytes] = {}
    lock = threading.Lock()

    def device(d: str, n: int) -> None:
        for seq in range(40):
            jpeg = make_jpeg(120, 90, n * 1000 + seq)
            payloads = split_frame(jpeg, boot_id=n + 1, frame_seq=seq,
                                   capture_ms=T0 + seq * 1000, clock_synced=True,
                                   chunk_data=600)
            infos = [clients[d].publish(f"cam/{d}/frame", p, qos=1) for p in payloads]
            ok = True
            for i in infos:
                i.wait_for_publish(10)
                ok = ok and i.is_published()
            if ok:
                with lock:
                    acked[(d, n + 1, seq)] = jpeg
            time.sleep(0.01)

    threads = [threading.Thread(target=device, args=(d, n)) for n, d in enumerate(devs)]
    for t in threads:
        t.start()
    wait_until(lambda: len([e for e in svc.events() if e.get("event") == "frame_stored"]) >= 25,
               30, "some frames stored")
    svc.kill()
    for t in threads:
        t.join(60)
    assert len(acked) == 120  # the broker acknowledged every chunk (queued for our session)
    svc2 = ServiceProcess("ingestor", svc.config, tmp_path / "restart.log").start()
    svc2.wait_event("ingestor_ready", 30)
    root = tmp_path / "store"
    wait_until(lambda: set(acked) <= set(on_disk(root)), 60, "every acknowledged frame")
    time.sleep(0.5)  # let a possible duplicate write show up before judging
    files = on_disk(root)
    assert set(files) == set(acked)
    for key, paths in files.items():
        assert len(paths) == 1, paths
        assert paths[0].read_bytes() == acked[key]
    assert not [p for p in root.rglob(".*")], "temp files left behind"
    # The kill really was mid-stream: the second run stored what the first had not.
    assert any(e.get("event") == "frame_stored" for e in svc2.events())
    assert svc2.stop() == 0
    for c in clients.values():
        c.disconnect()
        c.loop_stop()


def test_200_interleaving_devices_do_not_stall(broker: BrokerHandle, tmp_path: Path) -> None:
    account = f"ingestor-{uid()}"
    svc = start_ingestor(broker, tmp_path, account, frames_per_video=1000,
                         partial_timeout_s=600)
    tag = uid()
    devs = [f"m{tag}{i:03d}" for i in range(200)]
    passwords = {d: broker.store.add(d, "device") for d in devs}
    broker.reload()
    clients = {d: broker.client(d, passwords[d], client_id=d) for d in devs}
    frames: dict[tuple[str, int, int], list[bytes]] = {}
    jpegs: dict[tuple[str, int, int], bytes] = {}
    for i, d in enumerate(devs):
        for seq in range(2):
            j = make_jpeg(64, 48, i * 2 + seq, quality=90)
            jpegs[(d, 1, seq)] = j
            frames[(d, 1, seq)] = split_frame(j, boot_id=1, frame_seq=seq,
                                              chunk_data=-(-len(j) // 8))
            assert len(frames[(d, 1, seq)]) == 8
    # Chunk 0 of all 400 frames, then chunk 1 of all, ...: 400 frames are partial at
    # once, 3200 unacked chunks, more than Mosquitto's default window of 1000.
    pubs: list[mqtt.MQTTMessageInfo] = []
    for idx in range(8):
        for (d, _b, _s), payloads in frames.items():
            pubs.append(clients[d].publish(f"cam/{d}/frame", payloads[idx], qos=1))
    for pub in pubs:
        pub.wait_for_publish(30)
    root = tmp_path / "store"
    wait_until(lambda: len(on_disk(root)) >= len(jpegs), 90, "all 400 frames")
    files = on_disk(root)
    assert set(files) == set(jpegs)
    assert all(p[0].read_bytes() == jpegs[k] for k, p in files.items())
    m = scrape(svc)
    assert not any(n == "camstack_ingestor_drops_total" and v for (n, _l), v in m.items())
    assert svc.stop() == 0
    for c in clients.values():
        c.disconnect()
        c.loop_stop()


def test_storage_failure_backpressure_then_recovery(broker: BrokerHandle, tmp_path: Path,
                                                    operator: Collector) -> None:
    account = f"ingestor-{uid()}"
    d = f"cam{uid()}"
    blocker = tmp_path / "store" / "frames" / d
    blocker.parent.mkdir(parents=True)
    blocker.write_text("a file where the device folder must be: every write fails")
    svc = start_ingestor(broker, tmp_path, account, storage_retry_s=0.3, max_pending_frames=2)
    operator.subscribe(f"svc/{account}/status")
    dev = broker.client(d, broker.add_device(d), client_id=d)
    jpegs = [make_jpeg(80, 60, 500 + i) for i in range(3)]
    for seq, j in enumerate(jpegs):
        publish_all(dev, f"cam/{d}/frame", split_frame(j, boot_id=9, frame_seq=seq,
                                                       chunk_data=900))
    svc.wait_event("storage_unavailable", 15)
    assert operator.wait_for(
        lambda ms: any(json.loads(m.payload)["state"] == "degraded" for m in ms), 10)
    # Two frames wait in memory; then the socket is no longer read, the third frame stays
    # with the broker.
    def paused_with_two() -> bool:
        m = scrape(svc)
        return (m[("camstack_ingestor_reading_paused", ())],
                m[("camstack_ingestor_pending_frames", ())]) == (1, 2)

    wait_until(paused_with_two, 10, "reading paused with 2 frames pending")
    m = scrape(svc)
    assert m[("camstack_ingestor_storage_available", ())] == 0
    assert m[("camstack_ingestor_unacked_chunks", ())] > 0  # nothing acknowledged while not durable
    assert m[("camstack_ingestor_chunks_received_total", ())] < sum(
        len(split_frame(j, boot_id=9, frame_seq=0, chunk_data=900)) for j in jpegs)
    blocker.unlink()
    svc.wait_event("storage_recovered", 15)
    wait_until(lambda: len(on_disk(tmp_path / "store")) == 3, 15, "frames after recovery")
    for (_d, _b, seq), paths in on_disk(tmp_path / "store").items():
        assert paths[0].read_bytes() == jpegs[seq]
    assert operator.wait_for(
        lambda ms: json.loads(ms[-1].payload)["state"] == "online", 10)
    wait_until(lambda: scrape(svc)[("camstack_ingestor_unacked_chunks", ())] == 0, 10, "acks sent")
    assert svc.stop() == 0
    dev.disconnect()
    dev.loop_stop()
