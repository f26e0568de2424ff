"""Durable file writes: the one place that writes, fsyncs and renames (stdlib only).

Every file appears atomically: written under a dot-name in its final folder (with its
``user.camstack`` xattr), fsynced, renamed into place, and the folder fsynced. The disk
process (:mod:`ingestor.diskproc`) writes frame groups with :func:`write_group`; the
store writes manifests and counters with :func:`write_durable`. Files are ``0640``.
"""

from __future__ import annotations

import contextlib
import errno
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

XATTR = "user.camstack"
"""Extended attribute carrying what a frame's name cannot (capture_ms, clock flag, CRC)."""
TMP_PREFIX = "."
FILE_MODE = 0o640

FileJob = tuple[str, str, bytes, bytes | None]
"""(temp path, final path, content, ``user.camstack`` value or None)."""


def fsync_dir(path: str | Path) -> None:
    """Make a folder's entries (creates, renames, deletes) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_synced(tmp: str | Path, data: bytes, xattr: bytes | None) -> bool:
    """Write ``tmp`` (and its xattr) and fsync it; remove it again on failure.

    Returns:
        Whether the xattr was stored (False where the file system has none).
    """
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
    stored = False
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        if xattr is not None:
            try:
                os.setxattr(fd, XATTR, xattr)
                stored = True
            except OSError as exc:
                if exc.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
                    raise
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.close(fd)
    return stored


def write_durable(path: Path, data: bytes, *, xattr: bytes | None = None) -> bool:
    """Write ``path`` atomically: dot-temp, fsync, rename, folder fsync.

    Args:
        path: Final path; its folder must exist.
        data: Content.
        xattr: Value of ``user.camstack`` to attach, when given.

    Returns:
        Whether the xattr was stored (False where unsupported).
    """
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.tmp")
    stored = write_synced(tmp, data, xattr)
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return stored


def _job(job: FileJob) -> None:
    write_synced(job[0], job[2], job[3])


def write_group(jobs: list[FileJob], pool: ThreadPoolExecutor | None) -> None:
    """Write a group durably: temps written and fsynced, renamed, folders fsynced.

    The fsyncs run at the same time on ``pool``: the file system's journal merges them
    into about one commit, so a group costs about one sync, not one per file.

    Args:
        jobs: The files.
        pool: Threads for the concurrent fsyncs (None: one after the other).

    Raises:
        OSError: The first failure; every temp file of the group is removed.
    """
    try:
        if pool is None or len(jobs) <= 1:
            for job in jobs:
                _job(job)
        else:
            for failure in [f.exception() for f in [pool.submit(_job, j) for j in jobs]]:
                if failure is not None:
                    raise failure
        for tmp, final, _, _ in jobs:
            os.replace(tmp, final)
        folders = sorted({os.path.dirname(final) for _, final, _, _ in jobs})
        if pool is None or len(folders) <= 1:
            for d in folders:
                fsync_dir(d)
        else:
            for failure in [f.exception() for f in [pool.submit(fsync_dir, d)
                                                    for d in folders]]:
                if failure is not None:
                    raise failure
    except BaseException:
        for tmp, _, _, _ in jobs:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise
