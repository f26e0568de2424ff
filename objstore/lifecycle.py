"""The pack expiry backstop: a lifecycle rule on S3, a sweep on the filesystem."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import structlog

from objstore.base import ObjectStore
from objstore.fs import FilesystemStore
from objstore.s3 import S3Store

log = structlog.get_logger("objstore.lifecycle")


@dataclass(frozen=True, slots=True)
class LifecycleResult:
    """What :func:`apply_pack_lifecycle` did."""

    backend: str
    prefix: str
    days: int
    rules: list[dict[str, Any]] = field(default_factory=list)
    """S3: the bucket's rules as read back after the PUT."""
    deleted: list[str] = field(default_factory=list)
    """Filesystem: the keys the sweep removed."""


def apply_pack_lifecycle(store: ObjectStore, prefix: str, days: int, *,
                         now_ms: int | None = None) -> LifecycleResult:
    """Make objects under ``prefix`` expire after ``days``.

    On S3 this puts a bucket lifecycle rule (kept by the store, applied by it from then
    on). A filesystem has no lifecycle, so there it is a one-shot sweep deleting the
    objects under ``prefix`` older than ``days``; run it periodically.

    Args:
        store: The store.
        prefix: Key prefix (``objstore.pack_prefix``).
        days: Age after which an object expires.
        now_ms: Current time (tests).

    Returns:
        What was done.

    Raises:
        TypeError: For a store type this function does not know.
    """
    if isinstance(store, S3Store):
        rules = store.apply_lifecycle(prefix, days)
        return LifecycleResult("s3", prefix, days, rules=rules)
    if isinstance(store, FilesystemStore):
        now = now_ms if now_ms is not None else int(time.time() * 1000)
        cutoff = now - days * 86_400_000
        deleted = []
        for info in list(store.list(prefix)):
            if info.modified_ms is not None and info.modified_ms < cutoff:
                store.delete(info.key)
                deleted.append(info.key)
        log.info("objstore_sweep_done", prefix=prefix, days=days, deleted=len(deleted))
        return LifecycleResult("filesystem", prefix, days, deleted=deleted)
    raise TypeError(f"no lifecycle for {type(store).__name__}")
