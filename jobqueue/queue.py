"""JetStream set-up and publishing of encode jobs (docs/scaling.md).

One stream (``JobQueueSettings.stream``) with **WorkQueue** retention on
``<subject_prefix>.>``, file storage and a duplicate window; one durable pull consumer
(``JobQueueSettings.consumer``) shared by every worker. A job is published on
``<subject_prefix>.<device>`` with ``Nats-Msg-Id: <device>/<batch>``: inside the
duplicate window the server stores a second publish of the same batch only once and
answers it with ``duplicate: true``. An acked job is deleted from the stream.

The consumer's own ``max_deliver`` is unlimited on purpose: the worker counts
deliveries itself (``num_delivered`` of each message) and quarantines a job delivered
more than ``max_deliver`` times. A server-side limit would leave such a job in the
stream forever, invisible, with nobody told.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import NotFoundError as JsNotFoundError

from config.settings import JobQueueSettings, nats_inbox_prefix
from jobqueue.errors import JobQueueError
from jobqueue.job import EncodeJob
from jobqueue.loop import LoopThread

log = logging.getLogger("jobqueue")


@dataclass(frozen=True, slots=True)
class PublishResult:
    """The server's answer to one publish."""

    seq: int
    duplicate: bool
    """True when the server already had this batch's job inside the duplicate window."""


@dataclass(frozen=True, slots=True)
class QueueDepth:
    """Jobs in the consumer: not yet delivered, and delivered but not acked."""

    waiting: int
    in_progress: int

    @property
    def pending(self) -> int:
        """Every job not finished yet."""
        return self.waiting + self.in_progress


def subject_for(settings: JobQueueSettings, device: str) -> str:
    """``<subject_prefix>.<device>``."""
    return f"{settings.subject_prefix}.{device}"


def tls_context(settings: JobQueueSettings) -> ssl.SSLContext | None:
    """The client TLS context, or None when TLS is off."""
    if not settings.tls and not any(u.startswith("tls://") for u in settings.servers):
        return None
    ctx = ssl.create_default_context(
        cafile=str(settings.tls_ca_file) if settings.tls_ca_file else None)
    if settings.tls_cert_file is not None and settings.tls_key_file is not None:
        ctx.load_cert_chain(str(settings.tls_cert_file), str(settings.tls_key_file))
    return ctx


async def _log_error(e: Exception) -> None:
    log.warning("nats: %s: %s", type(e).__name__, e)


async def connect(settings: JobQueueSettings, *, name: str = "camstack-jobs",
                  **callbacks: Any) -> NatsClient:
    """Connect to NATS: reconnect forever, TLS and credentials from the settings.

    Raises:
        JobQueueError: If no server answers the first connection.
    """
    opts: dict[str, Any] = {
        "servers": list(settings.servers), "name": name, "allow_reconnect": True,
        "max_reconnect_attempts": -1, "reconnect_time_wait": 1, "connect_timeout": 5,
        **callbacks,
    }
    ctx = tls_context(settings)
    if ctx is not None:
        opts["tls"] = ctx
    if settings.credentials_file is not None:
        opts["user_credentials"] = str(settings.credentials_file)
    if settings.user:
        try:
            password = settings.resolved_password()
        except OSError as e:
            raise JobQueueError(f"jobqueue.password_file {settings.password_file}: "
                                f"{e.strerror or e}") from None
        opts["user"], opts["password"] = settings.user, password
        # The cluster lets a service subscribe its own inbox subtree only.
        opts["inbox_prefix"] = nats_inbox_prefix(settings.user)
    opts.setdefault("error_cb", _log_error)
    nc = NatsClient()
    try:
        # With endless reconnects nats-py also retries a failing first connect forever.
        await asyncio.wait_for(nc.connect(**opts), settings.publish_timeout_s)
    except Exception as e:  # nats-py raises several unrelated types on a failed connect
        with contextlib.suppress(Exception):
            await nc.close()
        why = "no answer" if isinstance(e, TimeoutError) else f"{type(e).__name__}: {e}"
        raise JobQueueError(f"cannot connect to jobqueue.servers {settings.servers} "
                            f"within {settings.publish_timeout_s}s ({why})") from None
    return nc


