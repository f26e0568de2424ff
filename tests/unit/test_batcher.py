"""Batcher: threshold and idle sealing, order, counters, manifest and ready event."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from contract.events import ReadyEvent
from contract.layout import FrameMeta, batch_name, frame_file_name, parse_frame_file_name
from ingestor.batcher import Batcher, manifest

T0 = 1795515300000  # 2026-11-24T10:15:00Z


def meta(seq: int, ts: int, device: str = "cam01", boot: int = 0xDEADBEEF) -> FrameMeta:
    return FrameMeta(device, boot, seq, ts, True, ts, 1000 + seq, seq)


def test_names_sort_in_contract_order_and_parse_back() -> None:
    keys = [(T0, 2, 1), (T0, 1, 5), (T0 - 1, 9, 0), (T0, 1, 4)]
    names = sorted(frame_file_name(*k) for k in keys)
    assert [parse_frame_file_name(n) for n in names] == sorted(keys)
    assert frame_file_name(T0, 0xDEADBEEF, 0) == "1795515300000_deadbeef_0000000000.jpg"
    assert batch_name("cam01", T0, 1) == "cam01-20261124T101500Z-0001"
    assert parse_frame_file_name(".x.jpg.tmp") is None


@given(st.integers(1, 12), st.lists(st.integers(0, 10_000), min_size=0, max_size=40,
                                    unique=True), st.randoms())
def test_threshold_seals_oldest_in_order(n: int, tss: list[int], rnd: random.Random) -> None:
    b = Batcher(n)
    frames = [meta(i, T0 + ts) for i, ts in enumerate(tss)]
    shuffled = list(frames)
    rnd.shuffle(shuffled)
    sealed: list[FrameMeta] = []
    for f in shuffled:
        b.add(f, 0.0)
        for plan in b.due(0.0):
            assert len(plan.frames) == n
            assert list(plan.frames) == sorted(plan.frames, key=lambda m: m.name)
            sealed.extend(plan.frames)
            b.commit(plan)
    assert len(sealed) == (len(frames) // n) * n
    assert b.waiting("cam01") == len(frames) - len(sealed)


def test_counter_and_idle_seal() -> None:
    b = Batcher(3, idle_seal_s=10.0)
    b.restore("cam01", [meta(0, T0), meta(1, T0 + 1000)], last_counter=7, now=0.0)
    assert b.due(9.9) == []
    (plan,) = b.due(10.0)
    assert plan.reason == "idle" and plan.counter == 8
    assert plan.batch == "cam01-20261124T101500Z-0008"
    assert plan.location == "batches/cam01/cam01-20261124T101500Z-0008"
    b.commit(plan)
    assert b.waiting("cam01") == 0 and b.last_counter("cam01") == 8
    assert b.due(100.0) == []


def test_uncommitted_plan_is_offered_again() -> None:
    b = Batcher(2)
    b.add(meta(0, T0), 0.0)
    b.add(meta(1, T0 + 1), 0.0)
    first = b.due(0.0)
    assert b.due(0.0) == first


def test_manifest_and_ready_event_match_contract() -> None:
    b = Batcher(2)
    b.add(meta(1, T0 + 5000), 0.0)
    b.add(meta(0, T0), 0.0)
    (plan,) = b.due(0.0)
    man = manifest(plan, 1795515600123).to_obj()
    assert man["v"] == 1 and man["device"] == "cam01" and man["sealed_ms"] == 1795515600123
    assert man["first_capture_ms"] == T0 and man["last_capture_ms"] == T0 + 5000
    assert man["frames"] == [
        {"file": "frames/1795515300000_deadbeef_0000000000.jpg", "boot_id": 0xDEADBEEF,
         "frame_seq": 0, "capture_ms": T0, "clock_synced": True, "ts_ms": T0,
         "bytes": 1000, "crc32": 0},
        {"file": "frames/1795515305000_deadbeef_0000000001.jpg", "boot_id": 0xDEADBEEF,
         "frame_seq": 1, "capture_ms": T0 + 5000, "clock_synced": True, "ts_ms": T0 + 5000,
         "bytes": 1001, "crc32": 1},
    ]
    assert ReadyEvent.of(manifest(plan, 1795515600123)).to_obj() == {
        "v": 1, "device": "cam01", "batch": "cam01-20261124T101500Z-0001", "frames": 2,
        "first_capture_ms": T0, "last_capture_ms": T0 + 5000,
        "location": "batches/cam01/cam01-20261124T101500Z-0001"}
