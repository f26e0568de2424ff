"""A sealed batch folder (``manifest.json`` + ``frames/``) as a pack, and its SHA-256.

The pack of a batch is deterministic (objstore/pack.py: fixed headers, the member
mtime is the manifest's ``sealed_ms``), so the SHA-256 of the pack built from a batch
folder is the batch's **source hash** on both backends: the S3 path uploads that pack
and records its SHA-256; the filesystem path computes the same digest without storing
the pack (:func:`batch_source_sha256`). A video row's ``pack_sha256`` therefore means
the same thing whichever backend made it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from objstore.pack import MANIFEST_NAME, PackError, PackIndex, write_pack


class _HashSink:
    """A write-only file object that only counts (write_pack hashes itself)."""

    def write(self, b: bytes) -> int:
        return len(b)


def _frames(folder: Path, manifest: bytes) -> Iterator[tuple[str, bytes]]:
    try:
        man = json.loads(manifest)
        files = [str(f["file"]) for f in man["frames"]]
    except (ValueError, KeyError, TypeError) as e:
        raise PackError(f"bad manifest in {folder.name}: {e}") from e
    for rel in files:
        p = folder / rel
        if p.parent != folder / "frames":
            raise PackError(f"frame path outside the batch: {rel[:80]!r}")
        yield rel, p.read_bytes()


def pack_mtime(manifest: bytes) -> int:
    """The mtime of every member: the manifest's ``sealed_ms`` in seconds (0 if absent)."""
    try:
        value = json.loads(manifest).get("sealed_ms", 0)
    except (ValueError, AttributeError):
        return 0
    return int(value) // 1000 if isinstance(value, int) and value > 0 else 0


def write_batch_pack(folder: Path, out: BinaryIO) -> PackIndex:
    """Write the pack of the sealed batch in ``folder`` to ``out``.

    Returns:
        The pack's index (size and SHA-256 included).

    Raises:
        OSError: A file cannot be read.
        PackError: The manifest is not usable.
    """
    manifest = (folder / MANIFEST_NAME).read_bytes()
    return write_pack(out, manifest, _frames(folder, manifest), mtime=pack_mtime(manifest))


def batch_source_sha256(folder: Path) -> tuple[str, int]:
    """SHA-256 and size of the pack :func:`write_batch_pack` would write, nothing stored.

    Returns:
        (hex digest, bytes).
    """
    idx = write_batch_pack(folder, _HashSink())  # type: ignore[arg-type]
    return idx.sha256, idx.size


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()
