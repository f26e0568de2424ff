"""`make up`'s supervisor for real: SIGKILL each process and watch it come back.

``camstack up`` runs on a data folder in tmp with free ports (what the Makefile runs,
only with ``--config`` for the ports): it prepares the folder, renders the
supervisord config and becomes supervisord. A marker camera streams at QoS 1 the
whole time; the ingestor, the encoder and the monitor are SIGKILLed one after the
other while the broker keeps its pid, then the broker itself. Every frame the broker
acknowledged to the camera must be stored (the audit of tests/support/faults.py decodes
the videos). SIGINT, as Ctrl-C, then stops everything with exit code 0.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from broker.accounts import AccountStore
from camstack.brokerproc import free_port, wait_port
from camstack.supervise import PROGRAMS, supervisorctl_argv
from config.loader import to_toml
from config.settings import MqttSettings, TlsSettings
from mqttclient import MqttConnectError
from tests.support.faults import audit, settled, wait_until
from tests.support.fleet import Fleet, MarkedCamera

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CAMSTACK = [sys.executable, "-m", "camstack"]


class Up:
    """A running ``camstack up`` (which became supervisord: same pid)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.data = tmp / "data"
        self.tls_port, self.local_port = free_port(), free_port()
        self.broker_toml = tmp / "broker.toml"
        self.broker_toml.write_text(
            f'tls_port = {self.tls_port}\nlocal_port = {self.local_port}\n'
            'tls_bind = "127.0.0.1"\n', encoding="utf-8")
        self.base = [*CAMSTACK, "--config", str(self.broker_toml), "--data-dir", str(self.data)]
        self.out = tmp / "up.out"
        self.proc: subprocess.Popen[bytes] | None = None

    def render(self) -> Path:
        res = subprocess.run([*self.base, "up", "--render-only"], cwd=REPO, capture_output=True,
                             text=True, timeout=60, check=False)
        assert res.returncode == 0, res.stdout + res.stderr
        conf = Path(res.stdout.strip().splitlines()[-1])
        assert conf.is_file()
        # Free metrics ports, small batches sealed when idle, a fast encoder.
        tweaks: dict[str, dict[str, dict[str, object]]] = {"ingestor": {"metrics": {"port": 0},
                               "ingest": {"frames_per_video": 20, "idle_seal_s": 1.0}},
                  "encoder": {"metrics": {"port": 0},
                              "encode": {"preset": "ultrafast", "decode_threads": 1}},
                  "monitor": {"metrics": {"port": 0}}}
        for name, sections in tweaks.items():
            path = self.data / "config" / f"{name}.toml"
            doc: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
            for table, values in sections.items():
                doc[table] = {**doc.get(table, {}), **values}
            path.write_text(to_toml(doc), encoding="utf-8")
        self.conf = conf
        return conf

    def start(self) -> None:
        with self.out.open("ab") as fh:
            self.proc = subprocess.Popen([*self.base, "up"], cwd=REPO, stdout=fh,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def text(self) -> str:
        return self.out.read_text(errors="replace")

    def count(self, pattern: str) -> int:
        return len(re.findall(pattern, self.text()))

    def wait_count(self, pattern: str, n: int, timeout: float = 60.0) -> None:
        def ok() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.text()
            return self.count(pattern) >= n
        wait_until(ok, timeout, f"{n} x {pattern!r} in:\n{self.text()[-3000:]}")

    def wait_ingestor_subscribed(self, timeout: float = 60.0) -> None:
        """Until the ingestor has its subscription: a QoS 1 frame the broker acknowledges
        before the ingestor's first session exists goes to no one (RUNNING in supervisord
        only means the process started)."""
        log = self.data / "logs" / "ingestor.log"
        wait_until(lambda: log.is_file() and '"ingestor_ready"' in log.read_text(
            errors="replace"), timeout, f"ingestor_ready in {log}")

    def pids(self) -> dict[str, int]:
        res = subprocess.run(supervisorctl_argv(self.conf, "status"), capture_output=True,
                             text=True, timeout=30, check=False)
        out = {}
        for line in res.stdout.splitlines():
            m = re.match(r"(\w+)\s+RUNNING\s+pid (\d+),", line)
            if m:
                out[m[1]] = int(m[2])
        return out

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    u = Up(tmp_path)
    yield u
    u.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] == "Z":
            return False
    return True


def _camera(up: Up, device: str, password: str) -> MarkedCamera:
    settings = MqttSettings(host="127.0.0.1", port=up.tls_port, username=device,
                            password=password, client_id=device, session_expiry_s=0,
                            reconnect_min_s=0.2, reconnect_max_s=1.0,
                            tls=TlsSettings(enabled=True, ca_file=up.data / "pki" / "ca.crt"))
    cam = MarkedCamera(0, device, settings, fps=10)
    deadline = time.monotonic() + 20
    while True:  # until the broker has re-read its accounts (SIGHUP)
        try:
            return cam.start()
        except MqttConnectError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_make_up_restarts_each_killed_process_and_loses_no_acked_frame(up: Up) -> None:
    up.render()
    up.start()
    for name in PROGRAMS:
        up.wait_count(rf"success: {name} entered RUNNING state", 1)
    first = up.pids()
    assert set(first) == set(PROGRAMS), up.text()
    wait_port("127.0.0.1", up.tls_port)
    up.wait_ingestor_subscribed()

    store = AccountStore(up.data / "broker")
    password = store.add("supcam1", "device")
    assert store.reload_broker()
    cam = _camera(up, "supcam1", password)
    fleet = Fleet([cam])
    try:
        def acked() -> int:
            return len(cam.snapshot()[1])

        wait_until(lambda: acked() >= 10, 30, "frames acknowledged")
        pids = dict(first)
        for name in [p for p in PROGRAMS if p != "broker"]:
            before = acked()
            os.kill(pids[name], signal.SIGKILL)
            up.wait_count(rf"exited: {name} \(terminated by SIGKILL; not expected\)", 1)
            up.wait_count(rf"success: {name} entered RUNNING state", 2)
            now = up.pids()
            assert now[name] != pids[name] and _alive(now[name])
            assert now["broker"] == first["broker"], "the broker must stay up"
            assert set(now) == set(first), "the others keep running"
            pids = now
            # Frames keep flowing (stored, acknowledged) after the restart.
            target = before + 10
            wait_until(lambda: acked() >= target, 30, f"frames after {name} restart")  # noqa: B023
        assert fleet.finish(30) == 0, "the broker stopped acknowledging frames"
        assert fleet.errors() == {}
    finally:
        fleet.close()
    root = up.data / "storage"
    wait_until(lambda: settled(root), 120, "every frame sealed and encoded")
    result = audit(root, fleet)
    assert result.problems() == [], result.problems()
    assert result.acked == result.sent and result.in_videos == result.acked > 30

    # The broker too comes back (on the same port).
    os.kill(pids["broker"], signal.SIGKILL)
    up.wait_count(r"success: broker entered RUNNING state", 2)
    assert up.pids()["broker"] != pids["broker"]
    wait_port("127.0.0.1", up.tls_port)

    # Ctrl-C: every process stops cleanly, supervisord exits 0.
    last = up.pids()
    assert up.proc is not None
    up.proc.send_signal(signal.SIGINT)
    assert up.proc.wait(120) == 0, up.text()
    for name in PROGRAMS:
        assert re.search(rf"stopped: {name} \(exit status 0\)", up.text()), up.text()
        assert not _alive(last[name]), name
    with socket.socket() as s:  # the broker's port is free again
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", up.tls_port))


def _service_config(tmp: Path, name: str, port: int) -> Path:
    path = tmp / f"{name}.toml"
    path.write_text(to_toml({
        "mqtt": {"host": "127.0.0.1", "port": free_port(), "username": name,
                 "password": "x", "tls": {"enabled": False}},
        "storage": {"root": str(tmp / "storage")},
        "metrics": {"enabled": True, "host": "127.0.0.1", "port": port},
    }), encoding="utf-8")
    return path


