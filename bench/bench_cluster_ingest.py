"""Ingest on the NATS cluster engine against Mosquitto: frames/s acknowledged and stored.

Three set-ups, one after the other in the same run, on the same machine, with the same
cameras and frames:

* **mosquitto**: the project's Mosquitto (TLS, ACLs, persistence) and one
  ``python -m ingestor`` (MQTT 5), the baseline;
* **nats x1**: a 3-node NATS cluster (JetStream, MQTT streams replicated 3 times, TLS)
  and one ingestor owning the 64 partitions (MQTT 3.1.1, persistent session);
* **nats x2**: a fresh 3-node cluster and two ingestors owning 32 partitions each, on
  two different nodes.

Simulated cameras (one device account and TLS connection each, spread over the nodes
on NATS, over ``--pub-procs`` processes) each publish ``--frames`` SVGA JPEGs of
``--kb`` KB in 8 KiB chunks, QoS 1, as fast as the broker acknowledges them (at most
8 frames unacknowledged per camera). Measured per set-up, from the first publish:

* **acked/s**: frames whose every chunk the broker acknowledged, over the time to the
  last acknowledgement (what the cameras see);
* **stored/s**: frames durable on the ingestors' disks (``frame_stored`` events) over
  the time to the last one (the ingest throughput);
* lost (acknowledged, never stored) and stored twice, which must both be 0;
* CPU seconds of the ingestors (with their disk children), of the broker (every node),
  and of the publishers.

Everything shares the machine's CPUs: a figure says what this machine did with the
whole rig on it, and the load averages before and after are printed. Ratios are
against the Mosquitto set-up of the same run.

    python bench/bench_cluster_ingest.py [--cameras 40] [--frames 50] [--kb 50]
    python bench/bench_cluster_ingest.py --quick
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    LogTail,
    PublisherPool,
    PubSpec,
    bench_broker,
    broker_pid,
    cpu_seconds,
    fs_note,
    load,
    log_time,
    machine,
    provision,
    pub_spec,
    svga_jpegs,
)
from broker.accounts import Account, hash_password, nats_hash, new_password
from camstack.procs import ServiceProcess, service_config
from camstack.servers import NatsClusterHandle, start_nats_cluster
from config.loader import to_toml
from config.settings import NatsClusterSettings


@dataclass
class Result:
    """One set-up's figures."""

    name: str
    acked: int
    stored: int
    twice: int
    first_publish: float
    last_ack: float
    last_stored: float
    ingestor_cpu: float
    broker_cpu: float
    pub_cpu: float
    errors: list[str]
    longest_pause: float
    """Longest time without a new stored frame between the first and the last one."""

    @property
    def acked_per_s(self) -> float:
        return self.acked / max(1e-9, self.last_ack - self.first_publish)

    @property
    def stored_per_s(self) -> float:
        return self.stored / max(1e-9, self.last_stored - self.first_publish)


def nats_devices(cluster: NatsClusterHandle, count: int) -> list[tuple[str, str]]:
    """Device accounts with their bcrypt hashes, one registry write and one reload."""
    out = [(f"bench{i:04d}", new_password()) for i in range(count)]
    created = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    with cluster.store._locked() as accounts:
        for device, password in out:
            accounts[device] = Account(name=device, kind="device",
                                       pw_hash=hash_password(password),
                                       nats_hash=nats_hash(password), created=created)
    cluster.reload()
    return out


def nats_ingestor(cluster: NatsClusterHandle, node: int, account: str, tmp: Path,
                  partitions: list[int], *, one_filter: bool = False) -> ServiceProcess:
    """``python -m ingestor`` on node ``node`` of the cluster, owning ``partitions``."""
    password = cluster.store.add(account, "service")
    cluster.reload()
    pw_file = tmp / f"{account}.pass"
    pw_file.write_text(password + "\n")
    pw_file.chmod(0o600)
    cfg = {
        "mqtt": {"host": "127.0.0.1", "port": cluster.mqtt_port(node), "username": account,
                 "password_file": str(pw_file), "client_id": account, "protocol": "3.1.1",
                 "tls": {"enabled": True, "ca_file": str(cluster.ca_file)}},
        "storage": {"root": str(tmp / account / "store")},
        "log": {"level": "info", "format": "json"},
        "metrics": {"enabled": False},
        "ingest": {"partitions": partitions, "frames_per_video": 300,
                   **({"one_filter": True} if one_filter else {})},
    }
    path = tmp / f"{account}.toml"
    path.write_text(to_toml(cfg), encoding="utf-8")
    return ServiceProcess("ingestor", path, tmp / f"{account}.log").start()


