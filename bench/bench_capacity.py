"""End-to-end capacity: how many 1 frame/s SVGA cameras one machine ingests *and* encodes.

One machine runs everything: a real broker (the guard plugin's per-device budgets
lifted, bench/common.py), ``python -m ingestor`` (durable storage, batches of
``--frames-per-video`` frames, SQLite catalog), ``python -m encoder`` processes (one
account each, preset ``--preset``; ``--runner mqtt``, the default: filesystem store and
ready events on a shared subscription; ``--runner jetstream``: packs in a SeaweedFS and
one job per batch in a NATS JetStream queue, both started for each ramp) and
the simulated cameras (one device account and TLS connection each, QoS 1, SVGA JPEGs of
``--kb`` KB in 8 KiB chunks, spread over ``--pub-procs`` publisher processes), each at 1
frame/s. Three ramps, one after the other, each with a fresh ingestor and storage root:

1. **ingest only** (no encoder): bench_fleet.py's method and rule, with the same batch
   size as the encode ramps (sealing costs the ingestor too) and its own steps
   (``--ingest-start``/``--ingest-step``/``--ingest-max``);
2. **ingest + 1 encoder**;
3. **ingest + 2 encoders** (two processes, two accounts, one share group).

Each ramp gets a fresh broker too (a stopped service's persistent session would go on
queueing its messages). At each step the cameras added start spread over one batch
period (``--frames-per-video`` seconds), so their batches fall due evenly; after
``--settle`` seconds (default: one batch period + 5 s, every camera added is streaming)
a ``--hold`` second window is measured:

* **ingest kept up**: backlog = frames the cameras sent - frames the ingestor made
  durable (``camstack_ingestor_frames_stored_total``); the step fails when it grows by
  more than ``--max-growth-s`` seconds of fleet output over the window, or grows at all
  while above 2 s of output, or a camera had to skip a frame (its 8-frame send window
  full) — bench_fleet.py's rule;
* **encode kept up**: the encode backlog = batches ``sealed`` (or ``uploaded``) in the
  catalog and not yet taken by an encoder, sampled every second from
  ``<storage>/state/catalog.sqlite3`` (read-only). The step fails when its least-squares
  trend over the window adds up to more than ``--max-backlog-growth`` of the batches
  sealed in the window (and at least ``--min-backlog-growth`` batches), or when the
  oldest waiting batch is older than 2 batch periods at the end of the window.

The sustained figure of a ramp is the last step before the first failing one. Every
figure and ratio printed is measured in this run. Everything shares the machine's CPUs
(broker, publishers, ingestor, encoders), and other processes may be running: the load
average is printed before each phase.

    python bench/bench_capacity.py [--start 20] [--step 20] [--max 400] [--hold 60]
        [--frames-per-video 30] [--ingest-start 100] [--ingest-step 100]
        [--runner mqtt|jetstream] [--quick]
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import statistics
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prometheus_client.parser import text_string_to_metric_families

from bench.common import (
    PublisherPool,
    bench_broker,
    broker_pid,
    cpu_seconds,
    fs_note,
    load,
    machine,
    provision,
    pub_spec,
    svga_jpegs,
)
from camstack.brokerproc import BrokerHandle
from camstack.procs import ServiceProcess, service_config
from camstack.servers import NatsHandle, SeaweedHandle, start_nats, start_seaweedfs

WAITING = ("sealed", "uploaded")
"""Catalog states of a batch waiting for an encoder (jobqueue/backlog.py)."""
DONE = ("encoded", "purged")


# ===================================================================== probes
class MetricSum:
    """Sums one Prometheus counter family of a running service (port asked once)."""

    def __init__(self, svc: ServiceProcess, name: str) -> None:
        self.port = int(svc.wait_event("metrics_listening", 30)["port"])
        self.name = name

    def read(self) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics",
                                    timeout=10) as resp:
            text = resp.read().decode()
        total = 0.0
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                if s.name == self.name:
                    total += s.value
        return total


@dataclass
class Catalog:
    """Batch counts by state and the oldest waiting batch, read-only from the SQLite file."""

    path: Path
    _conn: sqlite3.Connection | None = None

    def snapshot(self) -> tuple[dict[str, int], float]:
        """(rows by state, age in seconds of the oldest waiting batch, 0 when none)."""
        if self._conn is None:
            if not self.path.exists():
                return {}, 0.0
            self._conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=10)
        rows = self._conn.execute(
            "SELECT state, COUNT(*), MIN(created_ms) FROM batches GROUP BY state").fetchall()
        counts = {str(s): int(n) for s, n, _ in rows}
        oldest = [int(m) for s, _, m in rows if s in WAITING and m is not None]
        age = max(0.0, time.time() - min(oldest) / 1000) if oldest else 0.0
        return counts, age

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (t, y) points; 0 with fewer than 2."""
    if len(points) < 2:
        return 0.0
    mt = statistics.fmean(t for t, _ in points)
    my = statistics.fmean(y for _, y in points)
    den = sum((t - mt) ** 2 for t, _ in points)
    return sum((t - mt) * (y - my) for t, y in points) / den if den else 0.0


