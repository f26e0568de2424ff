"""The filesystem backend: one file per object under a root folder."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import structlog

from objstore.base import (
    CHUNK,
    ObjectInfo,
    check_sha256_hex,
    hash_stream,
    validate_key,
    validate_prefix,
)
from objstore.errors import (
    IntegrityError,
    NotFoundError,
    StoreConfigError,
    UnavailableError,
)

log = structlog.get_logger("objstore.fs")

FILE_MODE = 0o640
DIR_MODE = 0o750


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FilesystemStore:
    """Objects as files under ``root``: ``<root>/<key>``.

    Writes are atomic (``.<name>.<random>.tmp`` in the final folder, fsync, re-read and
    checked against the SHA-256, rename, folder fsync), files are 0640 and folders 0750.
    Keys are validated (:func:`objstore.base.validate_key`) and the resolved path must
    stay under the root, so no key reaches outside it.
    """

    def __init__(self, root: Path) -> None:
        """Use ``root`` (created 0750 when missing).

        Args:
            root: The folder that holds the objects.
        """
        self.root = Path(root).absolute()

    def __repr__(self) -> str:
        return f"FilesystemStore(root={str(self.root)!r})"

    def check(self) -> None:
        """Create the root when missing and check it is a writable folder.

        Raises:
            StoreConfigError: Naming ``store.root``.
        """
        try:
            self.root.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        except OSError as e:
            raise StoreConfigError("store.root", f"cannot create {self.root}: {e}") from e
        if not self.root.is_dir() or not os.access(self.root, os.W_OK | os.X_OK):
            raise StoreConfigError("store.root", f"{self.root} is not a writable folder")

    def _path(self, key: str) -> Path:
        validate_key(key)
        path = self.root / key
        # validate_key already rules out '..'; this also refuses symlinked folders.
        real_root = os.path.realpath(self.root)
        if os.path.commonpath([real_root, os.path.realpath(path)]) != real_root:
            raise StoreConfigError("store.root", f"key {key!r} resolves outside the root")
        return path

    def _mkdirs(self, folder: Path) -> None:
        missing: list[Path] = []
        p = folder
        while not p.exists():
            missing.append(p)
            if p in (self.root, p.parent):
                break
            p = p.parent
        for d in reversed(missing):
            with contextlib.suppress(FileExistsError):
                d.mkdir(mode=DIR_MODE)
            os.chmod(d, DIR_MODE)
            _fsync_dir(d.parent)

    def put_bytes(self, key: str, data: bytes, *, sha256: str | None = None,
                  content_type: str = "application/octet-stream") -> ObjectInfo:
        """Store ``data`` atomically (see :class:`FilesystemStore`).

        Returns:
            The stored object's info.

        Raises:
            IntegrityError: If ``data`` does not match ``sha256``.
            UnavailableError: If the disk fails.
        """
        digest = hashlib.sha256(data).hexdigest()
        if sha256 is not None and check_sha256_hex(sha256) != digest:
            raise IntegrityError(f"{key}: data does not match the given sha256")
        return self.put_stream(key, io.BytesIO(data), sha256=digest, size=len(data))

    def put_stream(self, key: str, stream: BinaryIO, *, sha256: str, size: int,
                   content_type: str = "application/octet-stream") -> ObjectInfo:
        """Copy ``size`` bytes of ``stream`` into place atomically, verified.

        Returns:
            The stored object's info.

        Raises:
            IntegrityError: If the bytes written (read back) do not match ``sha256``/``size``.
            UnavailableError: If the disk fails.
        """
        check_sha256_hex(sha256)
        path = self._path(key)
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            self._mkdirs(path.parent)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
            try:
                with os.fdopen(fd, "wb") as out:
                    remaining = size
                    while remaining > 0:
                        chunk = stream.read(min(CHUNK, remaining))
                        if not chunk:
                            break
                        out.write(chunk)
                        remaining -= len(chunk)
                    out.flush()
                    os.fsync(out.fileno())
                os.chmod(tmp, FILE_MODE)
                with tmp.open("rb") as back:
                    got, n = hash_stream(back)
                if got != sha256 or n != size:
                    raise IntegrityError(
                        f"{key}: read back {n} bytes sha256 {got}, expected {size} bytes {sha256}")
                os.rename(tmp, path)
                _fsync_dir(path.parent)
            except BaseException:
                with contextlib.suppress(OSError):
                    tmp.unlink()
                raise
        except OSError as e:
            raise UnavailableError(f"{key}: {e}") from e
        return ObjectInfo(key=key, size=size, sha256=sha256)

    def get_bytes(self, key: str, *, sha256: str | None = None) -> bytes:
        """The whole file.

        Raises:
            NotFoundError: If it does not exist.
            IntegrityError: If it does not match ``sha256``.
        """
        path = self._path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError as e:
            raise NotFoundError(key) from e
        except IsADirectoryError as e:
            raise NotFoundError(key) from e
        except OSError as e:
            raise UnavailableError(f"{key}: {e}") from e
        if sha256 is not None and hashlib.sha256(data).hexdigest() != check_sha256_hex(sha256):
            raise IntegrityError(f"{key}: stored bytes do not match sha256 {sha256}")
        return data

    def open(self, key: str) -> BinaryIO:
        """The file opened for reading.

        Raises:
            NotFoundError: If it does not exist.
        """
        path = self._path(key)
        try:
            return path.open("rb")
        except (FileNotFoundError, IsADirectoryError) as e:
            raise NotFoundError(key) from e
        except OSError as e:
            raise UnavailableError(f"{key}: {e}") from e

    def get_range(self, key: str, start: int, length: int) -> bytes:
        """Bytes ``[start, start+length)``.

        Raises:
            ValueError: If ``start`` < 0 or ``length`` < 1.
            NotFoundError: If it does not exist.
        """
        if start < 0 or length < 1:
            raise ValueError("start must be >= 0 and length >= 1")
        with self.open(key) as f:
            f.seek(start)
            return f.read(length)

    def head(self, key: str) -> ObjectInfo | None:
        """Size and mtime of the file (``sha256`` is not computed), or ``None``."""
        path = self._path(key)
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise UnavailableError(f"{key}: {e}") from e
        if not path.is_file():
            return None
        return ObjectInfo(key=key, size=st.st_size, modified_ms=st.st_mtime_ns // 1_000_000)

    def exists(self, key: str) -> bool:
        """Whether the file exists."""
        return self.head(key) is not None

    def delete(self, key: str) -> None:
        """Remove the file (missing is fine) and fsync its folder."""
        path = self._path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        except OSError as e:
            raise UnavailableError(f"{key}: {e}") from e
        with contextlib.suppress(OSError):
            _fsync_dir(path.parent)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Files whose key starts with ``prefix``, in key order (temporary names skipped)."""
        validate_prefix(prefix)
        base = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
        if not base.is_dir():
            return
        found: list[tuple[str, os.stat_result]] = []
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                if name.startswith("."):
                    continue
                full = Path(dirpath) / name
                key = full.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    with contextlib.suppress(FileNotFoundError):
                        found.append((key, full.stat()))
        for key, st in sorted(found):
            yield ObjectInfo(key=key, size=st.st_size, modified_ms=st.st_mtime_ns // 1_000_000)

    def url(self, key: str, *, expires_s: int | None = None) -> str:
        """The absolute path of the file (no expiry on a local path)."""
        return str(self._path(key))

    def close(self) -> None:
        """Nothing to release."""
