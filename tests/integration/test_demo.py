"""`make demo`'s code path end to end: real broker, ingestor, encoder, simulated cameras.

Runs ``camstack --data-dir <tmp> demo`` (what the Makefile runs) on free ports,
twice in the same data folder, and checks the MP4s it reports with PyAV.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import av
import pytest

from broker.accounts import AccountStore
from broker.errors import BrokerToolError
from broker.layout import Layout
from camstack.brokerproc import BrokerHandle
from camstack.demo import DemoPaths, check_running_broker, reap_leftovers

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
VIDEO_RE = re.compile(r"^  (demo-cam\d\d): (\S+\.mp4)\n      (\d+) frames, ([\d.]+) s, (\w+)",
                      re.M)


def _demo(data: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "camstack", "--data-dir", str(data), "demo", "--cameras", "2",
         "--frames-per-video", "20", "--fps", "10", "--tls-port", "0", "--local-port", "0",
         "--timeout", "120"],
        cwd=REPO, capture_output=True, text=True, timeout=240, check=False,
    )


def _check_run(res: subprocess.CompletedProcess[str], data: Path) -> dict[str, Path]:
    out = res.stdout
    assert res.returncode == 0, out + res.stderr
    assert "ingestor and encoder ready" in out
    assert re.search(r"^\[\s*\d+\.\ds\] demo-cam01 \d+ acked", out, re.M), "no progress lines"
    assert "demo finished: every camera produced a video" in out
    videos = {m[0]: m for m in VIDEO_RE.findall(out)}
    assert set(videos) == {"demo-cam01", "demo-cam02"}, out
    paths = {}
    for device, (_, path, frames, duration, codec) in videos.items():
        mp4 = Path(path) if Path(path).is_absolute() else REPO / path
        assert mp4.is_relative_to(data / "demo" / "storage" / "videos" / device)
        assert int(frames) == 20 and codec == "h264" and float(duration) > 0
        with av.open(str(mp4)) as container:
            stream = container.streams.video[0]
            assert stream.codec_context.name == "h264"
            decoded = sum(1 for _ in container.decode(stream))
        assert decoded == 20
        paths[device] = mp4
    # The per-camera status table, with each device's last report.
    for device in videos:
        row = next(line for line in out.splitlines() if line.startswith(device + " "))
        assert row.split()[1] == "online", row
    assert re.search(r"^ingestor\s+online", out, re.M)
    assert re.search(r"^encoder\s+online", out, re.M)
    assert "stopped encoder, ingestor, broker" in out
    assert not (data / "demo" / "pids.json").exists()
    return paths


def test_demo_runs_twice_and_makes_real_videos(tmp_path: Path) -> None:
    data = tmp_path / "data"
    # Accounts an older demo left on the real broker, and a real camera's.
    real = AccountStore(data / "broker")
    for name, kind in (("demo-cam01", "device"), ("operator-demo", "service"),
                       ("cam01", "device")):
        real.add(name, kind)  # type: ignore[arg-type]
    res = _demo(data)
    first = _check_run(res, data)
    assert "note: revoked demo-cam01, operator-demo in" in res.stdout
    # The rendered configs carry the demo's batch size and the demo's own CA.
    cfg = (data / "demo" / "config" / "ingestor.toml").read_text()
    assert "frames_per_video = 20" in cfg and str(data / "demo" / "pki" / "ca.crt") in cfg
    # Again in the same folder: accounts reused, a new video per camera, nothing left over.
    second = _check_run(_demo(data), data)
    assert set(first.values()).isdisjoint(second.values())
    accounts = json.loads((data / "demo" / "broker" / "accounts.json").read_text())
    assert {"demo-cam01", "demo-cam02", "operator-demo"} <= set(accounts)
    # The real broker: no demo account can log in; the real camera is untouched.
    passwd = (data / "broker" / "passwd").read_text()
    assert not re.search(r"^(demo-cam\d+|operator-demo):", passwd, re.M), passwd
    assert re.search(r"^cam01:", passwd, re.M)
    assert not (data / "pki").exists() or not (data / "demo" / "pki" / "ca.crt").samefile(
        data / "pki" / "ca.crt")


def test_demo_refuses_a_port_that_is_taken(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        res = subprocess.run(
            [sys.executable, "-m", "camstack", "--data-dir", str(tmp_path / "d"), "demo",
             "--tls-port", str(port), "--local-port", "0"],
            cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 1
    assert f"TLS port {port} is in use" in res.stderr


def test_running_broker_is_refused_and_stale_pid_file_cleared(broker: BrokerHandle,
                                                               tmp_path: Path) -> None:
    notes: list[str] = []
    # The session broker runs on its data folder: a demo there must refuse to start.
    with pytest.raises(BrokerToolError, match="already running"):
        check_running_broker(broker.layout, notes.append)
    stale = Layout(tmp_path / "data")
    stale.broker_dir.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (stale.broker_dir / "mosquitto.pid").write_text(f"{dead.pid}\n")
    check_running_broker(stale, notes.append)
    assert not (stale.broker_dir / "mosquitto.pid").exists()
    assert any("stale pid file" in n for n in notes)


def test_leftovers_of_a_killed_demo_are_stopped(tmp_path: Path) -> None:
    paths = DemoPaths(tmp_path / "demo")
    paths.root.mkdir()
    # Looks like `python -m ingestor` to the reaper; sleeps like a stuck orphan.
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "-m",
                               "ingestor"])
    # Until it has exec'd, /proc shows the forked pytest's command line, not the orphan's.
    cmdline = Path(f"/proc/{orphan.pid}/cmdline")
    deadline = time.monotonic() + 10
    while b"-m\0ingestor" not in cmdline.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.01)
    bystander = os.getpid()  # a live pid that is not ours to kill
    paths.pids.write_text(json.dumps({"ingestor": orphan.pid, "encoder": bystander}))
    notes: list[str] = []
    reap_leftovers(paths, notes.append)
    assert orphan.wait(10) is not None
    assert not paths.pids.exists()
    assert notes == [f"note: stopping ingestor (pid {orphan.pid}) left over from an earlier demo"]


def test_demo_cloud_with_a_jetstream_worker_pool(tmp_path: Path) -> None:
    """`make demo-cloud`: SeaweedFS, PostgreSQL and NATS started for the run, two encode
    workers pulling jobs; every camera's video is in the store with its catalog row."""
    data = tmp_path / "data"
    res = subprocess.run(
        [sys.executable, "-m", "camstack", "--data-dir", str(data), "demo", "--cloud",
         "--workers", "2", "--cameras", "2", "--frames-per-video", "20", "--fps", "10",
         "--tls-port", "0", "--local-port", "0", "--timeout", "120"],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    out = res.stdout
    assert res.returncode == 0, out + res.stderr
    assert "ingestor and 2 encode worker(s) on NATS JetStream" in out
    assert "demo finished: every camera produced a video" in out
    keys = re.findall(r"^  (videos/demo-cam0[12]/\S+\.mp4)  \(in the store\)$", out, re.M)
    assert {k.split("/")[1] for k in keys} == {"demo-cam01", "demo-cam02"}, out
    assert re.search(r"^    row: \{.*\"codec\": \"h264\"", out, re.M)
    handled = re.search(r"^jobs handled per worker: encoder (\d+), encoder-2 (\d+)$", out, re.M)
    assert handled is not None, out
    assert int(handled[1]) + int(handled[2]) >= 2
    assert re.search(r"^encoder-2\s+online\s.*runner=jetstream", out, re.M)
    assert "stopped encoder-2, encoder, ingestor, broker" in out
