"""Moving partitions between two live ingestors at a capture-time fence (pure logic).

What NATS does with a persistent session's subscriptions (measured,
tests/integration/test_nats_rebalance.py) leaves one safe way to move a partition
between two running ingestors: an **overlap** during which both are subscribed (an
UNSUBSCRIBE deletes the messages the session had not acknowledged, a partition with no
subscriber keeps nothing, a new subscription only gets what is published after its
SUBACK), with a rule that gives every frame to exactly one of the two. The rule is a
function of the frame alone, so both ingestors apply it without talking to each other:
a frame captured before the fence ``at_ms`` is the releasing ingestor's, a later one
the acquiring ingestor's. A frame without a trusted capture time is kept by both (a
duplicate is possible; a loss is not). docs/scaling.md, "Rebalancing partitions".
"""

from __future__ import annotations

from dataclasses import dataclass, field

from contract.layout import CAPTURE_MAX_MS, CAPTURE_MIN_MS

ACQUIRE_LEAD_MS = 5_000
"""The acquiring ingestor refuses to start when the fence is closer than this: it must
be subscribed before any frame captured at the fence is published."""


def trusted(capture_ms: int, clock_synced: bool) -> bool:
    """Whether a frame's capture time can place it on one side of the fence.

    The same test on both ingestors (no arrival time in it, unlike
    ``contract.layout.frame_time``), so both agree.
    """
    return clock_synced and CAPTURE_MIN_MS <= capture_ms <= CAPTURE_MAX_MS


def keeps(role: str, at_ms: int, capture_ms: int, clock_synced: bool) -> bool:
    """Whether the ingestor in ``role`` stores a frame of a moving partition.

    Args:
        role: ``"release"`` or ``"acquire"``.
        at_ms: The fence (Unix milliseconds).
        capture_ms: The frame's capture time (chunk header).
        clock_synced: The header's clock flag.

    Returns:
        True: store it; False: acknowledge it without storing (the other one stores it).
    """
    if not trusted(capture_ms, clock_synced):
        return True
    if role == "release":
        return capture_ms < at_ms
    if role == "acquire":
        return capture_ms >= at_ms
    raise ValueError(f"unknown handoff role {role!r}")


@dataclass
class Release:
    """When the releasing ingestor may UNSUBSCRIBE the moving partitions.

    Every device it has seen on them must have sent a frame captured at or after the
    fence (their frames come in order on a partition, so every earlier frame of that
    device has been delivered), or ``at_ms + release_after_s`` must have passed (a
    device that went quiet must not hold the partitions forever).

    Args:
        at_ms: The fence.
        release_after_s: The longest wait after the fence.
    """

    at_ms: int
    release_after_s: float
    waiting: set[str] = field(default_factory=set)
    """Devices seen on the partitions that have not crossed the fence yet."""
    crossed: set[str] = field(default_factory=set)
    done: bool = False

    def frame(self, device: str, capture_ms: int, clock_synced: bool) -> None:
        """A complete frame of a moving partition arrived."""
        if trusted(capture_ms, clock_synced) and capture_ms >= self.at_ms:
            self.crossed.add(device)
            self.waiting.discard(device)
        elif device not in self.crossed:
            self.waiting.add(device)

    def due(self, now_ms: int) -> bool:
        """Whether to unsubscribe now (once the fence has passed)."""
        if self.done or now_ms < self.at_ms:
            return False
        if now_ms >= self.at_ms + int(self.release_after_s * 1000):
            return True
        return bool(self.crossed) and not self.waiting
