"""The JetStream encode worker: pull a job, run the handler, ack / nak / term.

Every worker of a pool binds to the same durable pull consumer and pulls one job at a
time. For each message:

1. a message that is not a valid :class:`EncodeJob` is **terminated** (never
   redelivered), counted (``stats.malformed``) and logged; the loop goes on;
2. a job delivered more than ``max_deliver`` times is passed to ``quarantine(job,
   deliveries)`` and terminated, without running the handler again (if ``quarantine``
   raises, the job is nak'ed and the quarantine is tried at its next delivery);
3. otherwise ``handle(job)`` runs in a worker thread while the event loop sends an
   in-progress heartbeat (``+WPI``) every ``heartbeat_s``, so a long encode is not
   redelivered after ``ack_wait_s``. Its :class:`Outcome`: ``OK`` → ack (waiting for
   the server's confirmation); ``RETRY`` (or an exception) → nak with
   ``retry_delay_s``; ``POISON`` → ``quarantine(job, deliveries)`` then term.

Delivery is at least once: a worker killed mid-job, an ack lost while NATS restarts, or
a heartbeat that arrives late all lead to a second delivery, possibly while the first
one still runs elsewhere. **The handler must therefore be idempotent per batch**: two
runs of the same job, one after the other or at the same time, must leave one video,
one catalog row and no lost frames, and the later run must return ``OK`` when it finds
the batch already encoded (docs/scaling.md).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from config.settings import JobQueueSettings
from jobqueue.errors import MalformedJobError
from jobqueue.job import DEFAULT_PACK_PREFIX, EncodeJob, Outcome
from jobqueue.queue import connect, ensure_stream

log = logging.getLogger("jobqueue.worker")

__all__ = ["Handler", "JobWorker", "Outcome", "Quarantine", "WorkerStats",
           "run_worker_blocking"]


Handler = Callable[[EncodeJob], Outcome]
Quarantine = Callable[[EncodeJob, int], None]


@dataclass
class WorkerStats:
    """Counters of one worker (read them from any thread)."""

    ok: int = 0
    retried: int = 0
    poison: int = 0
    quarantined: int = 0
    malformed: int = 0
    errors: int = 0
    heartbeats: int = 0
    malformed_reasons: dict[str, int] = field(default_factory=dict)


class JobWorker:
    """One worker bound to the shared consumer. Run :meth:`run` in an asyncio loop."""

    def __init__(self, settings: JobQueueSettings, handle: Handler, quarantine: Quarantine,
                 *, name: str = "camstack-worker", pack_prefix: str = DEFAULT_PACK_PREFIX,
                 heartbeats: bool = True,
                 on_event: Callable[[str, str], None] | None = None) -> None:
        """Set up (nothing connects before :meth:`run`).

        Args:
            settings: The ``[jobqueue]`` section.
            handle: Runs one job (in a thread); idempotent per batch.
            quarantine: Records a job that will never succeed (catalog state, alert).
            name: NATS connection name.
            pack_prefix: The store's pack prefix (``objstore.pack_prefix``).
            heartbeats: Send in-progress heartbeats. Off only in tests that need a
                second delivery while the first still runs.
            on_event: Called as ``on_event(kind, detail)`` for ``ok``, ``retry``,
                ``poison``, ``quarantined``, ``malformed`` and ``error`` (metrics hook).
        """
        self.settings = settings
        self.handle = handle
        self.quarantine = quarantine
        self.name = name
        self.pack_prefix = pack_prefix
        self.heartbeats = heartbeats
        self.on_event = on_event
        self.stats = WorkerStats()
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=name)
        self.ready = asyncio.Event()
        """Set once the consumer is bound (tests wait on it)."""

    def _event(self, kind: str, detail: str = "") -> None:
        if self.on_event is not None:
            try:
                self.on_event(kind, detail)
            except Exception:
                log.exception("on_event hook failed")

    async def run(self, stop: asyncio.Event) -> None:
        """Pull and process jobs until ``stop`` is set (the current job is finished)."""
        nc: NatsClient = await connect(self.settings, name=self.name)
        try:
            js = nc.jetstream(timeout=self.settings.publish_timeout_s)
            await ensure_stream(js, self.settings)
            sub = await js.pull_subscribe_bind(self.settings.consumer, self.settings.stream)
            self.ready.set()
            while not stop.is_set():
                try:
                    msgs = await sub.fetch(1, timeout=self.settings.fetch_timeout_s)
                except nats.errors.TimeoutError:
                    continue
                except nats.errors.Error as e:  # reconnecting, closed, no responders...
                    log.warning("fetch failed (%s: %s); retrying", type(e).__name__, e)
                    await _sleep_or_stop(stop, 0.5)
                    continue
                for msg in msgs:
                    await self.process(msg)
        finally:
            self._executor.shutdown(wait=False)
            if not nc.is_closed:
                await nc.close()

    async def process(self, msg: Msg) -> None:
        """Handle one delivered message (never raises for a bad job)."""
        try:
            deliveries = int(msg.metadata.num_delivered)
        except Exception:
            deliveries = 1
        try:
            job = EncodeJob.parse(msg.data, prefix=self.pack_prefix,
                                  max_bytes=self.settings.max_job_bytes)
        except MalformedJobError as e:
            self.stats.malformed += 1
            self.stats.malformed_reasons[e.reason] = \
                self.stats.malformed_reasons.get(e.reason, 0) + 1
            log.warning("malformed job on %s rejected: %s", msg.subject[:120], e)
            self._event("malformed", e.reason)
            await _settle(msg.term)
            return
        if deliveries > self.settings.max_deliver:
            await self._quarantine(msg, job, deliveries, "delivered too often")
            return
        outcome = await self._run_handler(msg, job)
        if outcome is Outcome.OK:
            if await _settle(msg.ack_sync, timeout=self.settings.publish_timeout_s):
                self.stats.ok += 1
                self._event("ok", job.msg_id)
            else:
                log.warning("ack of %s not confirmed; it may be delivered again", job.msg_id)
        elif outcome is Outcome.POISON:
            self.stats.poison += 1
            await self._quarantine(msg, job, deliveries, "poison")
        else:
            self.stats.retried += 1
            self._event("retry", job.msg_id)
            await _settle(msg.nak, delay=self.settings.retry_delay_s or None)

    async def _run_handler(self, msg: Msg, job: EncodeJob) -> Outcome:
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self._executor, self.handle, job)
        while True:
            done, _ = await asyncio.wait({fut}, timeout=self.settings.heartbeat_s)
            if done:
                break
            if self.heartbeats and await _settle(msg.in_progress):
                self.stats.heartbeats += 1
        try:
            outcome = fut.result()
        except Exception as e:
            self.stats.errors += 1
            log.exception("handler failed on %s", job.msg_id)
            self._event("error", f"{type(e).__name__}")
            return Outcome.RETRY
        if not isinstance(outcome, Outcome):
            log.error("handler returned %r for %s; treated as retry", outcome, job.msg_id)
            return Outcome.RETRY
        return outcome

    async def _quarantine(self, msg: Msg, job: EncodeJob, deliveries: int, why: str) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(
                self._executor, self.quarantine, job, deliveries)
        except Exception:
            log.exception("quarantine of %s failed; it comes again", job.msg_id)
            await _settle(msg.nak, delay=self.settings.retry_delay_s or None)
            return
        self.stats.quarantined += 1
        log.warning("job %s quarantined after %d deliveries (%s)", job.msg_id, deliveries, why)
        self._event("quarantined", job.msg_id)
        await _settle(msg.term)


async def _settle(fn: Callable[..., Any], **kwargs: Any) -> bool:
    """Send an ack/nak/term/progress; a failure is logged (the job comes again)."""
    try:
        await fn(**kwargs)
    except Exception as e:
        log.warning("%s failed: %s: %s", getattr(fn, "__name__", "ack"), type(e).__name__, e)
        return False
    return True


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


def run_worker_blocking(settings: JobQueueSettings, handle: Handler, quarantine: Quarantine,
                        stop: threading.Event, **kwargs: Any) -> WorkerStats:
    """Run one :class:`JobWorker` in this thread until ``stop`` is set.

    For threaded services and ``python -m`` entry points: the asyncio loop is private.

    Returns:
        The worker's counters.
    """
    worker = JobWorker(settings, handle, quarantine, **kwargs)

    async def main() -> None:
        astop = asyncio.Event()

        async def watch() -> None:
            while not stop.is_set():
                await asyncio.sleep(0.1)
            astop.set()

        watcher = asyncio.create_task(watch())
        try:
            await worker.run(astop)
        finally:
            watcher.cancel()

    asyncio.run(main())
    return worker.stats

