"""Partition leases on the NATS cluster (ingestor/leases.py): one owner per partition.

Real cluster, real ingestors (runner = "jetstream", the leases on the [jobqueue]
connection), SeaweedFS. Waits are for positive signals: a log event, an exit, the lease
bucket's state on the node's ``/jsz``.
"""

from __future__ import annotations

import secrets
import threading
from pathlib import Path
from typing import Any

import pytest
import structlog.testing

from camstack.procs import ServiceProcess
from camstack.servers import NatsClusterHandle, SeaweedHandle, start_nats_cluster
from config.settings import JobQueueSettings, LeaseSettings
from ingestor.leases import LeaseRefused, PartitionLeases
from tests.integration.test_cloud import store_section, wait_until
from tests.integration.test_nats_faults import again
from tests.integration.test_nats_ingestor import password_file, start_ingestor
from tests.integration.test_nats_jobqueue import jobqueue_section

pytestmark = [pytest.mark.integration, pytest.mark.servers]

BUCKET = LeaseSettings().bucket
TTL_S = 3.0


def lease_stream(cluster: NatsClusterHandle) -> dict[str, Any]:
    """The lease bucket's stream state (``messages``, ``last_seq``), {} before it exists."""
    _, jsz = cluster.http(0, "/jsz?accounts=true&streams=true")
    for acc in (jsz or {}).get("account_details") or []:
        for st in acc.get("stream_detail") or []:
            if st.get("name") == f"KV_{BUCKET}":
                return dict(st.get("state") or {})
    return {}


def test_a_second_ingestor_claiming_an_owned_partition_is_refused(
        tmp_path: Path, seaweedfs: SeaweedHandle) -> None:
    cluster = start_nats_cluster(tmp_path / "cluster", 1)
    bucket = "lease-" + secrets.token_hex(4)
    seaweedfs.create_bucket(bucket)
    procs: list[ServiceProcess] = []

    def ingestor(account: str, partitions: list[int]) -> ServiceProcess:
        svc = start_ingestor(cluster, 0, account, tmp_path, partitions, sections={
            "store": store_section(seaweedfs, bucket), "runner": "jetstream",
            "jobqueue": jobqueue_section(cluster, account, password_file(tmp_path, account)),
            "leases": {"enabled": True, "ttl_s": TTL_S, "refresh_s": 0.5}})
        procs.append(svc)
        return svc

    try:
        a = ingestor("ingestor-a", list(range(8)))
        a.wait_event("ingestor_ready", 30)
        claimed = a.wait_event("partition_leases_claimed", 5)
        assert claimed["partitions"] == list(range(8))
        # A keeps its 8 leases past their ttl (refreshed: each refresh is a new revision).
        wait_until(lambda: lease_stream(cluster).get("last_seq", 0) >= 8 * (2 + 2 * TTL_S),
                   30, "A's leases refreshed for longer than their ttl")
        b = ingestor("ingestor-b", list(range(4, 12)))
        assert b.proc is not None
        assert b.proc.wait(60) == 2
        out = b.log_path.read_text()
        # Only the overlap is named, with its owner.
        assert "partitions 4, 5, 6, 7 are held by ingestor-a (host " in out, out
        events = {e.get("event") for e in b.events()}
        assert "mqtt_connected" not in events and "ingestor_ready" not in events

        # A clean stop deletes A's leases: B may start now.
        assert a.stop() == 0
        b = again(b, "2")
        procs.append(b)
        b.wait_event("ingestor_ready", 30)
        # A crashed owner's leases expire after the ttl (the bucket's max age).
        b.kill()
        assert lease_stream(cluster)["messages"] >= 8
        wait_until(lambda: lease_stream(cluster).get("messages") == 0, 5 * TTL_S,
                   "B's leases expired")
        c = ingestor("ingestor-c", [11])
        c.wait_event("ingestor_ready", 30)
        assert c.stop() == 0
    finally:
        for p in reversed(procs):
            p.close()
        cluster.close()


