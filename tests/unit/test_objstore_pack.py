"""The pack format: tar round trip, offsets for ranged reads, GNU tar interop."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from objstore.pack import (
    PackError,
    PackIndex,
    index_from_manifest,
    manifest_size_from_header,
    pack_bytes,
    read_pack,
)


def _batch(blobs: list[bytes]) -> tuple[bytes, list[tuple[str, bytes]]]:
    frames = [(f"frames/{1795515300000 + i:013d}_deadbeef_{i:010d}.jpg", b)
              for i, b in enumerate(blobs)]
    man = {"v": 1, "device": "cam01", "batch": "cam01-20261124T101500Z-0001",
           "sealed_ms": 1795515600123,
           "frames": [{"file": n, "boot_id": 3735928559, "frame_seq": i, "capture_ms": 0,
                       "clock_synced": False, "ts_ms": 1795515300000 + i, "bytes": len(b),
                       "crc32": zlib.crc32(b)} for i, (n, b) in enumerate(frames)],
           "first_capture_ms": 1795515300000, "last_capture_ms": 1795515300000 + len(blobs)}
    return json.dumps(man).encode(), frames


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=3000), min_size=1, max_size=12))
def test_round_trip_and_offsets(blobs: list[bytes]) -> None:
    man, frames = _batch(blobs)
    data, index = pack_bytes(man, frames)
    assert index.size == len(data) and len(data) % 10240 == 0
    got_man, got = read_pack(io.BytesIO(data))
    assert got_man == json.loads(man)
    assert [f.data for f in got] == blobs
    # Every member's bytes sit exactly at its offset; the index is computable from
    # the manifest alone (what a ranged reader does) and survives JSON.
    for m, (_, blob) in zip(index.members[1:], frames, strict=True):
        assert data[m.offset:m.offset + m.size] == blob
    assert index_from_manifest(man, index.sha256) == index
    assert manifest_size_from_header(data[:512]) == len(man)
    assert PackIndex.from_json(json.loads(json.dumps(index.to_json()))) == index


def test_deterministic() -> None:
    man, frames = _batch([b"a" * 10, b"b" * 700])
    assert pack_bytes(man, frames)[0] == pack_bytes(man, frames)[0]


def _tarfile_pack(manifest: bytes, frames: list[tuple[str, bytes]], mtime: int) -> bytes:
    """The pack as the standard library's TarFile writes it (the format's reference)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT,
                      encoding="utf-8") as tar:
        for name, data in [("manifest.json", manifest), *frames]:
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode, ti.mtime, ti.uid, ti.gid = len(data), 0o640, mtime, 0, 0
            ti.uname = ti.gname = ""
            tar.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=11000), min_size=0, max_size=8),
       st.integers(min_value=0, max_value=2**33 - 1))
def test_same_bytes_as_tarfile(blobs: list[bytes], mtime: int) -> None:
    # Packs already stored and their recorded SHA-256 stay valid: the writer's output
    # is the TarFile's, byte for byte.
    man, frames = _batch(blobs)
    assert pack_bytes(man, frames, mtime=mtime)[0] == _tarfile_pack(man, frames, mtime)


def test_pinned_digest() -> None:
    man, frames = _batch([b"a" * 10, b"b" * 700, b"", b"c" * 512, b"d" * 10241])
    _, index = pack_bytes(man, frames, mtime=1795515600)
    assert (index.sha256, index.size) == (
        "58308480e126b2cc5b45367f25af8c0d1ae688d006a38f88f6b2b68bdfaf9eaf", 20480)


def test_gnu_tar_lists_and_extracts(tmp_path: Path) -> None:
    blobs = [bytes(range(256)) * 7, b"\xff\xd8jpeg\xff\xd9"]
    man, frames = _batch(blobs)
    data, _ = pack_bytes(man, frames, mtime=1795515600)
    p = tmp_path / "batch.tar"
    p.write_bytes(data)
    listed = subprocess.run(["tar", "-tf", str(p)], capture_output=True, text=True,
                            check=True).stdout.split()
    assert listed == ["manifest.json", *[n for n, _ in frames]]
    out = subprocess.run(["tar", "-xOf", str(p), frames[1][0]], capture_output=True,
                         check=True).stdout
    assert out == blobs[1]
    subprocess.run(["tar", "-xf", str(p), "-C", str(tmp_path)], check=True)
    assert (tmp_path / "manifest.json").read_bytes() == man
    assert (tmp_path / frames[0][0]).read_bytes() == blobs[0]


def _corrupt(data: bytes, offset: int) -> bytes:
    b = bytearray(data)
    b[offset] ^= 0xFF
    return bytes(b)


def test_corrupted_frame_is_detected() -> None:
    man, frames = _batch([b"x" * 100, b"y" * 100])
    data, index = pack_bytes(man, frames)
    bad = _corrupt(data, index.members[2].offset + 5)
    with pytest.raises(PackError, match="CRC32"):
        read_pack(io.BytesIO(bad))


def test_missing_extra_and_reordered_frames_are_detected() -> None:
    man, frames = _batch([b"x" * 100, b"y" * 100])
    data, _ = pack_bytes(man, frames[:1])
    with pytest.raises(PackError, match="ends before frame 1"):
        read_pack(io.BytesIO(data))
    data, _ = pack_bytes(man, [*frames, ("frames/extra.jpg", b"z")])
    with pytest.raises(PackError, match="unexpected member"):
        read_pack(io.BytesIO(data))
    data, _ = pack_bytes(man, frames[::-1])
    with pytest.raises(PackError, match="manifest says"):
        read_pack(io.BytesIO(data))


def test_not_a_pack() -> None:
    with pytest.raises(PackError):
        read_pack(io.BytesIO(b"garbage" * 100))
    with pytest.raises(PackError):
        pack_bytes(b"{}", [("../../etc/passwd", b"x")])
