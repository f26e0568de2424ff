"""Fuzzed chunk payloads against the reassembler, interleaved with good devices' frames.

A device (or whoever holds its password) can publish anything on its own frame topic,
and nothing else (the broker's ACL). So the promise is: whatever one device sends,
every other device's frames complete byte-identical and nothing of theirs is dropped;
the reassembler never raises; every ack token comes back exactly once (held tokens
would clog the broker's window, tokens acked twice would ack someone else's message);
the memory and window bounds hold after every chunk.

The garbage is structure-aware: valid chunks of the attacker's own frames with a bit
flipped, cut short, extended, one header field replaced (magic, version, flags,
boot_id, seq, index, count, frame_len, crc, offset, capture_ms), data spliced from
another chunk, duplicated many times, or plain random bytes. About 1,000 generated
streams per run, each of tens to hundreds of chunks (about 40,000 fuzzed payloads).
"""

from __future__ import annotations

import random
import struct
import zlib
from collections import Counter
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contract.codec import HEADER_LEN, split_frame
from contract.layout import FrameKey
from ingestor.assembler import Assembler, Status

KiB = 1024
GOOD = ("good1", "good2", "good3")
BAD = "bad"
# (offset, struct format) of each header field (docs/protocol.md).
FIELDS = [(0, "<2s"), (2, "<B"), (3, "<B"), (4, "<I"), (8, "<I"), (12, "<H"), (14, "<H"),
          (16, "<I"), (20, "<I"), (24, "<I"), (28, "<Q")]


def jpeg(n: int, seed: int) -> bytes:
    rnd = random.Random(seed)
    return b"\xff\xd8" + rnd.randbytes(max(0, n - 4)) + b"\xff\xd9"


def make(done: set[FrameKey], window: int) -> Assembler[int]:
    # A device may hold at most a quarter of the global byte budget, as with the
    # defaults (32 MiB of 512 MiB): one device alone can never reach the global bound.
    return Assembler(max_frame_bytes=16 * KiB, partial_timeout_s=60.0,
                     max_inflight_bytes=64 * KiB, max_device_inflight_bytes=16 * KiB,
                     max_partial_chunks=window, done=done.__contains__)


@st.composite
def mutant(draw: st.DrawFn, valid: list[bytes]) -> list[bytes]:
    """One or more payloads derived from the attacker's valid chunks."""
    base = bytearray(draw(st.sampled_from(valid)))
    kind = draw(st.sampled_from(["flip", "cut", "extend", "field", "field", "splice",
                                 "flood", "random", "empty_data"]))
    if kind == "flip":
        pos = draw(st.integers(0, len(base) - 1))
        base[pos] ^= 1 << draw(st.integers(0, 7))
    elif kind == "cut":
        base = base[:draw(st.integers(0, len(base) - 1))]
    elif kind == "extend":
        base += draw(st.binary(min_size=1, max_size=64))
    elif kind == "field":
        offset, fmt = draw(st.sampled_from(FIELDS))
        size = struct.calcsize(fmt)
        if fmt == "<2s":
            value: Any = draw(st.binary(min_size=2, max_size=2))
        else:
            value = draw(st.integers(0, 2 ** (8 * size) - 1)
                         | st.sampled_from([0, 1, 2 ** (8 * size) - 1]))
        struct.pack_into(fmt, base, offset, value)
    elif kind == "splice":
        other = draw(st.sampled_from(valid))
        base = base[:HEADER_LEN] + bytearray(other[HEADER_LEN:])
    elif kind == "flood":
        # The same chunk again and again: every copy is an unacked message it holds.
        return [bytes(base)] * draw(st.integers(2, 120))
    elif kind == "random":
        return [draw(st.binary(max_size=120))]
    elif kind == "empty_data":
        base = base[:HEADER_LEN]
    return [bytes(base)]


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[tuple[str, bytes]], dict[FrameKey, bytes], int]:
    seed = draw(st.integers(0, 2**32 - 1))
    good: dict[FrameKey, bytes] = {}
    stream: list[tuple[str, bytes]] = []
    for d, dev in enumerate(GOOD):
        for seq in range(draw(st.integers(1, 3))):
            frame = jpeg(draw(st.integers(4, 3000)), seed + 31 * d + seq)
            good[(dev, 7, seq)] = frame
            stream += [(dev, p) for p in split_frame(
                frame, boot_id=7, frame_seq=seq, chunk_data=draw(st.integers(64, 1500)))]
    # The attacker's own frames, some with the good devices' boot_id and seq.
    own = [jpeg(draw(st.integers(4, 4000)), seed + 1000 + i) for i in range(3)]
    valid = [p for i, f in enumerate(own)
             for p in split_frame(f, boot_id=draw(st.sampled_from([7, 8])), frame_seq=i,
                                  chunk_data=draw(st.integers(32, 1024)))]
    junk: list[bytes] = []
    for _ in range(draw(st.integers(1, 40))):
        junk += draw(mutant(valid))
    junk += valid[:draw(st.integers(0, len(valid)))]
    stream += [(BAD, p) for p in junk]
    random.Random(seed).shuffle(stream)
    # The window is sized as in production (65535 unacked messages, frames of at most
    # 512 chunks): honest devices together use less than half of it. Then whoever
    # overflows it holds more than any honest device and is the one to lose frames.
    honest = len(stream) - len(junk)
    window = draw(st.integers(2 * honest + 1, 2 * honest + 400))
    return stream, good, window


