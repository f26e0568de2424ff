"""The exceptions of the object store: one root, one subclass per thing a caller does."""

from __future__ import annotations


class ObjectStoreError(Exception):
    """Root of every error raised by :mod:`objstore`."""


class NotFoundError(ObjectStoreError):
    """The object (or, at start, the bucket) does not exist."""

    def __init__(self, key: str) -> None:
        super().__init__(f"object not found: {key}")
        self.key = key


class UnavailableError(ObjectStoreError):
    """The store cannot be reached or answered with a server error: retry later."""


class IntegrityError(ObjectStoreError):
    """Bytes do not match their SHA-256 (upload rejected by the store, or read back wrong)."""


class StoreConfigError(ObjectStoreError):
    """The store is not usable as configured; ``setting`` names the setting to fix."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(f"{setting}: {message}")
        self.setting = setting


class EndpointUnreachableError(StoreConfigError, UnavailableError):
    """At start, nothing answers at the configured endpoint."""


class InvalidKeyError(ObjectStoreError, ValueError):
    """An object key that is not allowed (empty, too long, ``..``, absolute, control chars)."""
