"""The quorum's rule (spdu_cli/quorum.py), pure: a peer view can only keep an
address in, never remove one; a peer dead for everyone leaves every pool at
once and does not come back; a broken link keeps the peer after peerWait.
Several sites, each with the rule, are simulated reading each other's views."""

from __future__ import annotations

import time

from hypothesis import given, settings
from hypothesis import strategies as st

from spdu_cli.health import State
from spdu_cli.plan import TargetView, decide
from spdu_cli.quorum import Witness, holds

WAIT = 10.0


def test_fewer_than_three_sites_or_no_readable_witness_decide_alone():
    w = [Witness("gamma", True, 0.0)]
    assert holds("beta", 5.0, w, 2, 100.0, WAIT, False) is None
    assert holds("beta", 5.0, [Witness("gamma", False, 0.0)], 3, 100.0, WAIT, False) is None
    assert holds("beta", 5.0, w, 3, 100.0, WAIT, False) is not None
    # the peer's own view is no witness
    assert holds("beta", 5.0, [Witness("beta", True, 0.0)], 3, 100.0, WAIT, False) is None


def test_removed_at_once_then_taken_back_only_with_a_majority_serving_since_before():
    w = [Witness("gamma", True, 0.0), Witness("delta", True, 0.0), Witness("eps", True, None)]
    assert holds("beta", 5.0, w, 5, 5.0 + WAIT - 0.1, WAIT, False) is None  # not yet
    assert "2 of 3" in holds("beta", 5.0, w, 5, 5.0 + WAIT, WAIT, False)
    late = [Witness("gamma", True, 6.0), Witness("delta", True, 0.0), Witness("eps", True, None)]
    assert holds("beta", 5.0, late, 5, 100.0, WAIT, False) is None  # gamma's serving began after
    assert holds("beta", 5.0, late, 5, 100.0, WAIT, True) is not None  # once back: a majority
    one = [Witness("gamma", True, 0.0), Witness("delta", True, None)]
    assert holds("beta", 5.0, one, 4, 100.0, WAIT, True) is None  # 1 of 2 is no majority


addresses = st.lists(st.sampled_from([f"192.0.2.{i}" for i in range(1, 8)]), min_size=1,
                     max_size=3, unique=True)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["up", "down", "unknown"]), addresses), min_size=1,
                max_size=5), st.lists(st.sampled_from([f"192.0.2.{i}" for i in range(1, 9)]),
                                      max_size=6), st.data())
def test_a_peer_view_never_removes_an_address(targets, current, data):
    """Whatever the quorum keeps (`held`, from views that may lie), decide
    deletes nothing it would not delete without it."""
    now = time.time()
    views = [TargetView(f"t{i}", State(s), tuple(a), now, (), 5, 60.0)
             for i, (s, a) in enumerate(targets)]
    held = {v.target: "kept" for v in views if data.draw(st.booleans())}
    alone = decide(current, views, ["192.0.2.8"], 5, now)
    kept = decide(current, views, ["192.0.2.8"], 5, now, held=held)
    gone = {c.address for c in kept.changes if c.action == "delete"}
    assert gone <= {c.address for c in alone.changes if c.action == "delete"}
    # it changes nothing but the addresses of the down targets it keeps
    kept_in = {a for v in views if v.target in held and v.state is State.DOWN
               for a in v.addresses}
    assert {(c.action, c.address) for c in kept.changes if c.address not in kept_in} == {
        (c.action, c.address) for c in alone.changes if c.address not in kept_in}


# -- several sites, each with the rule, reading each other's views ----------------------


DT = 0.25
READ = 1.0  # each site reads the others' views this often (peerInterval)


