"""natsguard.meter: token buckets per device account fed with CONNZ counters (pure)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mqttclient import session_client_id
from natsguard.meter import Budget, Conn, Meter, NodeReport, is_own_client_id

BUDGET = Budget(msgs_per_s=100.0, burst_msgs=200.0, bytes_per_s=10_000.0,
                burst_bytes=20_000.0, max_debt_s=10.0)


def is_service(name: str) -> bool:
    return name == "ingestor" or name.startswith("ingestor-")


def meter(**kw: int) -> Meter:
    return Meter(BUDGET, is_service=is_service, **kw)


def conn(user: str, msgs: int, nbytes: int = 0, *, cid: int = 1, server: str = "S1",
         client_id: str | None = "") -> Conn:
    return Conn(server=server, cid=cid, user=user,
                client_id=user if client_id == "" else client_id,
                in_msgs=msgs, in_bytes=nbytes)


def report(*conns: Conn, server: str = "S1", complete: bool = True) -> NodeReport:
    return NodeReport(server, tuple(conns), complete)


def start(m: Meter, *servers: str) -> None:
    """A first round: every node is new to the meter (baseline only)."""
    m.observe(0.0, [report(server=s) for s in servers or ("S1",)])


def test_first_sight_of_a_node_is_a_baseline_not_a_charge() -> None:
    m = meter()
    # A device connected for a day when the guard starts: not charged its history.
    assert m.observe(0.0, [report(conn("cam01", 10**7, 10**10))]).kicks == []
    assert m.observe(1.0, [report(conn("cam01", 10**7 + 50, 10**10 + 5000))]).msgs == 50


def test_a_new_connection_on_a_known_node_is_charged_everything() -> None:
    m = meter()
    start(m)
    res = m.observe(1.0, [report(conn("cam01", 150, 5000))])
    assert (res.msgs, res.bytes, res.kicks) == (150, 5000, [])
    res = m.observe(2.0, [report(conn("cam01", 1000, 5000))])
    assert [(k.user, k.cid, k.reason) for k in res.kicks] == [("cam01", 1, "over_budget")]
    assert res.kicks[0].debt_msgs > 0


def test_bytes_alone_get_a_device_kicked() -> None:
    m = meter()
    start(m)
    res = m.observe(1.0, [report(conn("cam01", 5, 40_000))])
    assert [k.reason for k in res.kicks] == ["over_budget"]
    assert res.kicks[0].debt_bytes > 0 and res.kicks[0].debt_msgs == 0


def test_a_reconnecting_flooder_is_kicked_again_while_in_debt() -> None:
    m = meter()
    start(m)
    assert m.observe(1.0, [report(conn("cam01", 2000, cid=1))]).kicks
    # The bucket outlives the connection: a new cid of the same account one second later
    # owes what it flooded (capped at max_debt_s of rate) and is kicked for one message.
    res = m.observe(2.0, [report(conn("cam01", 1, cid=2))])
    assert [(k.cid, k.reason) for k in res.kicks] == [(2, "over_budget")]
    # After the debt is paid (10 s of rate at most, plus the burst back) it may publish.
    res = m.observe(2.0 + BUDGET.max_debt_s + 3.0, [report(conn("cam01", 100, cid=3))])
    assert res.kicks == []


def test_debt_is_bounded_by_max_debt_s() -> None:
    m = meter()
    start(m)
    m.observe(1.0, [report(conn("cam01", 10**9, 10**12))])
    tokens = m.tokens("cam01", 1.0)
    assert tokens is not None
    assert tokens[0] >= -BUDGET.msgs_per_s * BUDGET.max_debt_s
    assert tokens[1] >= -BUDGET.bytes_per_s * BUDGET.max_debt_s


def test_services_are_never_metered() -> None:
    m = meter()
    start(m)
    res = m.observe(1.0, [report(conn("ingestor", 10**8, 10**11, client_id="ingestor-abc"),
                                 conn("ingestor-b", 10**8, 10**11, cid=2, client_id="x"))])
    assert (res.kicks, res.msgs, m.accounts) == ([], 0, 0)


def test_a_device_under_another_client_id_is_kicked() -> None:
    m = meter()
    start(m)
    res = m.observe(1.0, [report(conn("cam01", 1), conn("cam02", 1, cid=2, client_id="cam01"),
                                 conn("cam03", 0, cid=3, client_id="random-id"))])
    assert sorted((k.user, k.client_id, k.reason) for k in res.kicks) == [
        ("cam02", "cam01", "client_id_taken"), ("cam03", "random-id", "client_id_taken")]
    # A NATS-protocol connection (no MQTT client id) is not a takeover.
    assert m.observe(2.0, [report(conn("cam04", 1, cid=4, client_id=None))]).kicks == []


def test_own_client_ids_are_the_id_and_the_session_id_of_the_3_1_1_clients() -> None:
    assert is_own_client_id("cam01", "cam01")
    assert is_own_client_id("cam01", session_client_id("cam01", "any password"))
    assert not is_own_client_id("cam01", "cam02")
    assert not is_own_client_id("cam0", "cam01")
    assert not is_own_client_id("cam", "cam-1")  # another device named cam-1
    assert not is_own_client_id("cam01", "cam01-0123456789ABCDEF")  # not the tag's form
    assert not is_own_client_id("cam01", "cam01-0123456789abcdef0")
    m = meter()
    start(m)
    res = m.observe(1.0, [report(conn("cam01", 1, client_id=session_client_id("cam01", "pw")))])
    assert res.kicks == []


def test_one_account_on_several_connections_and_nodes_shares_one_bucket() -> None:
    m = meter()
    start(m, "S1", "S2")
    # 160 each is within one connection's budget (burst 200 + 100 in 1 s), not two.
    res = m.observe(1.0, [report(conn("cam01", 160, cid=1)),
                          report(conn("cam01", 160, cid=7, server="S2"), server="S2")])
    assert sorted((k.server, k.cid) for k in res.kicks) == [("S1", 1), ("S2", 7)]


def test_a_connection_missed_between_pages_is_a_baseline_not_a_history() -> None:
    m = meter()
    m.observe(0.0, [NodeReport("S1", (), now=1000.0)])
    m.observe(1.0, [NodeReport("S1", (), now=1001.0)])
    # Listed now, but it started before the node's last answer: it fell between two
    # pages then. Its day of traffic is not charged; a really new one is.
    old = Conn("S1", 5, "cam01", "cam01", 10**6, 10**8, started=500.0)
    new = Conn("S1", 6, "cam02", "cam02", 150, 1000, started=1001.5)
    # Started before the last answer, but still logging in then (not listed yet): new.
    login = Conn("S1", 7, "cam03", "cam03", 1000, 1000, started=1000.9)
    res = m.observe(2.0, [NodeReport("S1", (old, new, login), now=1002.0)])
    assert res.msgs == 1150
    assert [(k.user, k.reason) for k in res.kicks] == [("cam03", "over_budget")]
    assert m.observe(3.0, [NodeReport("S1", (old, new), now=1003.0)]).msgs == 0


def test_a_counter_that_went_down_is_a_new_connection() -> None:
    m = meter()
    start(m)
    m.observe(1.0, [report(conn("cam01", 100))])
    res = m.observe(2.0, [report(conn("cam01", 30))])
    assert (res.counter_resets, res.msgs) == (1, 30)


def test_a_partial_list_forgets_nobody_a_complete_one_does() -> None:
    m = meter()
    start(m)
    m.observe(1.0, [report(conn("cam01", 10, cid=1), conn("cam02", 10, cid=2))])
    m.observe(2.0, [report(conn("cam01", 20, cid=1), complete=False)])
    assert m.tracked_connections == 2
    # cam02 was not listed on a partial page: its counter is kept, not charged again.
    assert m.observe(3.0, [report(conn("cam02", 25, cid=2), complete=False)]).msgs == 15
    m.observe(4.0, [report(conn("cam01", 20, cid=1))])
    assert m.tracked_connections == 1


def test_a_node_that_answers_twice_lists_a_connection_once() -> None:
    m = meter()
    start(m)
    res = m.observe(1.0, [report(conn("cam01", 150), conn("cam01", 150))])
    assert (res.msgs, res.kicks) == (150, [])


def test_a_silent_node_is_forgotten_and_starts_again_as_a_baseline() -> None:
    m = Meter(BUDGET, is_service=is_service, forget_node_rounds=3)
    start(m, "S1", "S2")
    m.observe(1.0, [report(conn("cam01", 10)), report(server="S2")])
    for t in (2.0, 3.0, 4.0):
        m.observe(t, [report(server="S2")])
    assert m.tracked_connections == 0
    # S1 back (e.g. after a network split): its connections are a baseline again.
    assert m.observe(5.0, [report(conn("cam01", 10**6))]).msgs == 0


def test_tracked_connections_are_bounded_and_the_rest_counted() -> None:
    m = meter(max_connections=3)
    start(m)
    res = m.observe(1.0, [report(*(conn(f"cam{i:02d}", 1, cid=i) for i in range(5)))])
    assert (m.tracked_connections, res.untracked, res.msgs) == (3, 2, 3)
    res = m.observe(2.0, [report(conn("cam00", 2, cid=0), conn("cam09", 1, cid=9))])
    assert (m.tracked_connections, res.untracked) == (2, 0)


def test_remembered_accounts_are_bounded_full_buckets_forgotten_first() -> None:
    m = meter(max_accounts=3)
    start(m)
    m.observe(1.0, [report(conn("flood", 190, cid=1))])   # bucket nearly empty
    m.observe(1.1, [report(conn("a", 1, cid=2), conn("flood", 190, cid=1))])
    res = m.observe(1.2, [report(conn("b", 1, cid=3), conn("c", 1, cid=4),
                                 conn("flood", 190, cid=1), conn("a", 1, cid=2))])
    # a and b had a full bucket again? No: 1 message 0.1 s ago is refilled after 0.01 s.
    assert m.accounts == 3 and res.accounts_forgotten == 0
    assert m.tokens("flood", 1.2) is not None  # the one that owes is kept
    # Only accounts that owe left: the oldest goes, and that loss is counted.
    m2 = meter(max_accounts=1)
    start(m2)
    m2.observe(1.0, [report(conn("x", 190, cid=1))])
    res = m2.observe(1.0, [report(conn("x", 190, cid=1), conn("y", 190, cid=2))])
    assert (m2.accounts, res.accounts_forgotten) == (1, 1)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0.05, 5.0), st.floats(0.0, 1.0)), min_size=1,
                max_size=40),
       st.integers(1, 3))
def test_an_honest_device_is_never_kicked(steps: list[tuple[float, float]],
                                          conns: int) -> None:
    """Sending at most its rate, over any intervals and connections, never a kick."""
    m = meter()
    start(m)
    t = 0.0
    totals = [0] * conns
    for dt, share in steps:
        t += dt
        budget_now = int(BUDGET.msgs_per_s * dt * share)
        for i in range(conns):
            totals[i] += budget_now // conns
        res = m.observe(t, [report(*(conn("cam01", totals[i], totals[i] * 10, cid=i)
                                     for i in range(conns)))])
        assert res.kicks == []


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.floats(0.05, 3.0), st.integers(0, 600)), min_size=1,
                max_size=30))
def test_a_device_is_kicked_exactly_when_its_bucket_runs_dry(
        steps: list[tuple[float, int]]) -> None:
    """The token bucket, written out: after round k the bucket holds the least, over
    every earlier round j, of burst + rate x (t_k - t_j) minus what was sent after
    round j (the traffic of a round is allowed the tokens that arrived during it).
    Kicked when that is below zero and the device sent something in round k."""
    m = meter()
    start(m)
    t, total = 0.0, 0
    history: list[tuple[float, int]] = [(0.0, 0)]  # (t_j, sent up to round j)
    for dt, sent in steps:
        t += dt
        total += sent
        res = m.observe(t, [report(conn("cam01", total))])
        tokens = min(BUDGET.burst_msgs + BUDGET.msgs_per_s * (t - tj) - (total - nj)
                     for tj, nj in history)
        history.append((t, total))
        if sent > 0 and tokens < -1e-6:
            assert [k.reason for k in res.kicks] == ["over_budget"], (t, total, tokens)
        elif tokens > 1e-6 or sent == 0:
            assert res.kicks == [], (t, total, tokens)
        if res.kicks:
            return  # after a kick the debt rules apply (tested above)


def test_an_idle_hour_earns_no_more_than_the_burst() -> None:
    m = meter()
    start(m)
    m.observe(1.0, [report(conn("cam01", 10, cid=1))])
    for t in range(2, 3601):  # a round every second, cam01 away
        m.observe(float(t), [report()])
    # Back after an hour: one round's worth (1 s of rate) plus the burst, not an hour's.
    res = m.observe(3601.0, [report(conn("cam01", 301, cid=2))])
    assert [k.reason for k in res.kicks] == ["over_budget"]
