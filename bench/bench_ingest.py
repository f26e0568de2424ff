"""Ingest throughput, latency and memory: the real ingestor vs a bare paho subscriber.

Phase 1, throughput (**backlog drain**, same messages for both): the bare subscriber's
and the ingestor's persistent sessions are both subscribed to ``cam/+/frame`` and both
offline; simulated cameras (``--devices`` device accounts, TLS, QoS 1, SVGA JPEGs of
``--kb`` KB in 8 KiB chunks, cached frames, ``--pub-procs`` publisher processes) publish
``--frames`` frames each, and the broker queues every chunk once for each session. Then
each consumer connects alone and drains its queue while the clock runs from its
CONNACK to its last frame: the bare subscriber (a separate process, same kind of
service account, TLS, QoS 1, paho's own loop, Receive Maximum 65535, auto-ack) only
counts messages; the ingestor (``python -m ingestor``) reassembles, checks, writes,
fsyncs, acknowledges and seals. Order alternates per round (``--rounds``). Afterwards
every frame must be on disk exactly once (zero loss).

Phase 2, latency (**live stream**, ``--live-fps`` frames/s in total from the same
cameras for ``--live-s`` seconds): per frame, the time from handing its last chunk to
the socket (publisher) to its ``frame_stored`` log event (written after the file and
folder fsyncs, i.e. durable), both wall clocks of this machine.

    python bench/bench_ingest.py [--devices 20] [--frames 100] [--rounds 2]
        [--live-fps 500] [--live-s 10] [--kb 50]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import multiprocessing.connection as mpc
import os
import select
import shutil
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import paho.mqtt.client as mqtt

from bench.common import (
    LogTail,
    PublisherPool,
    bench_broker,
    broker_pid,
    cpu_seconds,
    fs_note,
    load,
    log_time,
    machine,
    pct,
    proc_status_kib,
    provision,
    pub_spec,
    storage_root,
    svga_jpegs,
    tree_kib,
)
from camstack.brokerproc import BrokerHandle
from camstack.procs import ServiceProcess, service_config
from config.settings import MqttSettings
from contract.layout import parse_frame_file_name
from ingestor.netio import FastReader, queue_pubacks
from mqttclient import connect_blocking, connect_properties, make_client

BARE = "operator-bench"
BARE_FAST = "operator-benchfast"
ING = "ingestor-bench"


# ===================================================================== bare subscriber
def bare_main(settings: MqttSettings, target: int, subscribe_only: bool,
              conn: mpc.Connection, fast: bool = False) -> None:
    """A subscriber that only counts messages (paho's own loop, auto-ack).

    With ``fast`` it reads through the ingestor's own receive path instead
    (``ingestor.netio``: large reads, PUBLISH decoded there, PUBACKs batched), still
    acknowledging every message at once.
    """
    count = 0
    first = last = 0.0
    connack = threading.Event()
    done = threading.Event()
    t_connack = [0.0]

    def on_connect(*_a: Any) -> None:
        t_connack[0] = time.time()
        connack.set()

    def on_message(_c: mqtt.Client, _u: object, _m: mqtt.MQTTMessage) -> None:
        nonlocal count, first, last
        count += 1
        last = time.time()
        if count == 1:
            first = last
        if count >= target:
            done.set()

    c = make_client(settings, client_id=settings.username, manual_ack=fast)
    c.on_connect = on_connect
    c.on_message = on_message
    c.connect(settings.host, settings.port, keepalive=60, clean_start=False,
              properties=connect_properties(settings, receive_maximum=65535))
    cpu0 = time.process_time()
    if fast and not subscribe_only:
        fast_loop(c, on_message, done)
    else:
        c.loop_start()
    assert connack.wait(10)
    if subscribe_only:
        sub = c.subscribe("cam/+/frame", qos=1)
        assert sub[0] == mqtt.MQTT_ERR_SUCCESS
        time.sleep(0.5)
    else:
        done.wait(600)
    cpu = time.process_time() - cpu0
    c.disconnect()
    c.loop_stop()
    conn.send({"count": count, "seconds": last - t_connack[0], "first": first, "last": last,
               "cpu_s": cpu, "peak_rss_kib": proc_status_kib(os.getpid(), "VmHWM")})


def fast_loop(c: mqtt.Client, on_message: Any, done: threading.Event) -> None:
    """The ingestor's receive path on a thread: count, ack at once (batched)."""
    reader = FastReader(c)
    mids: list[int] = []
    msg = mqtt.MQTTMessage()

    def on_publish(_t: str, _p: bytes, qos: int, mid: int, _retain: bool) -> None:
        if qos:
            mids.append(mid)
        on_message(c, None, msg)

    def loop() -> None:
        while not done.is_set():
            sock = c.socket()
            if sock is None:
                return
            if not reader.ready:
                select.select([sock], [sock] if c.want_write() else [], [], 0.2)
            reader.pump(on_publish, 256)
            if mids:
                queue_pubacks(c, mids)
                mids.clear()
            if c.want_write():
                c.loop_write()
            c.loop_misc()

    threading.Thread(target=loop, daemon=True).start()


def run_bare(broker: BrokerHandle, target: int, subscribe_only: bool = False,
             fast: bool = False) -> dict[str, Any]:
    """Run the bare subscriber in its own process until it has ``target`` messages."""
    ctx = mp.get_context("spawn")
    mine, theirs = ctx.Pipe()
    account = BARE_FAST if fast else BARE
    s = broker.mqtt_settings(account, client_id=account)
    bpid = broker_pid(broker)
    cpu_b = cpu_seconds(bpid)
    p = ctx.Process(target=bare_main, args=(s, target, subscribe_only, theirs, fast),
                    daemon=True)
    p.start()
    res: dict[str, Any] = mine.recv()
    res["broker_cpu_s"] = cpu_seconds(bpid) - cpu_b
    p.join(10)
    return res


# ===================================================================== ingestor
@dataclass
class IngestorRun:
    frames: int
    seconds: float
    peak_rss_kib: int
    cpu_s: float
    broker_cpu_s: float
    stored: list[dict[str, Any]]


def start_ingestor(broker: BrokerHandle, tmp: Path, name: str, root: Path,
                   **ingest: Any) -> tuple[ServiceProcess, Path]:
    cfg = service_config(broker, ING, root, tmp / "ing.toml",
                         ingest={"frames_per_video": 300, **ingest},
                         metrics={"enabled": False, "port": 0})
    svc = ServiceProcess("ingestor", cfg, tmp / f"{name}.log").start()
    return svc, cfg


def drain_ingestor(broker: BrokerHandle, tmp: Path, name: str, total: int,
                   root: Path) -> IngestorRun:
    """Start the ingestor on its queued session; time CONNACK -> last frame durable."""
    bpid = broker_pid(broker)
    cpu_b = cpu_seconds(bpid)
    svc, _ = start_ingestor(broker, tmp, name, root)
    tail = LogTail(svc.log_path)
    stored: list[dict[str, Any]] = []
    connected: dict[str, Any] | None = None
    deadline = time.monotonic() + 600
    assert svc.proc is not None
    pid = svc.proc.pid
    cpu0 = 0.0
    while time.monotonic() < deadline and len(stored) < total:
        for e in tail.read():
            if e.get("event") == "frame_stored":
                stored.append(e)
            elif e.get("event") == "mqtt_connected" and connected is None:
                connected = e
                cpu0 = cpu_seconds(pid)  # startup (imports, scan) not counted
        if svc.proc.poll() is not None:
            raise SystemExit(f"ingestor exited:\n{svc.log_path.read_text()[-3000:]}")
        time.sleep(0.05)
    peak = tree_kib(pid, "VmHWM")
    cpu = cpu_seconds(pid) - cpu0
    broker_cpu = cpu_seconds(bpid) - cpu_b
    assert svc.stop() == 0
    assert connected is not None
    if len(stored) < total:
        raise SystemExit(f"ingestor stored {len(stored)} of {total} frames in 600 s")
    return IngestorRun(len(stored), log_time(stored[-1]) - log_time(connected), peak, cpu,
                       broker_cpu, stored)


def drop_session(broker: BrokerHandle, account: str) -> None:
    """End ``account``'s persistent session (clean start, expiry 0)."""
    s = broker.mqtt_settings(account, client_id=account).model_copy(
        update={"session_expiry_s": 0})
    c = make_client(s, client_id=account)
    connect_blocking(c, s, clean_start=True)
    c.disconnect()
    c.loop_stop()


def frames_on_disk(root: Path) -> list[tuple[str, int, int]]:
    """(device, boot_id, seq) of every frame file under frames/ and batches/."""
    keys = []
    for p in list(root.glob("frames/*/*/*.jpg")) + list(root.glob("batches/*/*/frames/*.jpg")):
        name = parse_frame_file_name(p.name)
        assert name is not None, p
        keys.append((p.parts[-3] if p.parts[-4] == "frames" else p.parts[-4],
                     name[1], name[2]))
    return keys


# ===================================================================== main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=20)
    ap.add_argument("--frames", type=int, default=100, help="frames per device per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--kb", type=int, default=50, help="JPEG size in KB")
    ap.add_argument("--pub-procs", type=int, default=2)
    ap.add_argument("--live-fps", type=float, default=500.0, help="0: skip the latency phase")
    ap.add_argument("--live-s", type=float, default=10.0)
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    ap.add_argument("--storage", help="put the ingestor's storage in a fresh folder here "
                    "(default: the scratch folder); removed afterwards unless --keep")
    args = ap.parse_args()
    print(machine())
    jpegs = svga_jpegs(8, args.kb * 1000)
    avg = statistics.mean(map(len, jpegs))
    chunks_per = -(-int(avg) // 8192)
    n_frames = args.devices * args.frames
    print(f"frames: 800x600 JPEG, {avg / 1000:.1f} KB avg, {chunks_per} chunks of 8 KiB, "
          f"TLS, QoS 1; backlog {args.devices} devices x {args.frames} frames = "
          f"{n_frames} frames ({n_frames * chunks_per} chunks) per round")
    with bench_broker(args.keep) as (broker, tmp):
        devices = provision(broker, args.devices)
        broker.add_service(BARE)
        broker.add_service(BARE_FAST)
        broker.add_service(ING)
        # Create the persistent sessions with their subscriptions, then go offline.
        run_bare(broker, 0, subscribe_only=True)
        run_bare(broker, 0, subscribe_only=True, fast=True)
        root = storage_root(tmp, args.storage)
        print(f"storage: {root} on {fs_note(root)}")
        svc, _ = start_ingestor(broker, tmp, "setup", root)
        svc.wait_event("ingestor_ready", 30)
        assert svc.stop() == 0
        rows = []
        boot = 1
        for rnd in range(args.rounds):
            pool = PublisherPool(pub_spec(broker, devices, jpegs, frames=args.frames,
                                          window=8, boot_id=boot), args.pub_procs)
            pool.wait_connected()
            pub = pool.join()
            assert pub.frames_acked == n_frames, pub
            pub_s = pub.last_ack - pub.first_publish
            print(f"round {rnd + 1}: publishers queued {n_frames} frames in {pub_s:.2f} s "
                  f"({n_frames / pub_s:,.0f} frames/s into the broker, {args.pub_procs} procs,"
                  f" {pub.cpu_s:.1f} CPU-s)")
            order = ["bare", "fast", "ingestor"]
            order = order[rnd % 3:] + order[:rnd % 3]  # rotate: no one always goes first
            bares: dict[str, dict[str, Any]] = {}
            ing: IngestorRun | None = None
            for who in order:
                if who == "ingestor":
                    ing = drain_ingestor(broker, tmp, f"round{rnd}", n_frames, root)
                else:
                    bares[who] = run_bare(broker, n_frames * chunks_per, fast=who == "fast")
                    assert bares[who]["count"] >= n_frames * chunks_per, bares[who]
            assert ing is not None
            i_fps = n_frames / ing.seconds
            row = {"ingestor": i_fps}
            for who, label in (("bare", "bare paho subscriber"),
                               ("fast", "bare, ingestor's reader")):
                b = bares[who]
                row[who] = n_frames / b["seconds"]
                print(f"  {label:24s} {b['seconds']:5.2f} s {row[who]:7,.0f} frames/s "
                      f"({row[who] * avg / 1e6:5.1f} MB/s)  CPU {b['cpu_s']:.2f} s, broker CPU "
                      f"{b['broker_cpu_s']:.2f} s, peak RSS {b['peak_rss_kib'] / 1024:.0f} MiB")
            print(f"  {'ingestor':24s} {ing.seconds:5.2f} s {i_fps:7,.0f} frames/s "
                  f"({i_fps * avg / 1e6:5.1f} MB/s)  CPU {ing.cpu_s:.2f} s (+ disk child), "
                  f"broker CPU {ing.broker_cpu_s:.2f} s, "
                  f"peak RSS {ing.peak_rss_kib / 1024:.0f} MiB")
            print(f"  ratio ingestor/bare paho {i_fps / row['bare']:.2f}, ingestor/bare with the "
                  f"same reader {i_fps / row['fast']:.2f}  (order: {', '.join(order)})")
            rows.append(row)
            boot += 1
        keys = frames_on_disk(root)
        expect = args.rounds * n_frames
        print(f"zero loss: {len(keys)} frame files, {len(set(keys))} distinct, "
              f"{expect} published -> {'OK' if len(set(keys)) == len(keys) == expect else 'FAIL'}")
        med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        print(f"median of {len(rows)} rounds: bare paho {med['bare']:,.0f} frames/s, bare with "
              f"the ingestor's reader {med['fast']:,.0f}, ingestor {med['ingestor']:,.0f} "
              f"frames/s ({med['ingestor'] * avg / 1e6:.1f} MB/s); ratios "
              f"{med['ingestor'] / med['bare']:.2f} / {med['ingestor'] / med['fast']:.2f}")
        if args.live_fps > 0:
            # The bare subscribers' offline sessions would queue the whole live stream
            # (and the broker's autosave would write it out): end them first.
            for account in (BARE, BARE_FAST):
                drop_session(broker, account)
            live_latency(broker, tmp, root, devices, jpegs, total_fps=args.live_fps,
                         seconds=args.live_s, procs=args.pub_procs, boot=boot)
        if args.storage is not None and not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(f"at the end: {load()}")
    return 0


def live_latency(broker: BrokerHandle, tmp: Path, root: Path, devices: list[tuple[str, str]],
                 jpegs: list[bytes], *, total_fps: float, seconds: float, procs: int,
                 boot: int) -> None:
    """Cameras stream live; latency last chunk published -> frame durable."""
    svc, _ = start_ingestor(broker, tmp, "live", root)
    svc.wait_event("ingestor_ready", 30)
    assert svc.proc is not None
    pid = svc.proc.pid
    tail = LogTail(svc.log_path)
    tail.read()
    fps = total_fps / len(devices)
    pool = PublisherPool(pub_spec(broker, devices, jpegs, mode="live", frames=int(fps * seconds),
                                  fps=fps, window=8, boot_id=boot), procs)
    pool.wait_connected()
    pub = pool.join(timeout=seconds + 120)
    stored: dict[tuple[str, int], float] = {}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(stored) < pub.frames_acked:
        for e in tail.read():
            if e.get("event") == "frame_stored" and e.get("boot_id") == boot:
                stored[(str(e["device"]), int(e["seq"]))] = log_time(e)
        time.sleep(0.1)
    peak = tree_kib(pid, "VmHWM")
    assert svc.stop() == 0
    lat = [(stored[(d, s)] - t) * 1000 for d, s, t, _ in pub.sent if (d, s) in stored]
    span = max(x[2] for x in pub.sent) - min(x[2] for x in pub.sent)
    print(f"live: {len(devices)} cameras x {fps:.1f} fps = {total_fps:.0f} frames/s target, "
          f"{pub.frames_sent} sent in {span:.1f} s ({pub.frames_sent / span:,.0f} frames/s), "
          f"{pub.frames_skipped} skipped by cameras, {len(lat)} stored")
    print(f"  latency last chunk published -> durable: p50 {pct(lat, 50):.1f} ms, "
          f"p99 {pct(lat, 99):.1f} ms, max {max(lat):.1f} ms; ingestor peak RSS "
          f"{peak / 1024:.0f} MiB")
    if len(lat) != pub.frames_sent:
        print(f"  LOSS: {pub.frames_sent - len(lat)} frames sent but not stored")


if __name__ == "__main__":
    raise SystemExit(main())