# ===================================================================== one ramp
@dataclass
class Step:
    cameras: int
    seconds: float
    sent: int
    stored: int
    backlog0: int
    backlog1: int
    skipped: int
    cpu: dict[str, float]
    sealed: int = 0
    encoded: int = 0
    waiting0: int = 0
    waiting1: int = 0
    trend: float = 0.0
    """Least-squares growth of the waiting batches over the window, in batches."""
    oldest_s: float = 0.0
    ingest_ok: bool = True
    encode_ok: bool = True
    why: list[str] = field(default_factory=list)

    @property
    def growth_s(self) -> float:
        """Ingest backlog growth over the window, in seconds of fleet output."""
        return (self.backlog1 - self.backlog0) / max(1, self.cameras)

    @property
    def ok(self) -> bool:
        return self.ingest_ok and self.encode_ok


@dataclass
class Ramp:
    name: str
    workers: int
    start: int
    step: int
    max: int
    settle: float
    hold: float
    steps: list[Step] = field(default_factory=list)
    pub_cpu: float = 0.0

    @property
    def sustained(self) -> int | None:
        """Cameras of the last step before the first failing one (None: the first failed)."""
        best = None
        for st in self.steps:
            if not st.ok:
                break
            best = st.cameras
        return best

    @property
    def reached_max(self) -> bool:
        return bool(self.steps) and all(st.ok for st in self.steps)


def offsets_for(devices: list[tuple[str, str]], start: int, step: int,
                period: float) -> dict[str, float]:
    """Start delays: the cameras of each step spread evenly over one batch period."""
    out: dict[str, float] = {}
    for i, (dev, _) in enumerate(devices):
        if i < start:
            out[dev] = i * period / max(1, start)
        else:
            out[dev] = ((i - start) % step) * period / max(1, step)
    return out


