"""Ingest throughput with the S3 backend vs the filesystem backend, in the same run.

The same backlog drain as bench/bench_ingest.py (simulated cameras queue ``--devices`` x
``--frames`` SVGA frames for the ingestor's offline persistent session; the clock runs
from the ingestor's CONNACK to its last durable frame), alternating per round between
``store.backend = "filesystem"`` and ``store.backend = "s3"`` (a local SeaweedFS
``weed mini``), both with the SQLite catalog. With S3 the finisher thread builds and
uploads one pack per sealed batch while the writer keeps committing frames; the time to
the last ``batch_uploaded`` is reported too. Goal: S3 ingest within 10 % of the
filesystem's.

    python bench/bench_ingest_s3.py [--devices 10] [--frames 100] [--rounds 4]
        [--frames-per-video 50]

Each round also prints the CPU seconds (user + system) the ingestor, its disk and upload
child processes, the broker and SeaweedFS used between the ingestor's CONNACK and its
last durable frame: on a 2-core machine that says where the time went.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_ingest import ING
from bench.common import (
    LogTail,
    PublisherPool,
    fs_note,
    log_time,
    machine,
    provision,
    pub_spec,
    svga_jpegs,
)
from camstack.brokerproc import BrokerHandle, start_broker
from camstack.procs import ServiceProcess, service_config
from camstack.servers import start_seaweedfs


def _cpu_s(pid: int | None, name: str) -> dict[str, float]:
    """User + system CPU seconds of ``pid`` and of each live child process (0 if gone).

    The ingestor's children are told apart by module: ``disk child``, ``upload child``.
    """
    if pid is None:
        return {name: 0.0}
    out: dict[str, float] = {}
    try:
        p = psutil.Process(pid)
        procs = [(name, p)]
        for c in p.children(recursive=True):
            cmd = " ".join(c.cmdline())
            label = ("disk child" if "ingestor.diskproc" in cmd else
                     "upload child" if "ingestor.uploadproc" in cmd else f"{name} child")
            procs.append((label, c))
    except psutil.Error:
        return {name: 0.0}
    for label, q in procs:
        with contextlib.suppress(psutil.Error):
            t = q.cpu_times()
            out[label] = out.get(label, 0.0) + t.user + t.system
    return out


class CpuWindow:
    """CPU seconds per process (tree) between :meth:`begin` and :meth:`end`."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids = pids
        self.t0: dict[str, float] = {}
        self.used: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for k, v in self.pids.items():
            out.update(_cpu_s(v, k))
        return out

    def begin(self) -> None:
        self.t0 = self._now()

    def end(self) -> None:
        if self.t0 and not self.used:
            self.used = {k: v - self.t0.get(k, 0.0) for k, v in self._now().items()}

    def text(self) -> str:
        return ", ".join(f"{k} {v:.2f}" for k, v in self.used.items())


def drain(broker: BrokerHandle, tmp: Path, name: str, total: int, root: Path, *,
          sections: dict[str, Any], batches: int,
          others: dict[str, int | None]) -> tuple[float, float | None, CpuWindow]:
    """Start the ingestor on its queued session; seconds to the last frame, last upload."""
    cfg = service_config(broker, ING, root, tmp / f"{name}.toml",
                         metrics={"enabled": False, "port": 0}, **sections)
    svc = ServiceProcess("ingestor", cfg, tmp / f"{name}.log").start()
    tail = LogTail(svc.log_path)
    stored = 0
    uploads = 0
    t_conn = t_last = t_up = None
    deadline = time.monotonic() + 600
    assert svc.proc is not None
    cpu = CpuWindow({"ingestor": svc.proc.pid, **others})
    while time.monotonic() < deadline and (stored < total or (
            "store" in sections and uploads < batches)):
        for e in tail.read():
            ev = e.get("event")
            if ev == "frame_stored":
                stored += 1
                if stored == total:
                    t_last = log_time(e)
                    cpu.end()
            elif ev == "batch_uploaded":
                uploads += 1
                if uploads == batches:
                    t_up = log_time(e)
            elif ev == "mqtt_connected" and t_conn is None:
                t_conn = log_time(e)
                cpu.begin()
        if svc.proc.poll() is not None:
            raise SystemExit(f"ingestor exited:\n{svc.log_path.read_text()[-3000:]}")
        time.sleep(0.05)
    assert svc.stop() == 0
    if t_conn is None or t_last is None:
        raise SystemExit(f"ingestor stored {stored} of {total} frames in 600 s")
    return t_last - t_conn, (t_up - t_conn) if t_up is not None else None, cpu