def test_a_handoff_moves_the_leases_and_a_restart_takes_its_own_over(tmp_path: Path) -> None:
    cluster = start_nats_cluster(tmp_path / "cluster", 1)
    made: list[PartitionLeases] = []

    def leases(account: str, partitions: list[int], later: list[int] = (),  # type: ignore[assignment]
               ) -> PartitionLeases:
        pw = password_file(tmp_path, account)
        if not pw.exists():
            pw.write_text(cluster.add_service(account) + "\n")
        lost.setdefault(account, [])
        lp = PartitionLeases(LeaseSettings(ttl_s=TTL_S, refresh_s=0.3),
                             JobQueueSettings(**jobqueue_section(cluster, account, pw)),
                             owner=account, partitions=partitions, later=later,
                             on_lost=lambda p, who: lost[account].append((p, who)))
        made.append(lp)
        lp.claim()
        return lp

    lost: dict[str, list[tuple[int, str]]] = {}
    try:
        a = leases("ingestor-a", [1, 2, 3])
        # The acquiring side does not claim the moving partition at start ...
        b = leases("ingestor-b", [2, 4], later=[2])
        assert sorted(b.held) == [4]
        # ... and holds it once the releasing side let it go (handoff_released).
        a.release([2])
        wait_until(lambda: 2 in b.held, 10, "B holding partition 2")
        wait_until(lambda: 2 not in a.held, 1, "A without it")
        # A restart under the same name (before the old lease expired) takes it over;
        # the old process, were it still alive, is told at its next refresh that the
        # lease is lost (and the service stops) instead of taking it back.
        a2 = leases("ingestor-a", [1])
        wait_until(lambda: lost["ingestor-a"] == [(1, "ingestor-a")], 10,
                   "the old holder of partition 1 told")
        assert 1 in a2.held and 1 not in a.held
        assert sorted(a.held) == [3]  # the others stay its own
        with pytest.raises(LeaseRefused, match=r"partition 4 is held by ingestor-b \(host "):
            leases("ingestor-c", [4])
    finally:
        for lp in reversed(made):
            lp.close()
        cluster.close()


def test_a_claim_waits_for_a_cluster_that_is_not_answering_yet(tmp_path: Path) -> None:
    """NATS away at start (or a cluster still electing the bucket's leader, as the
    cluster demo met under load) is waited for up to ``leases.claim_wait_s``; a
    refusal still ends the claim at once (the test above)."""
    cluster = start_nats_cluster(tmp_path / "cluster", 1)
    pw = password_file(tmp_path, "ingestor-w")
    pw.write_text(cluster.add_service("ingestor-w") + "\n")
    cluster.stop_node(0)
    lp = PartitionLeases(LeaseSettings(ttl_s=TTL_S, refresh_s=0.3, claim_wait_s=60),
                         JobQueueSettings(**jobqueue_section(cluster, "ingestor-w", pw)),
                         owner="ingestor-w", partitions=[5, 6])
    outcome: list[BaseException | None] = []
    claimer = threading.Thread(target=lambda: outcome.append(_claimed(lp)), daemon=True)
    try:
        with structlog.testing.capture_logs() as logs:
            claimer.start()
            wait_until(lambda: any(e["event"] == "partition_lease_claim_retry"
                                   for e in list(logs)), 30,
                       "a first attempt failing while the node is down")
        cluster.start_node(0)
        claimer.join(60)
        assert outcome == [None] and sorted(lp.held) == [5, 6]
        wait_until(lambda: lease_stream(cluster).get("messages") == 2, 10, "two leases")
    finally:
        lp.close()
        cluster.close()


def _claimed(lp: PartitionLeases) -> BaseException | None:
    try:
        lp.claim()
    except BaseException as exc:  # the test reports it
        return exc
    return None
