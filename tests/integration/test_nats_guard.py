"""The NATS engine's guard (``python -m natsguard``) against a real 3-node cluster.

The guard runs as its own process with the broker settings a deployment would give it
(tight budgets so a test flood is short), logs in as ``guard`` of the system account and
closes device connections over budget or under another device's client id, and bans a
device over budget (left out of the accounts file, every node reloaded) until its bucket
has recovered. Every wait is for a positive signal: the guard's ``device_kicked`` /
``device_banned`` / ``device_unbanned`` log lines and counters, a client's lost
connection or refused login, a message at the subscriber.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import paho.mqtt.client as mqtt
import pytest
from prometheus_client.parser import text_string_to_metric_families

from camstack.servers import NatsClusterHandle, start_nats_cluster
from config.loader import to_toml
from config.settings import NatsGuardSettings
from contract.partition import device_partition, partition_frame_topic
from natsguard.meter import Budget
from natsguard.service import Guard
from tests.integration.test_nats_cluster import Client, wait_until

REPO = Path(__file__).resolve().parents[2]
INTERVAL_S = 0.5
MSGS_PER_S = 50.0
BURST_MSGS = 100
BYTES_PER_S = 64 * 1024
BURST_BYTES = 128 * 1024
BAN_MAX_S = 30.0


def _frames(device: str) -> str:
    """The topic a subscriber gets a device's frames on (its partition)."""
    return partition_frame_topic("cam", device_partition(device), device)


class GuardProcess:
    """``python -m natsguard`` on the test cluster; its JSON log lines and metrics."""

    def __init__(self, cluster: NatsClusterHandle, base: Path, password: str,
                 **guard: Any) -> None:
        self.password = password
        pw_file = base / "guard.pass"
        pw_file.write_text(password + "\n", encoding="utf-8")
        pw_file.chmod(0o600)
        conf = base / "broker.toml"
        conf.write_text(to_toml({
            # The cluster's data folder: its broker/ holds the accounts file the nodes
            # include, where the guard writes its bans.
            "engine": "nats", "data_dir": str(cluster.base),
            "max_packet_bytes": 64 * 1024,
            "device_msgs_per_s": MSGS_PER_S, "device_burst_msgs": BURST_MSGS,
            "device_bytes_per_s": BYTES_PER_S, "device_burst_bytes": BURST_BYTES,
            "nats": {"nodes": cluster.nodes, "guard": {
                "interval_s": INTERVAL_S, "metrics_port": 0, "password_file": str(pw_file),
                "ban_max_s": BAN_MAX_S,
                "servers": [cluster.client_url(i) for i in range(cluster.nodes)], **guard}},
        }), encoding="utf-8")
        self.log_path = base / "natsguard.log"
        self._log = self.log_path.open("wb")
        env = {k: v for k, v in os.environ.items() if k != "CAM_CONFIG"}
        env["PYTHONPATH"] = str(REPO)
        self.proc = subprocess.Popen([sys.executable, "-m", "natsguard", "--config", str(conf)],
                                     stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     cwd=base)
        started = self.wait_event(lambda e: e["event"] == "guard_started", "guard_started")
        self.metrics_url = f"http://127.0.0.1:{started['metrics_port']}/metrics"

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if isinstance(doc, dict) and "event" in doc:
                out.append(doc)
        return out

    def wait_event(self, pred: Any, what: str, timeout: float = 30.0) -> dict[str, Any]:
        found: list[dict[str, Any]] = []

        def seen() -> bool:
            assert self.proc.poll() is None, self.log_path.read_text()
            found[:] = [e for e in self.events() if pred(e)]
            return bool(found)

        wait_until(seen, what, timeout)
        return found[0]

    def kicked(self, device: str, reason: str) -> list[dict[str, Any]]:
        return [e for e in self.events() if e["event"] == "device_kicked"
                and e["device"] == device and e["reason"] == reason]

    def metric(self, name: str, **labels: str) -> float:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as resp:
            text = resp.read().decode()
        return sum(s.value for fam in text_string_to_metric_families(text)
                   for s in fam.samples if s.name == name
                   and all(s.labels.get(k) == v for k, v in labels.items()))

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        finally:
            self._log.close()


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        tuple[NatsClusterHandle, GuardProcess]]:
    """A 3-node cluster with the guard running on it, after its first rounds."""
    base = tmp_path_factory.mktemp("natsguard")
    cluster = start_nats_cluster(base / "cluster", 3)
    guard = None
    try:
        guard = GuardProcess(cluster, base, cluster.add_guard())
        # Positive signal: rounds done, every node answering (the baseline is taken).
        wait_until(lambda: guard is not None and guard.metric(
            "camstack_natsguard_rounds_total") >= 2 and guard.metric(
            "camstack_natsguard_nodes_answering") == 3, "the guard's first rounds")
        yield cluster, guard
    finally:
        if guard is not None:
            guard.close()
        cluster.close()


