"""Store on a real folder: atomic group writes, seal, rollback, scan, counters, dedup index."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest

from contract.codec import crc32
from contract.layout import FrameMeta
from ingestor.batcher import Batcher
from ingestor.durable import XATTR
from ingestor.store import Store

T0 = 1795515300000


def frame(seq: int, ts: int = T0, device: str = "cam01") -> tuple[FrameMeta, bytes]:
    data = b"\xff\xd8" + bytes([seq % 256]) * (100 + seq) + b"\xff\xd9"
    return FrameMeta(device, 0xABC, seq, ts + seq * 1000, True, ts + seq * 1000, len(data),
                     crc32(data)), data


def files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_write_frames_layout_and_index(tmp_path: Path) -> None:
    st = Store(tmp_path)
    st.scan()
    group = [frame(i) for i in range(3)] + [frame(0, device="cam02")]
    st.write_frames(group)
    assert files(tmp_path) == [
        "frames/cam01/2026-11-24/1795515300000_00000abc_0000000000.jpg",
        "frames/cam01/2026-11-24/1795515301000_00000abc_0000000001.jpg",
        "frames/cam01/2026-11-24/1795515302000_00000abc_0000000002.jpg",
        "frames/cam02/2026-11-24/1795515300000_00000abc_0000000000.jpg",
    ]
    for m, data in group:
        assert (tmp_path / m.rel_path).read_bytes() == data
        assert st.contains(m.key)
    assert json.loads(os.getxattr(tmp_path / group[1][0].rel_path, XATTR)) == {
        "capture_ms": T0 + 1000, "clock_synced": True, "crc32": group[1][0].crc32}


def test_failed_group_leaves_no_temp_and_no_index(tmp_path: Path) -> None:
    st = Store(tmp_path)
    st.scan()
    (tmp_path / "frames").mkdir()
    (tmp_path / "frames" / "cam02").write_text("a file where a folder must be")
    with pytest.raises(OSError):
        st.write_frames([frame(0), frame(1, device="cam02")])
    assert not st.contains(frame(0)[0].key)
    assert not any(p.name.endswith(".tmp") for p in tmp_path.rglob("*"))
    (tmp_path / "frames" / "cam02").unlink()
    st.write_frames([frame(0), frame(1, device="cam02")])
    assert st.contains(frame(1, device="cam02")[0].key)


def test_seal_scan_and_counters(tmp_path: Path) -> None:
    st = Store(tmp_path)
    st.scan()
    group = [frame(i) for i in range(5)]
    st.write_frames(group)
    b = Batcher(3)
    for m, _ in group:
        b.add(m, 0.0)
    (plan,) = b.due(0.0)
    man = st.seal(plan, 42)
    assert man is not None
    b.commit(plan)
    bdir = tmp_path / "batches/cam01/cam01-20261124T101500Z-0001"
    assert json.loads((bdir / "manifest.json").read_text()) == man.to_obj()
    assert sorted(p.name for p in (bdir / "frames").iterdir()) == [m.name for m, _ in group[:3]]
    for m, data in group[:3]:
        assert (bdir / "frames" / m.name).read_bytes() == data
    # A fresh store finds the same state.
    st2 = Store(tmp_path)
    res = st2.scan()
    assert res.counters == {"cam01": 1}
    assert [m.key for m in res.unsealed["cam01"]] == [m.key for m, _ in group[3:]]
    assert res.unsealed["cam01"] == [m for m, _ in group[3:]]  # metadata from the xattr
    assert [x.batch for x in res.sealed] == ["cam01-20261124T101500Z-0001"]
    assert all(st2.contains(m.key) for m, _ in group)


def test_seal_keeps_the_folder_a_group_in_flight_writes_to(tmp_path: Path) -> None:
    """The writer seals while the next group is still in the disk child: the seal empties
    the day folder, and removing it then would make the child's write fail (ENOENT,
    seen in bench_capacity as storage_unavailable for the first frame after a seal)."""
    st = Store(tmp_path)
    st.scan()
    first = [frame(i) for i in range(3)]
    st.write_frames(first)
    b = Batcher(3, 1.0)
    for m, _ in first:
        b.add(m, 0.0)
    (plan,) = b.due(0.0)
    day = (tmp_path / first[0][0].rel_path).parent
    nxt = frame(3)
    # Hold the disk child so that the next group is handed over but not yet written.
    child = st._disk._proc  # type: ignore[union-attr]
    assert child is not None
    os.kill(child.pid, signal.SIGSTOP)
    try:
        pending = st.begin_frames([nxt])
        assert st.seal(plan, 42) is not None
        assert day.is_dir(), "the seal removed a folder a write is in flight to"
    finally:
        os.kill(child.pid, signal.SIGCONT)
    st.finish_frames(pending)
    assert st.contains(nxt[0].key) and (tmp_path / nxt[0].rel_path).read_bytes() == nxt[1]
    # With nothing in flight, an emptied folder is still removed at the next seal.
    b.commit(plan)
    b.add(nxt[0], 0.0)
    (last,) = b.due(10**9)
    assert st.seal(last, 43) is not None
    assert not day.exists()


def test_interrupted_seal_rolls_back(tmp_path: Path) -> None:
    st = Store(tmp_path)
    st.scan()
    group = [frame(i) for i in range(4)]
    st.write_frames(group)
    # Simulate a crash after two renames, before the manifest.
    bdir = tmp_path / "batches/cam01/cam01-20261124T101500Z-0003/frames"
    bdir.mkdir(parents=True)
    for m, _ in group[:2]:
        os.rename(tmp_path / m.rel_path, bdir / m.name)
    (bdir.parent / ".manifest.json.tmp").write_text("{")
    st2 = Store(tmp_path)
    res = st2.scan()
    assert res.rolled_back == ["batches/cam01/cam01-20261124T101500Z-0003"]
    assert res.counters == {"cam01": 3}
    assert not (tmp_path / "batches/cam01/cam01-20261124T101500Z-0003").exists()
    assert sorted(m.key for m in res.unsealed["cam01"]) == sorted(m.key for m, _ in group)
    for m, data in group:
        assert (tmp_path / m.rel_path).read_bytes() == data


def test_purged_batch_keys_are_forgotten(tmp_path: Path) -> None:
    st = Store(tmp_path)
    st.scan()
    st.write_frames([frame(0), frame(1)])
    b = Batcher(1)
    for m, _ in (frame(0), frame(1)):
        b.add(m, 0.0)
    (plan,) = b.due(0.0)
    assert st.seal(plan, 1) is not None
    b.commit(plan)
    shutil.rmtree(tmp_path / "batches/cam01" / plan.batch)  # the encoder purged it
    (plan2,) = b.due(0.0)
    assert st.seal(plan2, 2) is not None
    assert not st.contains(frame(0)[0].key)
    assert st.contains(frame(1)[0].key)


def test_scan_without_xattr_recomputes_crc(tmp_path: Path) -> None:
    m, data = frame(0)
    path = tmp_path / m.rel_path
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    (path.parent / ".junk.jpg.tmp").write_bytes(b"x")
    res = Store(tmp_path).scan()
    (got,) = res.unsealed["cam01"]
    assert (got.crc32, got.size, got.ts_ms, got.capture_ms, got.clock_synced) == (
        m.crc32, m.size, m.ts_ms, 0, False)
    assert res.metadata_recovered == 1 and res.temp_removed == 1
    assert not (path.parent / ".junk.jpg.tmp").exists()
