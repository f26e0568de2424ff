"""Scale-out of the JetStream runner: one pinned encoder process against two.

A backlog of J packs (each N SVGA JPEGs from ``bench.common.svga_jpegs``, packed as the
ingestor packs them) is uploaded to a real SeaweedFS with catalog rows (SQLite, state
``uploaded``). Then, per phase:

* **1 worker**: one ``python -m encoder`` (``runner = "jetstream"``,
  ``work.parallel_batches = 1``) pinned to CPU 0 with ``taskset -c 0``;
* **2 workers**: two such processes, pinned to CPUs 0 and 1.

The workers are started and ready (idle on an empty queue) before the clock starts; the
J jobs are then published to the JetStream stream (taking milliseconds, so they form a
backlog at once) and the clock stops when the consumer has nothing pending
(``JobPublisher.depth().pending == 0``) and every batch has its video row. Each phase
has its own backlog (a device of its own); the same stream, consumer and servers serve
both. Mosquitto (the encoder's status and video events), nats-server, SeaweedFS and this
process are not pinned: they share the two CPUs with the workers, as they would on a
one-machine deployment.

Printed: wall time and frames/s of each phase, the load averages before each phase
(other processes on the machine count; the machine of the figures is shared), and the
ratio 1-worker time / 2-worker time (goal of issue 13: at least 1.8x). Benchmarks print;
they never assert on time.

    python bench/bench_scaleout.py              # 20 jobs x 120 frames, phases 1 then 2
    python bench/bench_scaleout.py --rounds 2   # 1, 2, 2, 1 (ABBA against drifting load)
    python bench/bench_scaleout.py --quick      # 6 jobs x 60 frames
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import structlog

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    bench_broker,
    cpu_seconds,
    load,
    machine,
    stage,
    store_section,
    svga_jpegs,
)
from camstack.brokerproc import BrokerHandle
from camstack.procs import ServiceProcess, service_config
from camstack.servers import SeaweedHandle, start_nats, start_seaweedfs
from catalog import open_catalog
from config.settings import CatalogSettings, JobQueueSettings
from jobqueue.job import EncodeJob
from jobqueue.queue import JobPublisher
from objstore import S3Store

ROOT = Path(__file__).resolve().parents[1]


class PinnedEncoder(ServiceProcess):
    """``taskset -c <cpu> python -m encoder``, running this checkout's code."""

    def __init__(self, cpu: int, config: Path, log_path: Path) -> None:
        super().__init__("encoder", config, log_path)
        self.cpu = cpu

    def start(self) -> PinnedEncoder:
        env = {**os.environ, "CAM_CONFIG": str(self.config), "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": str(ROOT)}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                ["taskset", "-c", str(self.cpu), sys.executable, "-m", "encoder"], cwd=ROOT,
                env=env, stdout=log, stderr=subprocess.STDOUT)
        return self


