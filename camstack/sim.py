"""Simulated cameras: real MQTT devices that speak the wire contract, for demos and load.

Each :class:`SimCamera` connects with its own device account (TLS, client id = user
name), sets the retained ``{"state":"offline"}`` last will, publishes a retained status
like the firmware, and streams JPEGs split with :func:`contract.codec.split_frame` at
QoS 1. A frame counts as *acked* once the broker has PUBACKed every one of its chunks.

Frames are drawn with Pillow: a gradient, a ball that moves from frame to frame and the
device id, UTC time and frame number printed on it, so a video made of them visibly
plays. For load generation, ``cache_frames`` pre-renders that many frames and cycles
them, so producing a frame costs a list lookup instead of a JPEG encode.

Faults, to exercise the receiving side: drop the connection as a device losing Wi-Fi
would (the broker publishes the last will, the device reconnects and paho re-sends
unacked chunks), corrupt a frame (one data byte flipped: CRC mismatch), and publish
chunks twice (as a QoS 1 redelivery would).
"""

from __future__ import annotations

import colorsys
import datetime as dt
import hashlib
import io
import math
import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode
from PIL import Image, ImageDraw, ImageFont

from config.settings import MqttSettings
from contract.codec import DEFAULT_CHUNK_DATA, HEADER_LEN, split_frame
from mqttclient import (
    MqttConnectError,
    connect_blocking,
    make_client,
    publish_json,
    wait_published,
)

SIM_FW = "sim-1.0"


@dataclass(frozen=True)
class Faults:
    """Faults a simulated camera injects."""

    drop_every_s: float | None = None
    """Drop the connection (will published) this often; None: never."""
    drop_pause_s: float = 1.0
    """How long the camera stays away after a drop."""
    corrupt_rate: float = 0.0
    """Share of frames sent with one data byte flipped (CRC mismatch at the receiver)."""
    duplicate_rate: float = 0.0
    """Share of chunks published twice."""
    seed: int = 0


@dataclass(frozen=True)
class SimConfig:
    """How a simulated camera behaves."""

    fps: float = 2.0
    width: int = 320
    height: int = 240
    quality: int = 75
    chunk_data: int = DEFAULT_CHUNK_DATA
    frames: int | None = None
    """Stop after this many frames; None: until stopped."""
    cache_frames: int = 0
    """Pre-render this many frames and cycle them (cheap load); 0: draw every frame."""
    clock_synced: bool = True
    status_interval_s: float = 10.0
    window: int = 16
    """Frames published but not yet acked before the camera waits (its send queue)."""
    drain_timeout_s: float = 15.0
    faults: Faults = field(default_factory=Faults)


@dataclass
class SimStats:
    """Counters of one camera (or a sum of cameras)."""

    frames_sent: int = 0
    frames_acked: int = 0
    chunks_sent: int = 0
    bytes_sent: int = 0
    frames_corrupted: int = 0
    chunks_duplicated: int = 0
    drops: int = 0
    errors: int = 0

    def add(self, other: SimStats) -> None:
        """Add ``other``'s counters to these.

        Args:
            other: Counters to add.
        """
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


def _load_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # pragma: no cover - Pillow built without FreeType
        return ImageFont.load_default()


