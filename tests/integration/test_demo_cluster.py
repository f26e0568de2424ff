"""`make demo-cluster` (``camstack demo --cluster``) end to end: 3 NATS nodes, 2
partitioned ingestors, 2 JetStream encode workers on SeaweedFS and PostgreSQL."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from contract.partition import device_partition

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def test_demo_cluster(tmp_path: Path) -> None:
    data = tmp_path / "data"
    res = subprocess.run(
        [sys.executable, "-m", "camstack", "--data-dir", str(data), "demo", "--cluster",
         "--cameras", "4", "--frames-per-video", "20", "--fps", "10", "--timeout", "150"],
        cwd=REPO, capture_output=True, text=True, timeout=400, check=False)
    out = res.stdout
    assert res.returncode == 0, out + res.stderr
    assert "cluster ready: 3 nodes routed to each other" in out
    assert "job queue: stream CAMSTACK_JOBS on the cluster (R3)" in out
    assert "cluster demo finished: every camera produced a video" in out
    cams = re.findall(r"^  camera (demo-cam\d+): partition (\d+), connects to node (\d)$",
                      out, re.M)
    assert len(cams) == 4 and {n for _, _, n in cams} == {"0", "1", "2"}
    assert {int(p) < 32 for _, p, _ in cams} == {True, False}  # both ingestors have work
    keys = re.findall(r"^  (videos/(demo-cam\d+)/\S+\.mp4)  \(in the store\)$", out, re.M)
    assert {d for _, d in keys} == {d for d, _, _ in cams}, out
    served = dict(re.findall(r"^  (ingestor-[ab]) \(partitions [\d-]+\): (.*)$", out, re.M))
    for name, lo, hi in (("ingestor-a", 0, 31), ("ingestor-b", 32, 63)):
        devices = re.findall(r"(demo-cam\d+) \(p(\d+)\)", served[name])
        assert devices, out
        assert all(lo <= int(p) <= hi and device_partition(d) == int(p) for d, p in devices)
    assert "WRONG" not in out
    handled = re.search(r"^jobs handled per worker: encoder (\d+), encoder-2 (\d+)$", out, re.M)
    assert handled is not None and int(handled[1]) + int(handled[2]) >= 4, out
    assert "stopped encoder-2, encoder, ingestor-b, ingestor-a, nats-2, nats-1, nats-0" in out
    assert (data / "demo-cluster" / "nats" / "node-2" / "nats.conf").exists()
