"""SIGKILL the ingestor and the encoder at random points while a fleet publishes.

Each run: a fresh storage root, an ingestor and an encoder, four marker cameras
publishing over TLS at QoS 1. The test kills one of the two services at a random
moment (at a random time, or a random few milliseconds after a chosen log event:
a frame stored, a batch sealed or announced, an encode started, a video written, a
batch purged), restarts it at once and sometimes kills it again during its start-up
scan. Then the cameras stop, the services drain (idle sealing turns the rest into
videos) and the audit decodes every video: every frame the broker acknowledged to a
camera must be in exactly one video or on disk, no batch may have two videos, and
nothing may be left behind (frames of encoded batches, temp files, trash).

Knobs: ``CAM_FAULT_RUNS`` (runs, default 1), ``CAM_FAULT_KILLS`` (kills per run,
default 8), ``CAM_FAULT_SEED`` (default: random, printed). The figures are printed as
``FAULT-FIGURES {...}`` lines (``pytest -s``); docs/reliability.md has them.
"""

from __future__ import annotations

import os
import random
import subprocess
import time
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from camstack.brokerproc import BrokerHandle
from tests.support.faults import (
    LogTail,
    ServiceStack,
    audit,
    env_int,
    print_row,
    settled,
    start_scenario,
    video_locations,
    wait_until,
)
from tests.support.fleet import Fleet, MarkedCamera

pytestmark = pytest.mark.integration

RUNS = env_int("CAM_FAULT_RUNS", 1)
KILLS = env_int("CAM_FAULT_KILLS", 8)
BASE_SEED = env_int("CAM_FAULT_SEED", int.from_bytes(os.urandom(3), "big"))

TRIGGERS: dict[str, list[str | None]] = {
    "ingestor": [None, "frame_stored", "batch_sealed", "batch_announced"],
    "encoder": [None, "encode_started", "video_written", "batch_purged"],
}


def kill_once(stack: ServiceStack, target: str, rng: random.Random) -> str:
    """Kill ``target`` at a random point; returns how the point was chosen."""
    svc = stack.current[target]
    assert svc is not None
    trigger = rng.choice(TRIGGERS[target])
    if trigger is None:
        time.sleep(rng.uniform(0.2, 1.5))
        how = "time"
    else:
        tail = LogTail(svc.log_path)
        tail.skip_to_end()
        deadline = time.monotonic() + 8
        how = f"{trigger}+"
        while time.monotonic() < deadline:
            if any(e.get("event") == trigger for e in tail.new_events()):
                break
            time.sleep(0.005)
        else:
            how = "time(no " + trigger + ")"
        time.sleep(rng.uniform(0.0, 0.05))
    stack.kill(target)
    return how


