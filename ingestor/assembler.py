"""Reassembly of chunked frames. Pure: no paho, no I/O, no clock of its own.

Chunks arrive in any order, more than once, interleaved across devices and frames.
The assembler keeps one partial frame per ``(device, boot_id, frame_seq)``, checks
every rule of the wire contract, bounds memory (per device and overall) and the number
of unacknowledged chunks it holds, and drops frames that stay incomplete too long.

Every chunk comes with an opaque ack token. A token is either held with its frame
(handed back with the completed frame, to be acknowledged once the frame is durable)
or handed back at once in ``release`` / a :class:`Drop`: a chunk of a rejected,
expired or evicted frame can never become part of a valid frame, and holding its
acknowledgement would only clog the broker's in-flight window.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from contract.codec import (
    HEADER,
    HEADER_LEN,
    MAGIC,
    VERSION,
    Chunk,
    ChunkHeader,
    ProtocolError,
    RejectReason,
    crc32,
    looks_like_jpeg,
    unpack_chunk,
)
from contract.ids import DEVICE_ID_RE
from contract.layout import FrameKey

T = TypeVar("T")


class Status(enum.Enum):
    """What became of one fed chunk."""

    PARTIAL = "partial"
    """Held: the frame still misses chunks."""
    DUPLICATE = "duplicate"
    """Same chunk again; its token is held with the frame."""
    COMPLETE = "complete"
    """The frame is complete and valid: ``frame`` is set."""
    DONE = "done"
    """The frame was completed before (the ``done`` predicate said so); the caller routes
    the token (acknowledge it once that frame is durable)."""
    REJECTED = "rejected"
    """The chunk (and its frame, if known) broke the contract: counted once per frame."""
    DISCARDED = "discarded"
    """A chunk of a frame already rejected: released, not counted again."""


class DropReason(enum.StrEnum):
    """Why an incomplete frame was given up. Values are metric label values."""

    TIMEOUT = "timeout"
    DEVICE_BYTES = "evicted_device_bytes"
    GLOBAL_BYTES = "evicted_global_bytes"
    WINDOW = "evicted_window"


@dataclass(frozen=True, slots=True)
class CompleteFrame(Generic[T]):
    """A complete, valid frame and every ack token of its chunks."""

    device: str
    boot_id: int
    frame_seq: int
    capture_ms: int
    clock_synced: bool
    data: bytes
    crc32: int
    tokens: tuple[T, ...]
    first_seen: float

    @property
    def key(self) -> FrameKey:
        """The frame's identity."""
        return (self.device, self.boot_id, self.frame_seq)


@dataclass(frozen=True, slots=True)
class Drop(Generic[T]):
    """An incomplete frame given up, with the tokens to acknowledge now."""

    key: FrameKey
    reason: DropReason
    tokens: tuple[T, ...]
    held_bytes: int
    chunks: int
    chunk_count: int


@dataclass(slots=True)
class FeedResult(Generic[T]):
    """Outcome of :meth:`Assembler.feed`."""

    status: Status
    device: str
    key: FrameKey | None = None
    frame: CompleteFrame[T] | None = None
    reason: RejectReason | None = None
    detail: str = ""
    release: list[T] = field(default_factory=list)
    drops: list[Drop[T]] = field(default_factory=list)


@dataclass(slots=True)
class _Partial(Generic[T]):
    header: ChunkHeader
    shared: tuple[int, ...]
    first_seen: float
    chunks: dict[int, tuple[int, bytes]] = field(default_factory=dict)
    tokens: list[T] = field(default_factory=list)
    held_bytes: int = 0


def _peek_key(device: str, payload: bytes) -> FrameKey | None:
    """The frame a malformed chunk claims, when its header is readable at all."""
    if len(payload) < HEADER_LEN:
        return None
    magic, version, _f, boot_id, seq = HEADER.unpack_from(payload)[:5]
    if magic != MAGIC or version != VERSION:
        return None
    return (device, boot_id, seq)