@settings(max_examples=1000, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(streams())
def test_a_fuzzing_device_hurts_nobody_else(
        case: tuple[list[tuple[str, bytes]], dict[FrameKey, bytes], int]) -> None:
    stream, good, window = case
    done: set[FrameKey] = set()
    asm = make(done, window)
    handed: Counter[int] = Counter()
    completed: dict[FrameKey, bytes] = {}
    for token, (device, payload) in enumerate(stream):
        r = asm.feed(device, payload, token, 0.0)
        handed.update(r.release)
        for d in r.drops:
            handed.update(d.tokens)
            assert d.key[0] == BAD, f"{d.key} dropped ({d.reason}) because of {BAD}"
        if r.status is Status.COMPLETE:
            assert r.frame is not None
            assert r.frame.key not in completed
            completed[r.frame.key] = r.frame.data
            done.add(r.frame.key)
            handed.update(r.frame.tokens)
            # Whatever completes passed every check of the contract.
            data = r.frame.data
            assert data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9"
            assert zlib.crc32(data) & 0xFFFFFFFF == r.frame.crc32
        elif r.status is Status.DONE:
            handed[token] += 1  # the caller acks it once that frame is durable
        # The bounds hold after every chunk.
        assert asm.device_bytes(BAD) <= 16 * KiB
        assert asm.inflight_bytes <= 64 * KiB
        assert asm.held_tokens <= window
    for key, frame in good.items():
        assert completed.get(key) == frame, f"good frame {key} lost"
    for d in asm.expire(1e9):
        handed.update(d.tokens)
    assert asm.partial_frames == 0 and asm.held_tokens == 0 and asm.inflight_bytes == 0
    # Every token handed back exactly once.
    assert sorted(handed) == list(range(len(stream)))
    assert set(handed.values()) == {1}


def test_one_device_flooding_the_window_cannot_evict_other_devices_frames() -> None:
    # Found by the fuzz test above: the window bound evicted the globally oldest partial
    # frame, so one device repeating a chunk (each copy an unacked message it holds)
    # pushed every other device's half-received frames out; their chunks were acked and
    # the frames lost, although the broker had acknowledged them to their cameras.
    done: set[FrameKey] = set()
    asm = make(done, window=50)
    frame = jpeg(1000, 1)
    good = split_frame(frame, boot_id=1, frame_seq=0, chunk_data=100)
    for token, p in enumerate(good[:5]):
        assert asm.feed("good1", p, token, 0.0).drops == []
    flood = split_frame(jpeg(500, 2), boot_id=1, frame_seq=0, chunk_data=100)[0]
    drops = []
    for token in range(100, 200):
        drops += asm.feed(BAD, flood, token, 0.0).drops
    assert drops and all(d.key[0] == BAD for d in drops)
    results = [asm.feed("good1", p, 1000 + i, 0.0) for i, p in enumerate(good[5:])]
    assert results[-1].frame is not None and results[-1].frame.data == frame