def run_ramp(ramp: Ramp, broker: BrokerHandle, tmp: Path, *, devices: list[tuple[str, str]],
             jpegs: list[bytes], args: Any) -> None:
    """Start the services, ramp the cameras, measure each step, stop everything."""
    fpv = args.frames_per_video
    tag = ramp.name
    root = tmp / f"store-{tag}"
    catalog_file = root / "state" / "catalog.sqlite3"
    ing_acc = f"ingestor-cap-{tag}"
    broker.add_service(ing_acc)
    weed: SeaweedHandle | None = None
    nats: NatsHandle | None = None
    cloud: dict[str, Any] = {}
    if args.runner == "jetstream":
        # Packs and videos in a SeaweedFS, one job per batch in a NATS JetStream queue;
        # the catalog stays the ingestor's SQLite file, which the encoders open too.
        weed = start_seaweedfs(tmp / f"seaweedfs-{tag}", bucket="camstack-bench")
        nats = start_nats(tmp / f"nats-{tag}")
        s3 = weed.s3_settings()
        s3d = s3.model_dump(mode="json", exclude_none=True)
        s3d["secret_access_key"] = s3.secret_access_key.get_secret_value()
        cloud = {"store": {"backend": "s3", "s3": s3d}, "runner": "jetstream",
                 "jobqueue": {"servers": [nats.url]}}
    ing_cfg = service_config(broker, ing_acc, root, tmp / f"ing-{tag}.toml",
                             ingest={"frames_per_video": fpv},
                             metrics={"enabled": True, "port": 0}, **cloud)
    ing = ServiceProcess("ingestor", ing_cfg, tmp / f"ing-{tag}.log").start()
    encs: list[ServiceProcess] = []
    pool: PublisherPool | None = None
    cat = Catalog(catalog_file)
    try:
        ing.wait_event("ingestor_ready", 60)
        stored = MetricSum(ing, "camstack_ingestor_frames_stored_total")
        for i in range(ramp.workers):
            acc = f"encoder-cap-{tag}-{i}"
            broker.add_service(acc)
            own: dict[str, Any] = {}
            enc_root = root
            if cloud:  # a worker's folder is its scratch only; the catalog is shared
                enc_root = tmp / f"enc-root-{tag}-{i}"
                own = {**cloud, "catalog": {"path": str(catalog_file)}}
            cfg = service_config(broker, acc, enc_root, tmp / f"enc-{tag}-{i}.toml",
                                 encode={"preset": args.preset},
                                 metrics={"enabled": False, "port": 0}, **own)
            enc = ServiceProcess("encoder", cfg, tmp / f"enc-{tag}-{i}.log").start()
            encs.append(enc)
            enc.wait_event("encoder_ready", 60)  # one at a time: the first makes the key
        assert ing.proc is not None
        pids = {"ingestor": ing.proc.pid, "broker": broker_pid(broker)}
        for i, enc in enumerate(encs):
            assert enc.proc is not None
            pids[f"encoder{i + 1}"] = enc.proc.pid
        offsets = offsets_for(devices, ramp.start, ramp.step, fpv)
        pool = PublisherPool(pub_spec(broker, devices[:ramp.start], jpegs, mode="live",
                                      frames=0, fps=1.0, window=8, offsets=offsets),
                             args.pub_procs)
        pool.wait_connected()
        n = ramp.start
        enc_cols = (f" {'sealed':>6} {'encoded':>7} {'waiting':>9} {'trend':>6} "
                    f"{'oldest':>6}" if ramp.workers else "")
        print(f"{'cameras':>7} {'sent/s':>7} {'stored/s':>8} {'ingest backlog':>14} "
              f"{'growth':>7} {'skipped':>7}{enc_cols}  CPU (1.0 = one CPU)", flush=True)
        while True:
            deadline = time.monotonic() + ramp.settle
            while time.monotonic() < deadline:
                time.sleep(0.5)
            sent0, _, skip0 = pool.stats()
            s0 = int(stored.read())
            c0, age0 = cat.snapshot()
            cpu0 = {k: cpu_seconds(p) for k, p in pids.items()}
            t0 = time.monotonic()
            samples: list[tuple[float, float]] = [(0.0, sum(c0.get(s, 0) for s in WAITING))]
            age1 = age0
            while time.monotonic() - t0 < ramp.hold:
                time.sleep(1.0)
                c, age1 = cat.snapshot()
                samples.append((time.monotonic() - t0, sum(c.get(s, 0) for s in WAITING)))
            sent1, _, skip1 = pool.stats()
            s1 = int(stored.read())
            c1, age1 = cat.snapshot()
            dt_ = time.monotonic() - t0
            cpu = {k: (cpu_seconds(p) - cpu0[k]) / dt_ for k, p in pids.items()}
            st = Step(n, dt_, sent1 - sent0, s1 - s0, sent0 - s0, sent1 - s1, skip1 - skip0,
                      cpu)
            st.ingest_ok = (st.growth_s <= args.max_growth_s and st.skipped == 0
                            and not (st.growth_s > 0 and st.backlog1 > 2 * st.cameras))
            if not st.ingest_ok:
                st.why.append("ingest fell behind" if st.skipped == 0
                              else f"cameras skipped {st.skipped} frames")
            if ramp.workers:
                st.sealed = sum(c1.values()) - sum(c0.values())
                st.encoded = (sum(c1.get(s, 0) for s in DONE)
                              - sum(c0.get(s, 0) for s in DONE))
                st.waiting0 = sum(c0.get(s, 0) for s in WAITING)
                st.waiting1 = sum(c1.get(s, 0) for s in WAITING)
                st.trend = slope(samples) * dt_
                st.oldest_s = age1
                limit = max(args.min_backlog_growth, args.max_backlog_growth * st.sealed)
                if st.trend > limit:
                    st.encode_ok = False
                    st.why.append(f"encode backlog grew {st.trend:.1f} batches "
                                  f"(limit {limit:.1f})")
                if age1 > 2 * fpv:
                    st.encode_ok = False
                    st.why.append(f"oldest waiting batch {age1:.0f} s > 2 batch periods")
            ramp.steps.append(st)
            enc_vals = (f" {st.sealed:6d} {st.encoded:7d} {st.waiting0:4d}->{st.waiting1:<4d} "
                        f"{st.trend:+6.1f} {st.oldest_s:5.0f}s" if ramp.workers else "")
            cpus = " ".join(f"{k} {v:.2f}" for k, v in cpu.items())
            print(f"{n:7d} {st.sent / dt_:7.0f} {st.stored / dt_:8.0f} "
                  f"{st.backlog0:6d}->{st.backlog1:<6d} {st.growth_s:6.2f}s {st.skipped:7d}"
                  f"{enc_vals}  {cpus}  {load()}"
                  + ("" if st.ok else "  FAIL: " + "; ".join(st.why)), flush=True)
            if not st.ok or n + ramp.step > ramp.max:
                break
            pool.add(devices[n:n + ramp.step])
            n += ramp.step
        res = pool.join(stop=True, timeout=120)
        pool = None
        ramp.pub_cpu = res.cpu_s
        if res.errors:
            print(f"publisher errors: {res.errors[:3]}")
    finally:
        if pool is not None:
            pool.join(stop=True, timeout=60)
        cat.close()
        for enc in encs:
            enc.stop()
        ing.stop()
        for server in (nats, weed):
            if server is not None:
                server.stop()
        shutil.rmtree(root, ignore_errors=True)