def test_flooder_is_kicked_while_an_honest_devices_frames_all_arrive(
        guarded: tuple[NatsClusterHandle, GuardProcess], cleanup: list[Any]) -> None:
    cluster, guard = guarded
    pw = {d: cluster.store.add(d, "device") for d in ("flood01", "honest01")}
    sub_pw = cluster.add_service("ingestor-guardtest")
    sub = Client(cluster, 0, "ingestor-guardtest", sub_pw).connected()
    cleanup.append(sub)
    assert sub.subscribe(["p/+/cam/+/frame"]) == [1]
    honest = Client(cluster, 1, "honest01", pw["honest01"]).connected()
    cleanup.append(honest)
    flooder = Client(cluster, 2, "flood01", pw["flood01"]).connected()
    cleanup.append(flooder)
    flood_topic = "cam/flood01/frame"
    sent = {"n": 0, "first": 0.0, "end": 0.0}

    def flood() -> None:
        # QoS 0, as fast as the socket takes it (an attacker does not wait for PUBACKs),
        # at most 200 messages written ahead (paho would queue the rest in memory).
        window: deque[mqtt.MQTTMessageInfo] = deque()
        sent["first"] = time.monotonic()
        while not flooder.disconnected.is_set() and sent["n"] < 200_000:
            if len(window) >= 200:
                window.popleft().wait_for_publish(0.5)
                continue
            payload = str(sent["n"]).encode().ljust(1024, b"F")
            window.append(flooder.c.publish(flood_topic, payload, qos=0))
            sent["n"] += 1
        sent["end"] = time.monotonic()

    flood_thread = threading.Thread(target=flood, daemon=True)
    flood_thread.start()
    # The honest camera keeps sending frames, 10/s of 1 KiB (well within budget),
    # each waited for its PUBACK, while the flood goes on and after the kick.
    honest_frames = 30
    latencies = []
    for seq in range(honest_frames):
        t0 = time.monotonic()
        honest.publish("cam/honest01/frame", f"honest01:{seq}".encode().ljust(1024, b"."))
        latencies.append(time.monotonic() - t0)
        time.sleep(0.1)
    # Positive signals: the guard logged the kick, counted it, the flooder lost its socket.
    kick = guard.wait_event(lambda e: e["event"] == "device_kicked"
                            and e["device"] == "flood01", "flood01 kicked")
    assert kick["reason"] == "over_budget" and kick["client_id"] == "flood01"
    assert flooder.disconnected.wait(10), "the flooder's connection is still open"
    flood_thread.join(10)
    assert guard.metric("camstack_natsguard_kicks_total", reason="over_budget") >= 1
    sub.wait(lambda: len(sub.payloads(_frames("honest01")))
             >= honest_frames, "every honest frame at the subscriber")
    got = sub.payloads(_frames("honest01"))
    assert sorted(p.split(b".")[0] for p in got) == sorted(
        f"honest01:{s}".encode() for s in range(honest_frames))
    assert guard.kicked("honest01", "over_budget") == []
    # What the flood got through before the kick (read at the subscriber, PUBACKed):
    # the guard acts after the fact, at its next round.
    flood_topic_p = _frames("flood01")
    through = len({p.split(b"F", 1)[0] for p in sub.payloads(flood_topic_p)})
    took = sent["end"] - sent["first"]
    allowed = BURST_MSGS + MSGS_PER_S * took
    print(f"\nflood: {sent['n']} published (QoS 0, 1 KiB) in {took:.2f} s until the kick, "
          f"{through} distinct reached the subscriber (budget over that time "
          f"{allowed:.0f}); honest PUBACK latency max {max(latencies) * 1000:.0f} ms, median "
          f"{sorted(latencies)[len(latencies) // 2] * 1000:.0f} ms")
    assert through > BURST_MSGS  # it was over budget: the kick was deserved

    # The bucket outlives the connection, and the device is banned for what it owes
    # (at most BAN_MAX_S): back at once, its login is refused on every node.
    ban = guard.wait_event(lambda e: e["event"] == "device_banned"
                           and e["device"] == "flood01", "flood01 banned")
    assert ban["reason"] == "over_budget" and 0 < ban["seconds"] <= BAN_MAX_S
    for node in range(cluster.nodes):
        again = Client(cluster, node, "flood01", pw["flood01"])
        cleanup.append(again)
        again.wait(lambda: again.connack is not None,  # noqa: B023 (waited for at once)
                   f"CONNACK from node {node}")
        assert again.connack != 0, f"node {node} let the banned flooder in"
    assert "flood01" in json.loads(cluster.store.nats_bans.read_text(encoding="utf-8"))


