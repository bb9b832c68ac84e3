"""Hysteresis as pure logic: fall/rise counts, first result, inconclusive probes."""

from hypothesis import given
from hypothesis import strategies as st

from spdu_cli.health import Health, State, advance, carried_over, suspect

FRESH = Health()


def run(outcomes, rise=2, fall=2, start=FRESH):
    h, transitions = start, []
    for i, ok in enumerate(outcomes):
        h, t = advance(h, ok, rise, fall, float(i), "r")
        if t:
            transitions.append((i, t.old.value, t.new.value))
    return h, transitions


def test_no_history_takes_the_first_result():
    assert run([True])[1] == [(0, "unknown", "up")]
    assert run([False])[1] == [(0, "unknown", "down")]


def test_fall_after_consecutive_failures():
    h, ts = run([True, False, True, False, False], fall=2)
    assert ts == [(0, "unknown", "up"), (4, "up", "down")]
    assert h.state is State.DOWN and h.since == 4.0 and h.bad == 2


def test_one_lost_probe_changes_nothing():
    h, ts = run([True, True, False, True, True], fall=2)
    assert ts == [(0, "unknown", "up")] and h.state is State.UP


def test_rise_after_consecutive_successes():
    _h, ts = run([False, True, True, True], rise=3)
    assert ts == [(0, "unknown", "down"), (3, "down", "up")]
    _h, ts = run([False, True, False, True, True, True], rise=3)
    assert ts[-1] == (5, "down", "up")


def test_inconclusive_changes_nothing():
    h0, _ = run([True, False], fall=2)
    h1, t = advance(h0, None, 2, 2, 10.0)
    assert h1 == h0 and t is None
    assert run([None, None])[0] == Health()


def test_suspect():
    h, _ = run([True, False], fall=3)
    assert suspect(h)
    assert not suspect(run([True])[0]) and not suspect(run([False])[0])


@given(st.lists(st.booleans(), max_size=60), st.integers(1, 5), st.integers(1, 5))
def test_properties(outcomes, rise, fall):
    h, ts = run(outcomes, rise, fall)
    # Transitions alternate and each is preceded by enough identical results.
    for (i, old, new), prev in zip(ts, [None] + ts[:-1]):
        if prev:
            assert prev[2] == old
        if old != "unknown":
            need = fall if new == "down" else rise
            assert outcomes[i - need + 1 : i + 1] == [new == "up"] * need
    if outcomes:
        assert h.state is not State.UNKNOWN


def readdressed(before, ok, now=500.0):
    """What probe does when a target's addresses changed: the new addresses start
    from nothing, and the result is carried over from the state before."""
    h, t = advance(Health(), ok, 2, 2, now, "r")
    return carried_over(before, h, t)


def test_new_addresses_in_the_same_state_keep_since_and_make_no_transition():
    before = Health(State.UP, 100.0, 7, 0)
    h, t = readdressed(before, True)
    assert t is None
    assert h.state is State.UP and h.since == 100.0  # up since 100, not since the move


def test_new_addresses_in_another_state_are_a_transition_from_the_old_one():
    h, t = readdressed(Health(State.UP, 100.0, 7, 0), False)
    assert h.state is State.DOWN and h.since == 500.0
    assert (t.old, t.new, t.at) == (State.UP, State.DOWN, 500.0)


def test_overdue_follows_the_usual_latency_not_the_slow_answers_of_a_resumed_hang():
    from spdu_cli.health import OVERDUE_MIN, overdue

    assert overdue([], 0.25) == 0.25  # nothing known yet: fastInterval
    assert overdue([2.0] * 10, 0.25) == OVERDUE_MIN  # 4 x 2 ms is less than the floor
    assert overdue([30.0] * 10, 0.25) == 0.12  # 4 x 30 ms
    assert overdue([400.0] * 10, 0.25) == 0.25  # never later than fastInterval
    # a site that hung and resumed: its overlapping probes answered after 0.6-0.9 s;
    # among the recent results they must not push the next overlap to fastInterval
    assert overdue([900.0, 800.0, 700.0, 600.0, 2.0, 3.0, 2.0], 0.25) == OVERDUE_MIN
