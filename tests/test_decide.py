"""The reconcile decision as pure logic: what must be added, removed or left."""

from hypothesis import given
from hypothesis import strategies as st

from spdu_cli.health import State
from spdu_cli.plan import TargetView, decide

NOW = 1000.0


def view(name, state, addrs, checked=NOW - 1, configured=(), stale=10.0, ttl=5):
    return TargetView(name, State(state), tuple(addrs), checked, tuple(configured), ttl, stale)


def changes(d):
    return sorted((c.action, c.address, c.target) for c in d.changes)


def test_down_target_removed_up_target_added():
    d = decide(["192.0.2.1", "192.0.2.2"],
               [view("beta", "down", ["192.0.2.2"]), view("gamma", "up", ["192.0.2.3"])],
               ["192.0.2.1"], 5, NOW)
    assert changes(d) == [("add", "192.0.2.3", "gamma"), ("delete", "192.0.2.2", "beta")]
    assert d.blocked is None


def test_in_sync_means_no_change():
    d = decide(["192.0.2.1", "192.0.2.3"], [view("gamma", "up", ["192.0.2.3"])], ["192.0.2.1"], 5,
               NOW)
    assert d.changes == () and d.blocked is None


def test_unknown_and_stale_targets_are_left_alone():
    d = decide(["192.0.2.1", "192.0.2.2"],
               [view("beta", "unknown", ["192.0.2.2"]),
                view("gamma", "down", ["192.0.2.1"], checked=NOW - 60),
                view("delta", "up", ["192.0.2.9"], checked=None)],
               [], 5, NOW)
    assert d.changes == ()
    assert len(d.notes) == 3
    assert "state unknown" in d.notes[0] and "60 s ago" in d.notes[1] and "never" in d.notes[2]


def test_a_probe_exactly_stale_after_old_is_still_judged():
    """staleAfter: older than it is stale; exactly that old is not yet."""
    at_limit = [view("beta", "down", ["192.0.2.2"], checked=NOW - 10.0)]
    d = decide(["192.0.2.1", "192.0.2.2"], at_limit, ["192.0.2.1"], 5, NOW)
    assert changes(d) == [("delete", "192.0.2.2", "beta")]
    past = [view("beta", "down", ["192.0.2.2"], checked=NOW - 10.001)]
    assert decide(["192.0.2.1", "192.0.2.2"], past, ["192.0.2.1"], 5, NOW).changes == ()


def test_self_ip_is_never_removed_and_always_added():
    d = decide(["192.0.2.2"], [view("beta", "down", ["192.0.2.1"])], ["192.0.2.1"], 7, NOW)
    assert [(c.action, c.address, c.target, c.ttl) for c in d.changes] == [
        ("add", "192.0.2.1", None, 7)]


def test_unmanaged_records_are_untouched():
    d = decide(["192.0.2.50", "192.0.2.2"], [view("beta", "down", ["192.0.2.2"])], [], 5, NOW)
    assert changes(d) == [("delete", "192.0.2.2", "beta")]


def test_never_empties_the_pool():
    d = decide(["192.0.2.2", "2001:db8::2"], [view("beta", "down", ["192.0.2.2", "2001:db8::2"])],
               [], 5, NOW)
    assert d.changes == ()
    assert "no address at all" in d.blocked and "selfIP" in d.blocked


def test_ipv6_is_canonicalised():
    d = decide(["2001:db8:0:0::1"], [view("beta", "up", ["2001:0db8::1"])], [], 5, NOW)
    assert d.changes == ()
    d = decide(["192.0.2.9"], [view("beta", "up", ["2001:db8::1"])], [], 5, NOW)
    assert [(c.action, c.rdtype) for c in d.changes] == [("add", "AAAA")]


def test_up_wins_over_down_for_a_shared_address():
    d = decide(["192.0.2.2", "192.0.2.9"],
               [view("beta", "down", ["192.0.2.2"]), view("beta6", "up", ["192.0.2.2"])],
               [], 5, NOW)
    assert d.changes == ()


