"""Reassembler and ack ledger: orders, duplicates, malformed input, bounds, timeouts."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from contract.codec import ChunkHeader, RejectReason, crc32, pack_chunk, split_frame
from contract.layout import FrameKey
from ingestor.acks import AckLedger
from ingestor.assembler import Assembler, DropReason, Status

MiB = 1024 * 1024


def jpeg(n: int, seed: int = 0) -> bytes:
    rnd = random.Random(seed)
    return b"\xff\xd8" + bytes(rnd.randrange(256) for _ in range(max(0, n - 4))) + b"\xff\xd9"


def make(done: set[FrameKey] | None = None, **kw: int | float) -> Assembler[int]:
    args: dict[str, int | float] = {
        "max_frame_bytes": 4 * MiB, "partial_timeout_s": 60.0,
        "max_inflight_bytes": 64 * MiB, "max_device_inflight_bytes": 8 * MiB,
    }
    args.update(kw)
    d = done if done is not None else set()
    return Assembler(done=d.__contains__, **args)  # type: ignore[arg-type]


@given(size=st.integers(4, 3000), chunk=st.integers(1, 400), seed=st.integers(0, 2**16),
       dups=st.integers(0, 20))
@settings(max_examples=150)
def test_any_order_and_duplicates_reassemble_exactly(size: int, chunk: int, seed: int,
                                                     dups: int) -> None:
    frame = jpeg(size, seed)
    payloads = split_frame(frame, boot_id=7, frame_seq=9, capture_ms=123, clock_synced=True,
                           chunk_data=chunk)
    rnd = random.Random(seed)
    stream = payloads + [rnd.choice(payloads) for _ in range(dups)]
    rnd.shuffle(stream)
    finished: set[FrameKey] = set()
    asm = make(finished)
    done = None
    released: list[int] = []
    late = []
    for token, p in enumerate(stream):
        r = asm.feed("cam01", p, token, 0.0)
        released += r.release
        if r.status is Status.COMPLETE:
            assert done is None and r.frame is not None
            done = r.frame
            finished.add(r.frame.key)
        elif done is not None:
            assert r.status is Status.DONE
            late.append(token)
        else:
            assert r.status in (Status.PARTIAL, Status.DUPLICATE)
    assert done is not None
    assert done.data == frame
    assert (done.boot_id, done.frame_seq, done.capture_ms, done.clock_synced) == (7, 9, 123, True)
    assert released == []
    # Every token is either handed back with the frame or routed as DONE.
    assert sorted(done.tokens) + late == list(range(len(stream)))


def test_done_predicate_routes_late_duplicates() -> None:
    frame = jpeg(100)
    p = split_frame(frame, boot_id=1, frame_seq=1, chunk_data=40)
    done: set[FrameKey] = set()
    asm = make(done)
    results = [asm.feed("d", x, i, 0.0) for i, x in enumerate(p)]
    assert results[-1].status is Status.COMPLETE
    done.add(("d", 1, 1))
    r = asm.feed("d", p[0], 99, 0.0)
    assert r.status is Status.DONE and r.key == ("d", 1, 1) and r.release == []
    assert asm.partial_frames == 0 and asm.held_tokens == 0 and asm.inflight_bytes == 0


BAD_DEVICE_IDS = st.one_of(st.text(max_size=40), st.just(""), st.just("a" * 33),
                           st.just("cam/01"), st.just("cam 01"))


@st.composite
def garbage(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(st.binary(max_size=120))
    # Headers that parse, with random fields, never of the protected frame (boot 1).
    count = draw(st.integers(0, 6))
    hdr = ChunkHeader(flags=draw(st.integers(0, 3)), boot_id=draw(st.integers(2, 5)),
                      frame_seq=draw(st.integers(0, 3)),
                      chunk_index=draw(st.integers(0, 7)), chunk_count=count,
                      frame_len=draw(st.integers(0, 300)),
                      frame_crc32=draw(st.integers(0, 2**32 - 1)),
                      offset=draw(st.integers(0, 300)), capture_ms=draw(st.integers(0, 5)))
    data = draw(st.binary(max_size=80))
    if kind == 2:
        data = b"\xff\xd8" + data
    if kind == 3:
        data = data + b"\xff\xd9"
    return pack_chunk(hdr, data)


@given(st.lists(st.tuples(st.one_of(st.just("cam01"), st.just("cam02"), BAD_DEVICE_IDS),
                          garbage()), max_size=60),
       st.integers(0, 2**16))
@settings(max_examples=200)
def test_malformed_never_raise_nor_corrupt_other_frames(junk: list[tuple[str, bytes]],
                                                        seed: int) -> None:
    frame = jpeg(700, seed)
    good = [("cam01", p) for p in split_frame(frame, boot_id=1, frame_seq=0, chunk_data=90)]
    stream = good + junk
    random.Random(seed).shuffle(stream)
    asm = make(max_frame_bytes=1024, max_device_inflight_bytes=64 * 1024,
               max_inflight_bytes=MiB)
    completed = []
    accounted: list[int] = []
    for token, (device, payload) in enumerate(stream):
        r = asm.feed(device, payload, token, 0.0)
        accounted += r.release
        for d in r.drops:
            accounted += d.tokens
        if r.frame is not None:
            completed.append(r.frame)
            accounted += r.frame.tokens
        if r.status is Status.REJECTED:
            assert r.reason is not None
    ours = [f for f in completed if f.key == ("cam01", 1, 0)]
    assert len(ours) == 1 and ours[0].data == frame
    # Every token is either handed back or still held by a partial frame.
    assert len(accounted) + asm.held_tokens == len(stream)
    assert len(set(accounted)) == len(accounted)


def _feed_all(asm: Assembler[int], device: str, payloads: list[bytes], start: int = 0) -> list:  # type: ignore[type-arg]
    return [asm.feed(device, p, start + i, 0.0) for i, p in enumerate(payloads)]


def test_crc_mismatch_rejects_and_releases_every_token() -> None:
    frame = jpeg(300)
    p = split_frame(frame, boot_id=3, frame_seq=4, chunk_data=100)
    bad = bytearray(p[1])
    bad[-1] ^= 0xFF
    res = _feed_all(make(), "d1", [p[0], bytes(bad), p[2]])
    last = res[-1]
    assert last.status is Status.REJECTED and last.reason is RejectReason.CRC_MISMATCH
    assert sorted(last.release) == [0, 1, 2]


def test_not_jpeg_and_too_large_and_bad_device() -> None:
    data = b"hello world, not a jpeg"
    p = split_frame(data, boot_id=1, frame_seq=1, chunk_data=10)
    asm = make()
    res = _feed_all(asm, "d1", p)
    assert res[-1].reason is RejectReason.NOT_JPEG and sorted(res[-1].release) == [0, 1, 2]
    big = split_frame(jpeg(3000), boot_id=1, frame_seq=2, chunk_data=1000)
    small = make(max_frame_bytes=2048)
    res = _feed_all(small, "d1", big)
    assert res[0].status is Status.REJECTED and res[0].reason is RejectReason.TOO_LARGE
    assert [r.status for r in res[1:]] == [Status.DISCARDED, Status.DISCARDED]
    r = asm.feed("bad/id", p[0], 50, 0.0)
    assert r.reason is RejectReason.BAD_DEVICE_ID and r.release == [50]


def test_header_mismatch_and_chunk_conflict() -> None:
    frame = jpeg(300)
    p = split_frame(frame, boot_id=1, frame_seq=1, chunk_data=100)
    other = split_frame(frame, boot_id=1, frame_seq=1, chunk_data=100, capture_ms=5)
    res = _feed_all(make(), "d", [p[0], other[1]])
    assert res[1].reason is RejectReason.HEADER_MISMATCH and sorted(res[1].release) == [0, 1]
    conflict = bytearray(p[0])
    conflict[-1] ^= 1
    res = _feed_all(make(), "d", [p[0], bytes(conflict)])
    assert res[1].reason is RejectReason.CHUNK_CONFLICT


def test_bad_coverage_gap_and_overrun() -> None:
    frame = jpeg(200)
    crc = crc32(frame)

    def chunk(idx: int, count: int, off: int, data: bytes) -> bytes:
        return pack_chunk(ChunkHeader(0, 1, 1, idx, count, len(frame), crc, off, 0), data)

    # Two chunks whose data leave a gap: indexes complete, coverage is not.
    res = _feed_all(make(), "d", [chunk(0, 2, 0, frame[:50]), chunk(1, 2, 100, frame[100:])])
    assert res[-1].reason is RejectReason.BAD_COVERAGE
    # Overlapping chunks carrying more bytes than frame_len.
    res = _feed_all(make(), "d", [chunk(0, 3, 0, frame[:150]), chunk(1, 3, 50, frame[50:200])])
    assert res[-1].reason is RejectReason.BAD_COVERAGE


def test_timeout_drops_oldest_first() -> None:
    asm = make(partial_timeout_s=10.0)
    a = split_frame(jpeg(300), boot_id=1, frame_seq=1, chunk_data=100)
    b = split_frame(jpeg(300), boot_id=1, frame_seq=2, chunk_data=100)
    asm.feed("d", a[0], 1, 0.0)
    asm.feed("d", b[0], 2, 5.0)
    assert asm.expire(9.9) == []
    drops = asm.expire(10.0)
    assert [(d.key, d.reason, d.tokens) for d in drops] == [(("d", 1, 1), DropReason.TIMEOUT,
                                                            (1,))]
    assert [d.key for d in asm.expire(100.0)] == [("d", 1, 2)]
    assert asm.partial_frames == 0 and asm.inflight_bytes == 0 and asm.held_tokens == 0


def test_device_and_global_byte_bounds_evict_oldest() -> None:
    asm = make(max_frame_bytes=4096, max_device_inflight_bytes=64 * 1024,
               max_inflight_bytes=MiB)
    asm.max_device_inflight_bytes = 2500  # below the validated minimum, to keep the test small
    frames = [split_frame(jpeg(2000, i), boot_id=1, frame_seq=i, chunk_data=1000)
              for i in range(3)]
    asm.feed("d", frames[0][0], 0, 0.0)
    asm.feed("d", frames[1][0], 1, 0.0)
    r = asm.feed("d", frames[2][0], 2, 0.0)
    assert [(d.key, d.reason) for d in r.drops] == [(("d", 1, 0), DropReason.DEVICE_BYTES)]
    assert asm.device_bytes("d") == 2000
    asm.max_inflight_bytes = 2500
    r = asm.feed("e", frames[0][0], 3, 0.0)
    assert [(d.key, d.reason) for d in r.drops] == [(("d", 1, 1), DropReason.GLOBAL_BYTES)]


def test_window_bound_evicts_oldest_partial() -> None:
    asm = make(max_partial_chunks=4)
    frames = [split_frame(jpeg(300, i), boot_id=1, frame_seq=i, chunk_data=100) for i in range(3)]
    asm.feed("d", frames[0][0], 0, 0.0)
    asm.feed("d", frames[0][1], 1, 0.0)
    asm.feed("d", frames[1][0], 2, 0.0)
    asm.feed("d", frames[1][1], 3, 0.0)
    r = asm.feed("d", frames[2][0], 4, 0.0)
    assert [(d.key, d.reason, d.tokens) for d in r.drops] == [
        (("d", 1, 0), DropReason.WINDOW, (0, 1))]
    assert asm.held_tokens == 3


def test_interleaved_devices_all_complete() -> None:
    asm = make()
    streams = {f"cam{i:03d}": split_frame(jpeg(800, i), boot_id=i, frame_seq=0, chunk_data=100)
               for i in range(50)}
    out = {}
    token = 0
    for idx in range(8):
        for dev, p in streams.items():
            r = asm.feed(dev, p[idx], token, 0.0)
            token += 1
            if r.frame is not None:
                out[dev] = r.frame
    assert len(out) == 50 and asm.partial_frames == 0
    assert all(out[d].data == jpeg(800, int(d[3:])) for d in out)


# ----------------------------------------------------------------------------- AckLedger
def test_ledger_reused_mid_acks_only_after_oldest_holder() -> None:
    led = AckLedger()
    old = led.hold(1)
    new = led.hold(1)  # Mosquitto reused packet id 1 while `old` is unacked
    assert led.release(new) == 0  # acking now would remove `old` at the broker
    assert led.release(old) == 2
    assert led.held == 0
    assert led.release(old) == 0  # a token is released once


def test_ledger_new_connection_voids_old_tokens() -> None:
    led = AckLedger()
    t = led.hold(5)
    assert led.new_connection() == 1
    assert not led.is_current(t)
    assert led.release(t) == 0
    t2 = led.hold(5)
    assert led.release(t2) == 1


@given(st.lists(st.integers(1, 4), min_size=1, max_size=40), st.randoms())
def test_ledger_total_pubacks_equal_holds(mids: list[int], rnd: random.Random) -> None:
    led = AckLedger()
    tokens = [led.hold(m) for m in mids]
    order = list(tokens)
    rnd.shuffle(order)
    sent: dict[int, int] = {}
    released: set[int] = set()
    for t in order:
        n = led.release(t)
        released.add(t.serial)
        sent[t.mid] = sent.get(t.mid, 0) + n
        # PUBACKs sent for a mid never exceed the released prefix of its FIFO.
        fifo = [x.serial for x in tokens if x.mid == t.mid]
        prefix = 0
        for s in fifo:
            if s not in released:
                break
            prefix += 1
        assert sent[t.mid] == prefix
    assert led.held == 0
    assert sum(sent.values()) == len(mids)
