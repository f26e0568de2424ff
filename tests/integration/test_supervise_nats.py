"""``make up`` with ``broker.engine = "nats"``: one supervised program per NATS node.

``camstack up`` on a data folder in tmp with free ports: the three nodes
(``nats-node-<i>``, each ``python -m broker run --node <i>``), the ingestor owning every
partition, the encoder on the JetStream runner (its queue a stream on the cluster itself,
no separate ``nats`` program), the monitor and the web service, all on MQTT 3.1.1. A
device added with ``python -m broker device add`` (every node reloaded) streams into
videos; a SIGKILLed node is brought back by supervisord; Ctrl-C stops everything with
exit 0. Waits are for positive signals
(supervisord's log, the catalog, SUBACK-backed readiness), never sleeps.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from camstack.servers import SeaweedHandle
from camstack.sim import Fleet, SimCamera, SimConfig
from camstack.supervise import supervisorctl_argv
from config.loader import to_toml
from config.settings import CatalogSettings, MqttSettings, TlsSettings
from tests.integration.test_nats_broker_cli import NODES, free_layout
from tests.support.faults import wait_until

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CAMSTACK = [sys.executable, "-m", "camstack"]


@pytest.fixture
def up_nats(tmp_path: Path) -> Iterator[dict[str, Any]]:
    mqtt_base, port_base = free_layout()
    toml = tmp_path / "broker.toml"
    toml.write_text(to_toml({"engine": "nats", "tls_bind": "127.0.0.1",
                             "server_names": ["localhost", "127.0.0.1", "camhub.test"],
                             "nats": {"nodes": NODES, "mqtt_port_base": mqtt_base,
                                      "port_base": port_base,
                                      "guard": {"metrics_port": 0}}}), encoding="utf-8")
    data = tmp_path / "data"
    state: dict[str, Any] = {"base": [*CAMSTACK, "--config", str(toml), "--data-dir",
                                      str(data)],
                             "data": data, "mqtt_base": mqtt_base, "port_base": port_base,
                             "out": tmp_path / "up.out"}
    yield state
    proc = state.get("proc")
    if proc is not None and proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def test_make_up_runs_every_nats_node_supervised(up_nats: dict[str, Any],
                                                 seaweedfs: SeaweedHandle) -> None:
    from catalog import open_catalog  # noqa: PLC0415

    base, data, out = up_nats["base"], up_nats["data"], up_nats["out"]
    port_base = up_nats["port_base"]
    res = subprocess.run([*base, "up", "--render-only"], cwd=REPO, capture_output=True,
                         text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    conf = Path(res.stdout.strip().splitlines()[-1])
    text = conf.read_text()
    assert "[program:broker]" not in text and "[program:nats-node-2]" in text
    assert "[program:nats]" not in text  # no job queue server beside the cluster
    bucket = "upn-" + os.urandom(4).hex()
    seaweedfs.create_bucket(bucket)
    s3 = seaweedfs.s3_settings(bucket=bucket)
    s3d = s3.model_dump(mode="json", exclude_none=True)
    s3d["secret_access_key"] = s3.secret_access_key.get_secret_value()
    ports = [port_base + 10 * i for i in range(NODES)]
    for name in ("ingestor", "encoder", "monitor", "web"):
        path = data / "config" / f"{name}.toml"
        doc: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
        assert doc["mqtt"]["protocol"] == "3.1.1"
        if name == "web":
            doc["http"] = {**doc["http"], "port": 0}
        else:
            doc["metrics"] = {**doc["metrics"], "port": 0}
        if name in ("ingestor", "encoder"):
            assert doc["runner"] == "jetstream"
            # The job queue is the cluster, with the service's own account.
            assert doc["jobqueue"]["servers"] == [f"nats://127.0.0.1:{p}" for p in ports]
            assert doc["jobqueue"]["user"] == name and doc["jobqueue"]["replicas"] == 3
            doc |= {"store": {"backend": "s3", "s3": s3d}}
        if name == "ingestor":
            assert doc["ingest"]["partitions"] == list(range(64))
            assert doc["ingest"]["one_filter"] is True  # a new install (docs/scaling.md)
            doc["ingest"] |= {"frames_per_video": 20, "idle_seal_s": 1.0}
        if name == "encoder":
            doc["encode"] = {"preset": "ultrafast", "decode_threads": 1}
        path.write_text(to_toml(doc), encoding="utf-8")
    with out.open("ab") as fh:
        proc = subprocess.Popen([*base, "up"], cwd=REPO, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
    up_nats["proc"] = proc

    def log() -> str:
        return str(out.read_text(errors="replace"))

    def count(pattern: str) -> int:
        assert proc.poll() is None, log()
        return len(re.findall(pattern, log()))

    programs = [f"nats-node-{i}" for i in range(NODES)] + [
        "nats-guard", "ingestor", "encoder", "monitor", "web"]
    for name in programs:
        wait_until(lambda n=name: count(rf"success: {n} entered RUNNING state") >= 1,  # type: ignore[misc]
                   90, f"{name} RUNNING:\n{log()[-3000:]}")
    assert f"running {', '.join(programs)}" in log()
    guard_log = data / "logs" / "nats-guard.log"
    wait_until(lambda: "guard_connected" in guard_log.read_text(errors="replace"), 60,
               "the guard logged in as the system user")
    ingestor_log = data / "logs" / "ingestor.log"
    wait_until(lambda: "ingestor_ready" in ingestor_log.read_text(errors="replace"), 90,
               "the ingestor's 64 SUBACKs")

    add = subprocess.run([*base, "device", "add", "upnats1", "--json", "--wired",
                          "--broker-host", "camhub.test", "--secrets-dir", str(data / "sec")],
                         cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert add.returncode == 0, add.stdout + add.stderr
    info = json.loads(add.stdout)
    assert "reloaded (SIGHUP to 3)" in info["reload"]
    settings = MqttSettings(host="127.0.0.1", port=up_nats["mqtt_base"] + 2,
                            username="upnats1", password=info["password"],
                            client_id="upnats1", protocol="3.1.1", reconnect_min_s=0.2,
                            reconnect_max_s=1.0,
                            tls=TlsSettings(enabled=True, ca_file=data / "pki" / "ca.crt"))
    cam = SimCamera("upnats1", settings, SimConfig(fps=10, width=160, height=120,
                                                   frames=60, status_interval_s=1.0))
    fleet = Fleet([cam])
    cat = open_catalog(CatalogSettings(path=data / "storage" / "state" / "catalog.sqlite3"))
    try:
        fleet.start()
        wait_until(lambda: len(cat.list_videos(device="upnats1")) >= 1, 120, "a first video")
        pids = _pids(conf)
        os.kill(pids["nats-node-1"], signal.SIGKILL)
        wait_until(lambda: count(r"exited: nats-node-1 \(terminated by SIGKILL") >= 1, 60,
                   "supervisord seeing node 1 die")
        wait_until(lambda: count(r"success: nats-node-1 entered RUNNING state") >= 2, 60,
                   "node 1 back")
        wait_until(lambda: cam.stats.frames_acked >= 60 or cam.error is not None, 60,
                   "the camera's 60 frames acknowledged")
        fleet.stop(timeout=60)
        acked = cam.stats.frames_acked
        assert acked == 60 and cam.error is None
        wait_until(lambda: sum(v.frames for v in cat.list_videos(device="upnats1")) >= acked,
                   120, "every acknowledged frame in a video")
    finally:
        fleet.stop(timeout=10)
        cat.close()
    # The camera (within its budget, its own client id with the 3.1.1 session tag) and
    # the services were never closed by the guard.
    assert "device_kicked" not in guard_log.read_text(errors="replace")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(120) == 0, log()
    for i in range(NODES):
        assert re.search(rf"stopped: nats-node-{i} \(exit status 0\)", log()), log()
    assert re.search(r"stopped: nats-guard \(exit status 0\)", log()), log()


def _pids(conf: Path) -> dict[str, int]:
    res = subprocess.run(supervisorctl_argv(conf, "status"), capture_output=True, text=True,
                         timeout=30, check=False)
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\S+)\s+RUNNING\s+pid (\d+),",
                                                 res.stdout, re.M)}