def _largest(held: dict[str, int]) -> str:
    """The device holding the most (the first seen wins a tie)."""
    return max(held, key=held.__getitem__)


class Assembler(Generic[T]):
    """Partial frames of every device, with the contract's checks and memory bounds.

    Args:
        max_frame_bytes: Largest accepted ``frame_len``.
        partial_timeout_s: A frame still incomplete this long after its first chunk is dropped.
        max_inflight_bytes: Chunk data held in all partial frames together.
        max_device_inflight_bytes: Chunk data held in one device's partial frames.
        max_partial_chunks: Tokens held by partial frames together (the broker's window).
        done: Tells whether a frame was completed before (pending or stored).
        poisoned_memory: How many rejected frame keys are remembered, so that the rest of
            a rejected frame's chunks are discarded without counting it again.
    """

    def __init__(
        self,
        *,
        max_frame_bytes: int,
        partial_timeout_s: float,
        max_inflight_bytes: int,
        max_device_inflight_bytes: int,
        max_partial_chunks: int = 65535,
        done: Callable[[FrameKey], bool] | None = None,
        poisoned_memory: int = 4096,
    ) -> None:
        self.max_frame_bytes = max_frame_bytes
        self.partial_timeout_s = partial_timeout_s
        self.max_inflight_bytes = max_inflight_bytes
        self.max_device_inflight_bytes = max_device_inflight_bytes
        self.max_partial_chunks = max_partial_chunks
        self._done = done or (lambda _k: False)
        self._poisoned_memory = poisoned_memory
        # Insertion order is first-seen order: the front is always the oldest partial.
        self._partials: OrderedDict[FrameKey, _Partial[T]] = OrderedDict()
        self._by_device: dict[str, OrderedDict[FrameKey, None]] = {}
        self._device_bytes: dict[str, int] = {}
        self._device_tokens: dict[str, int] = {}
        self._poisoned: OrderedDict[FrameKey, RejectReason] = OrderedDict()
        self._bytes = 0
        self._tokens = 0

    # ----------------------------------------------------------------- introspection
    @property
    def partial_frames(self) -> int:
        """Frames currently incomplete."""
        return len(self._partials)

    @property
    def inflight_bytes(self) -> int:
        """Chunk data held in partial frames."""
        return self._bytes

    @property
    def held_tokens(self) -> int:
        """Ack tokens held by partial frames."""
        return self._tokens

    def device_bytes(self, device: str) -> int:
        """Chunk data held in ``device``'s partial frames."""
        return self._device_bytes.get(device, 0)

    # ----------------------------------------------------------------- feeding
    def feed(self, device: str, payload: bytes, token: T, now: float) -> FeedResult[T]:
        """Take one chunk as received on ``<prefix>/<device>/frame``.

        Never raises for any ``device`` or ``payload``.

        Args:
            device: Device id from the topic.
            payload: The MQTT payload.
            token: Ack token of this message.
            now: Monotonic seconds (for timeouts).

        Returns:
            What happened; tokens to acknowledge at once are in ``release`` and ``drops``.
        """
        if not DEVICE_ID_RE.fullmatch(device):
            return FeedResult(Status.REJECTED, device, reason=RejectReason.BAD_DEVICE_ID,
                              detail=device[:64], release=[token])
        try:
            chunk = unpack_chunk(payload)
        except ProtocolError as exc:
            return self._reject(device, _peek_key(device, payload), token, exc.reason,
                                exc.detail)
        h = chunk.header
        key: FrameKey = (device, h.boot_id, h.frame_seq)
        if key in self._poisoned:
            return FeedResult(Status.DISCARDED, device, key=key, reason=self._poisoned[key],
                              release=[token])
        if h.frame_len > self.max_frame_bytes:
            return self._reject(device, key, token, RejectReason.TOO_LARGE,
                                f"{h.frame_len}>{self.max_frame_bytes}")
        partial = self._partials.get(key)
        if partial is None:
            if self._done(key):
                return FeedResult(Status.DONE, device, key=key)
            partial = _Partial(header=h, shared=h.shared_fields(), first_seen=now)
            self._partials[key] = partial
            self._by_device.setdefault(device, OrderedDict())[key] = None
        elif h.shared_fields() != partial.shared:
            return self._reject(device, key, token, RejectReason.HEADER_MISMATCH,
                                f"chunk {h.chunk_index}")
        return self._add(device, key, partial, chunk, token)

    def _add(self, device: str, key: FrameKey, partial: _Partial[T], chunk: Chunk,
             token: T) -> FeedResult[T]:
        h = chunk.header
        seen = partial.chunks.get(h.chunk_index)
        if seen is not None:
            if seen == (h.offset, chunk.data):
                partial.tokens.append(token)
                self._tokens += 1
                self._device_tokens[device] = self._device_tokens.get(device, 0) + 1
                result: FeedResult[T] = FeedResult(Status.DUPLICATE, device, key=key)
                result.drops = self._enforce_window(keep=key)
                return result
            return self._reject(device, key, token, RejectReason.CHUNK_CONFLICT,
                                f"chunk {h.chunk_index} differs")
        size = len(chunk.data)
        if partial.held_bytes + size > h.frame_len:
            return self._reject(device, key, token, RejectReason.BAD_COVERAGE,
                                "chunks carry more bytes than frame_len")
        partial.chunks[h.chunk_index] = (h.offset, chunk.data)
        partial.tokens.append(token)
        partial.held_bytes += size
        self._tokens += 1
        self._device_tokens[device] = self._device_tokens.get(device, 0) + 1
        self._bytes += size
        self._device_bytes[device] = self._device_bytes.get(device, 0) + size
        if len(partial.chunks) == h.chunk_count:
            return self._finish(device, key, partial)
        partial_result: FeedResult[T] = FeedResult(Status.PARTIAL, device, key=key)
        partial_result.drops = self._enforce_bounds(device, keep=key)
        return partial_result

    def _finish(self, device: str, key: FrameKey, partial: _Partial[T]) -> FeedResult[T]:
        h = partial.header
        self._forget(key)
        pos = 0
        parts = []
        for offset, data in sorted(partial.chunks.values()):
            if offset != pos:
                return self._poison(device, key, list(partial.tokens), RejectReason.BAD_COVERAGE,
                                    f"gap or overlap at {pos}")
            parts.append(data)
            pos += len(data)
        if pos != h.frame_len:
            return self._poison(device, key, list(partial.tokens), RejectReason.BAD_COVERAGE,
                                f"{pos}!={h.frame_len}")
        data = b"".join(parts)
        crc = crc32(data)
        if crc != h.frame_crc32:
            return self._poison(device, key, list(partial.tokens), RejectReason.CRC_MISMATCH,
                                f"{crc:08x}!={h.frame_crc32:08x}")
        if not looks_like_jpeg(data):
            return self._poison(device, key, list(partial.tokens), RejectReason.NOT_JPEG,
                                data[:2].hex() + ".." + data[-2:].hex())
        frame = CompleteFrame(device, h.boot_id, h.frame_seq, h.capture_ms, h.clock_synced,
                              data, crc, tuple(partial.tokens), partial.first_seen)
        return FeedResult(Status.COMPLETE, device, key=key, frame=frame)

    # ----------------------------------------------------------------- rejection
    def _reject(self, device: str, key: FrameKey | None, token: T, reason: RejectReason,
                detail: str) -> FeedResult[T]:
        release = [token]
        if key is not None:
            partial = self._partials.get(key)
            if partial is not None:
                self._forget(key)
                release.extend(partial.tokens)
        return self._poison(device, key, release, reason, detail)

    def _poison(self, device: str, key: FrameKey | None, release: list[T],
                reason: RejectReason, detail: str) -> FeedResult[T]:
        if key is not None:
            self._poisoned[key] = reason
            while len(self._poisoned) > self._poisoned_memory:
                self._poisoned.popitem(last=False)
        return FeedResult(Status.REJECTED, device, key=key, reason=reason, detail=detail,
                          release=release)

    def _forget(self, key: FrameKey) -> _Partial[T] | None:
        partial = self._partials.pop(key, None)
        if partial is None:
            return None
        device = key[0]
        per_dev = self._by_device.get(device)
        if per_dev is not None:
            per_dev.pop(key, None)
            if not per_dev:
                del self._by_device[device]
        self._bytes -= partial.held_bytes
        self._tokens -= len(partial.tokens)
        left = self._device_bytes.get(device, 0) - partial.held_bytes
        if left > 0:
            self._device_bytes[device] = left
        else:
            self._device_bytes.pop(device, None)
        tokens_left = self._device_tokens.get(device, 0) - len(partial.tokens)
        if tokens_left > 0:
            self._device_tokens[device] = tokens_left
        else:
            self._device_tokens.pop(device, None)
        return partial

    def _drop(self, key: FrameKey, reason: DropReason) -> Drop[T]:
        partial = self._forget(key)
        assert partial is not None
        return Drop(key, reason, tuple(partial.tokens), partial.held_bytes,
                    len(partial.chunks), partial.header.chunk_count)

    # ----------------------------------------------------------------- bounds
    def _enforce_bounds(self, device: str, keep: FrameKey) -> list[Drop[T]]:
        drops: list[Drop[T]] = []
        while self._device_bytes.get(device, 0) > self.max_device_inflight_bytes:
            victim = self._oldest(self._by_device.get(device, OrderedDict()), keep)
            drops.append(self._drop(victim, DropReason.DEVICE_BYTES))
        while self._bytes > self.max_inflight_bytes:
            victim = self._oldest(self._by_device[_largest(self._device_bytes)], keep)
            drops.append(self._drop(victim, DropReason.GLOBAL_BYTES))
        drops.extend(self._enforce_window(keep))
        return drops

    def _enforce_window(self, keep: FrameKey) -> list[Drop[T]]:
        drops: list[Drop[T]] = []
        while self._tokens > self.max_partial_chunks and self._partials:
            # From the device holding the most, not the oldest frame of anyone: one
            # device repeating a chunk (every copy is a message it holds) must not push
            # the other devices' frames out (found by tests/unit/test_fuzz_chunks.py).
            victim = self._oldest(self._by_device[_largest(self._device_tokens)], keep)
            drops.append(self._drop(victim, DropReason.WINDOW))
        return drops

    @staticmethod
    def _oldest(order: OrderedDict[FrameKey, _Partial[T]] | OrderedDict[FrameKey, None],
                keep: FrameKey) -> FrameKey:
        # The frame being fed goes last: it only goes when nothing else is left.
        for key in order:
            if key != keep:
                return key
        return keep

    def expire(self, now: float) -> list[Drop[T]]:
        """Drop frames whose first chunk is older than ``partial_timeout_s``.

        Args:
            now: Monotonic seconds, the same clock as :meth:`feed`.

        Returns:
            The dropped frames with the tokens to acknowledge.
        """
        drops: list[Drop[T]] = []
        deadline = now - self.partial_timeout_s
        while self._partials:
            key, partial = next(iter(self._partials.items()))
            if partial.first_seen > deadline:
                break
            drops.append(self._drop(key, DropReason.TIMEOUT))
        return drops

    def drain(self) -> list[Drop[T]]:
        """Give up every partial frame (shutdown); the tokens must NOT be acknowledged."""
        return [self._drop(k, DropReason.TIMEOUT) for k in list(self._partials)]
