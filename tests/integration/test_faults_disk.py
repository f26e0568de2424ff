"""The data volume fills up while a fleet publishes, then space comes back.

The storage root lives on a real, small file system (a tmpfs mounted for the test:
needs root, skipped with the reason otherwise). A filler file takes every free byte.
The ingestor must apply back-pressure (stop acknowledging, stop reading; the broker
keeps the chunks), the encoder must not give up on batches it cannot write a video
for, nothing may be corrupted (no truncated frame, no half-written video, no temp
file left), and once the filler is deleted everything must flow again: every frame the
broker acknowledged ends up in exactly one video.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from pathlib import Path
from typing import Any

import pytest

from camstack.brokerproc import BrokerHandle
from camstack.procs import scrape
from tests.support.faults import (
    LogTail,
    audit,
    env_int,
    fill,
    metric_sum,
    print_row,
    settled,
    small_filesystem,
    start_scenario,
    video_locations,
    wait_until,
)

pytestmark = pytest.mark.integration

BASE_SEED = env_int("CAM_FAULT_SEED", int.from_bytes(os.urandom(3), "big"))
RUNS = env_int("CAM_FAULT_RUNS", 1)


@pytest.mark.parametrize("run", range(RUNS))
def test_disk_full_applies_backpressure_corrupts_nothing_and_recovers(
        broker: BrokerHandle, tmp_path: Path, cleanup: list[Any], run: int) -> None:
    seed = BASE_SEED + run
    rng = random.Random(seed)
    print(f"fault seed {seed} (CAM_FAULT_SEED={BASE_SEED}, run {run})")
    mounts = contextlib.ExitStack()
    cleanup.append(mounts)  # closed last: after every process using the volume is gone
    vol = mounts.enter_context(small_filesystem(tmp_path / "vol", "32m"))
    root = vol / "store"
    sc = start_scenario(
        broker, tmp_path, root, cleanup, letter="d", cameras=3, fps=10,
        ingest={"frames_per_video": 20, "idle_seal_s": 1.0, "max_pending_frames": 40},
        # The encoder's own defaults: a full disk must not use up a batch's attempts.
        work={"max_attempts": 3, "retry_backoff_s": 0.5})
    stack, watcher, fleet = sc.stack, sc.watcher, sc.fleet
    ingestor, encoder = stack.current["ingestor"], stack.current["encoder"]
    assert ingestor is not None and encoder is not None
    wait_until(lambda: bool(video_locations(root)), 30, "a first video")
    # Fill just as the encoder starts a video, so both services meet the full disk:
    # the ingestor writing frames, the encoder writing an MP4, thumbnail and sidecar.
    enc_tail = LogTail(encoder.log_path)
    enc_tail.skip_to_end()
    wait_until(lambda: any(e.get("event") == "encode_started" for e in enc_tail.new_events()),
               20, "an encode starting")
    time.sleep(rng.uniform(0.0, 0.03))
    tail = LogTail(ingestor.log_path)
    tail.skip_to_end()
    filler = vol / "filler"
    filled = fill(filler)
    full_at = time.monotonic()
    acked_at_full = len(fleet.acked())
    wait_until(lambda: any(e.get("event") == "storage_unavailable" for e in tail.new_events()),
               20, "the ingestor noticing the full disk")

    def paused() -> bool:
        m = scrape(ingestor)
        return m[("camstack_ingestor_reading_paused", ())] == 1

    wait_until(paused, 20, "back-pressure: the ingestor stops reading")
    m = scrape(ingestor)
    assert m[("camstack_ingestor_storage_available", ())] == 0
    # nothing acknowledged that is not durable
    assert m[("camstack_ingestor_unacked_chunks", ())] > 0
    # The broker keeps acknowledging the cameras (it queues for the ingestor).
    wait_until(lambda: len(fleet.acked()) >= acked_at_full + 30, 20, "cameras acked meanwhile")
    time.sleep(rng.uniform(1.0, 3.0))
    full_s = time.monotonic() - full_at
    acked_while_full = len(fleet.acked()) - acked_at_full
    assert stack.alive("ingestor") and stack.alive("encoder")

    filler.unlink()
    ingestor.wait_event("storage_recovered", 20)
    time.sleep(1.0)
    unacked = fleet.finish(30)
    assert fleet.errors() == {} and unacked == 0
    wait_until(lambda: settled(root), 90, "every frame sealed and encoded after recovery")
    wait_until(lambda: video_locations(root) <= watcher.seen(), 15, "every video announced")
    mi, me = scrape(ingestor), scrape(encoder)
    assert stack.stop_all() == {"encoder": 0, "ingestor": 0}
    result = audit(root, fleet, announced=watcher.seen())
    print_row("disk_full", seed, {
        "filler_bytes": filled, "full_s": round(full_s, 1), "acked_while_full": acked_while_full,
        "ingestor_storage_errors": int(metric_sum(mi, "camstack_ingestor_storage_errors_total")),
        "encoder_failures": int(metric_sum(me, "camstack_encoder_failures_total")),
    }, result)
    assert result.problems() == [], f"seed {seed}: {result.problems()}"
    assert result.acked == result.sent
    assert result.on_disk == 0 and result.in_videos == result.acked