def test_a_device_taking_another_devices_client_id_is_kicked_and_the_victim_returns(
        guarded: tuple[NatsClusterHandle, GuardProcess], cleanup: list[Any]) -> None:
    cluster, guard = guarded
    pw = {d: cluster.store.add(d, "device") for d in ("victim01", "thief01")}
    op_pw = cluster.add_service("operator-guardtest")
    op = Client(cluster, 0, "operator-guardtest", op_pw).connected()
    cleanup.append(op)
    assert op.subscribe(["cam/victim01/status"]) == [1]
    victim = Client(cluster, 1, "victim01", pw["victim01"]).connected()
    cleanup.append(victim)
    # The victim comes back on its own only after 3 s (paho's reconnect delay): long
    # after the guard's round, so the thief is closed by the guard, not by the victim's
    # reconnect taking its client id back.
    victim.c.reconnect_delay_set(min_delay=3, max_delay=3)
    victim.publish("cam/victim01/status", b"online-1")
    thief = Client(cluster, 2, "thief01", pw["thief01"], client_id="victim01").connected()
    cleanup.append(thief)
    # NATS closes the older connection with that client id: the victim's.
    assert victim.disconnected.wait(10), "NATS did not close the victim's connection"
    kick = guard.wait_event(lambda e: e["event"] == "device_kicked"
                            and e["device"] == "thief01", "thief01 kicked")
    assert kick["reason"] == "client_id_taken" and kick["client_id"] == "victim01"
    assert thief.disconnected.wait(10), "the thief's connection is still open"
    thief.close()  # a real thief would come back: it would be closed again each round
    assert guard.metric("camstack_natsguard_kicks_total", reason="client_id_taken") >= 1
    # The victim is back online: its paho reconnects and its next message arrives.
    wait_until(victim.c.is_connected, "the victim reconnected", timeout=20)
    victim.publish("cam/victim01/status", b"online-2")
    op.wait(lambda: b"online-2" in op.payloads("cam/victim01/status"),
            "the victim's status after its return")
    assert guard.kicked("victim01", "client_id_taken") == []


class _CountingGuard(Guard):
    pages = 0

    async def _page(self, nc: Any, server: str, offset: int) -> dict[str, Any] | None:
        self.pages += 1
        return await super()._page(nc, server, offset)


