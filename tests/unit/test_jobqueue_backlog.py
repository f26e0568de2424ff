"""The encode backlog from catalog rows, and the metrics it sets."""

from __future__ import annotations

from dataclasses import dataclass

from catalog import BatchRow, BatchState
from jobqueue.backlog import encode_backlog
from jobqueue.metrics import BACKLOG_OLDEST, JOBS_QUARANTINED, JobQueueMetrics

NOW = 1_795_515_600_000


@dataclass
class Row:
    state: str
    created_ms: int


def test_oldest_waiting_batch_and_quarantined_count() -> None:
    rows = [Row("sealed", NOW - 90_000), Row("uploaded", NOW - 600_000),
            Row("encoding", NOW - 9_000_000), Row("encoded", NOW - 9_000_000),
            Row("purged", NOW - 9_000_000), Row("quarantined", NOW - 9_000_000),
            Row("quarantined", NOW - 1)]
    b = encode_backlog(rows, now_ms=NOW, pending_jobs=3)
    assert (b.waiting_batches, b.oldest_seconds, b.quarantined, b.pending_jobs) == (
        2, 600.0, 2, 3)


def test_empty_future_and_no_queue() -> None:
    assert encode_backlog([], now_ms=NOW).oldest_seconds == 0.0
    assert encode_backlog([], now_ms=NOW).pending_jobs is None
    assert encode_backlog([Row("sealed", NOW + 5000)], now_ms=NOW).oldest_seconds == 0.0
    assert encode_backlog([], now_ms=NOW, pending_jobs=-4).pending_jobs == 0


def test_catalog_rows_are_accepted() -> None:
    row = BatchRow(device="cam01", batch="cam01-20261124T101500Z-0001", frames=3,
                   first_capture_ms=0, last_capture_ms=0, state=BatchState.UPLOADED,
                   attempts=0, created_ms=NOW - 2000, updated_ms=NOW - 2000)
    assert encode_backlog([row], now_ms=NOW).oldest_seconds == 2.0


def test_metrics_are_set() -> None:
    m = JobQueueMetrics()
    m.observe_backlog(encode_backlog([Row("sealed", NOW - 4000), Row("quarantined", 0)],
                                     now_ms=NOW, pending_jobs=7))
    m.on_event("malformed", "bad_json")
    m.on_event("ok", "cam01/b")
    m.on_event("unknown", "")
    get = m.registry.get_sample_value
    assert get(BACKLOG_OLDEST) == 4.0
    assert get(JOBS_QUARANTINED) == 1.0
    assert get("camstack_encode_jobs_pending") == 7.0
    assert get("camstack_jobqueue_malformed_total", {"reason": "bad_json"}) == 1.0
    assert get("camstack_jobqueue_jobs_total", {"outcome": "ok"}) == 1.0
