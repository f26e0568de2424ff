"""Fault-suite helpers: the service stack, log tails, the storage audit, a cuttable
TCP path and a small real file system that can fill up.

Used by ``tests/integration/test_faults_*.py``; the figures they print are the ones in
docs/reliability.md.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import select
import socket
import subprocess
import threading
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import pytest

from camstack.brokerproc import BrokerHandle
from camstack.procs import Metrics, ServiceProcess, service_config
from tests.support.fleet import Fleet, FrameKey, MarkedCamera, read_marker


def env_int(name: str, default: int) -> int:
    """An integer knob from the environment (``CAM_FAULT_RUNS=20`` for the published runs).

    Args:
        name: Variable name.
        default: Value when unset or empty.

    Returns:
        The value.
    """
    raw = os.environ.get(name, "")
    return int(raw) if raw.strip() else default


def wait_until(pred: Callable[[], bool], timeout: float, what: str = "condition") -> None:
    """Poll ``pred`` until true.

    Raises:
        AssertionError: When it is still false after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    assert pred(), f"timed out after {timeout}s waiting for {what}"


def metric_sum(m: Metrics, name: str) -> float:
    """Sum of a metric over all its label sets."""
    return sum(v for (n, _labels), v in m.items() if n == name)


class LogTail:
    """New JSON log lines of a service since the last call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pos = 0
        self._rest = b""

    def skip_to_end(self) -> None:
        """Forget everything logged so far."""
        self.new_events()

    def new_events(self) -> list[dict[str, Any]]:
        """Events logged since the previous call."""
        try:
            with self.path.open("rb") as fh:
                fh.seek(self._pos)
                data = fh.read()
        except FileNotFoundError:
            return []
        self._pos += len(data)
        lines = (self._rest + data).split(b"\n")
        self._rest = lines.pop()
        out = []
        for line in lines:
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                out.append(obj)
        return out


class ServiceStack:
    """An ingestor and an encoder on one storage root, each restartable and killable.

    Both get their own accounts (``ingestor-<tag>``, ``encoder-<tag>``) and the encoder
    its own share group, so stacks of several tests never share sessions. Every process
    ever started is remembered and killed by :meth:`close` (call it from a finaliser).

    Args:
        broker: The broker.
        tmp: Folder for configs and logs.
        root: Storage root.
        tag: Suffix of the account names.
        ingest: ``[ingest]`` settings.
        encode: ``[encode]`` settings.
        work: ``[work]`` settings.
    """

    NAMES = ("ingestor", "encoder")

    def __init__(self, broker: BrokerHandle, tmp: Path, root: Path, *, tag: str,
                 ingest: dict[str, Any] | None = None, encode: dict[str, Any] | None = None,
                 work: dict[str, Any] | None = None) -> None:
        self.broker = broker
        self.tmp = tmp
        self.root = root
        self.accounts = {n: f"{n}-{tag}" for n in self.NAMES}
        for account in self.accounts.values():
            broker.add_service(account)
        mqtt = {"session_expiry_s": 600}
        self.configs = {
            "ingestor": service_config(
                broker, self.accounts["ingestor"], root, tmp / "ingestor.toml", mqtt=mqtt,
                ingest={"fsync_interval_ms": 5, "storage_retry_s": 0.3,
                        "announce_retry_s": 2, **(ingest or {})}),
            "encoder": service_config(
                broker, self.accounts["encoder"], root, tmp / "encoder.toml", mqtt=mqtt,
                encode={"preset": "ultrafast", "decode_threads": 1, **(encode or {})},
                # Kills are not the batch's fault: never quarantine for too many attempts.
                work={"retry_backoff_s": 0.3, "max_attempts": 100, **(work or {})}),
        }
        enc = self.configs["encoder"]
        enc.write_text(f'share_group = "enc-{tag}"\n' + enc.read_text())
        self.current: dict[str, ServiceProcess | None] = dict.fromkeys(self.NAMES)
        self.history: dict[str, list[ServiceProcess]] = {n: [] for n in self.NAMES}

    def start(self, name: str, *, wait: bool = True) -> ServiceProcess:
        """Start a service (a new log file per run).

        Args:
            name: ``ingestor`` or ``encoder``.
            wait: Wait until it is subscribed.

        Returns:
            The process.
        """
        run = len(self.history[name]) + 1
        svc = ServiceProcess(name, self.configs[name], self.tmp / f"{name}-{run:03d}.log")
        self.history[name].append(svc)
        self.current[name] = svc.start()
        if wait:
            svc.wait_event(f"{name}_ready", 60)
        return svc

    def start_all(self) -> None:
        """Start both and wait for both."""
        for n in self.NAMES:
            self.start(n, wait=False)
        for n in self.NAMES:
            svc = self.current[n]
            assert svc is not None
            svc.wait_event(f"{n}_ready", 60)

    def kill(self, name: str) -> None:
        """SIGKILL the running instance."""
        svc = self.current[name]
        if svc is not None:
            svc.kill()

    def alive(self, name: str) -> bool:
        """Whether the current instance runs."""
        svc = self.current[name]
        return svc is not None and svc.proc is not None and svc.proc.poll() is None

    def stop_all(self) -> dict[str, int]:
        """SIGTERM both (encoder first) and return their exit codes."""
        codes = {}
        for n in reversed(self.NAMES):
            svc = self.current[n]
            if svc is not None:
                codes[n] = svc.stop(30)
        return codes

    def events(self, name: str) -> list[dict[str, Any]]:
        """Log events of every run of a service, in order."""
        return [e for svc in self.history[name] for e in svc.events()]

    def close(self) -> None:
        """Kill whatever still runs (finaliser: no orphaned service after a failure)."""
        for runs in self.history.values():
            for svc in runs:
                if svc.proc is not None and svc.proc.poll() is None:
                    svc.proc.kill()
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        svc.proc.wait(10)


# ============================================================================ the audit
@dataclass
class Audit:
    """Where every frame a fleet sent ended up, and what does not belong."""

    sent: int = 0
    acked: int = 0
    on_disk: int = 0
    """Frame files in ``frames/`` and ``batches/``."""
    in_videos: int = 0
    """Frames decoded from the videos (marker grid read back)."""
    videos: int = 0
    batches_left: int = 0
    lost: list[FrameKey] = field(default_factory=list)
    """Acknowledged frames neither on disk nor in a video."""
    duplicates: list[FrameKey] = field(default_factory=list)
    """Frames stored or encoded more than once."""
    duplicate_videos: list[str] = field(default_factory=list)
    """Batches with more than one video."""
    orphans: list[str] = field(default_factory=list)
    """Frames or batches still on disk although their video exists; temp files; trash."""
    corrupt: list[str] = field(default_factory=list)
    """Bytes that differ from what was sent, unreadable videos, counts that disagree."""
    quarantined: list[str] = field(default_factory=list)
    unannounced: list[str] = field(default_factory=list)
    """Videos whose event never reached a subscriber."""

    def problems(self) -> list[str]:
        """Every broken promise, as text (empty: all kept)."""
        out = []
        for name in ("lost", "duplicates", "duplicate_videos", "orphans", "corrupt",
                     "quarantined", "unannounced"):
            items = getattr(self, name)
            if items:
                out.append(f"{name} ({len(items)}): {sorted(map(str, items))[:10]}")
        return out

    def row(self) -> dict[str, int]:
        """The figures of docs/reliability.md's tables."""
        return {"sent": self.sent, "acked": self.acked, "on_disk": self.on_disk,
                "in_videos": self.in_videos, "videos": self.videos,
                "lost": len(self.lost), "duplicates": len(self.duplicates),
                "duplicate_videos": len(self.duplicate_videos), "orphans": len(self.orphans),
                "corrupt": len(self.corrupt), "quarantined": len(self.quarantined),
                "unannounced": len(self.unannounced)}


