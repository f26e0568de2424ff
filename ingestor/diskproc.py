"""A group's file writes in a child process, away from the network thread's GIL.

Measured (docs/performance.md): with the writes on a thread of the ingestor process,
every ``open``/``write``/``setxattr``/``fsync``/``rename`` released the GIL and then
waited to get it back from the network thread, and the network thread waited in turn
after each TLS read; a frame's file calls cost several such waits. In a child process
the file system calls of a whole group run on their own interpreter: the writer thread
sends the group (paths, bytes, metadata) down a pipe and later reads one reply.

The child runs :func:`ingestor.durable.write_group` for each group: every file written
under its dot-temp name with its xattr and fsynced (concurrently: the journal merges
them), then renamed into place, then every touched folder fsynced; on any failure it
removes the group's temp files and reports the ``OSError``. It ignores SIGINT/SIGTERM
(the parent drains first) and exits when the parent closes the pipe or dies. It is
started as ``python -m ingestor.diskproc`` with one end of a socket pair, not through
``multiprocessing``'s spawn, which would re-import the service's modules in the child
and add a resource-tracker process (measured: 27 MiB of RSS for the two).
"""

from __future__ import annotations

import contextlib
import errno
import multiprocessing.connection as mpc
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ingestor.childproc import spawn
from ingestor.durable import FileJob, write_group


def _child_main(conn: mpc.Connection, sync_threads: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    pool = ThreadPoolExecutor(max_workers=sync_threads) if sync_threads > 1 else None
    while True:
        try:
            jobs = conn.recv()
        except (EOFError, OSError):
            return
        reply: tuple[Any, ...] | None = None
        try:
            write_group(jobs, pool)
        except OSError as exc:
            reply = (exc.errno, exc.strerror, exc.filename)
        except Exception as exc:  # a bug: report it and keep serving
            reply = (errno.EIO, f"disk process: {exc!r}", None)
        try:
            conn.send(reply)
        except OSError:
            return


class DiskProcess:
    """The child process and its pipe; groups are answered in the order sent.

    Args:
        sync_threads: fsync threads inside the child.
    """

    def __init__(self, sync_threads: int = 8) -> None:
        self._sync_threads = sync_threads
        self._conn: mpc.Connection | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._outstanding = 0

    def _start(self) -> mpc.Connection:
        conn, proc = spawn("ingestor.diskproc", str(self._sync_threads))
        self._conn, self._proc, self._outstanding = conn, proc, 0
        return conn

    def start(self) -> None:
        """Start the child now (otherwise at the first group)."""
        if self._conn is None:
            self._start()

    def submit(self, jobs: list[FileJob]) -> None:
        """Send a group; :meth:`wait` returns its outcome (in submission order).

        Raises:
            OSError: The child is gone (it is started again at the next group).
        """
        conn = self._conn or self._start()
        try:
            conn.send(jobs)
        except (OSError, ValueError) as exc:
            self._lost()
            raise OSError(errno.EIO, f"disk process gone: {exc}") from exc
        self._outstanding += 1

    def wait(self) -> None:
        """The outcome of the oldest group not yet waited for.

        Raises:
            OSError: The group was not stored (its temp files are gone).
        """
        conn = self._conn
        if conn is None or self._outstanding <= 0:
            raise OSError(errno.EIO, "disk process gone")
        try:
            reply = conn.recv()
        except (EOFError, OSError) as exc:
            self._lost()
            raise OSError(errno.EIO, f"disk process gone: {exc}") from exc
        self._outstanding -= 1
        if reply is not None:
            code, message, filename = reply
            raise OSError(code, message, filename) if filename else OSError(code, message)

    def _lost(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.close()
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=1)
        self._conn, self._proc, self._outstanding = None, None, 0

    def close(self) -> None:
        """Close the pipe; the child exits once it has answered what it has."""
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.close()
        if self._proc is not None:
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=5)
        self._conn, self._proc, self._outstanding = None, None, 0


if __name__ == "__main__":
    _child_main(mpc.Connection(int(sys.argv[1])), int(sys.argv[2]))
