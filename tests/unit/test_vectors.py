"""Cross-language chunk vectors: the C++ firmware core and the Python codec agree.

- ``tests/vectors/chunks_v1.json`` was written by the C++ core
  (``make -C firmware vectors``); the Python codec must produce and decode exactly
  these bytes, and a fresh C++ build must still write exactly this file.
- ``tests/vectors/py_chunks_v1.json`` was written by the Python codec
  (``tests/vectors/make_py_vectors.py``); it must still be what the codec produces.
  The firmware's host tests (``make -C firmware test``) decode it with the C++ core.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import zlib
from pathlib import Path
from typing import Any

import pytest

from contract.codec import HEADER_LEN, crc32, split_frame, unpack_chunk
from tests.vectors import make_py_vectors

REPO = Path(__file__).resolve().parents[2]
VECTORS = REPO / "tests" / "vectors"
CPP_FILE = VECTORS / "chunks_v1.json"
PY_FILE = VECTORS / "py_chunks_v1.json"


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    assert data["format"] == "camstack-chunk-vectors"
    assert data["version"] == 1
    return data


def check_document(doc: dict[str, Any]) -> None:
    """Python encodes every case to the same bytes and decodes every chunk back."""
    assert len(doc["cases"]) >= 5
    for case in doc["cases"]:
        jpeg = bytes.fromhex(case["jpeg_hex"])
        expected = [bytes.fromhex(c) for c in case["chunks_hex"]]
        assert crc32(jpeg) == case["frame_crc32"] == zlib.crc32(jpeg)
        produced = split_frame(jpeg, boot_id=case["boot_id"], frame_seq=case["frame_seq"],
                               capture_ms=case["capture_ms"],
                               clock_synced=case["clock_synced"],
                               chunk_data=case["chunk_data"])
        assert produced == expected, case["name"]
        rebuilt = bytearray(len(jpeg))
        for i, payload in enumerate(expected):
            chunk = unpack_chunk(payload)
            h = chunk.header
            assert (h.chunk_index, h.chunk_count) == (i, len(expected)), case["name"]
            assert h.boot_id == case["boot_id"]
            assert h.frame_seq == case["frame_seq"]
            assert h.capture_ms == case["capture_ms"]
            assert h.clock_synced == case["clock_synced"]
            assert h.frame_len == len(jpeg)
            assert h.frame_crc32 == case["frame_crc32"]
            assert len(payload) == HEADER_LEN + len(chunk.data)
            rebuilt[h.offset:h.offset + len(chunk.data)] = chunk.data
        assert bytes(rebuilt) == jpeg, case["name"]
    for v in doc["crc32"]:
        assert crc32(bytes.fromhex(v["data_hex"])) == v["crc32"]


def test_python_codec_matches_cpp_vectors() -> None:
    check_document(load(CPP_FILE))


def test_python_vectors_file_is_current() -> None:
    doc = load(PY_FILE)
    check_document(doc)
    assert PY_FILE.read_text(encoding="utf-8") == make_py_vectors.render(), (
        "py_chunks_v1.json is stale: run python tests/vectors/make_py_vectors.py")


def test_fresh_cpp_build_writes_the_committed_vectors(tmp_path: Path) -> None:
    if shutil.which("make") is None or shutil.which("g++") is None:
        pytest.skip("g++/make not installed")
    res = subprocess.run(
        ["make", "-C", str(REPO / "firmware"), "vectors", f"VECTORS_DIR={tmp_path}"],
        capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    fresh = (tmp_path / "chunks_v1.json").read_text(encoding="utf-8")
    assert fresh == CPP_FILE.read_text(encoding="utf-8"), (
        "the C++ core no longer writes tests/vectors/chunks_v1.json: "
        "run make -C firmware vectors-update if the change is intended")
    check_document(json.loads(fresh))
