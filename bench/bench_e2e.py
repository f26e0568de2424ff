"""End to end: last frame of a batch published -> its MP4 available.

The whole pipeline on one machine: a real broker, ``python -m ingestor`` (durable
storage, batches of ``--frames-per-video``), ``python -m encoder`` (same defaults as a
deployment: veryfast, CRF 23) and ``--cameras`` simulated cameras streaming SVGA JPEGs
of ``--kb`` KB at ``--fps`` each (TLS, QoS 1, 8 KiB chunks, one publisher process). A
subscriber takes every video event (the encoder publishes it only after the MP4 is
renamed into place and fsynced, so "event received" = "MP4 available").

Per batch: the time from handing the batch's last frame's last chunk to the socket
(the frame whose ``capture_ms`` is the event's ``last_capture_ms``) to the video
event's arrival. The cameras' batches fall due close together, so the figure includes
waiting behind the other cameras' batches in the encoder's queue, as in a deployment.

With ``--runner jetstream`` the ingestor packs each sealed batch into a real SeaweedFS
(catalog: SQLite) and publishes one job to a real nats-server (JetStream); ``--workers``
encoder processes (``runner = "jetstream"``, ``work.parallel_batches = --parallel``)
pull the jobs, encode from the store and publish the same video event (its location is
then the MP4's object key). Same clock: last frame published -> video event.

    python bench/bench_e2e.py [--cameras 4] [--fps 10] [--frames-per-video 300]
        [--duration 60]
    python bench/bench_e2e.py --runner jetstream --workers 2 [--parallel 1]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import paho.mqtt.client as mqtt

from bench.common import (
    PublisherPool,
    bench_broker,
    fs_note,
    load,
    machine,
    pct,
    provision,
    pub_spec,
    storage_root,
    store_section,
    svga_jpegs,
)
from camstack.procs import ServiceProcess, service_config
from camstack.servers import start_nats, start_seaweedfs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cameras", type=int, default=4)
    ap.add_argument("--fps", type=float, default=10.0, help="frames/s per camera")
    ap.add_argument("--frames-per-video", type=int, default=300)
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of streaming")
    ap.add_argument("--kb", type=int, default=50)
    ap.add_argument("--preset", default="veryfast")
    ap.add_argument("--stagger", type=float, default=None,
                    help="spread camera starts over this many seconds (default: one batch "
                         "period, so batches fall due evenly; 0: all at once, worst case)")
    ap.add_argument("--storage", help="put the storage root in a fresh folder here "
                    "(default: the scratch folder), removed afterwards")
    ap.add_argument("--runner", choices=["mqtt", "jetstream"], default="mqtt",
                    help="mqtt: the ready event to one encoder on the shared disk; "
                    "jetstream: packs in SeaweedFS, jobs in NATS, --workers encoders")
    ap.add_argument("--workers", type=int, default=1,
                    help="encoder processes (runner jetstream only)")
    ap.add_argument("--parallel", type=int, default=1,
                    help="work.parallel_batches of each encoder (runner jetstream only)")
    args = ap.parse_args()
    if args.runner == "mqtt" and (args.workers != 1 or args.parallel != 1):
        ap.error("--workers and --parallel need --runner jetstream")
    print(machine())
    jpegs = svga_jpegs(8, args.kb * 1000)
    print(f"{args.cameras} cameras x {args.fps:g} frames/s, 800x600 JPEG "
          f"{statistics.mean(map(len, jpegs)) / 1000:.1f} KB, batches of "
          f"{args.frames_per_video}, {args.duration:.0f} s, encoder preset {args.preset}")
    if args.runner == "jetstream":
        print(f"runner jetstream: {args.workers} encoder process(es), parallel_batches "
              f"{args.parallel} each; SeaweedFS, nats-server, SQLite catalog")
    with bench_broker() as (broker, tmp), contextlib.ExitStack() as servers:
        devices = provision(broker, args.cameras, prefix="e2e")
        enc_accounts = (["encoder-e2e"] if args.runner == "mqtt"
                        else [f"encoder-e2e-{i}" for i in range(args.workers)])
        for acc in ("ingestor-e2e", "operator-e2e", *enc_accounts):
            broker.add_service(acc)
        root = storage_root(tmp, args.storage)
        print(f"storage: {root} on {fs_note(root)}")
        off = {"enabled": False, "port": 0}
        cloud: dict[str, Any] = {}
        if args.runner == "jetstream":
            nats = start_nats(tmp / "nats")
            servers.callback(nats.stop)
            weed = start_seaweedfs(tmp / "weed", bucket="e2e")
            servers.callback(weed.stop)
            cloud = {"store": store_section(weed),
                     "catalog": {"backend": "sqlite", "path": str(tmp / "catalog.sqlite3")},
                     "runner": "jetstream",
                     "jobqueue": {"servers": [nats.url], "stream": "E2E" + secrets.token_hex(3),
                                  "fetch_timeout_s": 0.5}}
        ing_cfg = service_config(broker, "ingestor-e2e", root, tmp / "ing.toml",
                                 ingest={"frames_per_video": args.frames_per_video},
                                 metrics=off, **cloud)
        # This checkout's code (camstack.procs runs the services from the parent folder).
        env = {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        ing = ServiceProcess("ingestor", ing_cfg, tmp / "ing.log", env=env).start()
        encs = []
        for i, acc in enumerate(enc_accounts):
            # jetstream: each encoder has a folder of its own (never the ingestor's disk).
            enc_root = root if args.runner == "mqtt" else tmp / f"enc{i}-disk"
            enc_cfg = service_config(broker, acc, enc_root, tmp / f"enc{i}.toml",
                                     encode={"preset": args.preset}, metrics=off,
                                     work={"parallel_batches": args.parallel}, **cloud)
            encs.append(ServiceProcess("encoder", enc_cfg, tmp / f"enc{i}.log",
                                       env=env).start())
        videos: list[tuple[float, dict[str, Any]]] = []
        lock = threading.Lock()

        def on_message(_c: mqtt.Client, _u: object, m: mqtt.MQTTMessage) -> None:
            with lock:
                videos.append((time.time(), json.loads(m.payload)))

        sub = broker.client("operator-e2e", broker.service_password("operator-e2e"),
                            client_id="operator-e2e")
        sub.on_message = on_message
        sub.subscribe("cam/+/video", qos=1)
        try:
            ing.wait_event("ingestor_ready", 30)
            for enc in encs:
                enc.wait_event("encoder_ready", 30)
            frames = int(args.fps * args.duration)
            stagger = (args.frames_per_video / args.fps if args.stagger is None
                       else args.stagger)
            offsets = {d: k * stagger / len(devices) for k, (d, _) in enumerate(devices)}
            print(f"camera starts spread over {stagger:.0f} s")
            pool = PublisherPool(pub_spec(broker, devices, jpegs, mode="live", frames=frames,
                                          fps=args.fps, window=16, offsets=offsets), 1)
            pool.wait_connected()
            pub = pool.join(timeout=args.duration + stagger + 120)
            batches = (frames // args.frames_per_video) * args.cameras
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                with lock:
                    if len(videos) >= batches:
                        break
                time.sleep(0.2)
        finally:
            sub.disconnect()
            sub.loop_stop()
            for enc in encs:
                enc.stop()
            ing.stop()
        if args.storage is not None:
            shutil.rmtree(root, ignore_errors=True)
        by_capture = {(d, c): t for d, _, t, c in pub.sent}
        lat = []
        for t_video, ev in videos:
            t_last = by_capture.get((ev["device"], int(ev["last_capture_ms"])))
            if t_last is None:
                print(f"  (no published frame matches {ev['batch']})")
                continue
            lat.append(t_video - t_last)
            print(f"  {ev['batch']}: {ev['frames']} frames, last frame published -> MP4 "
                  f"available {t_video - t_last:.2f} s")
        print(f"published {pub.frames_sent} frames ({pub.frames_skipped} skipped by cameras); "
              f"{len(videos)} videos of {batches} expected")
        if lat:
            print(f"last frame published -> MP4 available: p50 {pct(lat, 50):.2f} s, "
                  f"p99 {pct(lat, 99):.2f} s, max {max(lat):.2f} s over {len(lat)} batches")
    print(f"at the end: {load()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
