"""Run the real services (``python -m ingestor`` / ``python -m encoder``) as processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from camstack.brokerproc import BrokerHandle
from config.loader import to_toml

REPO = Path(__file__).resolve().parents[1]
"""The checkout this module belongs to: services run from it (``python -m`` finds its
packages first), not from wherever the venv's editable install points."""


def service_config(broker: BrokerHandle, account: str, storage_root: Path, path: Path,
                   **sections: dict[str, Any]) -> Path:
    """Write a TOML config for a service account against ``broker``.

    Args:
        broker: The running broker.
        account: Service account (``ingestor``, ``encoder``, ``encoder-2`` …).
        storage_root: Storage root folder.
        path: Where to write the TOML file.
        **sections: More sections, merged (e.g. ``ingest={"frames_per_video": 10}``).

    Returns:
        ``path``.
    """
    mqtt = broker.mqtt_settings(account).model_dump(mode="json")
    mqtt.pop("password")
    mqtt = {k: v for k, v in mqtt.items() if v is not None}
    mqtt["tls"] = {k: v for k, v in mqtt["tls"].items() if v is not None}
    data: dict[str, Any] = {
        "mqtt": mqtt,
        "storage": {"root": str(storage_root)},
        "log": {"level": "info", "format": "json"},
        "metrics": {"enabled": True, "port": 0},
    }
    if account.startswith("encoder"):
        # Beside the test's storage root, not the repository's data/pki.
        data["signing_key_file"] = str(storage_root.parent / "pki" / "video-signing.key")
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values} if isinstance(values, dict) else values
    path.write_text(to_toml(data), encoding="utf-8")
    return path


Metrics = dict[tuple[str, tuple[tuple[str, str], ...]], float]
"""Prometheus samples by (name, sorted label pairs)."""


class ServiceProcess:
    """A service subprocess with its JSON log lines collected in a file."""

    def __init__(self, module: str, config: Path, log_path: Path,
                 env: dict[str, str] | None = None, args: list[str] | None = None) -> None:
        self.module = module
        self.config = config
        self.log_path = log_path
        self.env = env or {}
        self.args = args or []
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ServiceProcess:
        """Start the process (appending to the log)."""
        env = {**os.environ, "CAM_CONFIG": str(self.config), "PYTHONUNBUFFERED": "1",
               **self.env}
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", self.module, *self.args], cwd=REPO,
                                     env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        return self

    def events(self) -> list[dict[str, Any]]:
        """Parsed JSON log lines so far (non-JSON lines are skipped)."""
        out: list[dict[str, Any]] = []
        if not self.log_path.exists():
            return out
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                out.append(obj)
        return out

    def wait_event(self, pred: Callable[[dict[str, Any]], bool] | str,
                   timeout: float = 30.0) -> dict[str, Any]:
        """Wait for a log event (by name or predicate); fails if the process dies."""
        check = (lambda e: e.get("event") == pred) if isinstance(pred, str) else pred
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in self.events():
                if check(e):
                    return e
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"{self.module} exited {self.proc.returncode}:\n"
                                     + self.log_path.read_text(errors="replace")[-3000:])
            time.sleep(0.05)
        raise AssertionError(f"no matching event from {self.module} in {timeout}s:\n"
                             + self.log_path.read_text(errors="replace")[-3000:])

    def close(self) -> None:
        """Stop it (a test's cleanup list calls this)."""
        self.stop(10)

    def kill(self) -> None:
        """SIGKILL, as a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def scrape(svc: ServiceProcess) -> Metrics:
    """The Prometheus metrics of a running service (port from its log)."""
    port = svc.wait_event("metrics_listening")["port"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: Metrics = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out
