"""Fleet scale: how many 1 frame/s cameras one ingestor keeps up with, and memory per camera.

A real broker and ``python -m ingestor`` (durable storage, 300-frame batches); simulated
cameras (one device account and TLS connection each, QoS 1, SVGA JPEGs of ``--kb`` KB in
8 KiB chunks, cached frames, spread over ``--pub-procs`` publisher processes) stream at 1
frame/s each from random phases. The fleet grows by ``--step`` cameras at a time; after
each step settles, a ``--hold`` second window is measured:

* **backlog** = frames published - frames durable (queued in the broker or in the
  ingestor); the step fails when it grows by more than ``--max-growth-s`` seconds of
  fleet output over the window, or is growing at all while above 2 s of output (the
  ingestor falls behind);
* **latency** from a frame's last chunk published to its ``frame_stored`` event; the
  step counts as failed when the p99 exceeds ``--p99-limit-ms``;
* frames the cameras had to skip (their 8-frame send window full: the broker was not
  acknowledging) also fail the step: then the rig, not the ingestor, is the limit;
* the ingestor's RSS, for memory per camera (slope between steps).

Everything shares the 2 CPUs: broker, publishers and ingestor. The publishers' CPU is
reported so that the share of the rig is visible.

    python bench/bench_fleet.py [--start 200] [--step 200] [--max 3000] [--hold 8]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

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
    provision,
    pub_spec,
    storage_root,
    svga_jpegs,
    tree_kib,
)
from camstack.procs import ServiceProcess, service_config

ING = "ingestor-fleet"


@dataclass
class Step:
    cameras: int
    t0: float
    t1: float
    sent: int
    stored: int
    backlog0: int
    backlog1: int
    skipped: int
    rss_kib: int
    ing_cpu: float
    broker_cpu: float
    lat: list[float]

    @property
    def growth_s(self) -> float:
        """Backlog growth over the window, in seconds of fleet output."""
        return (self.backlog1 - self.backlog0) / max(1, self.cameras)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--start", type=int, default=200)
    ap.add_argument("--step", type=int, default=200)
    ap.add_argument("--max", type=int, default=3000)
    ap.add_argument("--hold", type=float, default=8.0, help="measured seconds per step")
    ap.add_argument("--settle", type=float, default=4.0, help="seconds before measuring")
    ap.add_argument("--kb", type=int, default=50)
    ap.add_argument("--pub-procs", type=int, default=2)
    ap.add_argument("--max-growth-s", type=float, default=0.25,
                    help="allowed backlog growth over a window, in seconds of fleet output")
    ap.add_argument("--p99-limit-ms", type=float, default=1000.0)
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder (logs)")
    ap.add_argument("--storage", help="put the storage root in a fresh folder here "
                    "(default: the scratch folder), removed afterwards")
    args = ap.parse_args()
    print(machine())
    jpegs = svga_jpegs(8, args.kb * 1000)
    avg = statistics.mean(map(len, jpegs))
    print(f"cameras at 1 frame/s, 800x600 JPEG {avg / 1000:.1f} KB, TLS, QoS 1; +{args.step} "
          f"per step from {args.start}; {args.hold:.0f} s measured per step")
    with bench_broker(args.keep) as (broker, tmp):
        devices = provision(broker, args.max)
        broker.add_service(ING)
        root = storage_root(tmp, args.storage)
        print(f"storage: {root} on {fs_note(root)}")
        cfg = service_config(broker, ING, root, tmp / "ing.toml",
                             ingest={"frames_per_video": 300},
                             metrics={"enabled": False, "port": 0})
        svc = ServiceProcess("ingestor", cfg, tmp / "ing.log").start()
        svc.wait_event("ingestor_ready", 30)
        assert svc.proc is not None
        pid = svc.proc.pid
        bpid = broker_pid(broker)
        rss0 = tree_kib(pid, "VmRSS")
        print(f"ingestor idle RSS {rss0 / 1024:.0f} MiB")
        tail = LogTail(svc.log_path)
        stored: dict[tuple[str, int], float] = {}

        def poll() -> int:
            for e in tail.read():
                if e.get("event") == "frame_stored":
                    stored[(str(e["device"]), int(e["seq"]))] = log_time(e)
            return len(stored)

        pool = PublisherPool(pub_spec(broker, devices[:args.start], jpegs, mode="live",
                                      frames=0, fps=1.0, window=8), args.pub_procs)
        pool.wait_connected()
        n = args.start
        steps: list[Step] = []
        print(f"{'cameras':>7} {'frames/s':>8} {'stored/s':>8} {'backlog':>13} {'growth':>7} "
              f"{'skipped':>7} {'RSS MiB':>7} {'ing CPU':>7} {'mosq CPU':>8}")
        while True:
            deadline = time.monotonic() + args.settle
            while time.monotonic() < deadline:
                poll()
                time.sleep(0.2)
            sent0, _, skip0 = pool.stats()
            s0 = poll()
            t0 = time.time()
            c0, b0 = cpu_seconds(pid), cpu_seconds(bpid)
            deadline = time.monotonic() + args.hold
            while time.monotonic() < deadline:
                poll()
                time.sleep(0.2)
            sent1, _, skip1 = pool.stats()
            s1 = poll()
            t1 = time.time()
            st = Step(n, t0, t1, sent1 - sent0, s1 - s0, sent0 - s0, sent1 - s1, skip1 - skip0,
                      tree_kib(pid, "VmRSS"), cpu_seconds(pid) - c0,
                      cpu_seconds(bpid) - b0, [])
            steps.append(st)
            dt_ = t1 - t0
            print(f"{n:7d} {st.sent / dt_:8.0f} {st.stored / dt_:8.0f} "
                  f"{st.backlog0:6d}->{st.backlog1:<6d} {st.growth_s:6.1f}s "
                  f"{st.skipped:7d} {st.rss_kib / 1024:7.0f} {st.ing_cpu / dt_:6.0%} "
                  f"{st.broker_cpu / dt_:7.0%}", flush=True)
            failed = st.growth_s > args.max_growth_s or st.skipped > 0 or (
                st.growth_s > 0 and st.backlog1 > 2 * st.cameras)
            if failed or n + args.step > args.max:
                break
            pool.add(devices[n:n + args.step])
            n += args.step
        pub = pool.join(stop=True, timeout=120)
        # Let the backlog drain: until every acked frame is stored, or no progress for 5 s.
        deadline = time.monotonic() + 120
        last, last_change = -1, time.monotonic()
        while time.monotonic() < deadline and last < pub.frames_acked:
            n_now = poll()
            if n_now != last:
                last, last_change = n_now, time.monotonic()
            elif time.monotonic() - last_change > 5:
                break
            time.sleep(0.2)
        assert svc.stop() == 0
        poll()  # frames made durable while stopping
        if args.storage is not None:
            shutil.rmtree(root, ignore_errors=True)
        report(steps, pub.sent, stored, pub_cpu=pub.cpu_s, rss0=rss0, args=args)
    print(f"at the end: {load()}")
    return 0


def report(steps: list[Step], sent: list[tuple[str, int, float, int]],
           stored: dict[tuple[str, int], float], *, pub_cpu: float, rss0: int,
           args: Any) -> None:
    for st in steps:
        st.lat = [(stored[(d, s)] - t) * 1000 for d, s, t, _ in sent
                  if st.t0 <= t < st.t1 and (d, s) in stored]
    print("\nper step (latency of frames published in the measured window):")
    ok_steps = []
    for st in steps:
        lost = sum(1 for d, s, t, _ in sent if st.t0 <= t < st.t1 and (d, s) not in stored)
        ok = (st.growth_s <= args.max_growth_s and st.skipped == 0
              and not (st.growth_s > 0 and st.backlog1 > 2 * st.cameras)
              and pct(st.lat, 99) <= args.p99_limit_ms)
        if ok:
            ok_steps.append(st)
        rig = st.sent / (st.t1 - st.t0) < 0.95 * st.cameras
        print(f"  {st.cameras:5d} cameras: p50 {pct(st.lat, 50):7.1f} ms, p99 "
              f"{pct(st.lat, 99):7.1f} ms, backlog growth {st.growth_s:5.1f} s, "
              f"still queued at the end {lost}, RSS {st.rss_kib / 1024:.0f} MiB -> "
              f"{'OK' if ok else 'FAIL'}"
              + (" (the publishers fell behind too: the rig shares the CPUs)" if rig else ""))
    print(f"publisher processes used {pub_cpu:.1f} CPU-s in total")
    if ok_steps:
        best = ok_steps[-1]
        rate = best.stored / (best.t1 - best.t0)
        print(f"sustained: {best.cameras} cameras at 1 frame/s ({rate:,.0f} frames/s durable) "
              f"without backlog growth; next step failed" if len(ok_steps) < len(steps)
              else f"sustained: {best.cameras} cameras (the --max), not yet failing")
    # Memory per camera from steps without a backlog (queued frames would count too).
    calm = [st for st in ok_steps if max(st.backlog0, st.backlog1) < 0.1 * st.cameras]
    if len(calm) >= 2:
        a, b = calm[0], calm[-1]
        per = (b.rss_kib - a.rss_kib) / max(1, b.cameras - a.cameras)
        print(f"memory: idle RSS {rss0 / 1024:.0f} MiB; {a.cameras} cameras "
              f"{a.rss_kib / 1024:.0f} MiB, {b.cameras} cameras {b.rss_kib / 1024:.0f} MiB -> "
              f"{per:.0f} KiB per camera (RSS slope over the steps that kept up with less than "
              f"0.1 s of backlog; includes "
              f"each camera's unsealed frames' metadata, which grows until its batch of 300 "
              f"seals)")


if __name__ == "__main__":
    raise SystemExit(main())
