"""The operator-facing surface: systemd units, help texts, console logs under a TTY."""

from __future__ import annotations

import argparse
import configparser
import json
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from camstack.brokerproc import free_port
from camstack.cli import build_parser
from camstack.systemd import render_units, systemd_version, write_units
from config.loader import to_toml

REPO = Path(__file__).resolve().parents[2]


# --- systemd ------------------------------------------------------------------------------

def _ini(text: str) -> configparser.ConfigParser:
    ini = configparser.ConfigParser(interpolation=None, strict=False)
    ini.optionxform = str  # type: ignore[assignment,method-assign]
    ini.read_string(text)
    return ini


def test_systemd_units_restart_and_sandbox() -> None:
    units = render_units(Path("/srv/camstack"), user="camcam", python="/opt/cs/bin/python")
    assert set(units) == {"camstack-broker.service", "camstack-ingestor.service",
                          "camstack-encoder.service", "camstack-monitor.service",
                          "camstack-web.service",
                          "camstack.target"}
    for name, text in units.items():
        if not name.endswith(".service"):
            continue
        ini = _ini(text)
        svc = ini["Service"]
        assert svc["Restart"] == "always" and int(svc["RestartSec"]) > 0, name
        assert svc["RestartSteps"] and svc["RestartMaxDelaySec"], "the pause grows"
        assert ini["Unit"]["StartLimitIntervalSec"] == "0", "never gives up"
        assert svc["User"] == svc["Group"] == "camcam", name
        for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict",
                           "ReadWritePaths": "/srv/camstack", "PrivateTmp": "yes",
                           "ProtectHome": "yes", "PrivateDevices": "yes",
                           "CapabilityBoundingSet": ""}.items():
            assert svc[key] == value, (name, key)
        assert svc["ExecStart"].startswith("/opt/cs/bin/python -m "), name
        assert ini["Install"]["WantedBy"] == "camstack.target"
    assert "CAM_CONFIG=/srv/camstack/config/ingestor.toml" in units[
        "camstack-ingestor.service"]
    assert "--data-dir /srv/camstack run" in units["camstack-broker.service"]
    assert "After=network-online.target camstack-broker.service" in units[
        "camstack-encoder.service"]
    # A data folder under /home stays reachable (read-only home, writable data folder).
    home = render_units(Path("/home/pi/camdata"))["camstack-monitor.service"]
    assert "ProtectHome=read-only" in home and "ReadWritePaths=/home/pi/camdata" in home
    with pytest.raises(ValueError, match="absolute"):
        render_units(Path("data"))


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze missing (Debian package systemd)")
def test_systemd_analyze_verify_accepts_the_units(tmp_path: Path) -> None:
    version = systemd_version()
    units = render_units(tmp_path / "data", restart_steps=version is None or version >= 254)
    files = write_units(units, tmp_path / "units")
    res = subprocess.run(["systemd-analyze", "verify", "--man=no", *map(str, files)],
                         capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0 and res.stderr.strip() == "", res.stderr
    # The check can fail: a wrong value is reported.
    bad = tmp_path / "units" / "camstack-broker.service"
    bad.write_text(bad.read_text().replace("ProtectSystem=strict", "ProtectSystem=sometimes"))
    res = subprocess.run(["systemd-analyze", "verify", "--man=no", str(bad)],
                         capture_output=True, text=True, timeout=120, check=False)
    assert "sometimes" in res.stderr


# --- help texts ---------------------------------------------------------------------------

def _parsers(p: argparse.ArgumentParser, path: str = "camstack"
             ) -> list[tuple[str, argparse.ArgumentParser]]:
    out = [(path, p)]
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out += _parsers(sub, f"{path} {name}")
    return out


INTERNALS = re.compile(r"\b\w+\.(py|toml|conf|json|cpp|h|bin)\b|\b[A-Z][a-z]+(Settings|Store|"
                       r"Service|Error|Handle)\b|\bpython -m\b")


def test_every_help_shows_defaults_and_no_internals() -> None:
    parsers = _parsers(build_parser())
    assert len(parsers) >= 20
    problems = []
    for path, p in parsers:
        for action in p._actions:
            if not action.option_strings or isinstance(action, argparse._HelpAction):
                continue
            if not action.help:
                problems.append(f"{path} {action.option_strings[0]}: no help")
            elif action.default not in (None, False, "", argparse.SUPPRESS):
                shown = p._get_formatter()._format_action(action)
                if "default" not in shown:
                    problems.append(f"{path} {action.option_strings[-1]}: default not shown")
        for action in p._actions:
            for piece in (action.help or "", p.description or ""):
                m = INTERNALS.search(piece)
                if m:
                    problems.append(f"{path}: {m[0]!r} in {piece[:60]!r}")
    assert problems == []


def test_cli_help_runs_without_starting_anything() -> None:
    res = subprocess.run([sys.executable, "-m", "camstack", "up", "--help"], cwd=REPO,
                         capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0 and "Ctrl-C" in res.stdout


def test_mosquitto_conf_points_to_docs_that_exist() -> None:
    text = (REPO / "broker" / "templates" / "mosquitto.conf.in").read_text()
    docs = re.findall(r"docs/[\w./-]+\.md", text)
    assert docs, "the header names its documentation"
    for doc in docs:
        assert (REPO / doc).is_file(), doc


# --- console logs under a TTY -------------------------------------------------------------

def test_services_log_console_lines_under_a_tty(tmp_path: Path) -> None:
    cfg = tmp_path / "encoder.toml"
    cfg.write_text(to_toml({
        "mqtt": {"host": "127.0.0.1", "port": free_port(), "username": "encoder",
                 "password": "x", "tls": {"enabled": False}, "reconnect_min_s": 0.2},
        "storage": {"root": str(tmp_path / "storage")},
        "metrics": {"enabled": False},
        "log": {"format": "auto"},
    }))
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child
        os.environ["CAM_CONFIG"] = str(cfg)
        os.chdir(REPO)
        os.execv(sys.executable, [sys.executable, "-m", "encoder"])
    out = b""
    try:
        deadline = time.monotonic() + 60
        while b"mqtt_connect_failed" not in out and time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 1.0)
            if ready:
                try:
                    out += os.read(fd, 4096)
                except OSError:
                    break
    finally:
        os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)
        os.close(fd)
    text = re.sub(r"\x1b\[[0-9;]*m", "", out.decode(errors="replace"))
    line = next((x for x in text.splitlines() if "mqtt_connect_failed" in x), None)
    assert line is not None, text
    with pytest.raises(ValueError):
        json.loads(line)
    assert "[warning" in line and "encoder" in line
