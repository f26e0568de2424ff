"""Shared parts of the benchmarks: broker, frames, load generator, log tailing, /proc.

The load generator (:func:`publisher_main`) runs in its own processes. Each process
drives many simulated cameras (one paho client and one TLS connection per device
account, as a real camera has) from a single ``selectors`` loop without paho's
threads, so one process can carry hundreds of cameras. Frames are pre-rendered JPEGs,
split into 8 KiB chunks once per frame and published QoS 1. Modes:

* ``backlog``: every camera publishes ``frames`` frames as fast as the broker takes
  them (at most ``window`` frames unacked per camera), used to pre-queue a backlog in
  the persistent sessions of consumers that are offline;
* ``live``: every camera publishes at ``fps`` from a random phase; a frame that comes
  due while the camera already has ``window`` frames unacked by the broker is skipped
  and counted (the camera's send queue is full), as the firmware does. The time at
  which each frame's last chunk was handed to the socket is recorded for latency.

Cameras can be added while running (``add`` command), for ramps.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.metadata
import io
import json
import multiprocessing as mp
import multiprocessing.connection as mpc
import os
import platform
import random
import selectors
import shutil
import subprocess
import tempfile
import time
import zlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import psutil
from PIL import Image

from broker.accounts import Account, hash_password, new_password
from camstack.brokerproc import BrokerHandle, start_broker
from camstack.servers import SeaweedHandle
from catalog import SealedBatch, SqlCatalog
from config.settings import MqttSettings, TlsSettings
from contract.codec import DEFAULT_CHUNK_DATA, split_frame
from contract.layout import pack_key
from encoder.cloud import BatchRef
from mqttclient import make_client
from objstore import S3Store
from objstore.pack import pack_bytes

T0_MS = 1_795_515_300_000
"""Capture time of frame 0 in backlog mode (a fixed date, so runs are comparable)."""


# ===================================================================== machine, stats
def machine() -> str:
    """One line saying where a figure was measured."""
    cpus = len(os.sched_getaffinity(0))
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = 0
    with contextlib.suppress(OSError, ValueError):
        mem = int(Path("/proc/meminfo").read_text().split()[1]) // 1024 // 1024
    mosq = "?"
    with contextlib.suppress(OSError):
        out = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True,
                             check=False).stdout
        mosq = out.splitlines()[0].replace("mosquitto version ", "") if out else "?"
    return (f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M}Z, {cpus} CPUs ({model}), {mem} GiB, "
            f"Linux {platform.release()}, Python {platform.python_version()}, "
            f"Mosquitto {mosq}, paho-mqtt {importlib.metadata.version('paho-mqtt')}; "
            f"{load()}")


def load() -> str:
    """The load averages: other work on the machine shows up here (1, 5, 15 min)."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


def pct(values: list[float], p: float) -> float:
    """The ``p``-th percentile (nearest rank) of ``values``; NaN when empty."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, round(p / 100 * len(s) + 0.5) - 1))
    return s[k]


def proc_status_kib(pid: int, key: str) -> int:
    """A ``/proc/<pid>/status`` memory field (``VmHWM`` peak RSS, ``VmRSS``) in KiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def cpu_seconds(pid: int, tree: bool = True) -> float:
    """User + system CPU seconds used so far by ``pid`` (all threads), and its live children.

    The ingestor writes through a child process (ingestor/diskproc.py): ``tree`` counts it.
    """
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    own = float(t.user + t.system)
    return own + (sum(cpu_seconds(c, tree) for c in children(pid)) if tree else 0.0)


def children(pid: int) -> list[int]:
    """Live child processes of ``pid``."""
    try:
        return [c.pid for c in psutil.Process(pid).children()]
    except psutil.Error:
        return []


def tree_kib(pid: int, key: str) -> int:
    """A ``/proc/<pid>/status`` memory field summed over ``pid`` and its children."""
    return proc_status_kib(pid, key) + sum(tree_kib(c, key) for c in children(pid))