def simulate(n: int, down_at: dict[int, float], end: float, rule, lag: dict[int, float]):
    """Sites 0..n-1 see the peer (a site of its own, not simulated) go down at
    down_at[i] (never: absent); each reads the others' pools every READ
    seconds at its own phase lag[i]. Returns each site's in-pool history."""
    in_pool = dict.fromkeys(range(n), True)
    # i -> j -> (serves, since): what site i last read of site j's view
    seen = {i: {j: (True, 0.0) for j in range(n) if j != i} for i in range(n)}
    history: dict[int, list[tuple[float, bool]]] = {i: [] for i in range(n)}
    t = 0.0
    while t <= end:
        for i in range(n):
            if (t - lag[i]) % READ < DT / 2:  # its read of the others' views
                for j in seen[i]:
                    serves, since = seen[i][j]
                    seen[i][j] = (in_pool[j], since if (serves and in_pool[j]) else t)
        new = {}
        for i in range(n):
            d = down_at.get(i)
            if d is None or t < d:
                new[i] = True
                continue
            witnesses = [Witness(f"s{j}", True, since if serves else None)
                         for j, (serves, since) in seen[i].items()]
            new[i] = rule("peer", d, witnesses, n + 1, t, WAIT, in_pool[i]) is not None
        in_pool = new
        for i in range(n):
            history[i].append((t, in_pool[i]))
        t = round(t + DT, 6)
    return history


def naive(target, down_since, witnesses, sites, now, wait, in_pool):
    """Keep it first while anyone serves it: what one would try first."""
    if any(w.serving_since is not None for w in witnesses):
        return "kept"
    return None


@settings(max_examples=200, deadline=None)
@given(st.integers(2, 4), st.data())
def test_a_peer_dead_for_everyone_leaves_every_pool_at_once_and_stays_out(n, data):
    # every site sees it down within 3 s (its failover time), shorter than WAIT - READ
    down = {i: data.draw(st.floats(0, 3).map(lambda x: round(x / DT) * DT)) for i in range(n)}
    lag = {i: data.draw(st.sampled_from([0.0, 0.25, 0.5, 0.75])) for i in range(n)}
    h = simulate(n, down, 40.0, holds, lag)
    for i in range(n):
        after = [p for t, p in h[i] if t >= down[i]]
        assert not any(after), f"site {i} served the dead peer after {down[i]} s: {h[i]}"


def test_keeping_first_would_keep_a_dead_peer_forever():
    """Why the rule removes at once: kept while another site serves it, the
    sites keep it for one another."""
    h = simulate(3, {0: 0.0, 1: 0.5, 2: 1.0}, 60.0, naive, dict.fromkeys(range(3), 0.0))
    assert all(h[i][-1][1] for i in range(3))


@settings(max_examples=200, deadline=None)
@given(st.integers(2, 4), st.data())
def test_a_broken_link_keeps_the_peer_after_peerwait(n, data):
    """Only site 0 loses the peer (its link is cut); the others still reach it:
    site 0 takes it back WAIT s later (and a read), and keeps it."""
    d = data.draw(st.floats(0, 5).map(lambda x: round(x / DT) * DT))
    lag = {i: data.draw(st.sampled_from([0.0, 0.25, 0.5, 0.75])) for i in range(n)}
    h = simulate(n, {0: d}, d + 40.0, holds, lag)
    back = [t for t, p in h[0] if t >= d and p]
    assert back and back[0] <= d + WAIT + DT, h[0]
    assert all(p for t, p in h[0] if t >= back[0])
    assert all(p for i in range(1, n) for _, p in h[i])


@settings(max_examples=200, deadline=None)
@given(st.integers(2, 4), st.data())
def test_a_peer_kept_for_a_broken_link_that_then_dies_leaves_every_pool(n, data):
    """Site 0's link to the peer is cut; it takes the peer back for the
    others. Then the peer dies for everyone: a site must not take site 0's
    view (which only echoes its own) as a witness, or the sites keep the dead
    peer for one another forever."""
    d = data.draw(st.floats(0, 5).map(lambda x: round(x / DT) * DT))
    death = d + data.draw(st.floats(WAIT + 5, 40).map(lambda x: round(x / DT) * DT))
    others = {i: death + data.draw(st.floats(0, 3).map(lambda x: round(x / DT) * DT))
              for i in range(1, n)}
    lag = {i: data.draw(st.sampled_from([0.0, 0.25, 0.5, 0.75])) for i in range(n)}
    h = simulate(n, {0: d, **others}, death + 60.0, holds, lag)
    assert any(p for t, p in h[0] if d + WAIT < t < death), h[0]  # the link was covered
    settled = death + 3 + WAIT
    for i in range(n):
        assert not any(p for t, p in h[i] if t >= settled), f"site {i} kept the dead peer: {h[i]}"
