"""How far encoding is behind: the oldest batch still waiting for its video. Pure.

Computed from catalog rows (``batches``: state and ``created_ms``) and, when a JetStream
queue is used, the consumer's pending count (:func:`jobqueue.queue.queue_depth`). The
numbers feed ``camstack_encode_backlog_oldest_seconds`` and
``camstack_encode_jobs_quarantined`` (:mod:`jobqueue.metrics`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

WAITING_STATES = frozenset({"sealed", "uploaded"})
"""Batch states that mean "waiting for an encoder" (catalog.BatchState values)."""
QUARANTINED_STATE = "quarantined"


class BatchLike(Protocol):
    """What the computation reads of a row (``catalog.BatchRow`` has both)."""

    @property
    def state(self) -> str:
        """The batch's state (``catalog.BatchState`` is a ``str``)."""
        ...

    @property
    def created_ms(self) -> int:
        """When the row was created (the batch sealed), Unix ms."""
        ...


@dataclass(frozen=True, slots=True)
class Backlog:
    """The encode backlog at one moment."""

    waiting_batches: int
    """Batches sealed or uploaded, not yet encoding."""
    oldest_seconds: float
    """Age of the oldest of them; 0 when none waits."""
    quarantined: int
    """Batches in quarantine (will not become videos by themselves)."""
    pending_jobs: int | None
    """Jobs the queue has not finished (waiting + unacked); None without a queue."""


def encode_backlog(rows: Iterable[BatchLike], *, now_ms: int,
                   pending_jobs: int | None = None) -> Backlog:
    """Summarise batch rows into the backlog figures.

    Args:
        rows: Batch rows (any states; only waiting and quarantined ones count).
        now_ms: The current time, Unix ms.
        pending_jobs: The queue consumer's pending count, when there is a queue.

    Returns:
        The backlog; a creation time in the future (clock skew) counts as age 0.
    """
    waiting = 0
    quarantined = 0
    oldest_ms: int | None = None
    for row in rows:
        state = str(row.state)
        if state == QUARANTINED_STATE:
            quarantined += 1
        elif state in WAITING_STATES:
            waiting += 1
            if oldest_ms is None or row.created_ms < oldest_ms:
                oldest_ms = row.created_ms
    age = 0.0 if oldest_ms is None else max(0.0, (now_ms - oldest_ms) / 1000.0)
    if pending_jobs is not None:
        pending_jobs = max(0, int(pending_jobs))
    return Backlog(waiting, age, quarantined, pending_jobs)
