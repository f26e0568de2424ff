"""Presentation times of a batch's frames in its video (fixed rate or capture times).

Pure: checked by unit tests on plain values.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Literal


def fps_fraction(fps: float) -> Fraction:
    """A frame rate as an exact fraction (29.97 -> 2997/100).

    Args:
        fps: Frames per second.

    Returns:
        The rate.
    """
    return Fraction(fps).limit_denominator(1001)


class Timeline:
    """Presentation times of the frames that make it into the video.

    ``fixed``: frame n shows at n/fps, whatever its capture time (a timelapse).
    ``capture``: frames show at their real capture times in milliseconds (variable
    frame rate), shifted so the first frame is at 0; equal or backwards times (an
    unsynced clock, a reboot) are nudged 1 ms after the previous frame, because a
    stream's presentation times must strictly increase.
    """

    def __init__(self, timing: Literal["fixed", "capture"], fps: float) -> None:
        self.timing = timing
        self.rate = fps_fraction(fps)
        self.time_base = 1 / self.rate if timing == "fixed" else Fraction(1, 1000)
        self._count = 0
        self._origin: int | None = None
        self._last: int | None = None
        self._last_step: int | None = None

    def next_pts(self, ts_ms: int) -> int:
        """Presentation time of the next frame, in ``time_base`` units.

        Args:
            ts_ms: The frame's capture (or arrival) time.

        Returns:
            Its pts.
        """
        if self.timing == "fixed":
            pts = self._count
        else:
            if self._origin is None:
                self._origin = ts_ms
            pts = ts_ms - self._origin
            if self._last is not None and pts <= self._last:
                pts = self._last + 1
        if self._last is not None:
            self._last_step = pts - self._last
        self._last = pts
        self._count += 1
        return pts

    def last_duration(self) -> int:
        """How long the final frame shows: one frame period, or the last capture gap.

        Returns:
            The duration in ``time_base`` units.
        """
        if self.timing == "fixed":
            return 1
        if self._last_step is not None:
            return self._last_step
        return max(1, round(1000 / self.rate))