# ===================================================================== frames
def svga_jpegs(count: int, target_bytes: int = 50_000, width: int = 800,
               height: int = 600, seed: int = 7) -> list[bytes]:
    """``count`` distinct SVGA JPEGs of about ``target_bytes`` each, 4:2:2 like the ESP32.

    A scene with edges and sensor noise; the noise level is raised until the first
    frame reaches the target size (an ESP32 SVGA frame at quality ~12 is 30-60 KB).

    Args:
        count: How many frames.
        target_bytes: Wanted size of each.
        width: Width in pixels.
        height: Height in pixels.
        seed: Random seed (same seed, same bytes).

    Returns:
        The JPEG bytes.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([(xx * 255 // width), (yy * 255 // height),
                     ((xx + yy) * 255 // (width + height))], axis=-1).astype(np.float32)
    for _ in range(12):
        x0, y0 = rng.integers(0, width - 80), rng.integers(0, height - 80)
        base[y0:y0 + rng.integers(20, 200), x0:x0 + rng.integers(20, 200)] = rng.integers(
            0, 255, 3)

    def one(i: int, sigma: float) -> bytes:
        img = base.copy()
        x = (i * 7) % (width - 60)
        img[250:310, x:x + 60] = (230, 40, 40)
        img += np.random.default_rng(seed * 1000 + i).normal(0, sigma, img.shape)
        buf = io.BytesIO()
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(
            buf, format="JPEG", quality=80, subsampling=1)
        return buf.getvalue()

    sigma = 1.0
    while len(one(0, sigma)) < target_bytes and sigma < 40:
        sigma *= 1.15
    return [one(i, sigma) for i in range(count)]


# ===================================================================== object store
def make_pack(device: str, batch: str, jpegs: list[bytes], t0: int) -> tuple[bytes, str, int]:
    """A pack as the ingestor seals it: manifest (name, size, CRC-32, times) + frames.

    Returns:
        (pack bytes, SHA-256 hex, size).
    """
    frames = [(f"frames/{t0 + i * 100:013d}_0000cafe_{i:010d}.jpg", data)
              for i, data in enumerate(jpegs)]
    n = len(frames)
    man = {"v": 1, "device": device, "batch": batch, "sealed_ms": t0 + n * 100 + 1000,
           "frames": [{"file": name, "ts_ms": t0 + i * 100, "bytes": len(data),
                       "crc32": zlib.crc32(data), "boot_id": 0xCAFE, "frame_seq": i,
                       "capture_ms": t0 + i * 100, "clock_synced": True}
                      for i, (name, data) in enumerate(frames)],
           "first_capture_ms": t0, "last_capture_ms": t0 + (n - 1) * 100}
    data, idx = pack_bytes(json.dumps(man).encode(), frames)
    return data, idx.sha256, idx.size


def stage(store: S3Store, cat: SqlCatalog, device: str, batches: int,
          jpegs: list[bytes]) -> list[BatchRef]:
    """Upload ``batches`` packs of ``jpegs`` with their catalog rows (state uploaded)."""
    refs = []
    for b in range(batches):
        t0 = T0_MS + b * 3_600_000
        batch = f"{device}-20261124T{10 + b // 60:02d}{b % 60:02d}00Z-{b + 1:04d}"
        data, sha, size = make_pack(device, batch, jpegs, t0)
        cat.record_sealed(SealedBatch(device=device, batch=batch, frames=len(jpegs),
                                      first_capture_ms=t0,
                                      last_capture_ms=t0 + (len(jpegs) - 1) * 100))
        key = pack_key(device, batch)
        store.put_bytes(key, data)
        cat.mark_uploaded(device, batch, pack_key=key, pack_sha256=sha, pack_bytes=size)
        refs.append(BatchRef(device, batch))
    return refs


def store_section(weed: SeaweedHandle) -> dict[str, Any]:
    """A service's ``[store]`` section for SeaweedFS (the secret written out)."""
    s = weed.s3_settings(connect_timeout_s=2, read_timeout_s=30, max_attempts=2)
    d = s.model_dump(mode="json", exclude_none=True)
    d["secret_access_key"] = s.secret_access_key.get_secret_value()
    return {"backend": "s3", "s3": d}


