"""When to seal a device's frames into a batch, and what the batch says. Pure: no I/O.

Per device the batcher keeps the stored, not yet sealed frames in the contract's order
(file name order: ts, boot_id, frame_seq). At ``frames_per_video`` frames the oldest
``frames_per_video`` are sealed; with ``idle_seal_s`` set, a device idle that long with
frames waiting has them sealed too. The caller performs the seal on disk and then calls
:meth:`Batcher.commit` (or nothing on failure: the plan is offered again).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from contract.events import Manifest, ManifestFrame
from contract.layout import BATCH_FRAMES, FrameMeta, batch_location, batch_name


@dataclass(frozen=True, slots=True)
class SealPlan:
    """One batch to seal."""

    device: str
    batch: str
    counter: int
    frames: tuple[FrameMeta, ...]
    reason: str

    @property
    def first_ts_ms(self) -> int:
        """``ts_ms`` of the first frame."""
        return self.frames[0].ts_ms

    @property
    def last_ts_ms(self) -> int:
        """``ts_ms`` of the last frame."""
        return self.frames[-1].ts_ms

    @property
    def location(self) -> str:
        """``batches/<id>/<batch>``."""
        return batch_location(self.device, self.batch)


def manifest(plan: SealPlan, sealed_ms: int) -> Manifest:
    """The ``manifest.json`` of a batch (docs/storage.md).

    Args:
        plan: The sealed batch.
        sealed_ms: When it was sealed (Unix ms).

    Returns:
        The manifest; ``frames`` in video order.
    """
    return Manifest(
        device=plan.device, batch=plan.batch,
        frames=tuple(ManifestFrame(file=f"{BATCH_FRAMES}/{f.name}", ts_ms=f.ts_ms, crc32=f.crc32,
                                   size=f.size, boot_id=f.boot_id, frame_seq=f.frame_seq,
                                   capture_ms=f.capture_ms, clock_synced=f.clock_synced)
                     for f in plan.frames),
        first_capture_ms=plan.first_ts_ms, last_capture_ms=plan.last_ts_ms, sealed_ms=sealed_ms)


@dataclass(slots=True)
class _Device:
    frames: list[tuple[str, FrameMeta]]
    last_counter: int
    last_add: float


class Batcher:
    """Per-device waiting frames, counters and sealing decisions.

    Args:
        frames_per_video: Frames per batch.
        idle_seal_s: Seal what waits after this long without a new frame; None: never.
    """

    def __init__(self, frames_per_video: int, idle_seal_s: float | None = None) -> None:
        if frames_per_video < 1:
            raise ValueError("frames_per_video must be >= 1")
        self.frames_per_video = frames_per_video
        self.idle_seal_s = idle_seal_s
        self._devices: dict[str, _Device] = {}

    def _dev(self, device: str, now: float) -> _Device:
        d = self._devices.get(device)
        if d is None:
            d = self._devices[device] = _Device([], 0, now)
        return d

    def restore(self, device: str, frames: list[FrameMeta], last_counter: int,
                now: float) -> None:
        """Load a device's state found on disk at start.

        Args:
            device: Device id.
            frames: Its stored, unsealed frames (any order).
            last_counter: The highest batch counter already used.
            now: Monotonic seconds; counts as the device's last activity.
        """
        d = self._dev(device, now)
        d.last_counter = max(d.last_counter, last_counter)
        for f in frames:
            self.add(f, now)

    def add(self, frame: FrameMeta, now: float) -> None:
        """A frame of ``frame.device`` is durably stored and waits for its batch.

        Args:
            frame: The frame.
            now: Monotonic seconds.
        """
        d = self._dev(frame.device, now)
        bisect.insort(d.frames, (frame.name, frame))
        d.last_add = now

    def waiting(self, device: str) -> int:
        """Frames of ``device`` waiting to be sealed."""
        d = self._devices.get(device)
        return len(d.frames) if d else 0

    def last_counter(self, device: str) -> int:
        """Highest batch counter used by ``device``."""
        d = self._devices.get(device)
        return d.last_counter if d else 0

    def devices(self) -> list[str]:
        """Devices known."""
        return sorted(self._devices)

    def due(self, now: float) -> list[SealPlan]:
        """Batches that should be sealed now (at most one per device per call).

        Args:
            now: Monotonic seconds.

        Returns:
            Plans; each must be committed after the seal succeeded.
        """
        plans = []
        for device in sorted(self._devices):
            d = self._devices[device]
            if len(d.frames) >= self.frames_per_video:
                chosen, reason = d.frames[: self.frames_per_video], "count"
            elif (self.idle_seal_s is not None and d.frames
                  and now - d.last_add >= self.idle_seal_s):
                chosen, reason = d.frames, "idle"
            else:
                continue
            frames = tuple(f for _, f in chosen)
            counter = d.last_counter + 1
            plans.append(SealPlan(device, batch_name(device, frames[0].ts_ms, counter),
                                  counter, frames, reason))
        return plans

    def commit(self, plan: SealPlan) -> None:
        """The plan's batch is sealed on disk: forget its frames, advance the counter.

        Args:
            plan: From :meth:`due`.
        """
        d = self._devices[plan.device]
        sealed = {f.name for f in plan.frames}
        d.frames = [(n, f) for n, f in d.frames if n not in sealed]
        d.last_counter = max(d.last_counter, plan.counter)