def frame_files(root: Path) -> list[Path]:
    """Frame files (not temp files) in ``frames/`` and ``batches/``."""
    found = [p for p in (root / "frames").glob("*/*/*.jpg") if not p.name.startswith(".")]
    found += [p for p in (root / "batches").glob("*/*/frames/*.jpg")
              if not p.name.startswith(".")]
    return found


def _key_of_file(p: Path, root: Path) -> FrameKey:
    device = p.relative_to(root).parts[1]
    _ts, boot, seq = p.stem.split("_")
    return device, int(boot, 16), int(seq)


def decode_markers(mp4: Path) -> list[tuple[int, int] | None]:
    """The marker of every frame of a video, in order (None where unreadable)."""
    out: list[tuple[int, int] | None] = []
    with av.open(str(mp4)) as container:
        for frame in container.decode(video=0):
            out.append(read_marker(frame.to_ndarray(format="gray")))
    return out


def audit(root: Path, fleet: Fleet, *, ignore_devices: set[str] | None = None,
          announced: set[str] | None = None) -> Audit:
    """Account for every frame the fleet sent.

    Args:
        root: Storage root.
        fleet: The publishers (what was sent and acknowledged).
        announced: Locations of the video events received; every video must be in it.
        ignore_devices: Devices not in the fleet whose files are expected (a fuzzing
            device); anything else not sent by the fleet counts as corrupt.

    Returns:
        The audit.
    """
    ignore = ignore_devices or set()
    sent = fleet.sent()
    acked = fleet.acked()
    a = Audit(sent=len(sent), acked=len(acked))
    seen: Counter[FrameKey] = Counter()
    disk_keys: dict[FrameKey, str] = {}
    for p in frame_files(root):
        key = _key_of_file(p, root)
        if key[0] in ignore:
            continue
        a.on_disk += 1
        seen[key] += 1
        disk_keys[key] = p.relative_to(root).as_posix()
        crc = sent.get(key)
        if crc is None or zlib.crc32(p.read_bytes()) & 0xFFFFFFFF != crc:
            a.corrupt.append(f"frame {p.relative_to(root)} differs from what was sent")
    a.batches_left = len([b for b in (root / "batches").glob("*/*") if b.is_dir()])
    video_batches: Counter[str] = Counter()
    in_video: set[FrameKey] = set()
    for mp4 in sorted((root / "videos").glob("*/*/*.mp4")):
        if mp4.name.startswith(".") or mp4.parts[-3] in ignore:
            continue
        a.videos += 1
        rel = mp4.relative_to(root).as_posix()
        try:
            event = json.loads(mp4.with_suffix(".json").read_text())
            video_batches[str(event["batch"])] += 1
            declared = int(event["frames"])
        except (OSError, ValueError, KeyError, TypeError):
            a.corrupt.append(f"{rel}: no readable sidecar")
            declared = -1
        try:
            marks = decode_markers(mp4)
        except av.FFmpegError as exc:
            a.corrupt.append(f"{rel}: does not decode ({exc})")
            continue
        if declared != len(marks):
            a.corrupt.append(f"{rel}: event says {declared} frames, {len(marks)} decoded")
        for i, mark in enumerate(marks):
            vkey = fleet.key_of(*mark) if mark is not None else None
            if vkey is None or vkey[0] != mp4.parts[-3]:
                a.corrupt.append(f"{rel}: frame {i} is not one of this device's frames")
                continue
            a.in_videos += 1
            seen[vkey] += 1
            in_video.add(vkey)
        if announced is not None and rel not in announced:
            a.unannounced.append(rel)
    a.duplicates = sorted(k for k, n in seen.items() if n > 1)
    a.duplicate_videos = sorted(b for b, n in video_batches.items() if n > 1)
    a.lost = sorted(acked - set(seen))
    a.orphans = [f"{disk_keys[k]} (also in a video)" for k in sorted(in_video & set(disk_keys))]
    for bdir in (root / "batches").glob("*/*"):
        if bdir.name in video_batches:
            a.orphans.append(f"batches/{bdir.parent.name}/{bdir.name} (its video exists)")
    a.orphans += [f"temp file {p.relative_to(root)}" for p in root.rglob(".*") if p.is_file()]
    trash = root / "state" / "encoder" / "trash"
    if trash.is_dir():
        a.orphans += [f"trash {p.name}" for p in trash.iterdir()]
    qdir = root / "quarantine"
    if qdir.is_dir():
        a.quarantined = [p.relative_to(root).as_posix() for p in qdir.glob("*/*")
                         if p.parent.name not in ignore]
    return a


