"""Where a video or thumbnail named by the catalog is: a checked path, or a presigned URL.

A request never names a file: it names a device and a batch (both validated with the
contract's id rules), the catalog gives the location, and the location must be a valid
object key (no ``..``, no empty or dot-led segment) that resolves, symlinks followed,
inside the storage root (or the filesystem object store's root).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from objstore import InvalidKeyError, ObjectStore, ObjectStoreError, validate_key


@dataclass(frozen=True)
class Media:
    """A file to serve, or a URL to redirect to."""

    path: Path | None = None
    url: str | None = None


def inside(root: Path, key: str) -> Path | None:
    """``root/key`` resolved, when it is a regular file inside ``root``."""
    try:
        validate_key(key)
    except InvalidKeyError:
        return None
    base = root.resolve()
    try:
        path = (base / key).resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not path.is_relative_to(base) or not path.is_file():
        return None
    return path


@dataclass(frozen=True)
class Where:
    """Where media may live: the storage root, then the object store."""

    storage_root: Path
    store_backend: str
    store_root: Path
    store: ObjectStore | None = None
    expires_s: int = 300


def locate(key: str, where: Where) -> Media | None:
    """Find ``key``: the storage root first, then the object store.

    Returns:
        The file or a presigned URL; None when it is nowhere (or the key is unsafe).
    """
    storage_root, store, store_root = where.storage_root, where.store, where.store_root
    store_backend, expires_s = where.store_backend, where.expires_s
    path = inside(storage_root, key)
    if path is not None:
        return Media(path=path)
    try:
        validate_key(key)
    except InvalidKeyError:
        return None
    if store_backend == "filesystem":
        path = inside(store_root, key)
        return Media(path=path) if path is not None else None
    if store is None:
        return None
    try:
        if not store.exists(key):
            return None
        return Media(url=store.url(key, expires_s=expires_s))
    except ObjectStoreError:
        return None


def thumbnail_key(location: str, thumbnail: str | None) -> str:
    """The thumbnail's key: the catalog's column, else ``<video>.jpg`` beside the MP4."""
    if thumbnail:
        return thumbnail
    return location[:-4] + ".jpg" if location.endswith(".mp4") else location + ".jpg"