def test_a_node_with_more_connections_than_a_page_is_read_page_by_page(
        guarded: tuple[NatsClusterHandle, GuardProcess], cleanup: list[Any]) -> None:
    cluster, guard = guarded
    pw = cluster.add_device("pagedev")
    # 20 connections of one device on node 0 (session-tagged client ids, its own), with
    # pages of 16: the PING answer holds 16, the rest needs the node's own CONNZ.
    conns = [Client(cluster, 0, "pagedev", pw, client_id=f"pagedev-{i:016x}").connected()
             for i in range(20)]
    cleanup.extend(conns)
    g = _CountingGuard(NatsGuardSettings(page_size=16), Budget(1e6, 1e6, 1e9, 1e9),
                       servers=[cluster.client_url(0)], nodes=3, user="guard",
                       password=guard.password, is_service=lambda n: False)

    async def collect() -> Any:
        nc = await nats.connect(cluster.client_url(0), user="guard", password=guard.password)
        try:
            return await g.collect(nc)
        finally:
            await nc.close()

    got = asyncio.run(collect())
    assert len(got.reports) == 3 and all(r.complete for r in got.reports)
    mine = [c for r in got.reports for c in r.conns if c.user == "pagedev"]
    assert len(mine) == 20 and len({(c.server, c.cid) for c in mine}) == 20
    assert {c.client_id for c in mine} == {f"pagedev-{i:016x}" for i in range(20)}
    assert g.pages >= 1
    assert all(c.started is not None for c in mine)
    # The guard running beside it listed them too and did not take them for takeovers.
    wait_until(lambda: guard.metric("camstack_natsguard_connections") >= 20,
               "the running guard listing the 20 connections")
    rounds = guard.metric("camstack_natsguard_rounds_total")
    wait_until(lambda: guard.metric("camstack_natsguard_rounds_total") > rounds,
               "a round after that")
    assert guard.kicked("pagedev", "client_id_taken") == []
    assert not any(c.disconnected.is_set() for c in conns)


FLOOD_MSGS_PER_S = 800
"""The reconnecting flooder's send rate: 16 times the budget, and slow enough that what
one round lets through is paid back by a ban shorter than the test."""
FLOOD_S = 10.0


class ReconnectingFlooder:
    """A device publishing 1 KiB QoS 0 at ``FLOOD_MSGS_PER_S`` whenever it is connected
    and reconnecting 1 s after each loss or refusal (paho's own reconnect loop)."""

    def __init__(self, cluster: NatsClusterHandle, node: int, device: str,
                 password: str) -> None:
        self.client = Client(cluster, node, device, password)
        self.client.c.reconnect_delay_set(min_delay=1, max_delay=1)
        self.topic = f"cam/{device}/frame"
        self.sent = 0
        self.refused = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        record = self.client._on_connect

        def on_connect(c: Any, u: Any, flags: Any, rc: Any, props: Any) -> None:
            if rc.is_failure:
                self.refused += 1  # CONNACK "not authorized": the ban
            record(c, u, flags, rc, props)

        self.client.c.on_connect = on_connect

    def _run(self) -> None:
        period = 1.0 / FLOOD_MSGS_PER_S
        nxt = time.monotonic()
        while not self._stop.is_set():
            if not self.client.c.is_connected():
                time.sleep(0.01)
                nxt = time.monotonic()
                continue
            payload = str(self.sent).encode().ljust(1024, b"R")
            self.client.c.publish(self.topic, payload, qos=0)
            self.sent += 1
            nxt += period
            time.sleep(max(0.0, nxt - time.monotonic()))

    def run_for(self, seconds: float) -> float:
        self._thread.start()
        t0 = time.monotonic()
        self._stop.wait(seconds)
        self._stop.set()
        self._thread.join(10)
        took = time.monotonic() - t0
        self.client.close()
        return took