def measure(name: str, pool_factory: Callable[[], PublisherPool], ingestors: list[ServiceProcess],
            broker_pids: list[int], *, expected: int, patience: float) -> Result:
    """Run the publishers to the end, wait for the ingestors, collect the figures."""
    for svc in ingestors:
        svc.wait_event("ingestor_ready", 60)
    pids = [svc.proc.pid for svc in ingestors if svc.proc is not None]
    tails = [LogTail(svc.log_path) for svc in ingestors]
    stored: Counter[tuple[str, int]] = Counter()
    last_stored = [0.0]
    times: list[float] = []

    def poll() -> int:
        for tail in tails:
            for e in tail.read():
                if e.get("event") == "frame_stored":
                    stored[(str(e["device"]), int(e["seq"]))] += 1
                    last_stored[0] = max(last_stored[0], log_time(e))
                    times.append(log_time(e))
        return len(stored)

    poll()
    c0 = sum(cpu_seconds(p) for p in pids)
    b0 = sum(cpu_seconds(p) for p in broker_pids)
    pool = pool_factory()
    pool.wait_connected()
    pub = pool.join(timeout=1800)
    # Until every acknowledged frame is stored, or no progress for ``patience`` s (longer
    # than NATS's MQTT ack_wait, 30 s: a message delivered but not acknowledged comes
    # again only then).
    last, last_change = -1, time.monotonic()
    while last < pub.frames_acked and time.monotonic() - last_change < patience:
        n = poll()
        if n != last:
            last, last_change = n, time.monotonic()
        time.sleep(0.2)
    ing_cpu = sum(cpu_seconds(p) for p in pids) - c0
    br_cpu = sum(cpu_seconds(p) for p in broker_pids) - b0
    for svc in ingestors:
        if svc.stop() != 0:
            pub.errors.append(f"{svc.config.name}: exit {svc.proc and svc.proc.returncode}")
    poll()
    errors = list(pub.errors)
    if pub.frames_sent != expected:
        errors.append(f"{pub.frames_sent} frames sent, {expected} planned")
    times.sort()
    pause = max((b - a for a, b in itertools.pairwise(times)), default=0.0)
    return Result(name, pub.frames_acked, len(stored), sum(1 for n in stored.values() if n > 1),
                  pub.first_publish, pub.last_ack, last_stored[0], ing_cpu, br_cpu, pub.cpu_s,
                  errors, pause)


def run_mosquitto(args: Any, jpegs: list[bytes]) -> Result:
    with bench_broker(args.keep) as (broker, tmp):
        devices = provision(broker, args.cameras)
        broker.add_service("ingestor-bench")
        cfg = service_config(broker, "ingestor-bench", tmp / "store", tmp / "ing.toml",
                             ingest={"frames_per_video": 300},
                             metrics={"enabled": False, "port": 0})
        svc = ServiceProcess("ingestor", cfg, tmp / "ing.log").start()
        try:
            return measure("mosquitto", lambda: PublisherPool(pub_spec(
                broker, devices, jpegs, mode="backlog", frames=args.frames, window=8),
                args.pub_procs), [svc], [broker_pid(broker)], expected=args.cameras * args.frames,
                patience=args.patience)
        finally:
            svc.close()


