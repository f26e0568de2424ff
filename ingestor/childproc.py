"""Start one of the ingestor's child processes (``python -m ingestor.<x>``) on a socket.

The disk writer (ingestor/diskproc.py) and the uploader (ingestor/uploadproc.py) run in
children of their own, so their work never waits on the parent's GIL; both talk to the
parent over one end of a socket pair, passed as a file descriptor.
"""

from __future__ import annotations

import multiprocessing.connection as mpc
import os
import socket
import subprocess
import sys
from pathlib import Path


def spawn(module: str, *args: str) -> tuple[mpc.Connection, subprocess.Popen[bytes]]:
    """``python -m <module> <fd> <args...>`` with the other end of a socket pair.

    Returns:
        The parent's connection and the child.
    """
    mine, theirs = socket.socketpair()
    # The package's parent folder first, so the child imports this very code (not
    # another checkout an editable install points at).
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])}
    try:
        proc = subprocess.Popen([sys.executable, "-m", module, str(theirs.fileno()), *args],
                                pass_fds=[theirs.fileno()], env=env, stdin=subprocess.DEVNULL)
    finally:
        theirs.close()
    return mpc.Connection(mine.detach()), proc
