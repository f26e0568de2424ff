"""natsguard.bans: who the NATS guard bans and when the ban ends (pure), and how a ban
reaches the accounts file every node includes (broker/accounts.py, natscluster.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.accounts import AccountStore
from broker.natscluster import render_accounts
from natsguard.bans import Bans
from natsguard.meter import Budget, Conn, Kick, Meter, NodeReport

BUDGET = Budget(msgs_per_s=100.0, burst_msgs=200.0, bytes_per_s=10_000.0,
                burst_bytes=20_000.0, max_debt_s=10.0)


def is_service(name: str) -> bool:
    return name == "ingestor" or name.startswith("ingestor-")


def kick(user: str, owed_s: float, reason: str = "over_budget", cid: int = 1) -> Kick:
    return Kick("S1", cid, user, user, reason, 1.0, 0.0, owed_s)  # type: ignore[arg-type]


def bans(max_banned: int = 10, max_ban_s: float = 100.0) -> Bans:
    return Bans(max_banned=max_banned, max_ban_s=max_ban_s, is_service=is_service)


def test_the_meter_says_what_a_flood_owes_before_the_debt_floor() -> None:
    m = Meter(BUDGET, is_service=is_service)
    m.observe(0.0, [NodeReport("S1", ())])
    # 1 s: 100 earned + 200 burst; 5,300 sent: 5,000 owed = 50 s, past max_debt_s (10 s).
    res = m.observe(1.0, [NodeReport("S1", (Conn("S1", 1, "cam01", "cam01", 5300, 0),))])
    (k,) = res.kicks
    assert k.owed_s == pytest.approx(50.0)
    assert k.debt_msgs == pytest.approx(1000.0)  # floored at 10 s of rate


def test_an_over_budget_device_is_banned_for_what_it_owes_then_lifted() -> None:
    b = bans()
    d = b.decide(1000.0, [kick("cam01", 12.5), kick("cam01", 3.0, cid=2)])
    assert [(x.user, x.until, x.seconds) for x in d.banned] == [("cam01", 1012.5, 12.5)]
    assert "cam01" in b and len(b) == 1
    assert b.lift(1012.0) == []
    (lift,) = b.lift(1012.5)
    assert (lift.user, lift.reason, lift.seconds) == ("cam01", "recovered", 12.5)
    assert len(b) == 0


def test_services_and_client_id_kicks_are_never_banned() -> None:
    b = bans()
    d = b.decide(0.0, [kick("ingestor", 50.0), kick("ingestor-2", 50.0),
                       kick("cam01", 50.0, reason="client_id_taken")])
    assert not d.changed and len(b) == 0


def test_bans_are_bounded_and_the_refused_counted() -> None:
    b = bans(max_banned=2)
    d = b.decide(0.0, [kick(f"cam{i:02d}", 5.0) for i in range(5)])
    assert len(d.banned) == 2 and d.refused == 3 and len(b) == 2


def test_zero_means_never_ban() -> None:
    b = bans(max_banned=0)
    assert not b.decide(0.0, [kick("cam01", 5.0)]).changed


def test_a_ban_is_only_ever_lengthened_and_capped() -> None:
    b = bans(max_ban_s=30.0)
    assert b.decide(0.0, [kick("cam01", 1e9)]).banned[0].seconds == 30.0
    d = b.decide(10.0, [kick("cam01", 5.0)])  # ends at 15 < 30: kept
    assert not d.changed and b.snapshot() == {"cam01": 30.0}
    d = b.decide(20.0, [kick("cam01", 25.0)])
    assert [x.until for x in d.extended] == [45.0] and b.snapshot() == {"cam01": 45.0}


def test_bans_read_back_drop_services_are_capped_and_trimmed_to_the_limit() -> None:
    b = bans(max_banned=2, max_ban_s=100.0)
    b.load({"ingestor": 1e12, "cam01": 50.0, "cam02": 1e12, "cam03": 500.0,
            "cam04": 120.0}, now=100.0)
    assert "ingestor" not in b
    lifts = b.lift(100.0)
    # cam01's end passed while no guard ran; then the soonest ends go past the limit.
    assert [(x.user, x.reason) for x in lifts] == [
        ("cam01", "recovered"), ("cam04", "over_limit")]
    assert b.snapshot() == {"cam02": 200.0, "cam03": 200.0}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 5), st.sampled_from(["cam01", "cam02", "cam03",
                                                            "ingestor"]),
                          st.floats(0, 1e4)), max_size=40),
       st.integers(0, 3), st.floats(0.5, 200))
def test_bans_stay_bounded_end_when_due_and_never_hit_a_service(
        steps: list[tuple[float, str, float]], max_banned: int, max_ban_s: float) -> None:
    b = bans(max_banned=max_banned, max_ban_s=max_ban_s)
    now = 0.0
    for dt, user, owed in steps:
        now += dt
        b.decide(now, [kick(user, owed)])
        lifted = b.lift(now)
        snap = b.snapshot()
        assert len(snap) <= max_banned
        assert "ingestor" not in snap
        assert all(now < until <= now + max_ban_s for until in snap.values())
        assert all(x.user not in snap for x in lifted)
    # Nothing stays banned past max_ban_s after the last ban.
    assert b.lift(now + max_ban_s) != [] or len(b) == 0
    assert len(b) == 0


def test_banned_devices_are_left_out_of_the_nats_accounts_never_services(
        tmp_path: Path) -> None:
    store = AccountStore(tmp_path / "broker")
    for name in ("cam01", "cam02"):
        store.add(name, "device", password="pw-" + name)
    store.add("ingestor", "service", password="pw-ingestor")
    accounts = store.list()
    text, _ = render_accounts(accounts, "cam", banned={"cam01", "ingestor"})
    assert '"cam01"' not in text and '"cam02"' in text and '"ingestor"' in text

    store.set_bans({"cam02": time.time() + 60, "cam01": time.time() - 1})
    conf = store.nats_accounts.read_text(encoding="utf-8")
    # A ban whose end passed is not rendered even if the file still lists it.
    assert '{user: "cam01"' in conf and '{user: "cam02"' not in conf
    assert set(json.loads(store.nats_bans.read_text(encoding="utf-8"))) == {"cam01", "cam02"}
    assert store.nats_bans.stat().st_mode & 0o777 == 0o600
    # Any later render (a device added) keeps the ban; lifting renders it back.
    store.add("cam03", "device", password="pw-cam03")
    assert '{user: "cam02"' not in store.nats_accounts.read_text(encoding="utf-8")
    store.set_bans({})
    assert '{user: "cam02"' in store.nats_accounts.read_text(encoding="utf-8")


def test_an_unreadable_bans_file_bans_nobody(tmp_path: Path) -> None:
    store = AccountStore(tmp_path / "broker")
    store.add("cam01", "device", password="pw-cam01")
    store.nats_bans.write_text("{not json", encoding="utf-8")
    assert store.bans() == {}
    store.nats_bans.write_text(json.dumps({"cam01": "soon", "cam02": True}), encoding="utf-8")
    assert store.bans() == {}


def test_a_ban_without_a_finite_end_bans_nobody(tmp_path: Path) -> None:
    store = AccountStore(tmp_path / "broker")
    store.add("cam01", "device", password="pw-cam01")
    store.nats_bans.write_text('{"cam01": Infinity, "cam02": NaN, "cam03": 1e999}',
                               encoding="utf-8")
    assert store.bans() == {}
    store.add("cam04", "device", password="pw-cam04")  # the accounts file rendered again
    assert '{user: "cam01"' in store.nats_accounts.read_text(encoding="utf-8")


def test_a_restarted_guard_takes_back_its_bans_and_rewrites_them(tmp_path: Path) -> None:
    from config.settings import NatsGuardSettings  # noqa: PLC0415
    from natsguard.service import Guard  # noqa: PLC0415

    store = AccountStore(tmp_path / "broker")
    store.add("cam01", "device", password="pw-cam01")
    store.set_bans({"cam01": time.time() + 60, "ingestor": time.time() + 60})

    def guard(**kw: float) -> Guard:
        return Guard(NatsGuardSettings(**kw), BUDGET, servers=[], nodes=1, user="guard",
                     password="x", is_service=is_service, store=store)

    g = guard()
    # Kept (not lost), services dropped, and the file and every node's reload are due at
    # the first round (the last guard may have stopped between the write and the reload).
    assert set(g.bans.snapshot()) == {"cam01"} and g.write_pending and g.reload_all
    assert g.metrics.banned._value.get() == 1
    # ban_max_devices = 0: no bans at all, and nothing is read or written.
    off = guard(ban_max_devices=0)
    assert off.store is None and len(off.bans) == 0