# ===================================================================== main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--start", type=int, default=20, help="cameras at the first encode step")
    ap.add_argument("--step", type=int, default=20, help="cameras added per encode step")
    ap.add_argument("--max", type=int, default=400, help="stop the encode ramps here")
    ap.add_argument("--frames-per-video", type=int, default=30,
                    help="ingest.frames_per_video: at 1 frame/s, the batch period in s")
    ap.add_argument("--settle", type=float, default=None,
                    help="seconds before measuring an encode step (default: one batch "
                         "period + 5 s, so every camera added has started)")
    ap.add_argument("--hold", type=float, default=60.0,
                    help="measured seconds per encode step")
    ap.add_argument("--max-backlog-growth", type=float, default=0.05,
                    help="allowed encode backlog trend over a window, as a fraction of "
                         "the batches sealed in it (at least --min-backlog-growth)")
    ap.add_argument("--min-backlog-growth", type=float, default=3.0,
                    help="encode backlog trend always allowed, in batches (the waiting "
                         "count jitters by a few batches as they fall due)")
    ap.add_argument("--ingest-start", type=int, default=100)
    ap.add_argument("--ingest-step", type=int, default=100)
    ap.add_argument("--ingest-max", type=int, default=2000)
    ap.add_argument("--ingest-hold", type=float, default=None,
                    help="measured seconds per ingest-only step (default: one batch period, "
                         "at least 8 s, so every camera seals once in the window)")
    ap.add_argument("--ingest-settle", type=float, default=None,
                    help="seconds before measuring an ingest-only step (default: as --settle)")
    ap.add_argument("--max-growth-s", type=float, default=0.25,
                    help="allowed ingest backlog growth over a window, in seconds of fleet "
                         "output (bench_fleet.py's rule)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                    help="encode set-ups to ramp (encoder processes each)")
    ap.add_argument("--no-ingest-only", action="store_true",
                    help="skip the ingest-only ramp")
    ap.add_argument("--preset", default="veryfast")
    ap.add_argument("--runner", choices=["mqtt", "jetstream"], default="mqtt",
                    help="mqtt: filesystem store, ready events on a shared subscription; "
                         "jetstream: SeaweedFS store (packs), NATS JetStream jobs, started "
                         "for each ramp; the SQLite catalog either way")
    ap.add_argument("--kb", type=int, default=50)
    ap.add_argument("--pub-procs", type=int, default=2)
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder (logs)")
    ap.add_argument("--quick", action="store_true",
                    help="a short check that the bench works (about 3 minutes; the figures "
                         "mean little): 10-frame batches, two short steps per ramp")
    args = ap.parse_args()
    if args.quick:
        args.frames_per_video, args.start, args.step, args.max = 10, 20, 40, 60
        args.hold, args.settle = 15.0, 12.0
        args.ingest_start, args.ingest_step, args.ingest_max = 100, 200, 300
        args.ingest_hold, args.ingest_settle = 10.0, 12.0
    fpv = args.frames_per_video
    settle = fpv + 5.0 if args.settle is None else args.settle
    ingest_settle = settle if args.ingest_settle is None else args.ingest_settle
    ingest_hold = max(8.0, fpv) if args.ingest_hold is None else args.ingest_hold
    print(machine())
    print("note: other processes may be running on this machine; their load shows in the "
          "load averages printed below")
    jpegs = svga_jpegs(8, args.kb * 1000)
    print(f"cameras at 1 frame/s, 800x600 JPEG {statistics.mean(map(len, jpegs)) / 1000:.1f} "
          f"KB, TLS, QoS 1; batches of {fpv} frames (one every {fpv} s per camera); encoder "
          f"preset {args.preset}, "
          + ("MQTT runner, filesystem store" if args.runner == "mqtt"
             else "JetStream runner, S3 store (SeaweedFS)") + ", SQLite catalog")
    ramps: list[Ramp] = []
    if not args.no_ingest_only:
        ramps.append(Ramp("ingest", 0, args.ingest_start, args.ingest_step, args.ingest_max,
                          ingest_settle, ingest_hold))
    for w in args.workers:
        ramps.append(Ramp(f"w{w}", w, args.start, args.step, args.max, settle, args.hold))
    for ramp in ramps:
        what = ("ingest only (no encoder)" if not ramp.workers
                else f"ingest + {ramp.workers} encoder process"
                     + ("es" if ramp.workers > 1 else ""))
        print(f"\n== {what}: +{ramp.step} cameras per step from {ramp.start} (max "
              f"{ramp.max}), {ramp.settle:.0f} s settle + {ramp.hold:.0f} s measured per "
              f"step; before: {load()}", flush=True)
        # A fresh broker per ramp: a stopped service's persistent session would go on
        # queueing frames (ingestor) or taking its share of ready events (encoder).
        with bench_broker(args.keep) as (broker, tmp):
            print(f"storage: {tmp} on {fs_note(tmp)}")
            devices = provision(broker, ramp.max, prefix="cap")
            run_ramp(ramp, broker, tmp, devices=devices, jpegs=jpegs, args=args)
        print(f"publisher processes used {ramp.pub_cpu:.1f} CPU-s in this ramp")
    report(ramps)
    print(f"at the end: {load()}")
    return 0


def report(ramps: list[Ramp]) -> None:
    print("\n== sustained cameras at 1 frame/s on this machine (last step before the first "
          "failing one)")
    figures: dict[str, int | None] = {}
    for r in ramps:
        label = "ingest only" if not r.workers else f"ingest + {r.workers} encoder(s)"
        s = r.sustained
        figures[r.name] = s
        if s is None:
            txt = f"fewer than {r.start} (the first step failed)"
        elif r.reached_max:
            txt = f"{s} (the ramp's max; not yet failing)"
        else:
            first_fail = next(st for st in r.steps if not st.ok)
            txt = f"{s} (at {first_fail.cameras}: {'; '.join(first_fail.why)})"
        print(f"  {label:24s} {txt}")
    ing = figures.get("ingest")
    w1 = figures.get("w1")
    w2 = figures.get("w2")
    if w1 and w2:
        print(f"  2 encoders / 1 encoder: {w2 / w1:.2f}x")
    if ing:
        for name, label in (("w1", "1 encoder"), ("w2", "2 encoders")):
            v = figures.get(name)
            if v:
                print(f"  ingest + {label} / ingest only: {v / ing:.2f}")
    if any(r.reached_max for r in ramps):
        print("  (a ramp that reached its max is a lower bound: its ratio is too)")


if __name__ == "__main__":
    raise SystemExit(main())