# ===================================================================== broker
@contextlib.contextmanager
def bench_broker(keep: bool = False) -> Iterator[tuple[BrokerHandle, Path]]:
    """A real Mosquitto (the project's config: TLS, passwords, ACLs, persistence).

    Yields:
        The broker and a scratch folder (removed afterwards unless ``keep``).
    """
    tmp = Path(tempfile.mkdtemp(prefix="camstack-bench-"))
    os.environ.setdefault("CAM_TEST_NO_DOCKER", "1")
    # Load generators publish far faster than a camera may: lift the guard's per-device
    # budgets (docs/security.md) so the ingestor, not the guard, is what is measured.
    try:
        broker = start_broker(tmp / "broker", use_docker=False, device_msgs_per_s=1e6,
                              device_burst_msgs=10**6, device_bytes_per_s=8 * 1024**3,
                              device_burst_bytes=10**10)
    except BaseException:  # e.g. the guard plugin not built (make -C broker/plugin)
        print(f"the broker did not start; its log: {tmp / 'broker' / 'mosquitto.log'}"
              if keep else "the broker did not start")
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        yield broker, tmp
    finally:
        broker.close()
        if keep:
            print(f"(kept {tmp})")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def provision(broker: BrokerHandle, count: int, prefix: str = "bench",
              start: int = 0) -> list[tuple[str, str]]:
    """Device accounts ``<prefix>0000``…, with one broker reload for all.

    Returns:
        (device id, password) pairs.
    """
    out = [(f"{prefix}{i:04d}", new_password()) for i in range(start, start + count)]
    created = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    # One registry rewrite for all (AccountStore.add rewrites it per account: quadratic).
    with broker.store._locked() as accounts:
        for device, password in out:
            accounts[device] = Account(name=device, kind="device",
                                       pw_hash=hash_password(password), created=created)
    broker.reload()
    return out


def broker_pid(broker: BrokerHandle) -> int:
    """Process id of the local Mosquitto."""
    assert broker.proc is not None
    return broker.proc.pid


def storage_root(tmp: Path, storage: str | None) -> Path:
    """The ingestor's storage root: a fresh folder under ``storage``, or in ``tmp``."""
    if storage is None:
        return tmp / "store"
    return Path(tempfile.mkdtemp(prefix="camstack-bench-store-", dir=storage))


def fs_note(path: Path) -> str:
    """File system type of ``path`` and whether it has a journal (it changes the costs)."""
    probe = path if path.exists() else path.parent
    out = subprocess.run(["findmnt", "-n", "-T", str(probe), "-o", "FSTYPE,SOURCE,TARGET"],
                         capture_output=True, text=True, check=False).stdout.split()
    if len(out) < 3:
        return "file system unknown"
    fstype, source, target = out[:3]
    note = f"{fstype} on {source} ({target})"
    if fstype == "ext4":
        dev = Path(source).name
        journaled = any(p.name.startswith(dev + "-") for p in Path("/proc/fs/jbd2").glob("*"))
        note += ", journal" if journaled else ", NO journal"
    return note


# ===================================================================== log tailing
class LogTail:
    """Reads a JSON-lines log incrementally (the services log one JSON object a line).

    Args:
        path: The log file.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pos = 0
        self._rest = b""

    def read(self) -> list[dict[str, Any]]:
        """Events appended since the last call."""
        try:
            with self.path.open("rb") as f:
                f.seek(self._pos)
                data = f.read()
        except FileNotFoundError:
            return []
        self._pos += len(data)
        lines = (self._rest + data).split(b"\n")
        self._rest = lines.pop()
        out: list[dict[str, Any]] = []
        for line in lines:
            if not line.startswith(b"{"):
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                out.append(obj)
        return out


def log_time(event: dict[str, Any]) -> float:
    """Unix seconds of a structlog event's ISO ``timestamp``."""
    return dt.datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00")).timestamp()


