"""compose.yaml parses, and everything it mounts exists once ./data is prepared.

No Docker engine here: the test prepares a data folder the way docs/operations.md says
(``init`` then ``service-config --compose``) and follows every path a container would
open (broker config, its certificate and key, the services' configs, CA, password
secrets) back through the bind mounts to a file on the host.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from config.loader import load_settings
from config.settings import EncoderSettings, IngestorSettings, MonitorSettings, WebSettings

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((REPO / "compose.yaml").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project folder whose ./data went through init + service-config --compose."""
    root = tmp_path_factory.mktemp("composeproj")
    env = {k: v for k, v in os.environ.items() if k != "CAM_CONFIG"}
    for args in (["init"], ["service-config", "--compose"]):
        res = subprocess.run([sys.executable, "-m", "camstack", "--data-dir", "data", *args],
                             cwd=root, env={**env, "PYTHONPATH": str(REPO)},
                             capture_output=True, text=True, check=False, timeout=60)
        assert res.returncode == 0, res.stdout + res.stderr
    return root


def _mounts(svc: dict[str, Any], root: Path) -> list[tuple[PurePosixPath, Path]]:
    out = []
    for vol in svc.get("volumes", []):
        src, dst = vol.split(":")[:2]
        assert src.startswith("./"), f"bind mounts only, relative to the project: {vol}"
        out.append((PurePosixPath(dst), root / src))
    return sorted(out, key=lambda m: len(m[0].parts), reverse=True)


def _host_path(inside: str, svc: dict[str, Any], root: Path, compose: dict[str, Any]) -> Path:
    """Where a path a container opens lives on the host (mounts and secrets)."""
    p = PurePosixPath(inside)
    if p.parent == PurePosixPath("/run/secrets"):
        assert p.name in svc.get("secrets", []), f"{p.name} not given to this service"
        return root / str(compose["secrets"][p.name]["file"])
    for dst, src in _mounts(svc, root):
        if p == dst or dst in p.parents:
            return src / p.relative_to(dst)
    raise AssertionError(f"{inside} is not mounted into the container")


