"""A fleet of publishing devices whose frames can be identified again inside a video.

Every frame is a *marker frame*: the top 120 rows are a 8 x 5 grid of black and white
cells that spell the camera's index, the frame number and a check byte; the bottom
rows are seeded noise (so a frame is a few KiB and several chunks). The grid survives
JPEG and H.264 at their default qualities, so a decoded video tells exactly which
frames it holds (:func:`read_marker`): the fault suite counts frames in videos by
decoding them, not by trusting the video event.

:class:`MarkedCamera` publishes such frames at QoS 1 on its own device account and
records, per frame, whether the broker acknowledged (PUBACK) every chunk. Only those
frames are promised to survive a fault; the audit (``tests/support/faults.py``) checks
each of them is on disk or in exactly one video.
"""

from __future__ import annotations

import io
import random
import threading
import time
import zlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import paho.mqtt.client as mqtt
from PIL import Image

from config.settings import MqttSettings
from contract.codec import split_frame
from mqttclient import connect_blocking, make_client, wait_published

FrameKey = tuple[str, int, int]
"""(device, boot_id, frame_seq): a frame's identity in the wire contract."""

FRAME_W, FRAME_H = 160, 160
_COLS, _ROWS = 8, 5
_CELL_W, _CELL_H = 20, 24
_CODE_H = _ROWS * _CELL_H
_BITS = _COLS * _ROWS  # 32 bits of value + 8 check bits
_DARK, _LIGHT = 20, 235


def _check_byte(value: int) -> int:
    return zlib.crc32(value.to_bytes(4, "big")) & 0xFF


def marker_jpeg(index: int, seq: int, *, quality: int = 80) -> bytes:
    """A JPEG that says "camera ``index``, frame ``seq``" in a grid a decoder can read.

    Args:
        index: Camera index, 0..255.
        seq: Frame number, 0..2**24-1.
        quality: JPEG quality.

    Returns:
        The JPEG bytes (4:2:2 like the ESP32's).
    """
    value = ((index & 0xFF) << 24) | (seq & 0xFFFFFF)
    word = (value << 8) | _check_byte(value)
    pixels = np.empty((FRAME_H, FRAME_W), np.uint8)
    for i in range(_BITS):
        bit = (word >> (_BITS - 1 - i)) & 1
        r, c = divmod(i, _COLS)
        pixels[r * _CELL_H:(r + 1) * _CELL_H, c * _CELL_W:(c + 1) * _CELL_W] = (
            _LIGHT if bit else _DARK)
    rnd = random.Random(index * 1_000_003 + seq)
    noise_h = FRAME_H - _CODE_H
    pixels[_CODE_H:] = np.frombuffer(rnd.randbytes(noise_h * FRAME_W), np.uint8).reshape(
        noise_h, FRAME_W)
    buf = io.BytesIO()
    Image.fromarray(pixels).convert("RGB").save(buf, format="JPEG", quality=quality,
                                                subsampling=1)
    return buf.getvalue()


