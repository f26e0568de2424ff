"""The device simulator against the real broker: wire contract, status, will, faults."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zlib
from collections import defaultdict
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from PIL import Image, ImageChops

from camstack.brokerproc import BrokerHandle
from camstack.mqttwait import Collector
from camstack.sim import Faults, FrameRenderer, SimCamera, SimConfig
from contract.codec import looks_like_jpeg, unpack_chunk

pytestmark = pytest.mark.integration


def _watch(broker: BrokerHandle, account: str, device: str) -> tuple[mqtt.Client, Collector]:
    if account not in {a.name for a in broker.store.list()}:
        broker.add_service(account)
    client = broker.client(account, client_id=account)
    col = Collector(client)
    col.subscribe(f"cam/{device}/#")
    return client, col


def _frames(messages: list[mqtt.MQTTMessage], device: str
            ) -> dict[tuple[int, int], bytes | None]:
    """Reassemble frames from the collected chunks; None for a frame whose CRC fails."""
    parts: dict[tuple[int, int], dict[int, bytes]] = defaultdict(dict)
    headers = {}
    for m in [m for m in messages if m.topic == f"cam/{device}/frame"]:
        ch = unpack_chunk(bytes(m.payload))
        key = (ch.header.boot_id, ch.header.frame_seq)
        parts[key][ch.header.offset] = ch.data
        headers[key] = ch.header
    out: dict[tuple[int, int], bytes | None] = {}
    for key, by_off in parts.items():
        h = headers[key]
        if len(by_off) != h.chunk_count:
            continue
        data = b"".join(by_off[o] for o in sorted(by_off))
        ok = len(data) == h.frame_len and zlib.crc32(data) == h.frame_crc32
        out[key] = data if ok else None
    return out


def _statuses(col: Collector, device: str) -> list[dict[str, object]]:
    with col.lock:
        return [json.loads(m.payload) for m in col.messages
                if m.topic == f"cam/{device}/status" and m.payload]


def test_sim_streams_whole_frames_with_status(broker: BrokerHandle) -> None:
    dev = "simt-a"
    pw = broker.add_device(dev)
    client, col = _watch(broker, "operator-simt", dev)
    cfg = SimConfig(fps=25, frames=6, chunk_data=2048, width=320, height=240,
                    faults=Faults(duplicate_rate=0.3, seed=1))
    cam = SimCamera(dev, broker.mqtt_settings(dev, pw), cfg).start()
    assert cam.finished.wait(30), "camera did not finish"
    stats = cam.stop()
    assert cam.error is None
    assert stats.frames_sent == 6 and stats.frames_acked == 6
    assert stats.chunks_duplicated > 0
    assert col.wait_for(lambda ms: sum(m.topic.endswith("/frame") for m in ms)
                        == stats.chunks_sent)
    frames = _frames(col.messages, dev)
    assert sorted(seq for _, seq in frames) == list(range(6))
    assert {boot for boot, _ in frames} == {cam.boot_id}
    for data in frames.values():
        assert data is not None and looks_like_jpeg(data)
        img = Image.open(io.BytesIO(data))
        assert img.size == (320, 240)
    assert col.wait_for(lambda ms: any(json.loads(m.payload).get("state") == "offline"
                                       for m in ms if m.topic.endswith("/status")))
    st = _statuses(col, dev)
    assert st[0]["state"] == "online" and st[0]["boot_id"] == cam.boot_id
    assert {"rssi", "heap_free", "queue", "frames_sent", "fw"} <= set(st[0])
    assert st[-1] == {"state": "offline"}
    client.disconnect()
    client.loop_stop()


def test_sim_corrupt_frames_fail_crc(broker: BrokerHandle) -> None:
    dev = "simt-b"
    pw = broker.add_device(dev)
    client, col = _watch(broker, "operator-simt", dev)
    cfg = SimConfig(fps=25, frames=3, chunk_data=4096, faults=Faults(corrupt_rate=1.0))
    cam = SimCamera(dev, broker.mqtt_settings(dev, pw), cfg).start()
    assert cam.finished.wait(30)
    stats = cam.stop()
    assert stats.frames_corrupted == 3 and stats.frames_acked == 3
    assert col.wait_for(lambda ms: sum(m.topic.endswith("/frame") for m in ms)
                        == stats.chunks_sent)
    frames = _frames(col.messages, dev)
    assert len(frames) == 3
    assert all(v is None for v in frames.values())
    client.disconnect()
    client.loop_stop()


def test_sim_drop_fires_will_then_resumes_without_losing_frames(broker: BrokerHandle) -> None:
    dev = "simt-c"
    pw = broker.add_device(dev)
    client, col = _watch(broker, "operator-simt", dev)
    cfg = SimConfig(fps=10, frames=12, chunk_data=4096,
                    faults=Faults(drop_every_s=0.5, drop_pause_s=0.3))
    cam = SimCamera(dev, broker.mqtt_settings(dev, pw), cfg).start()
    assert cam.finished.wait(60)
    stats = cam.stop()
    assert cam.error is None
    assert stats.drops >= 1
    assert stats.frames_acked == 12
    assert col.wait_for(lambda ms: len(_frames(ms, dev)) == 12, timeout=15)
    assert all(v is not None for v in _frames(col.messages, dev).values())
    states = [s["state"] for s in _statuses(col, dev)]
    # online, then the will (offline) from the drop, then online again, finally offline.
    first_off = states.index("offline")
    assert "online" in states[first_off:]
    assert states[-1] == "offline"
    client.disconnect()
    client.loop_stop()


def test_rendered_frames_show_motion_and_time() -> None:
    r = FrameRenderer("simt-d", 160, 120)
    a = Image.open(io.BytesIO(r.render(0, 1_795_515_300_000))).convert("RGB")
    b = Image.open(io.BytesIO(r.render(5, 1_795_515_300_000))).convert("RGB")
    c = Image.open(io.BytesIO(r.render(5, 1_795_515_301_000))).convert("RGB")
    diff_motion = ImageChops.difference(a, b).getbbox()
    diff_time = ImageChops.difference(b, c).getbbox()
    assert diff_motion is not None
    # The timestamp lives in the black band at the top: only that band changes.
    assert diff_time is not None and diff_time[1] < 40


def test_simulate_command_provisions_and_reports(broker: BrokerHandle) -> None:
    repo = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, "-m", "camstack", "--data-dir", str(broker.data_dir), "simulate",
           "--port", str(broker.tls_port), "--devices", "2", "--device-prefix", "simcli-",
           "--fps", "20", "--frames", "4", "--cache", "2", "--duplicate-rate", "0.5"]
    runs = [subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=60,
                           check=False) for _ in range(2)]
    for res in runs:  # the second run reuses the accounts and their stored passwords
        assert res.returncode == 0, res.stdout + res.stderr
        report = json.loads(res.stdout.strip().splitlines()[-1])
        assert report["frames_acked"] == 8 and report["errors"] == 0
        assert report["chunks_duplicated"] > 0
    assert (broker.data_dir / "sim" / "simcli-01.pass").stat().st_mode & 0o777 == 0o600


def test_revoking_a_streaming_sim_camera_is_reported_as_its_error(broker: BrokerHandle) -> None:
    # It used to end its thread with an uncaught RuntimeError while the summary said
    # 0 errors.
    dev = "sim-revoked"
    pw = broker.add_device(dev)
    cam = SimCamera(dev, broker.mqtt_settings(dev, pw),
                    SimConfig(fps=20, frames=100, drain_timeout_s=2)).start()
    assert cam.connected.wait(10)
    broker.revoke(dev)
    assert cam.finished.wait(60)
    assert cam.error is not None and cam.stats.errors == 1
    assert cam.stats.frames_acked < 100
