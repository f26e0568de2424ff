"""The object-store interface shared by the filesystem and the S3 backends."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Protocol, runtime_checkable

from objstore.errors import IntegrityError, InvalidKeyError

MAX_KEY_BYTES = 1024
"""S3's limit on a key, in UTF-8 bytes."""

_KEY_SEGMENT_RE = re.compile(r"[A-Za-z0-9_.=+-]{1,255}")
_SHA256_HEX_RE = re.compile(r"[0-9a-f]{64}")
CHUNK = 1024 * 1024


def validate_key(key: str) -> str:
    """Check an object key: ``/``-separated segments of ``[A-Za-z0-9_.=+-]``.

    No empty segment, no ``.`` or ``..`` segment, no segment starting with ``.`` (the
    filesystem backend's temporary names), at most 1024 bytes. The same rule holds for
    every backend so that a key valid on one is valid on all.

    Args:
        key: The key.

    Returns:
        ``key`` unchanged.

    Raises:
        InvalidKeyError: If the key breaks a rule.
    """
    if not isinstance(key, str):
        raise InvalidKeyError(f"object key must be a string, not {type(key).__name__}")
    if not key or len(key.encode("utf-8", "replace")) > MAX_KEY_BYTES:
        raise InvalidKeyError(f"object key must be 1 to {MAX_KEY_BYTES} bytes")
    for seg in key.split("/"):
        if not _KEY_SEGMENT_RE.fullmatch(seg) or seg.startswith("."):
            raise InvalidKeyError(f"invalid object key segment {seg[:80]!r} in {key[:200]!r}")
    return key


def validate_prefix(prefix: str) -> str:
    """Check a listing prefix: empty, or a valid key optionally ending with ``/``.

    Raises:
        InvalidKeyError: If it is not.
    """
    if prefix == "":
        return prefix
    validate_key(prefix[:-1] if prefix.endswith("/") else prefix)
    return prefix


def check_sha256_hex(value: str) -> str:
    """Check a lower-case hex SHA-256.

    Raises:
        IntegrityError: If ``value`` is not 64 lower-case hex digits.
    """
    if not isinstance(value, str) or not _SHA256_HEX_RE.fullmatch(value):
        raise IntegrityError(f"not a lower-case hex SHA-256: {str(value)[:80]!r}")
    return value


def sha256_b64(hex_digest: str) -> str:
    """The base64 form S3 uses (``ChecksumSHA256``) of a hex SHA-256."""
    return base64.b64encode(bytes.fromhex(hex_digest)).decode("ascii")


def sha256_hex_from_b64(b64: str) -> str | None:
    """The hex form of an S3 ``ChecksumSHA256`` (``None`` when it is not a plain SHA-256)."""
    try:
        raw = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw.hex() if len(raw) == 32 else None


def hash_stream(stream: BinaryIO) -> tuple[str, int]:
    """SHA-256 and length of the rest of ``stream``.

    Returns:
        (hex digest, bytes read).
    """
    h = hashlib.sha256()
    n = 0
    while chunk := stream.read(CHUNK):
        h.update(chunk)
        n += len(chunk)
    return h.hexdigest(), n


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What the store knows about one object."""

    key: str
    size: int
    sha256: str | None = None
    """Hex SHA-256 when the store keeps it (S3 ``ChecksumSHA256``; computed for files)."""
    etag: str | None = None
    modified_ms: int | None = None


@runtime_checkable
class ObjectStore(Protocol):
    """A flat key → bytes store. Keys follow :func:`validate_key` on every backend.

    Every method raises only :class:`objstore.errors.ObjectStoreError` subclasses:
    ``NotFoundError`` for a missing object, ``UnavailableError`` for an unreachable or
    failing store (retry later), ``IntegrityError`` for a checksum mismatch,
    ``StoreConfigError`` for a configuration the store rejects.
    """

    def check(self) -> None:
        """Verify at start that the store is usable (credentials, bucket, endpoint)."""

    def put_bytes(self, key: str, data: bytes, *, sha256: str | None = None,
                  content_type: str = "application/octet-stream") -> ObjectInfo:
        """Store ``data`` under ``key`` (replacing it), verified against ``sha256``.

        ``sha256`` (hex) defaults to the digest of ``data``; passing the digest computed
        where the bytes were produced catches corruption on the way.
        """

    def put_stream(self, key: str, stream: BinaryIO, *, sha256: str, size: int,
                   content_type: str = "application/octet-stream") -> ObjectInfo:
        """Store ``size`` bytes read from ``stream`` (seekable), verified against ``sha256``."""

    def get_bytes(self, key: str, *, sha256: str | None = None) -> bytes:
        """The whole object; with ``sha256``, verified (``IntegrityError`` on mismatch)."""

    def open(self, key: str) -> BinaryIO:
        """A stream of the object's bytes (the caller closes it)."""

    def get_range(self, key: str, start: int, length: int) -> bytes:
        """``length`` bytes from offset ``start`` (fewer at the end of the object)."""

    def head(self, key: str) -> ObjectInfo | None:
        """The object's info, or ``None`` when it does not exist."""

    def exists(self, key: str) -> bool:
        """Whether the object exists."""

    def delete(self, key: str) -> None:
        """Delete the object; deleting a missing object is not an error."""

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects whose key starts with ``prefix``, in key order."""

    def url(self, key: str, *, expires_s: int | None = None) -> str:
        """A presigned GET URL (S3) or the absolute file path (filesystem)."""

    def close(self) -> None:
        """Release connections."""