@pytest.mark.parametrize("service", ["encoder", "ingestor", "monitor"])
def test_metrics_port_taken_is_one_line_naming_the_setting(tmp_path: Path,
                                                           service: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = subprocess.run([sys.executable, "-m", service],
                             env={**os.environ, "CAM_CONFIG": str(_service_config(
                                 tmp_path, service, port))},
                             cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: metrics.port 127.0.0.1:{port} is already in use by another "
                      "process; set metrics.port (or metrics.host) in the config file or "
                      "CAM_METRICS__PORT, 0 picks a free port, metrics.enabled = false turns "
                      "the endpoint off"], res.stderr


def test_make_up_runs_nats_for_the_jetstream_runner(up: Up, seaweedfs: Any) -> None:
    """`make up` with `runner = "jetstream"` and a loopback NATS URL: supervisord also
    runs nats-server (rendered config, JetStream store in the data folder), the encoder
    takes its jobs from it, a SIGKILLed nats-server comes back with the jobs it held,
    and Ctrl-C stops it too."""
    from catalog import open_catalog  # noqa: PLC0415
    from config.settings import CatalogSettings  # noqa: PLC0415

    up.render()
    bucket = "up-" + os.urandom(4).hex()
    seaweedfs.create_bucket(bucket)
    s3 = seaweedfs.s3_settings(bucket=bucket)
    s3d = s3.model_dump(mode="json", exclude_none=True)
    s3d["secret_access_key"] = s3.secret_access_key.get_secret_value()
    nats_port = free_port()
    for name in ("ingestor", "encoder"):
        path = up.data / "config" / f"{name}.toml"
        doc: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
        doc |= {"runner": "jetstream", "store": {"backend": "s3", "s3": s3d},
                "jobqueue": {"servers": [f"nats://127.0.0.1:{nats_port}"],
                             "ack_wait_s": 5.0, "heartbeat_s": 1.0}}
        path.write_text(to_toml(doc), encoding="utf-8")
    up.start()
    for name in (*PROGRAMS, "nats"):
        up.wait_count(rf"success: {name} entered RUNNING state", 1)
    assert "running broker, ingestor, encoder, monitor, web, nats" in up.text()
    pids = up.pids()
    assert (up.data / "nats" / "jetstream").is_dir()
    wait_port("127.0.0.1", up.tls_port)
    up.wait_ingestor_subscribed()

    store = AccountStore(up.data / "broker")
    password = store.add("supjs1", "device")
    wait_until(store.reload_broker, 20, "the broker's pid file")
    cam = _camera(up, "supjs1", password)
    fleet = Fleet([cam])
    cat = open_catalog(CatalogSettings(path=up.data / "storage" / "state" / "catalog.sqlite3"))
    try:
        wait_until(lambda: len(cat.list_videos(device="supjs1")) >= 1, 90, "a first video")
        os.kill(pids["nats"], signal.SIGKILL)
        up.wait_count(r"exited: nats \(terminated by SIGKILL; not expected\)", 1)
        up.wait_count(r"success: nats entered RUNNING state", 2)
        assert up.pids()["encoder"] == pids["encoder"], "the encoder reconnects by itself"
        wait_until(lambda: len(cat.list_videos(device="supjs1")) >= 3, 120,
                   "videos after the NATS restart")
        assert fleet.finish(30) == 0
    finally:
        fleet.close()
    acked = len(cam.snapshot()[1])
    # The last batch is sealed once the camera has been idle for idle_seal_s.
    wait_until(lambda: sum(v.frames for v in cat.list_videos(device="supjs1")) >= acked,
               120, "every acknowledged frame in a video")
    wait_until(lambda: {b.state.value for b in cat.list_batches(device="supjs1")}
               == {"purged"}, 60, "every pack deleted")
    videos = cat.list_videos(device="supjs1")
    assert sum(v.frames for v in videos) == acked
    assert len(videos) == len(cat.list_batches(device="supjs1"))
    cat.close()
    assert up.proc is not None
    up.proc.send_signal(signal.SIGINT)
    assert up.proc.wait(120) == 0, up.text()
    assert re.search(r"stopped: nats \(exit status 0\)", up.text()), up.text()
