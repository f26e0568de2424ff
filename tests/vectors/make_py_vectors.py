"""Write tests/vectors/py_chunks_v1.json: chunk payloads made by the Python codec.

The firmware's host tests (``make -C firmware test``) decode these with the C++ core
and re-encode them byte for byte; tests/unit/test_vectors.py checks that this file is
what the current Python codec produces. Regenerate after an intended codec change:

    python tests/vectors/make_py_vectors.py
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from contract.codec import DEFAULT_CHUNK_DATA, crc32, split_frame  # noqa: E402

OUT = Path(__file__).with_name("py_chunks_v1.json")


def _jpeg(n: int, seed: int) -> bytes:
    """Deterministic pseudo-JPEG: SOI, random bytes, EOI."""
    rnd = random.Random(seed)
    body = bytes(rnd.getrandbits(8) for _ in range(n - 4))
    return b"\xff\xd8" + body + b"\xff\xd9"


# name, data, boot_id, frame_seq, capture_ms, clock_synced, chunk_data
CASES: list[tuple[str, bytes, int, int, int, bool, int]] = [
    ("py_minimal", b"\xff\xd8\xff\xd9", 0, 0, 0, False, DEFAULT_CHUNK_DATA),
    ("py_single_partial", _jpeg(777, 11), 2, 3, 1795515300001, True, 1024),
    ("py_many_small", _jpeg(257, 12), 0xCAFEBABE, 9, 1795515300999, True, 16),
    ("py_exact_two", _jpeg(2048, 13), 1, 0xFFFFFFFE, 0, False, 1024),
    ("py_max_fields", _jpeg(10, 14), 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF, True, 3),
    ("py_default_chunks", _jpeg(3 * DEFAULT_CHUNK_DATA + 5, 15), 77, 1234, 1795515599000,
     True, DEFAULT_CHUNK_DATA),
]

CRC_INPUTS = [b"", b"\x00", b"\xff" * 7, b"camstack"]


def build() -> dict[str, Any]:
    """The vector document, deterministic."""
    cases = []
    for name, data, boot_id, seq, cap, synced, chunk in CASES:
        chunks = split_frame(data, boot_id=boot_id, frame_seq=seq, capture_ms=cap,
                             clock_synced=synced, chunk_data=chunk)
        cases.append({
            "name": name, "boot_id": boot_id, "frame_seq": seq, "capture_ms": cap,
            "clock_synced": synced, "chunk_data": chunk, "frame_crc32": crc32(data),
            "jpeg_hex": data.hex(), "chunks_hex": [c.hex() for c in chunks],
        })
    return {
        "format": "camstack-chunk-vectors",
        "version": 1,
        "generator": "tests/vectors/make_py_vectors.py (contract.codec)",
        "crc32": [{"data_hex": d.hex(), "crc32": crc32(d)} for d in CRC_INPUTS],
        "cases": cases,
    }


def render() -> str:
    """The file's exact text."""
    return json.dumps(build(), indent=2) + "\n"


def main() -> None:
    """Write the file next to this script."""
    OUT.write_text(render(), encoding="utf-8")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
