"""Tamper evidence: an Ed25519 signature over a small canonical video manifest.

The signed manifest holds what identifies a video: device, batch, location, the
SHA-256 of the MP4 and of its source pack, the frame count and the capture range. The
``signature`` column keeps ``<base64url(manifest)>.<base64url(signature)>`` so a
verifier can tell apart three faults: the file changed (its SHA-256 differs from the
signed one), the database row changed (a field differs from the signed manifest), or
the signature itself is invalid (forged, damaged, or made with another key).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from catalog.models import VideoRow

SIGNED_FIELDS = ("device", "batch", "location", "sha256", "pack_sha256", "frames",
                 "first_capture_ms", "last_capture_ms")
MANIFEST_VERSION = 1


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def canonical_manifest(row: VideoRow, key_id: str) -> bytes:
    """The bytes that are signed: sorted-key compact JSON of :data:`SIGNED_FIELDS`.

    Args:
        row: The video row.
        key_id: :func:`key_id` of the signing key.

    Returns:
        UTF-8 JSON.
    """
    obj: dict[str, Any] = {f: getattr(row, f) for f in SIGNED_FIELDS}
    obj["v"] = MANIFEST_VERSION
    obj["key"] = key_id
    return json.dumps(obj, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True).encode("ascii")


def key_id(public_key: Ed25519PublicKey) -> str:
    """The first 16 hex digits of the SHA-256 of the raw public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 private key in ``path`` (PKCS#8 PEM), created 0600 when missing.

    Args:
        path: e.g. ``data/pki/video-signing.key``.

    Returns:
        The key.

    Raises:
        ValueError: If the file holds something other than an Ed25519 key.
    """
    if not path.exists():
        path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        try:
            os.link(tmp, path)  # never replaces a key another process just wrote
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(loaded, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return loaded


def public_key_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """The public key as SubjectPublicKeyInfo PEM (safe to publish)."""
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(serialization.Encoding.PEM,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def load_public_key(pem: bytes) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM.

    Raises:
        ValueError: If it is not one.
    """
    pub = serialization.load_pem_public_key(pem)
    if not isinstance(pub, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return pub


def sign_video(row: VideoRow, key: Ed25519PrivateKey) -> str:
    """The value of the row's ``signature`` column.

    Returns:
        ``<base64url manifest>.<base64url signature>``.
    """
    manifest = canonical_manifest(row, key_id(key.public_key()))
    return f"{_b64(manifest)}.{_b64(key.sign(manifest))}"


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1024 * 1024):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """What :func:`verify_video` found. ``ok`` only when all three checks pass."""

    signature_valid: bool
    record_altered: list[str] = field(default_factory=list)
    """Row fields that differ from the signed manifest, as ``field: row X, signed Y``."""
    file_altered: bool = False
    file_sha256: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Signature valid, record as signed, file as signed."""
        return self.signature_valid and not self.record_altered and not self.file_altered


def verify_video(video: bytes | Path, row: VideoRow, public_key: Ed25519PublicKey) -> VerifyResult:
    """Check a video file and its row against the row's signature.

    Args:
        video: The MP4's bytes or path.
        row: Its catalog row.
        public_key: The service's public key.

    Returns:
        The result, with one line per problem in ``problems``.
    """
    file_sha = (hashlib.sha256(video).hexdigest() if isinstance(video, bytes)
                else sha256_file(video))
    problems: list[str] = []
    signed: dict[str, Any] | None = None
    sig_ok = False
    if not row.signature or row.signature.count(".") != 1:
        problems.append("signature invalid: the row has no signature of the form manifest.sig")
    else:
        man_b64, sig_b64 = row.signature.split(".")
        try:
            manifest, sig = _unb64(man_b64), _unb64(sig_b64)
            public_key.verify(sig, manifest)
            sig_ok = True
            obj = json.loads(manifest)
            signed = obj if isinstance(obj, dict) else None
        except (binascii.Error, ValueError):
            problems.append("signature invalid: not decodable")
        except InvalidSignature:
            problems.append("signature invalid: does not verify with this public key "
                            "(forged, damaged or signed by another key)")
    altered: list[str] = []
    if signed is not None:
        for f in SIGNED_FIELDS:
            if getattr(row, f) != signed.get(f):
                altered.append(f"{f}: row {getattr(row, f)!r}, signed {signed.get(f)!r}")
        if altered:
            problems.append("record altered: " + "; ".join(altered))
        signed_sha = signed.get("sha256")
    else:
        signed_sha = row.sha256
    file_altered = file_sha != signed_sha
    if file_altered:
        problems.append(f"file altered: sha256 {file_sha}, signed {signed_sha}")
    return VerifyResult(sig_ok, altered, file_altered, file_sha, problems)
