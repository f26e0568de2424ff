"""``camstack demo --cluster`` (``make demo-cluster``): the NATS cluster engine end to end.

Three NATS nodes (``broker.engine = "nats"``, rendered by broker/cluster.py into
``<data>/demo-cluster/nats``), two ingestors owning partitions 0-31 and 32-63 (MQTT
3.1.1, each on another node), a SeaweedFS (S3) and a PostgreSQL, two encode workers
pulling jobs from a NATS JetStream queue on the cluster itself, and simulated cameras
on loopback chosen so that both halves of the partitions have cameras. It streams until
every camera has a video, prints which ingestor stored which camera's frames, the
videos (object keys and catalog rows) and the jobs each worker handled, stops everything
and exits 0.

The job queue is a stream on the cluster, replicated like the MQTT streams: the
ingestor and encoder accounts log in over the NATS protocol too, with rights on the job
stream only (broker/natscluster.py ``job_permissions``, docs/scaling.md).

Everything lives under ``<data>/demo-cluster/``, a data folder of its own (CA, accounts
with their bcrypt hashes, node configs and stores, configs, logs), reused by the next run.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from broker.accounts import AccountStore
from broker.cluster import cluster_nodes, node_argv
from broker.errors import BrokerToolError
from broker.layout import Layout
from broker.natscluster import NodePlan
from broker.run import prepare
from camstack.demo import (
    DEMO_ACCOUNT,
    Child,
    DemoOptions,
    DemoPaths,
    VideoWatch,
    _Cloud,
    _events,
    _jobs_per_worker,
    _progress,
    _save_pids,
    _stop_all,
    _summary,
    _table,
    _tail,
    _verdict,
    demo_console,
    reap_leftovers,
)
from camstack.servers import _http_json
from camstack.sim import Fleet, SimCamera, SimConfig
from camstack.stack import (
    ensure_device_account,
    ensure_service_account,
    nats_service_documents,
    write_documents,
)
from config.settings import (
    BrokerSettings,
    JobQueueSettings,
    MqttSettings,
    NatsClusterSettings,
    TlsSettings,
)
from contract.partition import device_partition
from monitor.service import now_ms

NODES = 3
INGESTORS = (("ingestor-a", list(range(32))), ("ingestor-b", list(range(32, 64))))


def _ports_free(ports: list[int]) -> bool:
    for p in ports:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", p))
            except OSError:
                return False
    return True


def choose_cluster_ports(nats: NatsClusterSettings, say: Callable[[str], None]) -> tuple[int, int]:
    """``(mqtt_port_base, port_base)``: the configured ones when all free, else free ones.

    Raises:
        BrokerToolError: No free layout found.
    """
    def ports(mqtt_base: int, base: int) -> list[int]:
        return [mqtt_base + i for i in range(NODES)] + [
            base + 10 * i + k for i in range(NODES) for k in range(3)]

    if _ports_free(ports(nats.mqtt_port_base, nats.port_base)):
        return nats.mqtt_port_base, nats.port_base
    for base in range(21000, 60000, 97):
        if _ports_free(ports(base, base + 10)):
            say(f"note: the configured NATS ports ({nats.mqtt_port_base}.., {nats.port_base}..)"
                f" are taken; using MQTT {base}..{base + NODES - 1}, loopback {base + 10}..")
            return base, base + 10
    raise BrokerToolError("no free ports for a 3-node NATS cluster on loopback")


def pick_devices(prefix: str, count: int) -> list[str]:
    """``count`` ids ``<prefix>NN``, half on partitions 0-31 and half on 32-63."""
    low = [f"{prefix}{i:02d}" for i in range(1, 100) if device_partition(f"{prefix}{i:02d}") < 32]
    high = [f"{prefix}{i:02d}" for i in range(1, 100)
            if device_partition(f"{prefix}{i:02d}") >= 32]
    half = count // 2
    return sorted(low[:count - half] + high[:half])


def _node_ready(node: NodePlan) -> bool:
    url = f"http://127.0.0.1:{node.http_port}"
    status, body = _http_json(url + "/healthz")
    if status != 200 or not isinstance(body, dict) or body.get("status") != "ok":
        return False
    routes = (_http_json(url + "/routez")[1] or {}).get("routes") or []
    if len({r.get("remote_name") for r in routes} - {None}) < NODES - 1:
        return False
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", node.mqtt_port),
                                                                 0.5):
        return True
    return False


def wait_cluster(nodes: list[NodePlan], children: dict[str, Child], timeout: float) -> None:
    """Wait until every node is healthy, routed to the others and listening for MQTT.

    Raises:
        BrokerToolError: A node died or the cluster was not ready in time.
    """
    deadline = time.monotonic() + timeout
    while not all(_node_ready(n) for n in nodes):
        for n in nodes:
            children[f"nats-{n.index}"].check()
        if time.monotonic() > deadline:
            raise BrokerToolError(f"NATS cluster not ready after {timeout:.0f}s; see "
                                  f"{nodes[0].log_file.parent.parent}")
        time.sleep(0.1)


def served_by(paths: DemoPaths) -> dict[str, set[str]]:
    """Devices whose frames each ingestor stored (its ``frame_stored`` log events)."""
    return {name: {str(e.get("device")) for e in _events(paths.logs / f"{name}.log")
                   if e.get("event") == "frame_stored"} for name, _ in INGESTORS}


def run_cluster_demo(settings: BrokerSettings, opts: DemoOptions,
                     out: TextIO | None = None) -> int:
    """Run the cluster demo from start to clean stop.

    Args:
        settings: Broker settings (data folder, ``[broker.nats]`` ports, topic prefix).
        opts: Cameras, fps, frames per video, timeout; ``workers`` encode workers (2 if 0).
        out: Progress and summary (default: stdout).

    Returns:
        0 when every camera got a video, each from the ingestor owning its partition.
    """
    say = demo_console(out)
    real = Layout(settings.data_dir.resolve())
    data = real.data_dir / "demo-cluster"
    paths = DemoPaths(data)
    for folder in (paths.config, paths.logs, paths.devices, paths.storage):
        folder.mkdir(parents=True, exist_ok=True)
    reap_leftovers(paths, say)
    mqtt_base, port_base = choose_cluster_ports(settings.nats, say)
    nats = settings.nats.model_copy(update={"nodes": NODES, "mqtt_port_base": mqtt_base,
                                            "port_base": port_base, "data_dir": None})
    demo = settings.model_copy(update={"data_dir": data, "engine": "nats", "nats": nats,
                                       "tls_bind": "127.0.0.1"})
    layout = Layout(data)
    say(f"preparing {data} (its own CA, accounts, {NODES} NATS node configs)")
    prepare(demo)
    store = AccountStore(layout.broker_dir, demo.topic_prefix)
    workers = opts.workers or 2
    encoders = ["encoder"] + [f"encoder-{i}" for i in range(2, workers + 1)]
    for name in (DEMO_ACCOUNT, *(n for n, _ in INGESTORS), *encoders):
        ensure_service_account(layout, store, name)
    devices = pick_devices(opts.device_prefix, opts.cameras)
    passwords = {d: ensure_device_account(store, d, paths.devices) for d in devices}
    nodes = cluster_nodes(demo, layout)

    children: dict[str, Child] = {}
    fleet: Fleet | None = None
    watch: VideoWatch | None = None
    cloud: _Cloud | None = None
    codes: dict[str, int | None] = {}
    ok = False
    started = time.monotonic()
    try:
        say("starting SeaweedFS (S3) and PostgreSQL for this run")
        cloud = _Cloud(paths.root / "cloud")  # no NATS of its own: jobs go to the cluster
        say(f"  S3 {cloud.weed.endpoint} bucket {cloud.weed.bucket}; PostgreSQL on "
            f"{cloud.pg.socket_dir}; job queue: stream {JobQueueSettings().stream} on the "
            f"cluster (R{nats.replicas})")
        docs = nats_service_documents(
            demo, layout, ingestors=list(INGESTORS), storage_root=paths.storage,
            log_format="json", metrics_ports={"ingestor": 0, "encoder": 0, "monitor": 0},
            sections={"ingestor": {"ingest": {"frames_per_video": opts.frames_per_video},
                                   **cloud.sections},
                      "encoder": {"encode": {"fps": opts.playback_fps}, **cloud.sections}})
        for name, _ in INGESTORS:  # each ingestor its own write-ahead folder
            docs[name]["storage"] = {"root": str(paths.storage / name)}
        write_documents({k: docs[k] for k in (*(n for n, _ in INGESTORS), "encoder")},
                        paths.config, force=True,
                        header="# Rendered by `camstack demo --cluster` at every run.\n")
        for n in nodes:
            say(f"starting NATS node {n.index}: MQTT (TLS) 127.0.0.1:{n.mqtt_port}, "
                f"monitoring http://127.0.0.1:{n.http_port} (log {n.log_file})")
            children[f"nats-{n.index}"] = Child(f"nats-{n.index}", node_argv(n),
                                                paths.logs / f"nats-{n.index}.out")
        _save_pids(paths, children)
        wait_cluster(nodes, children, 60)
        say(f"cluster ready: {NODES} nodes routed to each other, JetStream current; the "
            "encode jobs go to the cluster too")
        for name in (*(n for n, _ in INGESTORS), *encoders):
            module = "encoder" if name.startswith("encoder") else "ingestor"
            env = {"CAM_CONFIG": str(paths.config / f"{'encoder' if module == 'encoder' else name}"
                                                    ".toml")}
            if module == "encoder" and name != "encoder":
                pw_file = str(layout.service_password_file(name))
                env |= {"CAM_MQTT__USERNAME": name, "CAM_MQTT__CLIENT_ID": name,
                        "CAM_MQTT__PASSWORD_FILE": pw_file,
                        "CAM_JOBQUEUE__USER": name, "CAM_JOBQUEUE__PASSWORD_FILE": pw_file}
            say(f"starting {name} (config {env['CAM_CONFIG']}, log "
                f"{paths.logs / (name + '.log')})")
            children[name] = Child(name, [sys.executable, "-m", module],
                                   paths.logs / f"{name}.log", env=env)
            _save_pids(paths, children)
        for name in (*(n for n, _ in INGESTORS), *encoders):
            children[name].wait_event(
                "encoder_ready" if name.startswith("encoder") else "ingestor_ready", 90)
        say(f"ingestors ready ({', '.join(f'{n}: partitions {p[0]}-{p[-1]}' for n, p in INGESTORS)}"
            f"); {workers} encode workers on the JetStream queue ready")

        def mqtt_for(user: str, password: str | None, pw_file: Path | None,
                     node: int) -> MqttSettings:
            return MqttSettings(
                host="127.0.0.1", port=nodes[node % NODES].mqtt_port, username=user,
                client_id=user, password=password or "", password_file=pw_file,
                topic_prefix=demo.topic_prefix, protocol="3.1.1", reconnect_min_s=0.5,
                reconnect_max_s=2.0, tls=TlsSettings(enabled=True, ca_file=layout.pki.ca_cert))

        watch = VideoWatch(mqtt_for(DEMO_ACCOUNT, None,
                                    layout.service_password_file(DEMO_ACCOUNT), 2),
                           demo.topic_prefix, now_ms())
        cfg = SimConfig(fps=opts.fps, width=opts.width, height=opts.height, frames=None,
                        status_interval_s=5.0)
        fleet = Fleet([SimCamera(d, mqtt_for(d, passwords[d], None, k), cfg)
                       for k, d in enumerate(devices)])
        for k, d in enumerate(devices):
            say(f"  camera {d}: partition {device_partition(d)}, connects to node "
                f"{k % NODES}")
        say(f"streaming {len(devices)} simulated cameras at {opts.fps:g} fps; a video every "
            f"{opts.frames_per_video} frames")
        fleet.start()
        last_print = 0.0
        deadline = time.monotonic() + opts.timeout_s
        while not all(watch.has_video(c.device) for c in fleet.cameras):
            for cam in fleet.cameras:
                if cam.error is not None:
                    raise BrokerToolError(f"simulated camera {cam.device} failed: {cam.error}")
            for child in children.values():
                child.check()
            now = time.monotonic()
            if now - last_print >= 2.0:
                say(_progress(now - started, fleet, watch))
                last_print = now
            if now > deadline:
                raise BrokerToolError(
                    f"no video from every camera after {opts.timeout_s:.0f}s; end of the "
                    f"encoder log:\n{_tail(paths.logs / 'encoder.log')}")
            time.sleep(0.2)
        elapsed = time.monotonic() - started
        say(_progress(elapsed, fleet, watch))
        table = _table(watch, paths.storage)
        fleet.stop(timeout=30)
        summary, ok = _summary(watch, paths.storage, fleet, elapsed, table, store=cloud.store)
        say(summary)
        ok = cloud.report(say, len(devices)) and ok
        say("Which ingestor stored which camera's frames:")
        seen = served_by(paths)
        for name, parts in INGESTORS:
            mine = sorted(seen[name])
            say(f"  {name} (partitions {parts[0]}-{parts[-1]}): "
                + (", ".join(f"{d} (p{device_partition(d)})" for d in mine) or "none"))
            wrong = [d for d in mine if device_partition(d) not in parts]
            if wrong:
                ok = False
                say(f"    WRONG: {', '.join(wrong)} are not on its partitions")
        missing = set(devices) - set().union(*seen.values())
        if missing:
            ok = False
            say(f"  no ingestor stored frames of {', '.join(sorted(missing))}")
        say(_jobs_per_worker(paths.logs, encoders))
    except KeyboardInterrupt:
        say("interrupted")
        ok = False
    except BrokerToolError as exc:
        say(f"demo failed: {exc}")
        ok = False
    finally:
        if fleet is not None:
            fleet.stop(timeout=20)
        if watch is not None:
            watch.close()
        order = [*reversed(encoders), *(n for n, _ in reversed(INGESTORS)),
                 *(f"nats-{n.index}" for n in reversed(nodes))]
        codes = _stop_all(children, order, paths, cloud, say)
    return _verdict(codes, ok, paths, say,
                    "cluster demo finished: every camera produced a video")