def read_marker(gray: npt.NDArray[Any]) -> tuple[int, int] | None:
    """Read the grid of a decoded frame (luma plane, ``FRAME_H`` x ``FRAME_W``).

    Args:
        gray: The frame as 8-bit grey levels.

    Returns:
        ``(camera index, frame seq)``, or None when the grid does not check out.
    """
    if gray.shape[0] < _CODE_H or gray.shape[1] < FRAME_W:
        return None
    word = 0
    for i in range(_BITS):
        r, c = divmod(i, _COLS)
        # The cell's centre only: block edges blur under JPEG and H.264.
        y0, x0 = r * _CELL_H + _CELL_H // 4, c * _CELL_W + _CELL_W // 4
        cell = gray[y0:y0 + _CELL_H // 2, x0:x0 + _CELL_W // 2]
        word = (word << 1) | int(float(cell.mean()) > 128.0)
    value, check = word >> 8, word & 0xFF
    if _check_byte(value) != check:
        return None
    return value >> 24, value & 0xFFFFFF


@dataclass
class CameraLog:
    """What one camera sent and what the broker acknowledged."""

    crc: dict[int, int] = field(default_factory=dict)
    """Frame seq -> CRC-32 of the JPEG sent."""
    acked: set[int] = field(default_factory=set)
    """Frame seqs whose every chunk got its PUBACK."""


class MarkedCamera:
    """One device publishing marker frames from its own thread.

    Args:
        index: Camera index (in the marker).
        device: Device id (account, client id).
        settings: Connection settings with the device's password.
        fps: Frames per second.
        chunk_data: Chunk data size.
        window: Frames published but not fully acknowledged before the camera waits
            (its send queue: while the broker is away it stops capturing).
        boot_id: The boot id of every frame.
    """

    def __init__(self, index: int, device: str, settings: MqttSettings, *, fps: float = 10.0,
                 chunk_data: int = 2048, window: int = 8, boot_id: int | None = None) -> None:
        self.index = index
        self.device = device
        self.settings = settings
        self.fps = fps
        self.chunk_data = chunk_data
        self.window = window
        self.boot_id = boot_id if boot_id is not None else 0x1000 + index
        self.log = CameraLog()
        self.error: str | None = None
        self._stop = threading.Event()
        self._pending: deque[tuple[int, list[mqtt.MQTTMessageInfo]]] = deque()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._client: mqtt.Client | None = None

    @property
    def topic(self) -> str:
        """``<prefix>/<id>/frame``."""
        return f"{self.settings.topic_prefix}/{self.device}/frame"

    def start(self) -> MarkedCamera:
        """Connect (blocking) and start publishing on a thread.

        Returns:
            self.
        """
        # A camera has no persistent session (MQTT 3.1.1: fixed when the client is made).
        client = make_client(self.settings, client_id=self.device, clean_session=True)
        # paho queues what exceeds its in-flight limit; the camera's window bounds it.
        client.max_inflight_messages_set(1000)
        connect_blocking(client, self.settings, clean_start=True)
        self._client = client
        self._thread = threading.Thread(target=self._run, name=f"cam-{self.device}",
                                        daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        assert self._client is not None
        period = 1.0 / self.fps
        next_at = time.monotonic()
        seq = 0
        try:
            while not self._stop.is_set():
                self._reap()
                now = time.monotonic()
                if now < next_at:
                    self._stop.wait(min(0.02, next_at - now))
                    continue
                if len(self._pending) >= self.window:
                    self._stop.wait(0.01)
                    continue
                next_at = max(next_at + period, now - 0.5)
                self._send(seq)
                seq += 1
        except Exception as exc:  # a broken publisher must show in the test, not hang it
            self.error = f"{type(exc).__name__}: {exc}"

    def _send(self, seq: int) -> None:
        assert self._client is not None
        jpeg = marker_jpeg(self.index, seq)
        chunks = split_frame(jpeg, boot_id=self.boot_id, frame_seq=seq,
                             capture_ms=int(time.time() * 1000), clock_synced=True,
                             chunk_data=self.chunk_data)
        infos = [self._client.publish(self.topic, c, qos=1) for c in chunks]
        with self._lock:
            self.log.crc[seq] = zlib.crc32(jpeg) & 0xFFFFFFFF
            self._pending.append((seq, infos))

    def _reap(self) -> None:
        with self._lock:
            keep: deque[tuple[int, list[mqtt.MQTTMessageInfo]]] = deque()
            for seq, infos in self._pending:
                if all(wait_published(i, 0) for i in infos):
                    self.log.acked.add(seq)
                else:
                    keep.append((seq, infos))
            self._pending = keep

    def request_stop(self) -> None:
        """Stop capturing (in-flight frames are still waited for by :meth:`finish`)."""
        self._stop.set()

    def snapshot(self) -> tuple[dict[int, int], set[int]]:
        """A copy of (seq -> CRC of every frame sent, seqs acknowledged)."""
        self._reap()
        with self._lock:
            return dict(self.log.crc), set(self.log.acked)

    def abort(self) -> None:
        """Stop at once and drop the connection (finaliser)."""
        self._stop.set()
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()

    def finish(self, timeout: float) -> int:
        """Stop, wait up to ``timeout`` for outstanding PUBACKs, disconnect.

        Args:
            timeout: Seconds.

        Returns:
            Frames still unacknowledged when giving up.
        """
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._reap()
            if not self._pending:
                break
            time.sleep(0.05)
        self._reap()
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
        return len(self._pending)


class Fleet:
    """Marker cameras started and stopped together.

    Args:
        cameras: The cameras (indexes must differ).
    """

    def __init__(self, cameras: list[MarkedCamera]) -> None:
        self.cameras = cameras
        self.by_index = {c.index: c for c in cameras}

    def start(self) -> Fleet:
        """Start every camera.

        Returns:
            self.
        """
        for c in self.cameras:
            c.start()
        return self

    def finish(self, timeout: float = 30.0) -> int:
        """Stop every camera and wait for their acknowledgements.

        Args:
            timeout: Seconds per camera.

        Returns:
            Frames left unacknowledged, all cameras.
        """
        for c in self.cameras:
            c.request_stop()
        return sum(c.finish(timeout) for c in self.cameras)

    def close(self) -> None:
        """Stop without waiting (finaliser)."""
        for c in self.cameras:
            c.abort()

    def key_of(self, index: int, seq: int) -> FrameKey | None:
        """The frame key a decoded marker stands for.

        Args:
            index: Camera index read from the marker.
            seq: Frame seq read from the marker.

        Returns:
            The key, or None for an index no camera has.
        """
        cam = self.by_index.get(index)
        return None if cam is None else (cam.device, cam.boot_id, seq)

    def sent(self) -> dict[FrameKey, int]:
        """Every frame sent, with its CRC-32."""
        out: dict[FrameKey, int] = {}
        for c in self.cameras:
            crc, _acked = c.snapshot()
            out.update({(c.device, c.boot_id, s): v for s, v in crc.items()})
        return out

    def acked(self) -> set[FrameKey]:
        """Frames whose every chunk the broker acknowledged."""
        out: set[FrameKey] = set()
        for c in self.cameras:
            _crc, acked = c.snapshot()
            out.update((c.device, c.boot_id, s) for s in acked)
        return out

    def errors(self) -> dict[str, str]:
        """Cameras whose thread failed."""
        return {c.device: c.error for c in self.cameras if c.error is not None}