@contextlib.contextmanager
def bench_broker_unlimited() -> Iterator[tuple[BrokerHandle, Path]]:
    """The project's broker with the per-device rate limits out of the way.

    A backlog of 100 SVGA frames per device is a 5 MB burst, past the guard's default
    ``device_burst_bytes`` (4 MiB), which would disconnect the publishers.
    """
    tmp = Path(tempfile.mkdtemp(prefix="camstack-bench-"))
    broker = start_broker(tmp / "broker", use_docker=False, device_burst_bytes=1 << 33,
                          device_bytes_per_s=1 << 33, device_burst_msgs=10_000_000,
                          device_msgs_per_s=1_000_000.0)
    try:
        yield broker, tmp
    finally:
        broker.close()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=10)
    ap.add_argument("--frames", type=int, default=100, help="frames per device per round")
    ap.add_argument("--rounds", type=int, default=0,
                    help="default: 2 per variant (filesystem, s3 and each --also)")
    ap.add_argument("--also", default="",
                    help="more S3 variants in the same run, comma-separated: thread "
                    "(packs built and uploaded on the finisher thread, "
                    "ingest.upload_process = false), nice0 (upload child at the "
                    "ingestor's priority, ingest.upload_nice = 0)")
    ap.add_argument("--kb", type=int, default=50)
    ap.add_argument("--frames-per-video", type=int, default=50)
    ap.add_argument("--pub-procs", type=int, default=2)
    args = ap.parse_args()
    print(machine())
    jpegs = svga_jpegs(8, args.kb * 1000)
    n = args.devices * args.frames
    batches = args.devices * (args.frames // args.frames_per_video)
    with bench_broker_unlimited() as (broker, tmp):
        weed = start_seaweedfs(tmp / "seaweedfs")
        try:
            s3 = weed.s3_settings()
            s3d = s3.model_dump(mode="json", exclude_none=True)
            s3d["secret_access_key"] = s3.secret_access_key.get_secret_value()
            devices = provision(broker, args.devices)
            broker.add_service(ING)
            root = tmp / "storage"
            print(f"storage: {root} on {fs_note(tmp)}; SeaweedFS at {weed.endpoint}")
            ing = {"frames_per_video": args.frames_per_video}
            store = {"backend": "s3", "s3": s3d}
            backends: dict[str, dict[str, Any]] = {
                "filesystem": {"ingest": ing},
                "s3": {"ingest": ing, "store": store},
            }
            extra_ing: dict[str, dict[str, Any]] = {
                "thread": {"upload_process": False}, "nice0": {"upload_nice": 0}}
            for v in filter(None, args.also.split(",")):
                backends[f"s3-{v}"] = {"ingest": {**ing, **extra_ing[v]}, "store": store}
            svc = ServiceProcess("ingestor", service_config(
                broker, ING, root, tmp / "setup.toml", metrics={"enabled": False, "port": 0}),
                tmp / "setup.log").start()
            svc.wait_event("ingestor_ready", 30)
            assert svc.stop() == 0
            results: dict[str, list[float]] = {b: [] for b in backends}
            upload_s: dict[str, list[float]] = {b: [] for b in backends}
            names = list(backends)
            order = [*names, *reversed(names)]
            for rnd in range(args.rounds or len(order)):
                backend = order[rnd % len(order)]
                pool = PublisherPool(pub_spec(broker, devices, jpegs, frames=args.frames,
                                              window=8, boot_id=rnd + 1), args.pub_procs)
                pool.wait_connected()
                pub = pool.join()
                assert pub.frames_acked == n, pub
                secs, up, cpu = drain(
                    broker, tmp, f"r{rnd}-{backend}", n, root / backend,
                    sections=backends[backend], batches=batches,
                    others={"broker": broker.proc.pid if broker.proc else None,
                            "seaweedfs": weed.proc.pid if weed.proc else None})
                fps = n / secs
                results[backend].append(fps)
                extra = ""
                if up is not None:
                    upload_s[backend].append(up)
                    extra = f"; last of {batches} packs uploaded at {up:.2f} s"
                print(f"round {rnd + 1} {backend:10s}: {n} frames durable in {secs:.2f} s = "
                      f"{fps:,.0f} frames/s{extra}; CPU s in the drain: {cpu.text()}")
            fs = statistics.median(results["filesystem"])
            print(f"median: filesystem {fs:,.0f} frames/s")
            for b in names[1:]:
                if not results[b]:
                    continue
                m = statistics.median(results[b])
                goal = " (goal >= 0.90)" if b == "s3" else ""
                ups = (f"; all packs uploaded at {statistics.median(upload_s[b]):.2f} s "
                       "(median)") if upload_s[b] else ""
                print(f"median: {b} {m:,.0f} frames/s, ratio {b}/filesystem "
                      f"{m / fs:.3f}{goal}{ups}")
            print(f"object-store PUTs per frame {batches / n:.4f}")
        finally:
            weed.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
