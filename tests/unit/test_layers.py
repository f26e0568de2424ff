"""Layers import downward only (docs/architecture.md).

Every import statement of every module is read with :mod:`ast` (function-level imports
included) and checked against the table of what each layer may use.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

LAYERS: dict[str, int] = {
    "contract": 0,
    "config": 1,
    "mqttclient": 2,
    "objstore": 2,
    "catalog": 2,
    "jobqueue": 2,
    "broker": 3,
    "ingestor": 4,
    "encoder": 4,
    "monitor": 4,
    "web": 4,
    "natsguard": 4,
    "camstack": 5,
    "bench": 6,
    "tests": 6,
}
"""A package may import packages of a lower number, and itself; services (4) never
import each other; nothing imports ``bench`` or ``tests``."""

THIRD_PARTY_FORBIDDEN: dict[str, set[str]] = {
    # The contract is the stdlib only: firmware tests, tools and every service share it.
    "contract": {"*"},
    "config": {"paho", "av", "boto3", "psycopg", "prometheus_client"},
}

PURE_MODULES = {
    # Pure logic: no paho, no PyAV, no database or object store client, no file system.
    "contract/codec.py", "contract/layout.py", "contract/events.py", "contract/topics.py",
    "contract/ids.py", "contract/partition.py", "ingestor/assembler.py",
    "ingestor/batcher.py", "ingestor/acks.py", "ingestor/handoff.py",
    "monitor/health.py", "encoder/timeline.py", "web/live.py", "web/auth.py",
    "web/commands.py", "jobqueue/job.py", "jobqueue/lambda_handler.py",
    "jobqueue/backlog.py", "natsguard/meter.py",
}
IMPURE = {"paho", "av", "boto3", "psycopg", "sqlite3", "shutil", "pathlib"}


def _modules() -> list[Path]:
    return sorted(p for pkg in LAYERS for p in (REPO / pkg).rglob("*.py")
                  if ".venv" not in p.parts)


def _imports(source: str, rel: str) -> set[str]:
    tree = ast.parse(source, filename=rel)
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def _violations(rel: str, source: str) -> list[str]:
    stdlib = sys.stdlib_module_names
    problems: list[str] = []
    pkg = rel.split("/", maxsplit=1)[0]
    level = LAYERS[pkg]
    for name in _imports(source, rel):
        top = name.split(".")[0]
        if top in LAYERS:
            other = LAYERS[top]
            if top != pkg and (other >= level or (other == 4 and level == 4)):
                problems.append(f"{rel} imports {name} ({top} is not below {pkg})")
            continue
        banned = THIRD_PARTY_FORBIDDEN.get(pkg, set())
        if top not in stdlib and top != "__future__" and ("*" in banned or top in banned):
            problems.append(f"{rel} imports third-party {name}")
        if rel in PURE_MODULES and top in IMPURE:
            problems.append(f"{rel} is pure logic but imports {name}")
    return problems


def test_layers_import_downward_only() -> None:
    problems = [v for path in _modules()
                for v in _violations(path.relative_to(REPO).as_posix(),
                                     path.read_text(encoding="utf-8"))]
    assert problems == []


@pytest.mark.parametrize(("pkg", "line", "why"), [
    ("ingestor", "from encoder.batch import Storage", "a service imports another service"),
    ("encoder", "from camstack.sim import Fleet", "a service imports the tooling"),
    ("broker", "from monitor.health import evaluate", "broker imports a service"),
    ("contract", "import paho.mqtt.client", "the contract imports a third-party package"),
    ("mqttclient", "from broker.errors import BrokerToolError", "a lower layer imports broker"),
])
def test_the_check_catches_each_kind_of_breach(pkg: str, line: str, why: str) -> None:
    assert _violations(f"{pkg}/probe.py", f"def f() -> None:\n    {line}\n"), why