# ===================================================================== load generator
@dataclass
class PubSpec:
    """What one publisher process does (picklable)."""

    host: str
    port: int
    ca_file: str
    devices: list[tuple[str, str]]
    jpegs: list[bytes]
    mode: str = "backlog"
    frames: int = 100
    """Frames per camera (backlog mode; live mode: 0 = until stopped)."""
    fps: float = 1.0
    boot_id: int = 1
    window: int = 8
    chunk_data: int = DEFAULT_CHUNK_DATA
    seed: int = 0
    offsets: dict[str, float] = field(default_factory=dict)
    """Live mode: seconds a camera starts later than the others (spreads batch ends)."""
    protocol: str = "5"
    """MQTT version: ``"5"`` (Mosquitto) or ``"3.1.1"`` (the NATS engine)."""
    ports: list[int] = field(default_factory=list)
    """More brokers' ports (a cluster's nodes): camera ``i`` of a process connects to
    ``ports[i % len(ports)]``; empty: ``port``."""


@dataclass
class PubResult:
    """What one publisher process did."""

    frames_sent: int = 0
    frames_acked: int = 0
    frames_skipped: int = 0
    chunks_sent: int = 0
    bytes_sent: int = 0
    errors: list[str] = field(default_factory=list)
    first_publish: float = 0.0
    last_ack: float = 0.0
    cpu_s: float = 0.0
    sent: list[tuple[str, int, float, int]] = field(default_factory=list)
    """(device, frame_seq, wall time the last chunk went to the socket, capture_ms); live
    mode."""


@dataclass
class _Cam:
    device: str
    client: mqtt.Client
    payloads: list[list[bytes]]
    next_at: float = 0.0
    seq: int = 0
    unacked: deque[tuple[int, set[int]]] = field(default_factory=deque)
    mids: dict[int, int] = field(default_factory=dict)


