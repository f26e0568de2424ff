"""An asyncio loop in a daemon thread, for the threaded services that talk to NATS.

nats-py is asyncio-only while the ingestor and the encoder are threaded: a publisher
(jobqueue/queue.py) and the partition leases (ingestor/leases.py) each run their own
loop here and call into it from any thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from nats.aio.client import Client as NatsClient

from jobqueue.errors import JobQueueError

T = TypeVar("T")


class LoopThread:
    """One event loop running forever in a daemon thread, until :meth:`stop`."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the loop; does not wait."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float, what: str = "") -> T:
        """Run ``coro`` on the loop and wait for its result.

        Raises:
            JobQueueError: No result within ``timeout`` (the coroutine is cancelled).
        """
        fut = self.submit(coro)
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise JobQueueError(f"no answer from NATS within {timeout}s{what}") from None

    def stop(self, nc: NatsClient | None = None) -> None:
        """Close ``nc`` (if open), stop the loop and its thread, close the loop."""
        if nc is not None and not nc.is_closed:
            with contextlib.suppress(JobQueueError):
                self.call(nc.close(), 10)
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)
        if not self.loop.is_running():
            self.loop.close()
