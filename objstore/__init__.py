"""Object storage for packs, videos and thumbnails: the filesystem or any S3 store."""

from __future__ import annotations

from config.settings import ObjectStoreSettings
from objstore.base import ObjectInfo, ObjectStore, validate_key
from objstore.errors import (
    EndpointUnreachableError,
    IntegrityError,
    InvalidKeyError,
    NotFoundError,
    ObjectStoreError,
    StoreConfigError,
    UnavailableError,
)
from objstore.fs import FilesystemStore
from objstore.s3 import S3Store


def open_store(settings: ObjectStoreSettings, *, check: bool = True) -> ObjectStore:
    """The store the settings describe, checked at start.

    Args:
        settings: The ``objstore`` section.
        check: Verify credentials, bucket and endpoint now (raises on a bad setting).

    Returns:
        A :class:`FilesystemStore` or an :class:`S3Store`.

    Raises:
        StoreConfigError: Naming the setting at fault.
    """
    # Errors name the key as the services' settings write it: ``store.s3.bucket``.
    store: ObjectStore = (
        S3Store(settings.s3) if settings.backend == "s3" else FilesystemStore(settings.root))
    if check:
        store.check()
    return store


__all__ = [
    "EndpointUnreachableError",
    "FilesystemStore",
    "IntegrityError",
    "InvalidKeyError",
    "NotFoundError",
    "ObjectInfo",
    "ObjectStore",
    "ObjectStoreError",
    "S3Store",
    "StoreConfigError",
    "UnavailableError",
    "open_store",
    "validate_key",
]
