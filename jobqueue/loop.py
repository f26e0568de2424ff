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
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import nats.errors
import nats.js.errors
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

    def call_until(self, make: Callable[[], Coroutine[Any, Any, T]], timeout: float,
                   wait_s: float, *, what: str,
                   on_retry: Callable[[BaseException, float], None]) -> T:
        """:meth:`call` of ``make()``, tried again while NATS does not answer.

        A cluster just started may take many seconds to elect a stream's leader (18 s
        seen under load), so a service's first requests wait for it, with backoff
        (0.5 s doubling to 5 s), for up to ``wait_s``. Only NATS errors and timeouts are
        retried: any other exception of ``make()`` (a refusal) ends it at once.

        Args:
            make: Makes the coroutine of one attempt.
            timeout: Longest wait of one attempt.
            wait_s: Give up after this long.
            what: Names the step in the final error.
            on_retry: Called with the error and the pause before each new attempt (log
                it, drop the failed attempt's connection).

        Raises:
            JobQueueError: Still no answer after ``wait_s``.
        """
        deadline = time.monotonic() + wait_s
        delay = 0.5
        while True:
            try:
                return self.call(make(), timeout)
            except (JobQueueError, nats.errors.Error, nats.js.errors.Error) as exc:
                if time.monotonic() + delay >= deadline:
                    raise JobQueueError(f"{what}: {str(exc) or type(exc).__name__} (tried "
                                        f"for {wait_s:g}s)") from None
                on_retry(exc, delay)
                time.sleep(delay)
                delay = min(2 * delay, 5.0)

    def stop_connection(self, nc: NatsClient | None) -> None:
        """Close ``nc`` if open; a connection that fails to close is left to go."""
        if nc is not None and not nc.is_closed:
            with contextlib.suppress(JobQueueError, nats.errors.Error):
                self.call(nc.close(), 10)

    def stop(self, nc: NatsClient | None = None) -> None:
        """Close ``nc`` (if open), stop the loop and its thread, close the loop."""
        self.stop_connection(nc)
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)
        if not self.loop.is_running():
            self.loop.close()