def test_changed_target_ip_waits_for_a_probe():
    d = decide(["192.0.2.2", "192.0.2.9"],
               [view("beta", "down", ["192.0.2.2"], configured=["192.0.2.3"])], [], 5, NOW)
    assert d.changes == () and "targetIP changed" in d.notes[0]


def test_an_added_target_gets_its_own_ttl_not_self_ips():
    d = decide(["192.0.2.9"], [view("gamma", "up", ["192.0.2.3"], ttl=30)], ["192.0.2.1"], 5,
               NOW)
    assert sorted((c.address, c.ttl, c.target) for c in d.changes) == [
        ("192.0.2.1", 5, None), ("192.0.2.3", 30, "gamma")]


def test_a_maintenance_is_over_at_its_end_not_a_moment_later():
    def at_end(offset):
        beta = TargetView("beta", State.UP, ("192.0.2.2",), NOW - 1, (), 5, 10.0,
                          maint_until=NOW + offset)
        return changes(decide(["192.0.2.1", "192.0.2.2"], [beta], ["192.0.2.1"], 5, NOW))

    assert at_end(0.001) == [("delete", "192.0.2.2", "beta")]  # still in maintenance
    assert at_end(0) == []  # `until` has come: the probes decide again (up: kept)


addresses = st.sampled_from([f"192.0.2.{i}" for i in range(1, 7)] + ["2001:db8::1", "2001:db8::2"])
views = st.lists(
    st.builds(
        view,
        st.sampled_from(["b", "c", "d"]),
        st.sampled_from(["up", "down", "unknown"]),
        st.lists(addresses, min_size=1, max_size=2),
        st.sampled_from([NOW - 1, NOW - 100, None]),
    ),
    max_size=4,
)


@given(st.sets(addresses, max_size=6), views, st.sets(addresses, max_size=2))
def test_properties(current, targets, self_ips):
    d = decide(current, targets, self_ips, 5, NOW)
    deleted = {c.address for c in d.changes if c.action == "delete"}
    added = {c.address for c in d.changes if c.action == "add"}
    after = (current - deleted) | added
    assert not (deleted & self_ips)  # selfIP never removed
    assert self_ips <= after or d.blocked  # and always present
    assert not current or after  # never empties a pool that had addresses
    assert deleted <= current and not (added & current)  # minimal
    fresh_known = [t for t in targets if t.state is not State.UNKNOWN and t.checked == NOW - 1]
    managed = {a for t in fresh_known for a in t.addresses} | self_ips
    assert (deleted | added) <= managed  # unmanaged records untouched


def test_addresses_of_no_target_are_named_and_removed_only_with_prune():
    pool = ["192.0.2.1", "192.0.2.3", "192.0.2.9", "2001:db8::9"]
    targets = [view("gamma", "up", ["192.0.2.3"])]
    d = decide(pool, targets, ["192.0.2.1"], 5, NOW)
    assert d.changes == () and d.unmanaged == ("192.0.2.9", "2001:db8::9")
    d = decide(pool, targets, ["192.0.2.1"], 5, NOW, prune=True)
    assert [(c.action, c.address, c.target, c.pruned) for c in d.changes] == [
        ("delete", "192.0.2.9", None, True), ("delete", "2001:db8::9", None, True)]


def test_no_address_is_named_while_a_targets_address_is_not_known():
    d = decide(["192.0.2.9"], [view("beta", "unknown", [])], [], 5, NOW, prune=True)
    assert d.unmanaged == () and d.changes == ()


def test_prune_never_empties_the_pool():
    d = decide(["192.0.2.9"], [view("gamma", "down", ["192.0.2.3"])], [], 5, NOW, prune=True)
    assert d.changes == () and "no address at all" in d.blocked and d.unmanaged == ("192.0.2.9",)