class _Publisher:
    def __init__(self, spec: PubSpec) -> None:
        self.spec = spec
        self.sel = selectors.DefaultSelector()
        self.cams: dict[str, _Cam] = {}
        self.res = PubResult()
        self.rng = random.Random(spec.seed)
        self.topic_prefix = "cam"
        self.running = True
        # Frames split once per (jpeg, seq % len): capture_ms is rewritten per frame in
        # live mode, which needs a fresh split (cheap next to TLS).
        self.live = spec.mode == "live"

    def settings(self, device: str, password: str) -> MqttSettings:
        ports = self.spec.ports or [self.spec.port]
        return MqttSettings(host=self.spec.host, port=ports[len(self.cams) % len(ports)],
                            username=device, password=password, client_id=device,
                            keepalive_s=60, protocol="3.1.1" if self.spec.protocol == "3.1.1"
                            else "5",
                            tls=TlsSettings(enabled=True, ca_file=Path(self.spec.ca_file)))

    def add(self, devices: list[tuple[str, str]], start_at: float) -> None:
        for device, password in devices:
            s = self.settings(device, password)
            c = make_client(s, client_id=device, clean_session=True)
            c.max_inflight_messages_set(0)  # our window is in frames, not paho's
            c.on_publish = self._on_publish
            cam = _Cam(device, c, [])
            c.user_data_set(cam)
            for attempt in range(5):
                try:
                    if s.protocol == "3.1.1":  # clean session: fixed by make_client
                        c.connect(s.host, s.port, keepalive=s.keepalive_s)
                    else:
                        c.connect(s.host, s.port, keepalive=s.keepalive_s, clean_start=True)
                    break
                except OSError as exc:
                    if attempt == 4:
                        self.res.errors.append(f"{device}: {exc}")
                        c = None  # type: ignore[assignment]
                        break
                    time.sleep(0.2 * (attempt + 1))
            if c is None:
                continue
            sock = c.socket()
            assert sock is not None
            self.sel.register(sock, selectors.EVENT_READ, cam)
            cam.next_at = start_at + (self.rng.random() / self.spec.fps if self.live else 0.0)
            if self.live:
                cam.next_at += self.spec.offsets.get(device, 0.0)
            self.cams[device] = cam

    def _on_publish(self, _c: mqtt.Client, cam: _Cam, mid: int, _rc: Any, _p: Any) -> None:
        seq = cam.mids.pop(mid, None)
        if seq is None:
            return
        for fseq, left in cam.unacked:
            if fseq == seq:
                left.discard(mid)
                break
        while cam.unacked and not cam.unacked[0][1]:
            cam.unacked.popleft()
            self.res.frames_acked += 1
            self.res.last_ack = time.time()

    def _publish_frame(self, cam: _Cam) -> None:
        spec = self.spec
        jpeg = spec.jpegs[(cam.seq + zlib.crc32(cam.device.encode())) % len(spec.jpegs)]
        capture = int(time.time() * 1000) if self.live else T0_MS + cam.seq * 1000
        chunks = split_frame(jpeg, boot_id=spec.boot_id, frame_seq=cam.seq,
                             capture_ms=capture, clock_synced=True, chunk_data=spec.chunk_data)
        topic = f"{self.topic_prefix}/{cam.device}/frame"
        mids: set[int] = set()
        for p in chunks:
            info = cam.client.publish(topic, p, qos=1)
            if info.rc not in (mqtt.MQTT_ERR_SUCCESS,):
                self.res.errors.append(f"{cam.device}: publish rc {info.rc}")
                self.running = False
                return
            mids.add(info.mid)
            cam.mids[info.mid] = cam.seq
            self.res.chunks_sent += 1
            self.res.bytes_sent += len(p)
        now = time.time()
        if not self.res.first_publish:
            self.res.first_publish = now
        if self.live:
            self.res.sent.append((cam.device, cam.seq, now, capture))
        cam.unacked.append((cam.seq, mids))
        self.res.frames_sent += 1
        cam.seq += 1

    def _service(self, timeout: float) -> None:
        # Interest in writability only while paho has bytes queued.
        for cam in self.cams.values():
            sock = cam.client.socket()
            if sock is None:
                continue
            want = selectors.EVENT_READ | (selectors.EVENT_WRITE
                                           if cam.client.want_write() else 0)
            key = self.sel.get_key(sock)
            if key.events != want:
                self.sel.modify(sock, want, cam)
        for key, ev in self.sel.select(timeout):
            cam = key.data
            if not isinstance(cam, _Cam):
                continue
            c = cam.client
            if ev & selectors.EVENT_READ:
                c.loop_read()
                sock = c.socket()
                # TLS may hold decrypted records select() cannot see.
                while sock is not None and getattr(sock, "pending", lambda: 0)():
                    c.loop_read()
                    sock = c.socket()
            if ev & selectors.EVENT_WRITE and c.socket() is not None:
                c.loop_write()

    def run(self, conn: mpc.Connection | None) -> PubResult:
        spec = self.spec
        t_cpu = time.process_time()
        self.add(spec.devices, time.monotonic() + 0.5)
        # Wait for every CONNACK.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(
                c.client.is_connected() for c in self.cams.values()):
            self._service(0.05)
        if conn is not None:
            conn.send(("connected", len(self.cams)))
        next_misc = 0.0
        while self.running:
            now = time.monotonic()
            if conn is not None and conn.poll():
                cmd, arg = conn.recv()
                if cmd == "stop":
                    break
                if cmd == "add":
                    self.add(arg, now)
                    conn.send(("added", len(self.cams)))
                elif cmd == "stats":
                    conn.send(("stats", (self.res.frames_sent, self.res.frames_acked,
                                         self.res.frames_skipped)))
            wait = 0.05
            all_done = True
            for cam in self.cams.values():
                if spec.frames and cam.seq >= spec.frames:
                    if cam.unacked:
                        all_done = False
                    continue
                all_done = False
                if not self.live:
                    if len(cam.unacked) < spec.window and cam.client.is_connected():
                        self._publish_frame(cam)
                        wait = 0.0
                    continue
                if now >= cam.next_at:
                    cam.next_at = max(cam.next_at + 1.0 / spec.fps, now - 1.0)
                    if len(cam.unacked) >= spec.window or not cam.client.is_connected():
                        self.res.frames_skipped += 1
                        cam.seq += 1  # the firmware's counter moves on: a dropped frame
                    else:
                        self._publish_frame(cam)
                wait = min(wait, max(0.0, cam.next_at - now))
            if all_done and self.cams:
                break
            self._service(wait)
            if now >= next_misc:
                next_misc = now + 1.0
                for cam in self.cams.values():
                    cam.client.loop_misc()
        for cam in self.cams.values():
            with contextlib.suppress(Exception):
                cam.client.disconnect()
                cam.client.loop_write()
        self.res.cpu_s = time.process_time() - t_cpu
        return self.res