def run_nats(args: Any, jpegs: list[bytes], ingestors: int) -> Result:
    tmp = Path(tempfile.mkdtemp(prefix="camstack-bench-nats-"))
    cluster = start_nats_cluster(tmp / "cluster", args.nodes, ack_wait_s=args.ack_wait)
    svcs: list[ServiceProcess] = []
    try:
        devices = nats_devices(cluster, args.cameras)
        if ingestors == 1:
            svcs.append(nats_ingestor(cluster, 0, "ingestor-all", tmp, list(range(64)),
                                      one_filter=args.one_filter))
        else:
            svcs.append(nats_ingestor(cluster, 1 % args.nodes, "ingestor-a", tmp,
                                      list(range(32))))
            svcs.append(nats_ingestor(cluster, 2 % args.nodes, "ingestor-b", tmp,
                                      list(range(32, 64))))
        ports = [cluster.mqtt_port(i) for i in range(args.nodes)]
        broker_pids = [p.pid for p in cluster.procs.values()]
        spec_kw = {"mode": "backlog", "frames": args.frames, "window": 8,
                   "protocol": "3.1.1", "ports": ports}

        def pool() -> PublisherPool:
            return PublisherPool(PubSpec(host="127.0.0.1", port=ports[0],
                                         ca_file=str(cluster.ca_file), devices=devices,
                                         jpegs=jpegs, **spec_kw), args.pub_procs)

        return measure(f"nats x{ingestors}", pool, svcs, broker_pids,
                       expected=args.cameras * args.frames, patience=args.patience)
    finally:
        for s in svcs:
            s.close()
        cluster.close()
        if args.keep:
            print(f"(kept {tmp})")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cameras", type=int, default=40)
    ap.add_argument("--frames", type=int, default=50, help="frames per camera")
    ap.add_argument("--kb", type=int, default=50, help="JPEG size")
    ap.add_argument("--pub-procs", type=int, default=2)
    ap.add_argument("--only", choices=["mosquitto", "nats1", "nats2"], action="append",
                    help="run only these set-ups (repeatable); default: all three")
    ap.add_argument("--quick", action="store_true",
                    help="a small run (10 cameras x 20 frames of 20 KB) to try the bench")
    ap.add_argument("--nodes", type=int, default=3, help="NATS nodes (streams replicated "
                    "min(3, nodes) times)")
    ap.add_argument("--patience", type=float, default=45.0,
                    help="seconds without a new stored frame before giving up waiting")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folders (logs)")
    ap.add_argument("--one-filter", action="store_true",
                    help="nats x1: the ingestor subscribes p/+/cam/+/frame once "
                    "(ingest.one_filter) instead of 64 filters")
    ap.add_argument("--ack-wait", type=float,
                    default=NatsClusterSettings.model_fields["ack_wait_s"].default,
                    help="the nodes' MQTT ack_wait in seconds (default: the production "
                    "default, broker.nats.ack_wait_s; 30 is NATS's own)")
    args = ap.parse_args()
    if args.quick:
        args.cameras, args.frames, args.kb = 10, 20, 20
    print(machine())
    jpegs = svga_jpegs(8, args.kb * 1000)
    avg = statistics.mean(map(len, jpegs))
    print(f"{args.cameras} cameras x {args.frames} frames of {avg / 1000:.1f} KB "
          f"(800x600 JPEG, 8 KiB chunks), TLS, QoS 1, at most 8 frames unacknowledged per "
          f"camera; storage in {tempfile.gettempdir()} on {fs_note(Path(tempfile.gettempdir()))}"
          f"; NATS MQTT ack_wait {args.ack_wait:g} s"
          + ("; nats x1 with ingest.one_filter" if args.one_filter else ""))
    runs = args.only or ["mosquitto", "nats1", "nats2"]
    results: list[Result] = []
    for what in runs:
        print(f"-- {what}: {load()}", flush=True)
        if what == "mosquitto":
            results.append(run_mosquitto(args, jpegs))
        else:
            results.append(run_nats(args, jpegs, 1 if what == "nats1" else 2))
        r = results[-1]
        print(f"   {r.name:10s} acked {r.acked:6d} ({r.acked_per_s:7.0f}/s)  stored {r.stored:6d} "
              f"({r.stored_per_s:7.0f}/s)  lost {r.acked - min(r.acked, r.stored)}  "
              f"twice {r.twice}  longest pause {r.longest_pause:.1f} s  CPU-s: ingestors "
              f"{r.ingestor_cpu:.1f}, broker {r.broker_cpu:.1f}, publishers {r.pub_cpu:.1f}"
              + (f"  ERRORS {r.errors[:3]}" if r.errors else ""), flush=True)
    print(f"at the end: {load()}")
    base = next((r for r in results if r.name == "mosquitto"), None)
    one = next((r for r in results if r.name == "nats x1"), None)
    print("\nratios (same run):")
    for r in results:
        if base is not None and r is not base:
            print(f"  {r.name} / mosquitto: stored/s {r.stored_per_s / base.stored_per_s:.2f}, "
                  f"acked/s {r.acked_per_s / base.acked_per_s:.2f}; broker CPU per frame "
                  f"{1000 * r.broker_cpu / max(1, r.stored):.2f} ms against "
                  f"{1000 * base.broker_cpu / max(1, base.stored):.2f} ms")
    two = next((r for r in results if r.name == "nats x2"), None)
    if one is not None and two is not None:
        print(f"  nats x2 / nats x1: stored/s {two.stored_per_s / one.stored_per_s:.2f}")
    bad = [r.name for r in results if r.acked > r.stored or r.twice or r.errors]
    if bad:
        print(f"PROBLEMS in {bad}: frames acknowledged but not stored, stored twice, or errors")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