def run_phase(workers: int, *, broker: BrokerHandle, tmp: Path, weed: SeaweedHandle,
              store: S3Store, catalog: CatalogSettings, jq: dict[str, Any],
              jpegs: list[bytes], jobs: int, preset: str, tag: str) -> float:
    """Stage a backlog, start ``workers`` pinned encoders, publish, time the drain."""
    cat = open_catalog(catalog)
    device = f"so{tag}"
    refs = stage(store, cat, device, jobs, jpegs)
    encs: list[PinnedEncoder] = []
    for i in range(workers):
        account = f"encoder-so{tag}w{i}"
        broker.add_service(account)
        cfg = service_config(
            broker, account, tmp / f"disk-{tag}-{i}", tmp / f"enc-{tag}-{i}.toml",
            encode={"preset": preset}, work={"parallel_batches": 1},
            metrics={"enabled": False, "port": 0}, store=store_section(weed),
            catalog={"backend": "sqlite", "path": str(catalog.path)},
            runner="jetstream", jobqueue=jq)  # type: ignore[arg-type]
        encs.append(PinnedEncoder(i, cfg, tmp / f"enc-{tag}-{i}.log").start())
    try:
        for e in encs:
            e.wait_event("encoder_ready", 60)
        settings = JobQueueSettings(**jq)
        with JobPublisher(settings) as pub:
            print(f"  [{load()}] before the phase: {workers} worker(s), {jobs} jobs")
            cpu0 = sum(cpu_seconds(e.proc.pid) for e in encs if e.proc is not None)
            t0 = time.perf_counter()
            for r in refs:
                pub.publish(EncodeJob.for_batch(r.device, r.batch))
            published = time.perf_counter() - t0
            while True:
                done = len(cat.list_videos(device=device))
                if done == jobs and pub.depth().pending == 0:
                    break
                for e in encs:
                    if e.proc is not None and e.proc.poll() is not None:
                        raise RuntimeError(f"encoder exited {e.proc.returncode}; see "
                                           f"{e.log_path}")
                if time.perf_counter() - t0 > 1800:
                    raise TimeoutError(f"{done} of {jobs} videos after 30 min")
                time.sleep(0.1)
            wall = time.perf_counter() - t0
            cpu = sum(cpu_seconds(e.proc.pid) for e in encs if e.proc is not None) - cpu0
        per = [sum(1 for ev in e.events() if ev.get("event") == "video_written") for e in encs]
        frames = jobs * len(jpegs)
        print(f"  {workers} worker(s): {wall:7.2f} s from the first job to an empty queue "
              f"(publishing took {published:.2f} s), {frames / wall:6.1f} frames/s; "
              f"videos per worker {per}; the workers used {cpu / wall:.2f} CPUs, "
              f"{frames / cpu:.1f} frames per CPU-s")
        return wall
    finally:
        for e in encs:
            e.stop()
        cat.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=20, help="packs / jobs in the backlog")
    ap.add_argument("--frames", type=int, default=120, help="frames per pack")
    ap.add_argument("--preset", default="veryfast")
    ap.add_argument("--rounds", type=int, default=1,
                    help="1: phases 1, 2; 2: phases 1, 2, 2, 1; best of each counts")
    ap.add_argument("--quick", action="store_true", help="6 jobs of 60 frames, one round")
    args = ap.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))  # warnings+
    if args.quick:
        args.jobs, args.frames, args.rounds = 6, 60, 1
    if shutil.which("taskset") is None:
        print("taskset not found (util-linux)", file=sys.stderr)
        return 2
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2 or cpus[:2] != [0, 1]:
        print(f"needs CPUs 0 and 1, have {cpus}", file=sys.stderr)
        return 2
    print(f"machine: {machine()}")
    print("note: this 2-CPU machine is shared with other agents' test runs; the load "
          "averages before each phase say how busy it was")
    jpegs = svga_jpegs(args.frames)
    print(f"{args.jobs} jobs x {args.frames} SVGA frames "
          f"({sum(map(len, jpegs)) / 1e6:.1f} MB of JPEG per pack), preset={args.preset}, "
          f"parallel_batches=1 per worker, worker i pinned to CPU i")
    order = [1, 2]
    for r in range(1, args.rounds):
        order += [2, 1] if r % 2 else [1, 2]
    walls: dict[int, list[float]] = {1: [], 2: []}
    with bench_broker() as (broker, tmp_b):
        tmp = Path(tempfile.mkdtemp(prefix="so-", dir=tmp_b))
        nats = start_nats(tmp / "nats")
        weed = start_seaweedfs(tmp / "weed", bucket="scaleout")
        store = S3Store(weed.s3_settings())
        catalog = CatalogSettings(path=tmp / "catalog.sqlite3")
        jq = {"servers": [nats.url], "stream": "SCALE" + secrets.token_hex(3),
              "consumer": "encoders", "fetch_timeout_s": 0.5}
        try:
            for i, n in enumerate(order):
                print(f"phase {i + 1}: {n} worker(s)")
                walls[n].append(run_phase(
                    n, broker=broker, tmp=tmp, weed=weed, store=store, catalog=catalog,
                    jq=jq, jpegs=jpegs, jobs=args.jobs, preset=args.preset, tag=f"{i}"))
        finally:
            store.close()
            weed.stop()
            nats.stop()
    one, two = min(walls[1]), min(walls[2])
    print(f"\n1 worker (CPU 0): {one:.2f} s; 2 workers (CPUs 0, 1): {two:.2f} s "
          f"(best of {len(walls[1])} / {len(walls[2])})")
    print(f"scale-out ratio 1-worker time / 2-worker time: {one / two:.2f}x (goal >= 1.8x)")
    print(f"({load()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
