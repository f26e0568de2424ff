"""Pure pieces of the S3 wiring: the pack key and the batch's source hash."""

from __future__ import annotations

import hashlib
import io
import json
import zlib
from pathlib import Path

import pytest

from contract.layout import pack_key
from objstore import validate_key
from objstore.batchpack import batch_source_sha256, write_batch_pack
from objstore.pack import read_pack


def test_pack_key() -> None:
    key = pack_key("cam01", "cam01-20261124T101500Z-0001")
    assert key == "packs/cam01/cam01-20261124T101500Z-0001.tar"
    assert validate_key(key) == key
    assert pack_key("cam01", "b", "p/") == "p/cam01/b.tar"
    for dev, batch, prefix in (("../x", "b", "packs/"), ("cam", "a/b", "packs/"),
                               ("cam", ".hidden", "packs/"), ("cam", "b", "packs"),
                               ("", "b", "packs/")):
        with pytest.raises(ValueError):
            pack_key(dev, batch, prefix)


def _batch(folder: Path, n: int = 3) -> None:
    (folder / "frames").mkdir(parents=True)
    frames = []
    for i in range(n):
        name = f"frames/{1795515300000 + i:013d}_0000cafe_{i:010d}.jpg"
        data = b"\xff\xd8" + bytes([i]) * 100 + b"\xff\xd9"
        (folder / name).write_bytes(data)
        frames.append({"file": name, "ts_ms": 1795515300000 + i, "bytes": len(data),
                       "crc32": zlib.crc32(data)})
    (folder / "manifest.json").write_bytes(json.dumps(
        {"v": 1, "device": "cam", "batch": "b", "sealed_ms": 1795515400123, "frames": frames,
         "first_capture_ms": 1795515300000, "last_capture_ms": 1795515300002}).encode())


def test_source_hash_is_the_hash_of_the_pack(tmp_path: Path) -> None:
    _batch(tmp_path / "b")
    buf = io.BytesIO()
    idx = write_batch_pack(tmp_path / "b", buf)
    assert hashlib.sha256(buf.getvalue()).hexdigest() == idx.sha256
    assert batch_source_sha256(tmp_path / "b") == (idx.sha256, len(buf.getvalue()))
    man, frames = read_pack(io.BytesIO(buf.getvalue()))
    assert len(frames) == 3 and man["batch"] == "b"
    # Deterministic: a copy elsewhere hashes the same; one changed byte does not.
    _batch(tmp_path / "c")
    assert batch_source_sha256(tmp_path / "c")[0] == idx.sha256
    f = next((tmp_path / "c" / "frames").iterdir())
    f.write_bytes(f.read_bytes()[:-3] + b"\x00\xff\xd9")
    assert batch_source_sha256(tmp_path / "c")[0] != idx.sha256
