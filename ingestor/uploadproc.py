"""Pack building and upload in a child process, away from the network thread's GIL.

With ``store.backend = "s3"`` the finisher thread turns each sealed batch folder into a
pack and PUTs it (docs/storage.md). On a thread of the ingestor process that work
(reading ~300 frame files, the tar headers, the SHA-256, botocore's request building
and the socket writes) trades the GIL with the network thread, whose every TLS read
then waits for it. Here it runs on its own interpreter: the finisher sends
``(batch folder, key)`` down a pipe and waits for ``(sha256, size)``; the catalog row,
the release of the local folder and the announce stay on the finisher, in the same
order as before (the frames are released only after this answer and ``mark_uploaded``).

The child is started as ``python -m ingestor.uploadproc`` with one end of a socket pair
(like ``ingestor/diskproc.py``, not through ``multiprocessing``'s spawn), receives the
store's settings (credentials included) on the pipe, never in its argv or environment,
says it is ready (the service waits for that before connecting, so the imports do not
compete with the first frames), then lowers its CPU priority by ``ingest.upload_nice``:
frames waiting for a PUBACK go first, uploads take the CPU that is left (the local disk
is the buffer). One request is in flight at a time. It ignores SIGINT/SIGTERM and exits
when the pipe closes.

A child that dies (killed, out of memory, a bug) is seen as end-of-file on the pipe:
the upload fails with :class:`~objstore.UnavailableError`, counted like any failed
upload, and the next attempt starts a new child
(``camstack_ingestor_upload_process_restarts_total``). Uploads are idempotent (same key,
same bytes), so a batch whose child died after its PUT is simply uploaded again.
"""

from __future__ import annotations

import contextlib
import errno
import multiprocessing.connection as mpc
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, cast

import structlog

from config.logging import configure_logging
from config.settings import ObjectStoreSettings
from ingestor.childproc import spawn
from objstore import (
    FilesystemStore,
    IntegrityError,
    ObjectStore,
    ObjectStoreError,
    S3Store,
    UnavailableError,
    open_store,
)
from objstore.batchpack import write_batch_pack

log = structlog.get_logger("ingestor.uploadproc")

SPOOL_MEMORY_BYTES = 64 * 1024 * 1024
"""A pack up to this size is built in memory; a larger one spills to a file."""

READY_TIMEOUT_S = 60.0
"""A child that has not opened its store by then is killed (the upload fails, retried)."""


class UploadInterruptedError(Exception):
    """The service stops while the child uploads (the batch stays local)."""


def upload_pack(store: ObjectStore, folder: Path, key: str, spool_dir: Path) -> tuple[str, int]:
    """Build the pack of the sealed batch in ``folder`` and PUT it under ``key``.

    The pack is built once, hashed while it is built, and sent from memory (from an
    unnamed file in ``spool_dir`` past :data:`SPOOL_MEMORY_BYTES`): no second read of a
    temp file, no second SHA-256 on this side.

    Returns:
        (pack SHA-256 hex, pack bytes).

    Raises:
        OSError: A frame or the manifest cannot be read.
        ObjectStoreError: The store refused or is unreachable (``PackError`` for an
            unusable manifest).
    """
    spool_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES, mode="w+b",
                                       dir=str(spool_dir), prefix=".pack-") as f:
        out = cast(BinaryIO, f)  # an IO[bytes]; typeshed does not call it a BinaryIO
        index = write_batch_pack(folder, out)
        out.seek(0)
        store.put_stream(key, out, sha256=index.sha256, size=index.size,
                         content_type="application/x-tar")
    return index.sha256, index.size


def store_spec(store: ObjectStore) -> dict[str, Any] | None:
    """What the child needs to open the same store (secrets included), or ``None``."""
    if isinstance(store, S3Store):
        s3 = store.settings.model_dump(mode="json")
        s3["secret_access_key"] = store.settings.secret_access_key.get_secret_value()
        return {"backend": "s3", "s3": s3}
    if isinstance(store, FilesystemStore):
        return {"backend": "filesystem", "root": str(store.root)}
    return None


def _child_main(conn: mpc.Connection) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        spec, spool, nice = conn.recv()
    except (EOFError, OSError):
        return
    # The parent logs each outcome; the child's own lines would only repeat them.
    configure_logging("warning", service="ingestor-upload")
    store = open_store(ObjectStoreSettings.model_validate(spec), check=False)
    spool_dir = Path(spool)
    # Imports and the client are ready (at full priority: the service waits for this
    # before it connects); from now on uploads yield the CPU to the ingestor.
    if nice:
        with contextlib.suppress(OSError):
            os.nice(nice)
    try:
        conn.send(("ready",))
    except OSError:
        return
    while True:
        try:
            folder, key = conn.recv()
        except (EOFError, OSError):
            return
        reply: tuple[Any, ...]
        try:
            sha, size = upload_pack(store, Path(folder), key, spool_dir)
            reply = ("ok", sha, size)
        except OSError as exc:
            reply = ("os", exc.errno, exc.strerror or str(exc), exc.filename)
        except ObjectStoreError as exc:
            reply = ("store", type(exc).__name__, str(exc))
        except Exception as exc:  # a bug: report it and keep serving
            reply = ("store", "ObjectStoreError", f"upload process: {exc!r}")
        try:
            conn.send(reply)
        except OSError:
            return


