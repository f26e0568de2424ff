"""What the ingestor's two threads hand each other, typed (docs/ingestor.md).

The **network thread** hands complete frames to the **writer thread** through the
:class:`WriteQueue` (bounded: reading pauses at ``max_pending_frames``). The writer
answers through the :class:`Mailbox` with :data:`Message` values: which ack tokens may be
released, which batch to announce, whether storage works. Only the network thread ever
calls paho.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass

from contract.events import ReadyEvent
from contract.layout import FrameKey, FrameMeta
from ingestor.acks import AckToken
from ingestor.assembler import CompleteFrame


@dataclass(frozen=True, slots=True)
class AckTokens:
    """These frames are durable (or rejected for good): their chunks may be acked."""

    tokens: tuple[AckToken, ...]


@dataclass(frozen=True, slots=True)
class Announce:
    """Publish this ready event (QoS 1, retried until the broker acks it)."""

    event: ReadyEvent
    again: bool = False
    """A re-announce of a batch still without a video (not a fresh seal)."""


@dataclass(frozen=True, slots=True)
class StorageState:
    """Writes started failing (``ok`` false) or work again: refresh the status."""

    ok: bool


@dataclass(frozen=True, slots=True)
class UploadState:
    """Uploads or catalog writes started failing (``ok`` false, with why) or work again."""

    ok: bool
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Sealed:
    """A batch was sealed: refresh the retained status (its counters changed)."""


Message = AckTokens | Announce | StorageState | UploadState | Sealed


class Mailbox:
    """Writer → network thread messages, with a socket to wake the network ``select``.

    Unbounded by itself, but what flows through it is bounded: acks by the frames in
    the :class:`WriteQueue`, announces by the batches on disk.
    """

    def __init__(self) -> None:
        self._items: deque[Message] = deque()
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        self._w.setblocking(False)

    @property
    def waker(self) -> socket.socket:
        """The socket that becomes readable when something was posted."""
        return self._r

    def post(self, msg: Message) -> None:
        """Queue ``msg`` and wake the network thread (any thread)."""
        self._items.append(msg)
        self.wake()

    def wake(self) -> None:
        """Wake the network thread without a message (a stop, a drain)."""
        with contextlib.suppress(OSError):
            self._w.send(b"\0")

    def take(self) -> Message | None:
        """The oldest message, or None."""
        try:
            return self._items.popleft()
        except IndexError:
            return None

    def clear_wake(self) -> None:
        """Consume pending wake-ups (after ``select`` said the waker is readable)."""
        with contextlib.suppress(OSError):
            self._r.recv(65536)

    def wait(self, seconds: float) -> None:
        """Sleep until woken or ``seconds`` passed."""
        with contextlib.suppress(OSError, ValueError):
            r, _, _ = select.select([self._r], [], [], seconds)
            if r:
                self.clear_wake()

    def close(self) -> None:
        """Close the wake-up sockets."""
        self._r.close()
        self._w.close()


@dataclass(slots=True)
class Job:
    """A complete frame on its way to the disk."""

    frame: CompleteFrame[AckToken]
    meta: FrameMeta
    completed_at: float


class WriteQueue:
    """Complete frames waiting for the disk, and the acks that wait with them.

    ``pending`` maps each such frame to the tokens of copies that arrived again while it
    was being written (QoS 1 redelivery): they are acked with it.
    """

    def __init__(self) -> None:
        # Guards the jobs, the pending map and the pending -> durable transition.
        self.lock = threading.Lock()
        self._cv = threading.Condition(self.lock)
        self._jobs: deque[Job] = deque()
        self._pending: dict[FrameKey, list[AckToken]] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def submit(self, job: Job) -> None:
        """A frame completed (network thread)."""
        with self._cv:
            self._pending[job.frame.key] = []
            self._jobs.append(job)
            self._cv.notify()

    def is_pending(self, key: FrameKey) -> bool:
        """Whether ``key`` waits for the disk (call with :attr:`lock` held)."""
        return key in self._pending

    def wait_with(self, key: FrameKey, token: AckToken) -> bool:
        """Ack ``token`` together with ``key``'s frame, if that one is still pending."""
        with self.lock:
            waiting = self._pending.get(key)
            if waiting is None:
                return False
            waiting.append(token)
            return True

    def take_group(self, *, wait: bool, window_s: float, draining: bool,
                   limit: int = 512) -> list[Job]:
        """The next group commit (writer thread).

        Args:
            wait: Wait up to 0.5 s for a first frame, then gather for ``window_s``;
                false: take what is queued now (a group is in flight already).
            window_s: Group-commit window.
            draining: Stopping: no gathering.
            limit: Most frames per group.

        Returns:
            The jobs, oldest first.
        """
        with self._cv:
            if wait:
                if not self._jobs:
                    self._cv.wait(timeout=0.5)
                if self._jobs and window_s > 0 and not draining:
                    # Group commit: gather what arrives within the window, one sync for all.
                    deadline = time.monotonic() + window_s
                    while len(self._jobs) < limit:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        self._cv.wait(timeout=left)
            group = list(self._jobs)
            self._jobs.clear()
        return group

    def done(self, jobs: list[Job]) -> list[AckToken]:
        """``jobs`` left the queue (durable, or rejected): every token to ack for them."""
        tokens: list[AckToken] = []
        with self.lock:
            for j in jobs:
                tokens.extend(j.frame.tokens)
                tokens.extend(self._pending.pop(j.frame.key, ()))
        return tokens

    def idle(self) -> bool:
        """No job queued."""
        with self.lock:
            return not self._jobs

    def sleep(self, seconds: float) -> None:
        """Wait until a frame is submitted, :meth:`wake_all` or ``seconds``."""
        with self._cv:
            self._cv.wait(timeout=seconds)

    def wake_all(self) -> None:
        """Wake a waiting writer (a stop)."""
        with self._cv:
            self._cv.notify_all()