class VideoWatcher:
    """Collects every video event (``<prefix>/+/video``) on a persistent session.

    Args:
        broker: The broker.
        tag: Suffix of its operator account.
    """

    def __init__(self, broker: BrokerHandle, tag: str) -> None:
        name = f"operator-{tag}"
        broker.add_service(name)
        self.locations: set[str] = set()
        self._lock = threading.Lock()
        # A persistent session: events published while a broker restart cut us off
        # are queued for us, and the subscription survives the restart.
        self.client = broker.client(name, client_id=name, clean_start=False,
                                    before_connect=self._hook)
        self.client.subscribe(f"{broker.prefix}/+/video", qos=1)

    def _hook(self, client: Any) -> None:
        client.on_message = self._on_message

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        try:
            location = json.loads(msg.payload)["location"]
        except (ValueError, KeyError, TypeError):
            return
        with self._lock:
            self.locations.add(str(location))

    def seen(self) -> set[str]:
        """Locations announced so far."""
        with self._lock:
            return set(self.locations)

    def close(self) -> None:
        """Disconnect."""
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class Scenario:
    """A running fault scenario: services, a video watcher and a marker-frame fleet."""

    tag: str
    stack: ServiceStack
    watcher: VideoWatcher
    fleet: Fleet


def start_scenario(broker: BrokerHandle, tmp: Path, root: Path, cleanup: list[Any], *,
                   letter: str, cameras: int, fps: float, **sections: dict[str, Any]) -> Scenario:
    """Start an ingestor+encoder stack, a video watcher and a fleet of marked cameras.

    Everything started is appended to ``cleanup`` (closed by the test's finaliser).

    Args:
        broker: The broker.
        tmp: Folder for configs and logs.
        root: Storage root.
        cleanup: The test's cleanup list.
        letter: First letter of the device ids (tells scenarios apart in logs).
        cameras: Number of cameras.
        fps: Frames per second of each camera.
        **sections: ``ingest``/``encode``/``work`` settings for the stack.

    Returns:
        The scenario, with the fleet streaming.
    """
    tag = uuid.uuid4().hex[:6]
    stack = ServiceStack(broker, tmp, root, tag=tag, **sections)
    cleanup.append(stack)
    watcher = VideoWatcher(broker, tag)
    cleanup.append(watcher)
    stack.start_all()
    devices = [f"{letter}{tag}{i}" for i in range(cameras)]
    passwords = {d: broker.store.add(d, "device") for d in devices}
    broker.reload()
    fleet = Fleet([MarkedCamera(i, d, broker.mqtt_settings(d, passwords[d]), fps=fps)
                   for i, d in enumerate(devices)])
    cleanup.append(fleet)
    fleet.start()
    return Scenario(tag, stack, watcher, fleet)