def stream_config(settings: JobQueueSettings) -> js_api.StreamConfig:
    """The work-queue stream of the settings."""
    return js_api.StreamConfig(
        name=settings.stream, subjects=[f"{settings.subject_prefix}.>"],
        retention=js_api.RetentionPolicy.WORK_QUEUE, storage=js_api.StorageType.FILE,
        duplicate_window=settings.duplicate_window_s, max_msg_size=settings.max_job_bytes,
        discard=js_api.DiscardPolicy.OLD, num_replicas=settings.replicas)


def consumer_config(settings: JobQueueSettings) -> js_api.ConsumerConfig:
    """The shared durable pull consumer (explicit acks, unlimited server-side deliveries)."""
    return js_api.ConsumerConfig(
        durable_name=settings.consumer, ack_policy=js_api.AckPolicy.EXPLICIT,
        ack_wait=settings.ack_wait_s, max_deliver=-1,
        filter_subject=f"{settings.subject_prefix}.>", max_ack_pending=10_000,
        deliver_policy=js_api.DeliverPolicy.ALL)


async def ensure_stream(js: JetStreamContext, settings: JobQueueSettings) -> None:
    """Create the stream and the consumer, or bring them to the settings' values."""
    cfg = stream_config(settings)
    try:
        await js.stream_info(settings.stream)
    except JsNotFoundError:
        await js.add_stream(cfg)
    else:
        await js.update_stream(cfg)
    await js.add_consumer(settings.stream, consumer_config(settings))


async def publish_job(js: JetStreamContext, settings: JobQueueSettings,
                      job: EncodeJob) -> PublishResult:
    """Publish one job; the server drops a duplicate of the same batch in the window.

    Raises:
        JobQueueError: If the server does not store it within ``publish_timeout_s``.
    """
    try:
        ack = await js.publish(subject_for(settings, job.device), job.to_json(),
                               timeout=settings.publish_timeout_s,
                               stream=settings.stream, headers={"Nats-Msg-Id": job.msg_id})
    except Exception as e:
        raise JobQueueError(f"publish of {job.msg_id} failed: {type(e).__name__}: {e}") \
            from None
    return PublishResult(ack.seq, bool(ack.duplicate))


async def queue_depth(js: JetStreamContext, settings: JobQueueSettings) -> QueueDepth:
    """The consumer's waiting and unacknowledged job counts."""
    info = await js.consumer_info(settings.stream, settings.consumer)
    return QueueDepth(int(info.num_pending or 0), int(info.num_ack_pending or 0))


class JobPublisher:
    """A blocking publisher for threaded services (the ingestor publishes at seal).

    It runs its own asyncio loop in a daemon thread; :meth:`publish` may be called from
    any thread. Use as a context manager or call :meth:`close`.
    """

    def __init__(self, settings: JobQueueSettings, *, name: str = "camstack-publisher",
                 create_stream: bool = True) -> None:
        self.settings = settings
        self._loop = LoopThread("jobqueue-pub")
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        def retry(exc: BaseException, pause: float) -> None:
            log.warning("job queue not answering (%s); trying again in %.1fs",
                        str(exc)[:200] or type(exc).__name__, pause)
            self._loop.stop_connection(self._nc)
            self._nc, self._js = None, None

        try:
            self._loop.call_until(lambda: self._open(name, create_stream),
                                  settings.publish_timeout_s + 10, settings.start_wait_s,
                                  what="job queue (jobqueue.start_wait_s)", on_retry=retry)
        except BaseException:
            self.close()
            raise

    async def _open(self, name: str, create_stream: bool) -> None:
        self._nc = await connect(self.settings, name=name)
        self._js = self._nc.jetstream(timeout=self.settings.publish_timeout_s)
        if create_stream:
            await ensure_stream(self._js, self.settings)

    def _call(self, coro: Any, timeout: float) -> Any:
        return self._loop.call(coro, timeout)

    def publish(self, job: EncodeJob) -> PublishResult:
        """Publish one job and wait for the server's ack.

        Raises:
            JobQueueError: If it is not stored (the caller retries later).
        """
        assert self._js is not None
        result: PublishResult = self._call(publish_job(self._js, self.settings, job),
                                           self.settings.publish_timeout_s + 5)
        return result

    def depth(self) -> QueueDepth:
        """:func:`queue_depth`, blocking."""
        assert self._js is not None
        depth: QueueDepth = self._call(queue_depth(self._js, self.settings),
                                       self.settings.publish_timeout_s)
        return depth

    def close(self) -> None:
        """Drain the connection and stop the loop thread."""
        self._loop.stop(self._nc)
        self._nc = None

    def __enter__(self) -> JobPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