def _error(reply: tuple[Any, ...]) -> Exception:
    if reply[0] == "os":
        _, code, message, filename = reply
        return OSError(code, message, filename) if filename else OSError(code, message)
    _, name, message = reply
    if name in ("UnavailableError", "EndpointUnreachableError"):
        return UnavailableError(message)
    if name in ("IntegrityError", "PackError"):
        return IntegrityError(message)
    return ObjectStoreError(message if name == "ObjectStoreError" else f"{name}: {message}")


class UploadProcess:
    """The child process and its pipe (see the module docstring).

    Args:
        spec: :func:`store_spec` of the store to upload to.
        spool_dir: Where a pack too large for memory spills (``state/ingestor/uploads``).
        nice: Added to the child's nice value (0: same priority as the ingestor).
        on_restart: Called when a child is started after an earlier one was lost.
    """

    def __init__(self, spec: dict[str, Any], spool_dir: Path, *, nice: int = 0,
                 on_restart: Callable[[], None] | None = None) -> None:
        self._spec = spec
        self._spool_dir = spool_dir
        self._nice = nice
        self._on_restart = on_restart
        self._conn: mpc.Connection | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._lost_once = False

    @property
    def pid(self) -> int | None:
        """The running child's pid (tests)."""
        return self._proc.pid if self._proc is not None else None

    def _start(self) -> mpc.Connection:
        conn, proc = spawn("ingestor.uploadproc")
        try:
            conn.send((self._spec, str(self._spool_dir), self._nice))
            if not conn.poll(READY_TIMEOUT_S) or conn.recv() != ("ready",):
                raise OSError(errno.ETIMEDOUT, "upload process not ready")
        except (OSError, EOFError) as exc:
            conn.close()
            proc.kill()
            proc.wait()
            raise OSError(errno.EIO, f"upload process did not start: {exc}") from exc
        self._conn, self._proc = conn, proc
        log.info("upload_process_started", pid=proc.pid, restart=self._lost_once)
        if self._lost_once and self._on_restart is not None:
            self._on_restart()
        return conn

    def start(self) -> None:
        """Start the child and wait until it is ready (a failure waits for the first upload).

        The service calls this before it connects, so that the child's imports and client
        set-up do not compete with the first frames for the CPU.
        """
        if self._conn is None:
            try:
                self._start()
            except OSError as exc:
                log.warning("upload_process_start_failed", error=str(exc))

    def upload(self, folder: Path, key: str, stop: threading.Event) -> tuple[str, int]:
        """Build and upload the pack of ``folder`` in the child; wait for its answer.

        Returns:
            (pack SHA-256 hex, pack bytes), once the store has confirmed the PUT.

        Raises:
            UploadInterruptedError: ``stop`` was set meanwhile (the child is killed; the
                PUT, if it happened, is repeated at the next start).
            UnavailableError: The child died (a new one is started next time).
            OSError, ObjectStoreError: The child's error, as raised there.
        """
        try:
            conn = self._conn or self._start()
            conn.send((str(folder), key))
            while not conn.poll(0.25):
                if stop.is_set():
                    self.close(kill=True)
                    raise UploadInterruptedError
            reply = conn.recv()
        except (EOFError, OSError, ValueError) as exc:
            code = self._lost()
            raise UnavailableError(
                f"upload process gone (exit {code}): {type(exc).__name__}") from None
        if reply[0] == "ok":
            return str(reply[1]), int(reply[2])
        raise _error(reply)

    def _lost(self) -> int | None:
        code = None
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.close()
        if self._proc is not None:
            try:
                code = self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                code = self._proc.wait(timeout=5)
            log.error("upload_process_lost", pid=self._proc.pid, exit_code=code)
            self._lost_once = True
        self._conn, self._proc = None, None
        return code

    def close(self, *, kill: bool = False) -> None:
        """Close the pipe (the child exits once idle); ``kill``: SIGKILL it at once."""
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.close()
        if self._proc is not None:
            if kill:
                self._proc.kill()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=5)
        self._conn, self._proc = None, None


if __name__ == "__main__":
    _child_main(mpc.Connection(int(sys.argv[1])))