class FrameRenderer:
    """Draws the frames of one camera with Pillow.

    Args:
        device: Device id, printed on every frame and the seed of its colours.
        width: Width in pixels.
        height: Height in pixels.
        quality: JPEG quality 1..95.
    """

    def __init__(self, device: str, width: int = 320, height: int = 240,
                 quality: int = 75) -> None:
        self.device = device
        self.width = width
        self.height = height
        self.quality = quality
        hue = int.from_bytes(hashlib.sha256(device.encode()).digest()[:2], "big") / 65535
        self._ball = tuple(int(c * 255) for c in colorsys.hsv_to_rgb((hue + 0.5) % 1, 0.9, 1))
        bg = Image.new("RGB", (width, height))
        draw = ImageDraw.Draw(bg)
        for y in range(height):
            r, g, b = colorsys.hsv_to_rgb(hue, 0.6, 0.25 + 0.6 * y / max(1, height - 1))
            draw.line([(0, y), (width - 1, y)], fill=(int(r * 255), int(g * 255), int(b * 255)))
        self._background = bg
        self._font = _load_font(max(9, height // 14))

    def render(self, seq: int, ts_ms: int) -> bytes:
        """One frame.

        Args:
            seq: Frame number (moves the ball).
            ts_ms: Time printed on the frame.

        Returns:
            JPEG bytes.
        """
        img = self._background.copy()
        draw = ImageDraw.Draw(img)
        w, h = self.width, self.height
        radius = max(4, min(w, h) // 10)
        span = max(1, w - 2 * radius)
        # Bounce left-right, bob up-down: every frame differs from the one before.
        pos = (seq * max(2, w // 40)) % (2 * span)
        x = radius + (pos if pos < span else 2 * span - pos)
        y = h // 2 + int((h // 4) * math.sin(seq / 5))
        fill = (self._ball[0], self._ball[1], self._ball[2])
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=fill)
        stamp = dt.datetime.fromtimestamp(ts_ms / 1000, dt.UTC)
        lines = (self.device, stamp.strftime("%Y-%m-%d %H:%M:%S.") + f"{ts_ms % 1000:03d}Z",
                 f"frame {seq}")
        step = max(10, h // 12)
        draw.rectangle([0, 0, w, 3 + step * len(lines)], fill=(0, 0, 0))
        for i, text in enumerate(lines):
            draw.text((4, 2 + i * step), text, fill=(255, 255, 255), font=self._font)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=self.quality)
        return buf.getvalue()


class FrameSource:
    """Frames for one camera: drawn live, or pre-rendered and cycled.

    Args:
        renderer: The drawer.
        cache_frames: Pre-render this many (0: draw each frame when asked).
    """

    def __init__(self, renderer: FrameRenderer, cache_frames: int = 0) -> None:
        self.renderer = renderer
        now = int(time.time() * 1000)
        self._cache = [renderer.render(i, now) for i in range(cache_frames)]

    def frame(self, seq: int, ts_ms: int) -> bytes:
        """The JPEG for frame ``seq`` taken at ``ts_ms``.

        Args:
            seq: Frame number.
            ts_ms: Capture time.

        Returns:
            JPEG bytes.
        """
        if self._cache:
            return self._cache[seq % len(self._cache)]
        return self.renderer.render(seq, ts_ms)


def _corrupt(chunk: bytes) -> bytes:
    # Flip one data byte after the SOI marker: the header still parses, the CRC does not.
    pos = HEADER_LEN + min(len(chunk) - HEADER_LEN - 1, 2)
    return chunk[:pos] + bytes([chunk[pos] ^ 0xFF]) + chunk[pos + 1:]


class SimCamera:
    """One simulated device on its own thread.

    Args:
        device: Device id (its MQTT username and client id).
        mqtt_settings: Connection settings with the device's password.
        config: Behaviour.
        source: Frame source (default: drawn from ``config``).
    """

    def __init__(self, device: str, mqtt_settings: MqttSettings, config: SimConfig | None = None,
                 *, source: FrameSource | None = None) -> None:
        self.device = device
        self.settings = mqtt_settings
        self.config = config or SimConfig()
        self.source = source or FrameSource(
            FrameRenderer(device, self.config.width, self.config.height, self.config.quality),
            self.config.cache_frames)
        self.boot_id = random.SystemRandom().getrandbits(32)
        self.stats = SimStats()
        self.error: str | None = None
        self.prefix = mqtt_settings.topic_prefix
        self.connected = threading.Event()
        self.finished = threading.Event()
        self._stop = threading.Event()
        self._refused: str | None = None
        self._rng = random.Random(f"{self.config.faults.seed}/{device}")
        self._thread: threading.Thread | None = None
        self._started = time.monotonic()
        self._pending: deque[list[mqtt.MQTTMessageInfo]] = deque()
        self._lock = threading.Lock()

    @property
    def frame_topic(self) -> str:
        """``cam/<id>/frame``."""
        return f"{self.prefix}/{self.device}/frame"

    @property
    def status_topic(self) -> str:
        """``cam/<id>/status``."""
        return f"{self.prefix}/{self.device}/status"

    def start(self) -> SimCamera:
        """Run on a daemon thread.

        Returns:
            self.
        """
        self._thread = threading.Thread(target=self._run_safely, name=f"sim-{self.device}",
                                        daemon=True)
        self._thread.start()
        return self

    def request_stop(self) -> None:
        """Ask the camera to stop without waiting (see :meth:`stop`)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        """Whether a stop was asked for."""
        return self._stop.is_set()

    def stop(self, timeout: float | None = None) -> SimStats:
        """Ask the camera to stop (it drains its queue and goes offline) and wait.

        Args:
            timeout: Seconds to wait for the thread; None: as long as it takes.

        Returns:
            Its counters.
        """
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        return self.stats

    def _run_safely(self) -> None:
        try:
            self.run()
        except Exception as exc:  # a revoked account, a lost broker: in the summary
            self.error = f"{type(exc).__name__}: {exc}"
            self.stats.errors += 1
        finally:
            self.finished.set()

    def status_payload(self) -> dict[str, Any]:
        """The retained status, shaped like the firmware's."""
        cfg = self.config
        return {
            "state": "online", "fw": SIM_FW, "boot_id": self.boot_id,
            "uptime_s": int(time.monotonic() - self._started),
            "rssi": -55 - self._rng.randrange(20),
            "heap_free": 150_000 - self._rng.randrange(20_000),
            "psram_free": 3_500_000, "queue": len(self._pending),
            "frames_sent": self.stats.frames_sent, "frames_dropped": 0,
            "reset_reason": "poweron", "frame_size": f"{cfg.width}x{cfg.height}",
            "jpeg_quality": cfg.quality, "interval_ms": int(1000 / cfg.fps), "sim": True,
        }

    def run(self) -> None:
        """Connect, stream until stopped (or ``frames`` sent), drain, go offline."""
        cfg = self.config
        client = make_client(self.settings, client_id=self.device, will_topic=self.status_topic,
                             clean_session=True)
        client.max_inflight_messages_set(max(20, cfg.window * 4))
        # The queue of unsent chunks is our own window (cfg.window frames), not paho's.
        connect_blocking(client, self.settings, clean_start=True)
        client.on_connect = self._on_reconnect
        self.connected.set()
        publish_json(client, self.status_topic, self.status_payload(), retain=True)
        period = 1.0 / cfg.fps
        next_frame = time.monotonic()
        next_status = next_frame + cfg.status_interval_s
        faults = cfg.faults
        next_drop = (next_frame + faults.drop_every_s) if faults.drop_every_s else math.inf
        seq = 0
        while not self._stop.is_set() and (cfg.frames is None or seq < cfg.frames):
            now = time.monotonic()
            self._reap()
            if now >= next_drop:
                self._drop(client)
                next_drop = time.monotonic() + (faults.drop_every_s or math.inf)
                continue
            if now >= next_status:
                publish_json(client, self.status_topic, self.status_payload(), retain=True)
                next_status = now + cfg.status_interval_s
            if now < next_frame:
                self._stop.wait(min(next_frame - now, 0.05))
                continue
            # Falling behind by more than a second: skip ahead rather than burst.
            next_frame = max(next_frame + period, now - 1.0)
            if len(self._pending) >= cfg.window:
                self._wait_oldest(0.05)
                continue
            self._send_frame(client, seq)
            seq += 1
        if self._refused is not None:
            # Revoked (or its password changed): nothing more will be acknowledged.
            client.loop_stop()
            raise MqttConnectError(self._refused)
        self._drain(cfg.drain_timeout_s)
        offline = publish_json(client, self.status_topic, {"state": "offline"}, retain=True)
        wait_published(offline, 5.0)
        client.disconnect()
        client.loop_stop()

    def _on_reconnect(self, _c: mqtt.Client, _u: Any, _f: mqtt.ConnectFlags, rc: ReasonCode,
                      _p: Any) -> None:
        # paho's own reconnects after a lost connection land here: a refusal is final.
        if rc.is_failure:
            self._refused = f"the broker refused {self.device}: {rc}"
            self._stop.set()

    def _send_frame(self, client: mqtt.Client, seq: int) -> None:
        faults = self.config.faults
        ts_ms = int(time.time() * 1000)
        jpeg = self.source.frame(seq, ts_ms)
        chunks = split_frame(jpeg, boot_id=self.boot_id, frame_seq=seq, capture_ms=ts_ms,
                             clock_synced=self.config.clock_synced,
                             chunk_data=self.config.chunk_data)
        if faults.corrupt_rate and self._rng.random() < faults.corrupt_rate:
            chunks[0] = _corrupt(chunks[0])
            self.stats.frames_corrupted += 1
        infos = []
        for payload in chunks:
            copies = 1
            if faults.duplicate_rate and self._rng.random() < faults.duplicate_rate:
                copies = 2
                self.stats.chunks_duplicated += 1
            for _ in range(copies):
                infos.append(client.publish(self.frame_topic, payload, qos=1))
                self.stats.chunks_sent += 1
                self.stats.bytes_sent += len(payload)
        with self._lock:
            self._pending.append(infos)
        self.stats.frames_sent += 1

    def _reap(self) -> None:
        with self._lock:
            while self._pending and all(i.is_published() for i in self._pending[0]):
                self._pending.popleft()
                self.stats.frames_acked += 1

    def _wait_oldest(self, timeout: float) -> None:
        with self._lock:
            oldest = self._pending[0] if self._pending else None
        if oldest is None:
            return
        deadline = time.monotonic() + timeout
        for info in oldest:
            while not info.is_published() and time.monotonic() < deadline:
                time.sleep(0.002)
        self._reap()

    def _drain(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self._pending and time.monotonic() < deadline:
            self._wait_oldest(0.1)

    def _drop(self, client: mqtt.Client) -> None:
        # Reason 4 makes the broker publish the will, exactly as after a lost connection.
        client.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, identifier=4))
        client.loop_stop()
        self.stats.drops += 1
        self._stop.wait(self.config.faults.drop_pause_s)
        while True:
            try:
                connect_blocking(client, self.settings, clean_start=True)
                break
            except MqttConnectError:
                if self._stop.wait(1.0):
                    return
        publish_json(client, self.status_topic, self.status_payload(), retain=True)


class Fleet:
    """Several simulated cameras started and stopped together.

    Args:
        cameras: The cameras.
    """

    def __init__(self, cameras: list[SimCamera]) -> None:
        self.cameras = cameras

    def start(self) -> Fleet:
        """Start every camera.

        Returns:
            self.
        """
        for cam in self.cameras:
            cam.start()
        return self

    def stop(self, timeout: float | None = None) -> SimStats:
        """Stop every camera.

        Args:
            timeout: Seconds to wait for each.

        Returns:
            The summed counters.
        """
        for cam in self.cameras:
            cam.request_stop()
        for cam in self.cameras:
            cam.stop(timeout)
        return self.totals()

    def totals(self) -> SimStats:
        """Counters summed over the cameras."""
        total = SimStats()
        for cam in self.cameras:
            total.add(cam.stats)
        return total

    def errors(self) -> dict[str, str]:
        """Cameras that failed, with their error."""
        return {c.device: c.error for c in self.cameras if c.error is not None}