def publisher_main(spec: PubSpec, conn: mpc.Connection) -> None:
    """Entry point of a publisher process; sends its :class:`PubResult` on ``conn``."""
    res = _Publisher(spec).run(conn)
    conn.send(("result", res))


class PublisherPool:
    """Several publisher processes sharing out the cameras.

    Args:
        spec: Template; ``devices`` is split between the processes.
        procs: How many processes.
    """

    def __init__(self, spec: PubSpec, procs: int) -> None:
        ctx = mp.get_context("spawn")
        self.conns: list[mpc.Connection] = []
        self.procs: list[Any] = []
        self.spec = spec
        parts: list[list[tuple[str, str]]] = [spec.devices[i::procs] for i in range(procs)]
        for i, devs in enumerate(parts):
            mine, theirs = ctx.Pipe()
            s = PubSpec(**{**spec.__dict__, "devices": devs, "seed": spec.seed + i})
            p = ctx.Process(target=publisher_main, args=(s, theirs), daemon=True)
            p.start()
            self.conns.append(mine)
            self.procs.append(p)
        self._next = 0

    def wait_connected(self, timeout: float = 120.0) -> int:
        """Block until every process has connected its cameras; returns the camera count."""
        n = 0
        for c in self.conns:
            if not c.poll(timeout):
                raise TimeoutError("publisher did not connect")
            kind, arg = c.recv()
            assert kind == "connected", kind
            n += int(arg)
        return n

    def add(self, devices: list[tuple[str, str]]) -> None:
        """Spread more cameras over the processes (they connect and start at once)."""
        parts: list[list[tuple[str, str]]] = [[] for _ in self.conns]
        for d in devices:
            parts[self._next % len(parts)].append(d)
            self._next += 1
        for c, part in zip(self.conns, parts, strict=True):
            c.send(("add", part))
        for c in self.conns:
            kind, _ = c.recv()
            assert kind == "added", kind

    def stats(self) -> tuple[int, int, int]:
        """(frames sent, frames acked by the broker, frames skipped) so far."""
        tot = [0, 0, 0]
        for c in self.conns:
            c.send(("stats", None))
        for c in self.conns:
            kind, arg = c.recv()
            assert kind == "stats", kind
            for i in range(3):
                tot[i] += arg[i]
        return tot[0], tot[1], tot[2]

    def join(self, timeout: float = 600.0, stop: bool = False) -> PubResult:
        """Wait for (or, with ``stop``, end) every process; the summed result."""
        total = PubResult()
        if stop:
            for c in self.conns:
                c.send(("stop", None))
        for c in self.conns:
            if not c.poll(timeout):
                raise TimeoutError("publisher did not finish")
            kind, res = c.recv()
            assert kind == "result", kind
            total.frames_sent += res.frames_sent
            total.frames_acked += res.frames_acked
            total.frames_skipped += res.frames_skipped
            total.chunks_sent += res.chunks_sent
            total.bytes_sent += res.bytes_sent
            total.errors += res.errors
            total.cpu_s += res.cpu_s
            total.sent += res.sent
            total.first_publish = min(x for x in (total.first_publish, res.first_publish)
                                      if x) if res.first_publish else total.first_publish
            total.last_ack = max(total.last_ack, res.last_ack)
        for p in self.procs:
            p.join(10)
        return total


def pub_spec(broker: BrokerHandle, devices: list[tuple[str, str]], jpegs: list[bytes],
             **kw: Any) -> PubSpec:
    """A :class:`PubSpec` for ``broker``'s TLS listener."""
    return PubSpec(host=broker.host, port=broker.tls_port, ca_file=str(broker.ca_file),
                   devices=devices, jpegs=jpegs, **kw)