def test_a_reconnecting_flooder_is_held_to_about_its_budget_then_let_back_in(
        guarded: tuple[NatsClusterHandle, GuardProcess], cleanup: list[Any]) -> None:
    cluster, guard = guarded
    pw = {d: cluster.store.add(d, "device") for d in ("reflood01", "honest02")}
    sub_pw = cluster.add_service("ingestor-bantest")
    sub = Client(cluster, 0, "ingestor-bantest", sub_pw).connected()
    cleanup.append(sub)
    assert sub.subscribe(["p/+/cam/+/frame"]) == [1]
    honest = Client(cluster, 1, "honest02", pw["honest02"]).connected()
    cleanup.append(honest)
    bans_before = guard.metric("camstack_natsguard_bans_total", reason="over_budget")
    flooder = ReconnectingFlooder(cluster, 2, "reflood01", pw["reflood01"])
    flooder.client.wait(lambda: flooder.client.connack == 0, "the flooder's first login")
    # The honest camera sends 5 frames/s for the whole flood, each waited for its PUBACK:
    # the bans and the reloads of every node they cause must not cost it anything.
    honest_sent = 0
    stop = threading.Event()

    def honest_loop() -> None:
        nonlocal honest_sent
        while not stop.is_set():
            honest.publish("cam/honest02/frame",
                           f"honest02:{honest_sent}".encode().ljust(1024, b"."))
            honest_sent += 1
            time.sleep(0.2)

    t = threading.Thread(target=honest_loop, daemon=True)
    t.start()
    took = flooder.run_for(FLOOD_S)
    stop.set()
    t.join(10)
    # What the flood got through, read at the subscriber once the last of it arrived
    # (a QoS 1 marker from the honest camera, sent after the flood, comes behind it).
    honest.publish("cam/honest02/frame", b"honest02:end".ljust(1024, b"."))
    sub.wait(lambda: any(p.startswith(b"honest02:end")
                         for p in sub.payloads(_frames("honest02"))), "the end marker")
    through = len({p.split(b"R", 1)[0] for p in sub.payloads(_frames("reflood01"))})
    budget = BURST_MSGS + MSGS_PER_S * took
    # Held to its budget, give or take what one round lets through per admission: the
    # last admission's flood (up to about two rounds at its rate) is not paid back
    # within the test (measured: 557-663 through, the bound is 1,400).
    bound = budget + FLOOD_MSGS_PER_S * 2 * INTERVAL_S
    bans = [e for e in guard.events() if e["event"] == "device_banned"
            and e["device"] == "reflood01"]
    print(f"\nreconnecting flood: {flooder.sent} published in {took:.1f} s "
          f"({flooder.sent / took:.0f}/s while connected or not), {flooder.refused} logins "
          f"refused, {len(bans)} bans ({[b['seconds'] for b in bans]} s), {through} reached "
          f"the subscriber = {through / took:.0f}/s; budget {budget:.0f}, bound {bound:.0f}")
    # Unbanned (ban_max_devices = 0) the same flooder got 2,559 through in 10 s here
    # (docs/security.md), connected about a third of the time (back 1 s after each
    # kick): a quarter of the time at its rate is past the bound, so without the bans
    # this test fails.
    assert FLOOD_MSGS_PER_S * took / 4 > bound
    assert through <= bound
    assert bans and flooder.refused >= 1
    assert guard.metric("camstack_natsguard_bans_total", reason="over_budget") > bans_before
    # The honest camera lost nothing and was never kicked nor banned.
    got = {p.split(b".")[0] for p in sub.payloads(_frames("honest02"))}
    assert got >= {f"honest02:{s}".encode() for s in range(honest_sent)}
    assert guard.kicked("honest02", "over_budget") == []
    assert not any(e["event"] == "device_banned" and e["device"] == "honest02"
                   for e in guard.events())
    # Once its bucket has recovered its last ban is lifted and the device is back in.
    def lifts() -> list[dict[str, Any]]:
        return [e for e in guard.events()
                if e["event"] == "device_unbanned" and e["device"] == "reflood01"]

    bans = [e for e in guard.events() if e["event"] == "device_banned"
            and e["device"] == "reflood01"]
    wait_until(lambda: len(lifts()) >= len(bans), "reflood01's last ban lifted",
               timeout=BAN_MAX_S + 10)
    assert all(e["reason"] == "recovered" and e["seconds"] <= BAN_MAX_S + 2 * INTERVAL_S
               for e in lifts())
    # The lift is logged, then the bans file written and every node reloaded.
    def reloaded_since_last_lift() -> bool:
        events = guard.events()
        last = max(i for i, e in enumerate(events)
                   if e["event"] == "device_unbanned" and e["device"] == "reflood01")
        return any(e["event"] == "guard_nodes_reloaded" for e in events[last:])

    wait_until(reloaded_since_last_lift, "every node reloaded after the lift", timeout=10)
    assert "reflood01" not in json.loads(cluster.store.nats_bans.read_text(encoding="utf-8"))
    back = Client(cluster, 0, "reflood01", pw["reflood01"]).connected()
    cleanup.append(back)
    back.publish("cam/reflood01/frame", b"back-in-budget")
    sub.wait(lambda: b"back-in-budget" in sub.payloads(_frames("reflood01")),
             "the re-admitted device's message")
    assert guard.metric("camstack_natsguard_unbans_total", reason="recovered") >= 1
    assert guard.metric("camstack_natsguard_ban_failures_total") == 0