def test_services_images_policies_and_health(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"broker", "ingestor", "encoder"} <= set(services)
    broker = services["broker"]
    assert broker["build"] == {"context": ".", "target": "broker"}
    dockerfile = (REPO / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^FROM eclipse-mosquitto:2\S* AS broker$", dockerfile, re.M)
    for name in ("ingestor", "encoder"):
        svc = services[name]
        assert svc["build"] == "." and (REPO / "Dockerfile").is_file()
        assert svc["depends_on"]["broker"]["condition"] == "service_healthy"
    for name in ("broker", "ingestor", "encoder"):
        svc = services[name]
        assert svc["restart"] in ("unless-stopped", "always", "on-failure")
        assert svc["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL")
        assert svc["user"] == "${CAM_UID:-1000}:${CAM_GID:-1000}"


def test_no_secret_in_environment_or_image(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        for key, value in (svc.get("environment") or {}).items():
            assert "PASSWORD" not in key.upper() or str(value).startswith("/run/secrets/"), name
    ignored = (REPO / ".dockerignore").read_text().splitlines()
    assert ignored[ignored.index("*") if "*" in ignored else 0] == "*", "deny by default"
    assert not any(line.strip("!/") in ("data", "firmware") for line in ignored
                   if line.startswith("!"))


def test_dockerfile_copies_files_that_exist() -> None:
    text = (REPO / "Dockerfile").read_text()
    for line in re.findall(r"^COPY (.+)$", text, re.M):
        if line.startswith("--from="):  # from an earlier build stage, not the context
            continue
        for src in line.split()[:-1]:
            assert (REPO / src).exists(), src
    assert "USER 1000:1000" in text


def test_every_mounted_and_opened_file_exists(compose: dict[str, Any], prepared: Path) -> None:
    services = compose["services"]
    for name, svc in services.items():
        if "cluster" in svc.get("profiles", []):
            continue  # the NATS engine's, rendered only with engine = "nats" (below)
        for _, src in _mounts(svc, prepared):
            assert src.exists(), f"{name}: {src} missing"
        for secret in svc.get("secrets", []):
            assert (prepared / compose["secrets"][secret]["file"]).is_file(), secret

    broker = services["broker"]
    conf_inside = broker["command"][broker["command"].index("-c") + 1]
    conf = _host_path(conf_inside, broker, prepared, compose)
    text = conf.read_text()
    for key in ("password_file", "acl_file", "cafile", "certfile", "keyfile"):
        value = re.search(rf"^{key} (\S+)$", text, re.M)
        assert value, key
        assert _host_path(value[1], broker, prepared, compose).is_file(), key
    persist = re.search(r"^persistence_location (\S+)$", text, re.M)
    assert persist and _host_path(persist[1], broker, prepared, compose).is_dir()
    assert "listener 8883 0.0.0.0" in text
    # The guard plugin the config loads is the one the broker image installs.
    plugin = re.search(r"^plugin (\S+)$", text, re.M)
    assert plugin
    dockerfile = (REPO / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(rf"^COPY --from=guard-build \S+ {re.escape(plugin[1])}$", dockerfile, re.M)
    # The CA key never reaches the broker container.
    with pytest.raises(AssertionError, match="not mounted"):
        _host_path("/data/pki/ca.key", broker, prepared, compose)

    models: dict[str, type[IngestorSettings] | type[EncoderSettings]] = {
        "ingestor": IngestorSettings, "encoder": EncoderSettings}
    for name, model in models.items():
        svc = services[name]
        cfg = _host_path(svc["environment"]["CAM_CONFIG"], svc, prepared, compose)
        settings: IngestorSettings | EncoderSettings = load_settings(model, cfg)
        assert settings.mqtt.host == "broker" and settings.mqtt.username == name
        assert settings.mqtt.password_file is not None and settings.mqtt.tls.ca_file is not None
        assert _host_path(str(settings.mqtt.password_file), svc, prepared, compose).is_file()
        assert _host_path(str(settings.mqtt.tls.ca_file), svc, prepared, compose).is_file()
        assert _host_path(str(settings.storage.root), svc, prepared, compose).is_dir()

    mon = services["monitor"]
    mcfg = mon["command"][mon["command"].index("--config") + 1]
    msettings = load_settings(MonitorSettings, _host_path(mcfg, mon, prepared, compose))
    assert msettings.mqtt.password_file is not None
    assert _host_path(str(msettings.mqtt.password_file), mon, prepared, compose).is_file()

    web = services["web"]
    wcfg = web["command"][web["command"].index("--config") + 1]
    wsettings = load_settings(WebSettings, _host_path(wcfg, web, prepared, compose))
    assert wsettings.mqtt.username == "operator-web" and wsettings.mqtt.host == "broker"
    for path in (wsettings.mqtt.password_file, wsettings.mqtt.tls.ca_file,
                 wsettings.http.tls_cert_file, wsettings.http.tls_key_file):
        assert path is not None and _host_path(str(path), web, prepared, compose).is_file()
    for folder in (wsettings.storage.root, wsettings.http.users_file.parent,
                   wsettings.catalog.path.parent):
        assert _host_path(str(folder), web, prepared, compose).is_dir()
    # The web container gets the server key, never the CA key.
    with pytest.raises(AssertionError, match="not mounted"):
        _host_path("/data/pki/ca.key", web, prepared, compose)


def test_server_certificate_names_the_compose_broker(prepared: Path) -> None:
    from broker.layout import Layout  # noqa: PLC0415
    from camstack.stack import server_cert_names  # noqa: PLC0415

    assert "broker" in server_cert_names(Layout(prepared / "data"))


def test_health_check_account_exists(compose: dict[str, Any], prepared: Path) -> None:
    test = " ".join(compose["services"]["broker"]["healthcheck"]["test"][1:])
    user = re.search(r"-u (\S+)", test)
    assert user is not None
    accounts = (prepared / "data" / "broker" / "passwd").read_text()
    assert re.search(rf"^{re.escape(user[1])}:", accounts, re.M)
    acl = (prepared / "data" / "broker" / "acl").read_text()
    assert f"user {user[1]}\ntopic read #" in acl


def test_make_up_supervises_existing_modules_with_rendered_configs(prepared: Path) -> None:
    import configparser  # noqa: PLC0415

    from broker.layout import Layout  # noqa: PLC0415
    from camstack.supervise import render_supervisord  # noqa: PLC0415

    ini = configparser.ConfigParser(interpolation=None)
    ini.read_string(render_supervisord(Layout(prepared / "data")))
    programs = {s.split(":", 1)[1]: ini[s] for s in ini.sections() if s.startswith("program:")}
    assert set(programs) == {"broker", "ingestor", "encoder", "monitor", "web"}
    assert ini["supervisord"]["nodaemon"] == "true"
    for name, prog in programs.items():
        module = re.search(r"-m (\w+)", prog["command"])
        assert module is not None and (REPO / module[1] / "__main__.py").is_file(), name
        config = re.search(r'CAM_CONFIG="([^"]+)"', prog["environment"])
        if name != "broker":  # the file `camstack init` rendered
            assert config is not None and Path(config[1]).is_file(), name
        assert prog["autorestart"] == "true" and prog["stopsignal"] == "TERM", name
        assert int(prog["startretries"]) >= 3 and int(prog["stopwaitsecs"]) >= 30, name
    # supervisord stops the highest priority first: the broker goes last, so the
    # services' offline statuses are still delivered.
    assert min(programs, key=lambda n: int(programs[n]["priority"])) == "broker"
    assert "run" in programs["broker"]["command"].split()


def test_make_up_runs_nats_only_for_a_local_jetstream_runner(tmp_path: Path) -> None:
    import configparser  # noqa: PLC0415

    from broker.layout import Layout  # noqa: PLC0415
    from camstack.servers import nats_server_binary  # noqa: PLC0415
    from camstack.supervise import nats_conf_path, write_supervisord  # noqa: PLC0415

    layout = Layout(tmp_path / "data")
    (layout.data_dir / "config").mkdir(parents=True)
    enc = layout.data_dir / "config" / "encoder.toml"

    def programs() -> dict[str, Any]:
        ini = configparser.ConfigParser(interpolation=None)
        ini.read_string(write_supervisord(layout).read_text())
        return {s.split(":", 1)[1]: ini[s] for s in ini.sections() if s.startswith("program:")}

    assert "nats" not in programs()  # the default MQTT runner needs no NATS
    enc.write_text('runner = "jetstream"\n[jobqueue]\nservers = ["nats://nats.example:4222"]\n')
    assert "nats" not in programs()  # somebody else's NATS
    enc.write_text('runner = "jetstream"\n[jobqueue]\nservers = ["nats://127.0.0.1:4333"]\n')
    progs = programs()
    nats = progs["nats"]
    assert nats["command"].split() == [str(nats_server_binary()), "-c",
                                       str(nats_conf_path(layout))]
    assert nats["autorestart"] == "true"
    # Stopped after the services that use it, before the broker.
    prio = {n: int(p["priority"]) for n, p in progs.items()}
    assert prio["broker"] < prio["nats"] < min(prio[n] for n in ("ingestor", "encoder"))
    conf = nats_conf_path(layout).read_text()
    assert 'listen: "127.0.0.1:4333"' in conf and "jetstream {" in conf
    # nats-server itself accepts the rendered file.
    res = subprocess.run([str(nats_server_binary()), "-t", "-c", str(nats_conf_path(layout))],
                         capture_output=True, text=True, timeout=30, check=False)
    assert res.returncode == 0, res.stdout + res.stderr


# --- profile "cluster": the NATS engine in Compose (never run: no Docker here) --------

CLUSTER_SERVICES = {"nats-0", "nats-1", "nats-2", "nats-guard", "ingestor-cluster",
                    "encoder-cluster", "monitor-cluster", "web-cluster"}


@pytest.fixture(scope="module")
def prepared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """./data through init + service-config --compose with ``engine = "nats"``."""
    root = tmp_path_factory.mktemp("composecluster")
    (root / "broker.toml").write_text('engine = "nats"\n', encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "CAM_CONFIG"}
    for args in (["init"], ["service-config", "--compose"]):
        res = subprocess.run([sys.executable, "-m", "camstack", "--config", "broker.toml",
                              "--data-dir", "data", *args],
                             cwd=root, env={**env, "PYTHONPATH": str(REPO)},
                             capture_output=True, text=True, check=False, timeout=60)
        assert res.returncode == 0, res.stdout + res.stderr
    return root


def _mirror(svc: dict[str, Any], root: Path, dest: Path) -> Path:
    """A folder laid out as the container sees it: each mount a link to its host source."""
    for dst, src in _mounts(svc, root):
        link = dest / str(dst).lstrip("/")
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to(src)
    return dest


def test_cluster_profile_services_and_every_mount_exist(compose: dict[str, Any],
                                                        prepared_cluster: Path) -> None:
    services = compose["services"]
    assert {n for n, s in services.items() if "cluster" in s.get("profiles", [])} \
        == CLUSTER_SERVICES
    for name in CLUSTER_SERVICES:
        svc = services[name]
        assert svc["restart"] == "unless-stopped" and svc["user"].startswith("${CAM_UID")
        for dep in svc.get("depends_on", {}):
            assert dep in CLUSTER_SERVICES, f"{name} depends on {dep} outside the profile"
        for _, src in _mounts(svc, prepared_cluster):
            assert src.exists(), f"{name}: {src} missing"
        for secret in svc.get("secrets", []):
            assert (prepared_cluster / compose["secrets"][secret]["file"]).is_file(), secret
    # The default services' mounts exist too: one data folder serves both.
    for name, svc in services.items():
        for _, src in _mounts(svc, prepared_cluster):
            assert src.exists(), f"{name}: {src} missing"
    for i in range(3):
        assert services[f"nats-{i}"]["image"] == "nats:2.15.1-alpine"
    # The node containers never get the CA key.
    with pytest.raises(AssertionError, match="not mounted"):
        _host_path("/data/pki/ca.key", services["nats-0"], prepared_cluster, compose)


def test_cluster_node_configs_pass_nats_server_check_as_mounted(
        compose: dict[str, Any], prepared_cluster: Path, tmp_path: Path) -> None:
    from broker.layout import Layout  # noqa: PLC0415
    from broker.pki import certificate_names  # noqa: PLC0415
    from camstack.servers import nats_server_binary  # noqa: PLC0415

    services = compose["services"]
    pki = Layout(prepared_cluster / "data").pki
    names = ["nats-0", "nats-1", "nats-2"]
    assert sorted(certificate_names(pki.route_cert)) == names
    assert set(names) <= set(certificate_names(pki.server_cert))
    for i in range(3):
        svc = services[f"nats-{i}"]
        conf_inside = svc["command"][svc["command"].index("-c") + 1]
        text = _host_path(conf_inside, svc, prepared_cluster, compose).read_text()
        # Routes by container name, TLS verified, the route password.
        for j, name in enumerate(names):
            assert re.search(rf"nats-route://route:[\w-]+@{name}:{14221 + 10 * j}", text)
        assert f'advertise: "nats-{i}:{14221 + 10 * i}"' in text and "verify: true" in text
        assert f'listen: "0.0.0.0:{14220 + 10 * i}"' in text  # the guard is another container
        # Every file the config names is mounted.
        for path in re.findall(r'(?:cert_file|key_file|ca_file): "([^"]+)"', text):
            assert _host_path(path, svc, prepared_cluster, compose).is_file(), path
        store = re.search(r'store_dir: "([^"]+)"', text)
        assert store and _host_path(store[1], svc, prepared_cluster, compose).is_dir()
        published = {p.split(":")[0] for p in svc["ports"]}
        mqtt = re.search(r'mqtt \{\n  listen: "0.0.0.0:(\d+)"', text)
        assert mqtt and published == {mqtt[1]}
        health = " ".join(svc["healthcheck"]["test"])
        assert f'http: "127.0.0.1:{14222 + 10 * i}"' in text and f":{14222 + 10 * i}/" in health
        # nats-server -t on the config where the container would see it: a mirror of the
        # mounts, container paths prefixed with the mirror's root.
        root = _mirror(svc, prepared_cluster, tmp_path / f"ctr{i}")
        conf = root / conf_inside.lstrip("/")
        conf.unlink()
        conf.write_text(text.replace('"/data/', f'"{root}/data/'), encoding="utf-8")
        res = subprocess.run([str(nats_server_binary()), "-t", "-c", str(conf)],
                             capture_output=True, text=True, timeout=30, check=False)
        assert res.returncode == 0 and "is valid" in res.stdout + res.stderr, res.stderr


def test_cluster_services_reach_the_nodes_by_name(compose: dict[str, Any],
                                                  prepared_cluster: Path) -> None:
    from config.settings import BrokerSettings  # noqa: PLC0415

    services = compose["services"]
    s3 = '\n[store]\nbackend = "s3"\n[store.s3]\nbucket = "camstack"\n'

    def cfg(name: str) -> Path:
        svc = services[name]
        inside = (svc.get("environment") or {}).get("CAM_CONFIG") or \
            svc["command"][svc["command"].index("--config") + 1]
        return _host_path(inside, svc, prepared_cluster, compose)

    models: dict[str, Any] = {"ingestor-cluster": IngestorSettings,
                              "encoder-cluster": EncoderSettings,
                              "monitor-cluster": MonitorSettings, "web-cluster": WebSettings}
    for name, model in models.items():
        path = cfg(name)
        if name in ("ingestor-cluster", "encoder-cluster"):
            # The JetStream runner needs an S3 store: the operator adds it (compose.yaml).
            path = path.with_name(path.stem + ".s3.toml")
            path.write_text(cfg(name).read_text() + s3, encoding="utf-8")
        settings = load_settings(model, path)
        svc = services[name]
        assert settings.mqtt.host in CLUSTER_SERVICES and settings.mqtt.protocol == "3.1.1"
        assert settings.mqtt.port == 8883 + int(settings.mqtt.host[-1])
        assert _host_path(str(settings.mqtt.password_file), svc, prepared_cluster,
                          compose).is_file()
        assert _host_path(str(settings.mqtt.tls.ca_file), svc, prepared_cluster,
                          compose).is_file()
        if name in ("ingestor-cluster", "encoder-cluster"):
            assert settings.jobqueue.servers == [
                "nats://nats-0:14220", "nats://nats-1:14230", "nats://nats-2:14240"]
            assert settings.jobqueue.password_file == settings.mqtt.password_file
        if name == "ingestor-cluster":  # a new install: one filter, no delivery stall
            assert settings.ingest.one_filter and settings.ingest.partitions == list(range(64))
    guard = services["nats-guard"]
    assert guard["command"][0] == "natsguard"
    assert (REPO / "natsguard" / "__main__.py").is_file()
    assert re.search(r"^COPY natsguard ", (REPO / "Dockerfile").read_text(), re.M)
    b = load_settings(BrokerSettings, cfg("nats-guard"))
    assert b.engine == "nats" and b.nats.hosts == ["nats-0", "nats-1", "nats-2"]
    assert b.nats.guard.servers == [
        "nats://nats-0:14220", "nats://nats-1:14230", "nats://nats-2:14240"]
    assert b.nats.guard.password_file is not None
    assert _host_path(str(b.nats.guard.password_file), guard, prepared_cluster,
                      compose).is_file()
