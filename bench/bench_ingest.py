"""Frames/s stored by the real ingestor vs a bare paho subscriber, same broker, same run.

Both consumers drain the same kind of backlog from a persistent session: the broker
queues every chunk while the consumer is away, then the consumer connects and the
clock runs until it has everything. The baseline only counts messages (auto-ack); the
ingestor reassembles, checks, writes, fsyncs and acknowledges. The ratio is what the
ingestor's work costs against the ceiling of paho + TLS + Mosquitto on this machine.

    python bench/bench_ingest.py [--devices 20] [--frames 100] [--width 640] [--height 480]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import paho.mqtt.client as mqtt

from broker.mqtt import connect_properties, make_client
from ingestor.protocol import split_frame
from tests.support.brokerproc import BrokerHandle, start_broker
from tests.support.jpegs import make_jpeg
from tests.support.procs import ServiceProcess, service_config

T0 = 1795515300000


def publish_backlog(broker: BrokerHandle, devices: list[str], jpegs: list[bytes], frames: int,
                    boot_id: int) -> int:
    """Every device publishes ``frames`` frames, all chunks QoS 1, acked by the broker."""
    chunks = 0
    clients = {d: broker.client(d, PASSWORDS[d],
                                client_id=d) for d in devices}
    infos: list[mqtt.MQTTMessageInfo] = []
    for seq in range(frames):
        for i, d in enumerate(devices):
            jpeg = jpegs[(seq + i) % len(jpegs)]
            for p in split_frame(jpeg, boot_id=boot_id, frame_seq=seq,
                                 capture_ms=T0 + seq * 1000, clock_synced=True):
                infos.append(clients[d].publish(f"cam/{d}/frame", p, qos=1))
                chunks += 1
        if len(infos) > 4000:
            for info in infos:
                info.wait_for_publish(30)
            infos.clear()
    for info in infos:
        info.wait_for_publish(30)
    for c in clients.values():
        c.disconnect()
        c.loop_stop()
    return chunks


PASSWORDS: dict[str, str] = {}


def baseline(broker: BrokerHandle, devices: list[str], jpegs: list[bytes], frames: int,
             receive_maximum: int) -> tuple[float, int]:
    """Seconds for a bare subscriber to drain the backlog, and the chunk count."""
    name = "operator-bench"
    broker.add_service(name)
    s = broker.mqtt_settings(name, client_id=name)
    count = [0]
    target = [0]
    done = threading.Event()
    connected = threading.Event()

    def on_message(_c: mqtt.Client, _u: object, _m: mqtt.MQTTMessage) -> None:
        count[0] += 1
        if target[0] and count[0] >= target[0]:
            done.set()

    def session(sub: bool) -> mqtt.Client:
        c = make_client(s, client_id=name)
        c.on_message = on_message
        c.on_connect = lambda *_a: connected.set()
        connected.clear()
        c.connect(s.host, s.port, keepalive=s.keepalive_s, clean_start=False,
                  properties=connect_properties(s, receive_maximum=receive_maximum))
        c.loop_start()
        assert connected.wait(10)
        if sub:
            c.subscribe("cam/+/frame", qos=1)
            time.sleep(0.5)
        return c

    c = session(True)
    c.disconnect()
    c.loop_stop()
    target[0] = publish_backlog(broker, devices, jpegs, frames, boot_id=1)
    t0 = time.monotonic()
    c = session(False)
    assert done.wait(600), f"baseline got {count[0]} of {target[0]}"
    seconds = time.monotonic() - t0
    c.disconnect()
    c.loop_stop()
    return seconds, target[0]


def ingestor_run(broker: BrokerHandle, tmp: Path, devices: list[str], jpegs: list[bytes],
                 frames: int) -> tuple[float, int]:
    """Seconds for the real ingestor to store the backlog durably (log timestamps)."""
    account = "ingestor-bench"
    broker.add_service(account)
    cfg = service_config(broker, account, tmp / "store", tmp / "ing.toml",
                         ingest={"frames_per_video": 300})
    first = ServiceProcess("ingestor", cfg, tmp / "first.log").start()
    first.wait_event("ingestor_ready", 30)
    assert first.stop() == 0
    publish_backlog(broker, devices, jpegs, frames, boot_id=2)
    total = len(devices) * frames
    svc = ServiceProcess("ingestor", cfg, tmp / "run.log").start()
    deadline = time.monotonic() + 600
    stored: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        stored = [e for e in svc.events() if e.get("event") == "frame_stored"]
        if len(stored) >= total:
            break
        time.sleep(0.2)
    connected = svc.wait_event("mqtt_connected")
    assert svc.stop() == 0
    assert len(stored) >= total, f"ingestor stored {len(stored)} of {total}"

    def ts(e: dict[str, object]) -> float:
        return dt.datetime.fromisoformat(str(e["timestamp"]).replace("Z", "+00:00")).timestamp()

    return ts(stored[-1]) - ts(connected), total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--devices", type=int, default=20)
    ap.add_argument("--frames", type=int, default=100, help="frames per device")
    ap.add_argument("--width", type=int, default=800)
    ap.add_argument("--height", type=int, default=600)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    os.environ.setdefault("CAM_TEST_NO_DOCKER", "1")
    broker = start_broker(tmp / "broker")
    try:
        devices = [f"bench{i:03d}" for i in range(args.devices)]
        for d in devices:
            PASSWORDS[d] = broker.store.add(d, "device")
        broker.reload()
        jpegs = [make_jpeg(args.width, args.height, i, quality=90) for i in range(8)]
        avg = sum(map(len, jpegs)) / len(jpegs)
        n_frames = args.devices * args.frames
        chunks_per = len(split_frame(jpegs[0], boot_id=0, frame_seq=0))
        print(f"backlog: {args.devices} devices x {args.frames} frames = {n_frames} frames, "
              f"~{avg / 1024:.1f} KiB each, ~{chunks_per} chunks of 8 KiB, TLS, QoS 1")
        b_sec, chunks = baseline(broker, devices, jpegs, args.frames, 65535)
        print(f"bare paho subscriber : {chunks} chunks in {b_sec:.2f} s = "
              f"{chunks / b_sec:,.0f} chunks/s = {n_frames / b_sec:,.0f} frames/s")
        i_sec, total = ingestor_run(broker, tmp, devices, jpegs, args.frames)
        print(f"ingestor (stored+fsync+ack): {total} frames in {i_sec:.2f} s = "
              f"{total / i_sec:,.0f} frames/s ({total / i_sec * avg / 1e6:.1f} MB/s)")
        print(f"ratio ingestor/baseline: {(total / i_sec) / (n_frames / b_sec):.2f}")
    finally:
        broker.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
