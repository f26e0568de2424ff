"""deploy/prometheus and deploy/grafana: real metric names, rules that pass promtool.

Every metric name an alerting rule or a dashboard query uses must be one the services
export: the names are taken from the metric definitions themselves (a counter ``x``
is scraped as ``x_total``, a histogram as ``x_bucket``/``x_sum``/``x_count``), so a
renamed metric fails here instead of leaving a silent rule or an empty panel.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]
from prometheus_client import CollectorRegistry

from encoder.metrics import EncoderMetrics
from ingestor.metrics import NO_DEVICE, IngestMetrics
from jobqueue.metrics import JobQueueMetrics
from monitor.metrics import MonitorMetrics
from natsguard.service import GuardMetrics

REPO = Path(__file__).resolve().parents[2]
PROM = REPO / "deploy" / "prometheus"
DASHBOARD = REPO / "deploy" / "grafana" / "camstack.json"
NAME = re.compile(r"\b((?:camstack|ingestor|encoder|monitor)_[a-zA-Z0-9_]+)\b")
SUFFIXES = {"counter": ["_total"], "gauge": [""], "histogram": ["_bucket", "_sum", "_count"],
            "summary": ["", "_sum", "_count"]}


def exposed(registry: CollectorRegistry) -> set[str]:
    """Sample names a scrape of ``registry`` can show (labelled series included)."""
    out: set[str] = set()
    for fam in registry.collect():
        out.update(fam.name + s for s in SUFFIXES.get(fam.type, [""]))
    return out


def monitor_registry() -> CollectorRegistry:
    mon = MonitorMetrics()
    mon.watch_broker(dict)  # the broker's families exist before any $SYS reading
    return mon.registry


def metric_names() -> set[str]:
    return (exposed(IngestMetrics().registry) | exposed(EncoderMetrics().registry)
            | exposed(monitor_registry()) | exposed(JobQueueMetrics().registry)
            | exposed(GuardMetrics().registry))


def rule_exprs() -> dict[str, str]:
    doc = yaml.safe_load((PROM / "camstack-rules.yml").read_text(encoding="utf-8"))
    return {r["alert"]: r["expr"] for g in doc["groups"] for r in g["rules"]}


def dashboard_exprs() -> dict[str, str]:
    dash: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return {f"{p['title']} / {t['refId']}": t["expr"] for p in dash["panels"]
            for t in p["targets"]}


def unknown_names(exprs: dict[str, str], known: set[str]) -> list[str]:
    return [f"{where}: {name}" for where, expr in exprs.items()
            for name in NAME.findall(expr) if name not in known]


def test_names_come_from_the_definitions() -> None:
    names = metric_names()
    assert "camstack_ingestor_frames_stored_total" in names  # labelled: no sample until used
    assert "camstack_ingestor_store_seconds_bucket" in names
    assert "camstack_ingestor_connected" in names
    assert "camstack_encoder_failures_total" in names
    assert "camstack_monitor_alerts_active" in names
    assert "camstack_broker_publish_dropped_total" in names
    assert "camstack_broker_clients_connected" in names
    assert {"camstack_encode_backlog_oldest_seconds", "camstack_encode_jobs_quarantined",
            "camstack_jobqueue_malformed_total"} <= names
    assert {"camstack_natsguard_kicks_total", "camstack_natsguard_connected"} <= names
    # The checker itself catches a name that does not exist.
    assert unknown_names({"x": "rate(ingestor_frames_total[5m])"}, names) == [
        "x: ingestor_frames_total"]


def test_rejections_are_labelled_by_account_with_bounded_devices(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("ingestor.metrics.MAX_DEVICE_LABELS", 2)
    m = IngestMetrics()
    for device in ("cam01", "cam01", None, "a/b", "cam02", "cam03"):
        m.rejected("crc_mismatch", device)
    samples = {tuple(sorted(s.labels.items())): s.value for fam in m.registry.collect()
               if fam.name == "camstack_ingestor_rejections" for s in fam.samples
               if s.name.endswith("_total")}
    assert samples == {
        (("device", "cam01"), ("reason", "crc_mismatch")): 2,
        (("device", "cam02"), ("reason", "crc_mismatch")): 1,
        # no topic device, a name that is no account id, and one past the bound:
        (("device", NO_DEVICE), ("reason", "crc_mismatch")): 3,
    }


def test_alert_rules_use_real_metric_names() -> None:
    exprs = rule_exprs()
    assert len(exprs) >= 15
    assert unknown_names(exprs, metric_names()) == []


def test_dashboard_queries_use_real_metric_names() -> None:
    exprs = dashboard_exprs()
    assert len(exprs) >= 20
    assert unknown_names(exprs, metric_names()) == []
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
    # Every family of both services is on the dashboard or in a rule (nothing forgotten).
    used = {n for e in [*exprs.values(), *rule_exprs().values()] for n in NAME.findall(e)}
    families = {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in metric_names()}
    unused = sorted(f for f in families
                    if not any(u == f or re.sub(r"_(total|bucket|sum|count)$", "", u) == f
                               for u in used))
    allowed_unused = {f"camstack_ingestor_{n}" for n in (
        "chunks_received", "duplicate_chunks", "chunks_discarded", "inflight_bytes",
        "commit_group_frames", "batches_announced", "capture_time_untrusted", "storage_errors",
    )} | {"camstack_encoder_frames_encoded", "camstack_encoder_ready_malformed"}
    assert {f for f in families if f.startswith("camstack_broker_")} >= {
        "camstack_broker_clients_connected", "camstack_broker_publish_dropped",
        "camstack_broker_messages_received", "camstack_broker_guard_kicks",
        "camstack_broker_load", "camstack_broker_bytes_received"}
    assert set(unused) <= allowed_unused, sorted(set(unused) - allowed_unused)


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool missing (Debian package prometheus; make deps)")
@pytest.mark.parametrize("args", [
    ["check", "config", "prometheus.yml"],
    ["check", "rules", "camstack-rules.yml"],
    ["test", "rules", "camstack-rules.test.yml"],
])
def test_promtool(args: list[str]) -> None:
    res = subprocess.run(["promtool", *args], cwd=PROM, capture_output=True, text=True,
                         timeout=120, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout + res.stderr


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool missing")
def test_promtool_rule_tests_can_fail(tmp_path: Path) -> None:
    text = (PROM / "camstack-rules.test.yml").read_text(encoding="utf-8")
    (tmp_path / "camstack-rules.yml").write_text(
        (PROM / "camstack-rules.yml").read_text(encoding="utf-8").replace("> 0.05", "> 0.5"))
    (tmp_path / "t.yml").write_text(text)
    res = subprocess.run(["promtool", "test", "rules", "t.yml"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode != 0 and "CamstackRejectionRate" in res.stdout + res.stderr