def video_locations(root: Path) -> set[str]:
    """``videos/<id>/<date>/<name>.mp4`` of every finished video."""
    return {p.relative_to(root).as_posix() for p in (root / "videos").glob("*/*/*.mp4")
            if not p.name.startswith(".")}


def settled(root: Path) -> bool:
    """Nothing left to seal or encode: no frame in ``frames/`` or ``batches/``."""
    return not frame_files(root) and not any(
        b.is_dir() for b in (root / "batches").glob("*/*"))


def print_row(scenario: str, seed: int, extra: dict[str, Any], a: Audit) -> None:
    """One line of figures on stdout (``pytest -s`` shows it; docs/reliability.md)."""
    print(f"FAULT-FIGURES {json.dumps({'scenario': scenario, 'seed': seed, **extra, **a.row()})}")


# ============================================================================ network cut
class _Pair:
    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.blackholed = False
        self.closed = False

    def close(self) -> None:
        self.closed = True
        for s in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                s.close()


class TcpProxy:
    """A TCP path between a device and the broker that the test can cut.

    :meth:`cut` is a network partition as a device sees it when Wi-Fi silently goes
    away: open connections stay open but nothing gets through any more in either
    direction (bytes are swallowed), and new connections are refused. :meth:`heal`
    closes the swallowed connections (both ends have given them up by then) and lets
    new ones through.

    Args:
        host: Broker host.
        port: Broker port.
    """

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port: int = self._listener.getsockname()[1]
        self._cut = False
        self._closing = False
        self._pairs: list[_Pair] = []
        self._lock = threading.Lock()
        self.connections = 0
        self.refused = 0
        self._thread = threading.Thread(target=self._accept, name="tcp-proxy", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closing:
            r, _, _ = select.select([self._listener], [], [], 0.1)
            if not r:
                continue
            try:
                client, _addr = self._listener.accept()
            except OSError:
                continue
            if self._cut:
                self.refused += 1
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            pair = _Pair(client, upstream)
            with self._lock:
                self._pairs.append(pair)
                self.connections += 1
            threading.Thread(target=self._pump, args=(pair,), daemon=True).start()

    def _pump(self, pair: _Pair) -> None:
        ends = {pair.client: pair.upstream, pair.upstream: pair.client}
        open_ends = [pair.client, pair.upstream]
        while not pair.closed and open_ends:
            try:
                readable, _, _ = select.select(open_ends, [], [], 0.1)
            except (OSError, ValueError):
                break
            for s in readable:
                try:
                    data = s.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    if pair.blackholed:
                        # The far end gave up; across a dead network nobody hears it.
                        open_ends.remove(s)
                        continue
                    pair.close()
                    return
                if pair.blackholed:
                    continue
                data, after = self._forward(pair, s, data)
                try:
                    if data:
                        ends[s].sendall(data)
                except OSError:
                    pair.close()
                    return
                if after is not None:
                    after()
        pair.close()

    def _forward(self, pair: _Pair, src: socket.socket,
                 data: bytes) -> tuple[bytes, Callable[[], None] | None]:
        """What of ``data`` (read from ``src``) to pass on, and what to do once sent.

        Subclasses shape the traffic here (cut after a byte budget, …).
        """
        return data, None

    def cut(self) -> None:
        """Swallow everything on open connections; refuse new ones."""
        self._cut = True
        with self._lock:
            for p in self._pairs:
                p.blackholed = True

    def heal(self) -> None:
        """Drop the swallowed connections and let new ones through."""
        with self._lock:
            for p in self._pairs:
                if p.blackholed:
                    p.close()
            self._pairs = [p for p in self._pairs if not p.closed]
        self._cut = False

    def close(self) -> None:
        """Stop accepting and close everything."""
        self._closing = True
        self._thread.join(2)
        with self._lock:
            for p in self._pairs:
                p.close()
        self._listener.close()


# ============================================================================ disk full
@contextlib.contextmanager
def small_filesystem(path: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` at ``path``: a real file system that really fills up.

    Skips the test (with the reason) when not root or when mounting is not permitted.

    Args:
        path: Mount point (created).
        size: tmpfs ``size=`` option, e.g. ``24m``.

    Yields:
        The mount point.
    """
    if os.geteuid() != 0:
        pytest.skip("a real full disk needs a tmpfs mount, which needs root")
    path.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                          str(path)], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        pytest.skip(f"mount -t tmpfs not permitted here: {res.stderr.strip()}")
    try:
        yield path
    finally:
        for _ in range(20):
            if subprocess.run(["umount", str(path)], capture_output=True,
                              check=False).returncode == 0:
                break
            time.sleep(0.25)
        else:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def fill(path: Path) -> int:
    """Write ``path`` until the file system says ENOSPC.

    Args:
        path: The filler file.

    Returns:
        Bytes written.

    Raises:
        OSError: Any error but ENOSPC.
    """
    written = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for block in (1 << 20, 1 << 16, 1 << 12, 1 << 9, 1):
            buf = b"\0" * block
            while True:
                try:
                    written += os.write(fd, buf)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    return written


# ============================================================================ figures
SUMMED = ("sent", "acked", "on_disk", "in_videos", "videos", "lost", "duplicates",
          "duplicate_videos", "orphans", "corrupt", "quarantined", "unannounced",
          "kills_ingestor", "kills_encoder", "restarts", "acked_while_full",
          "ingestor_storage_errors", "encoder_failures", "fuzzed_chunks", "flood_copies",
          "rejected", "dropped", "dropped_good", "bad_ready", "ready_malformed_counted",
          "frames_captured", "frames_sent", "frames_dropped", "stored")


def summarize(lines: list[str]) -> str:
    """Markdown table of the ``FAULT-FIGURES`` lines, one row per scenario (sums).

    ``CAM_FAULT_RUNS=20 pytest -s tests/integration/test_faults_kill.py | python -m
    tests.support.faults`` prints what docs/reliability.md shows.

    Args:
        lines: Output lines; others are ignored.

    Returns:
        The table.
    """
    rows: dict[str, dict[str, Any]] = {}
    for line in lines:
        at = line.find("FAULT-FIGURES ")
        if at < 0:
            continue
        fig = json.loads(line[at + len("FAULT-FIGURES "):])
        row = rows.setdefault(fig["scenario"], {"runs": 0})
        row["runs"] += 1
        for k in SUMMED:
            if isinstance(fig.get(k), int):
                row[k] = row.get(k, 0) + fig[k]
    cols = ["runs", *[k for k in SUMMED if any(k in r for r in rows.values())]]
    out = ["| scenario | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, row in rows.items():
        out.append(f"| {name} | " + " | ".join(str(row.get(c, "")) for c in cols) + " |")
    return "\n".join(out)


if __name__ == "__main__":  # pragma: no cover - a reporting aid
    import sys

    print(summarize(sys.stdin.read().splitlines()))