@pytest.mark.parametrize("run", range(RUNS))
def test_sigkill_ingestor_and_encoder_at_random_points(
        broker: BrokerHandle, tmp_path: Path, cleanup: list[Any], run: int) -> None:
    seed = BASE_SEED + run
    rng = random.Random(seed)
    print(f"fault seed {seed} (CAM_FAULT_SEED={BASE_SEED}, run {run})")
    root = tmp_path / "store"
    sc = start_scenario(broker, tmp_path, root, cleanup, letter="k", cameras=4, fps=12,
                        ingest={"frames_per_video": 20, "idle_seal_s": 1.0})
    stack, watcher, fleet = sc.stack, sc.watcher, sc.fleet
    wait_until(lambda: any(e.get("event") == "video_written" for e in stack.events("encoder")),
               30, "a first video")

    targets = ["ingestor", "encoder"] * (KILLS // 2) + ["ingestor"] * (KILLS % 2)
    rng.shuffle(targets)
    kills: Counter[str] = Counter()
    points: list[str] = []
    for target in targets:
        points.append(f"{target}:{kill_once(stack, target, rng)}")
        kills[target] += 1
        if rng.random() < 0.25:
            # Again while it starts: during the start-up scan, a rollback, a re-announce.
            stack.start(target, wait=False)
            time.sleep(rng.uniform(0.05, 0.8))
            stack.kill(target)
            kills[target] += 1
            points.append(f"{target}:startup")
        stack.start(target)
    time.sleep(1.0)
    unacked = fleet.finish(30)
    assert fleet.errors() == {}
    assert unacked == 0, "the broker stopped acknowledging frames"
    wait_until(lambda: settled(root), 90, "every frame sealed and encoded")
    assert stack.stop_all() == {"encoder": 0, "ingestor": 0}
    wait_until(lambda: video_locations(root) <= watcher.seen(), 15, "every video announced")
    result = audit(root, fleet, announced=watcher.seen())
    print_row("sigkill", seed, {"kills_ingestor": kills["ingestor"],
                                "kills_encoder": kills["encoder"]}, result)
    print("kill points:", ", ".join(points))
    assert result.problems() == [], f"seed {seed}: {result.problems()}"
    assert result.acked == result.sent
    assert result.on_disk == 0 and result.in_videos == result.acked
    # The kills really hit work in progress: later runs of each service did work too.
    assert any(e.get("event") == "frame_stored" for e in stack.history["ingestor"][-1].events())
    assert sum(1 for e in stack.events("encoder") if e.get("event") == "video_written") >= 2


def test_encoder_start_removes_temp_files_of_killed_writers(tmp_path: Path) -> None:
    # Found by the kill test above: a SIGKILL inside atomic_write left
    # state/encoder/attempts/.<device>--<batch>.<pid>.partial behind for good.
    from encoder.batch import Storage  # noqa: PLC0415

    storage = Storage(tmp_path)
    storage.prepare()
    gone_pid = _dead_pid()
    stale = [storage.attempts_dir / f".cam--b.{gone_pid}.partial",
             storage.unannounced_dir / f".cam--b.json.{gone_pid}.partial"]
    live = storage.attempts_dir / f".cam--c.{os.getpid()}.partial"
    for p in [*stale, live]:
        p.write_text("1")
    storage.prepare()
    assert [p.exists() for p in stale] == [False, False]
    assert live.exists()


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_the_audit_catches_each_broken_promise(tmp_path: Path) -> None:
    # The checker itself must be able to fail: one camera, six acked frames, and a
    # storage root with one of each problem.
    from config.settings import MqttSettings  # noqa: PLC0415
    from encoder.muxer import EncodeOptions, FrameInput, encode_video  # noqa: PLC0415
    from tests.support.fleet import marker_jpeg  # noqa: PLC0415

    cam = MarkedCamera(3, "aud0", MqttSettings(), boot_id=0xB)
    jpegs = [marker_jpeg(3, s) for s in range(6)]
    for s, j in enumerate(jpegs):
        cam.log.crc[s] = zlib.crc32(j)
        cam.log.acked.add(s)
    fleet = Fleet([cam])
    day = "2026-11-24"
    vdir = tmp_path / "videos" / "aud0" / day
    vdir.mkdir(parents=True)
    mp4 = vdir / "aud0_a_b.mp4"
    encode_video([FrameInput(ts_ms=s, data=jpegs[s]) for s in range(3)], mp4,
                 EncodeOptions(preset="ultrafast"))
    mp4.with_suffix(".json").write_text('{"batch": "aud0-x-0001", "frames": 3}')
    fdir = tmp_path / "frames" / "aud0" / day
    fdir.mkdir(parents=True)
    for s, data in ((2, jpegs[2]), (3, jpegs[3]), (4, jpegs[4][:-5] + b"\xff\xd9")):
        (fdir / f"{1795515300000 + s:013d}_{0xB:08x}_{s:010d}.jpg").write_bytes(data)
    (fdir / ".leftover.jpg.tmp").write_bytes(b"x")
    result = audit(tmp_path, fleet, announced=set())
    assert (result.in_videos, result.on_disk, result.videos) == (3, 3, 1)
    assert result.lost == [("aud0", 0xB, 5)]
    assert result.duplicates == [("aud0", 0xB, 2)]
    assert len(result.orphans) == 2  # frame 2 also in the video; the temp file
    assert len(result.corrupt) == 1 and "0000000004" in result.corrupt[0]
    assert result.unannounced == ["videos/aud0/2026-11-24/aud0_a_b.mp4"]
    assert len(result.problems()) == 5
