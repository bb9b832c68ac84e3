"""End to end: three sites on a namespaced network, each with Knot, HAProxy and
spdu's cron loop; a site fails in various ways, and every surviving site's DNS
must drop it, then take it back, mailing each transition once.

Settings (netlab.FAST): interval 1 s, fastInterval 0.5 s, probeTimeout 1 s,
probeFall 2, probeRise 2, so each scenario takes seconds; the defaults are
measured by benchmarks/failover.py.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest

from tests.e2e.netlab import SELF, SITES, notices

OUT = 15.0  # seconds allowed for a change to reach DNS (expected: 1.5-3 s)


def without(victim: str) -> dict[str, set[str]]:
    """What every other site must answer once `victim` is out."""
    return {s: set(SITES) - {victim} for s in SITES if s != victim}


def one_each(*changes: tuple[str, str]) -> Counter:
    return Counter(changes)


def assert_one_mail_per_transition(mails, victim: str) -> None:
    """Each survivor mailed the victim's down and up, and the victim its own (self),
    one mail each; nobody else mailed."""
    got = notices(mails)
    want = {s: one_each((victim, "down"), (victim, "up")) for s in SITES if s != victim}
    want[victim] = one_each((SELF, "down"), (SELF, "up"))
    assert got == want, [(m.observer, m.subject) for m in mails]
    per_site = Counter(m.observer for m in mails)
    assert per_site == dict.fromkeys(want, 2), [(m.observer, m.subject) for m in mails]
    assert len({m.message_id for m in mails}) == len(mails), "a mail was sent twice"


# How a site fails and is repaired: HAProxy stopped (connections refused), or
# HAProxy stopped with SIGSTOP (the kernel still completes the TCP handshake,
# nothing ever answers: a hang).
FAILURES = {
    "haproxy-stops": ("gamma", "stop_haproxy", "start_haproxy"),
    "site-hangs": ("alpha", "pause_haproxy", "resume_haproxy"),
}


@pytest.mark.parametrize("failure", list(FAILURES))
def test_site_fails_then_returns(scenario, failure):
    lab = scenario.lab
    victim, fail, repair = FAILURES[failure]
    getattr(lab.sites[victim], fail)()
    # the victim's own DNS too (selfCheck): it answers with both peers, not itself
    lab.wait_pool({**without(victim), victim: set(SITES) - {victim}}, OUT)
    getattr(lab.sites[victim], repair)()
    lab.wait_pool(lab.full(), OUT)
    assert_one_mail_per_transition(scenario.settle_mail(), victim)


def test_network_down_then_up(scenario):
    lab, victim = scenario.lab, "beta"
    lab.sites[victim].set_link(False)
    # the survivors drop it; cut off, it keeps answering with itself alone
    lab.wait_pool({**without(victim), victim: {victim}}, OUT)
    lab.sites[victim].set_link(True)
    lab.wait_pool(lab.full(), OUT)
    mails = scenario.settle_mail()
    got = notices(mails)
    peers = [s for s in SITES if s != victim]
    # the victim's own mail waited for the network and was not lost either; it saw
    # itself down too (Linux drops a downed link's IPv6 local routes: its own IPv6
    # address is unreachable, from itself as from anyone) and kept itself, alone
    assert got.pop(victim) == Counter({(p, s): 1 for p in [*peers, SELF]
                                       for s in ("down", "up")})
    assert got == {s: one_each((victim, "down"), (victim, "up")) for s in peers}
    assert len({m.message_id for m in mails}) == len(mails), "a mail was sent twice"


def test_flapping_site_one_summary(scenario):
    """The pool follows every flap; the mail does not: with flapCount=1, after
    at most one mail of its own the flapping goes out as one summary per
    flapWindow, and every transition is in exactly one mail."""
    lab, victim = scenario.lab, "gamma"
    window, cycles = 18, 3
    observers = [s for s in SITES if s != victim]
    for name in SITES:
        lab.sites[name].reconfigure(flapCount="1", flapWindow=str(window))
    site = lab.sites[victim]
    t0 = time.monotonic()
    for _ in range(cycles):
        site.stop_haproxy()
        lab.wait_pool(without(victim), OUT)
        site.start_haproxy()
        lab.wait_pool(lab.full(), OUT)
    flapping = time.monotonic() - t0
    during = scenario.new_mails()
    # Then the changes held back go out in one summary when the window ends.
    mails = scenario.settle_mail(timeout=window + 15)
    summary = [(m.observer, m.subject) for m in mails]
    assert flapping < window, f"flapping took {flapping:.1f} s, more than flapWindow"
    for obs in observers:
        mine = [m for m in mails if m.observer == obs]
        # every transition exactly once, in order
        seen = [new for m in mine for _, new in m.transitions(victim)]
        assert seen == ["down", "up"] * cycles, summary
        assert any(n.flap for m in mine for n in m.notices), summary
        # not one mail per flap: at most one single notice, then summaries
        assert len(mine) <= 3, summary
        assert len([m for m in during if m.observer == obs]) <= 2, summary
    # the victim saw its own service flap (self), and said so the same way
    mine = [m for m in mails if m.observer == victim]
    assert [new for m in mine for _, new in m.transitions(SELF)] == ["down", "up"] * cycles
    assert {m.observer for m in mails} == set(SITES), summary


def test_all_peers_down_each_answers_itself(scenario):
    """Every site cut off from the others: each still answers with itself
    (never an empty pool), and takes the others back when the network returns."""
    lab = scenario.lab
    for s in lab.sites.values():
        s.set_link(False)
    lab.wait_pool({s: {s} for s in SITES}, OUT)
    for s in lab.sites.values():
        s.set_link(True)
    lab.wait_pool(lab.full(), OUT)
    mails = scenario.settle_mail()
    # each saw itself down too (no IPv6 to its own address while its link is down:
    # see test_network_down_then_up) and kept itself: never an empty pool
    want = {s: Counter({(p, st): 1 for p in [*SITES, SELF] if p != s for st in ("down", "up")})
            for s in SITES}
    assert notices(mails) == want, [(m.observer, m.subject) for m in mails]
    assert len({m.message_id for m in mails}) == len(mails), "a mail was sent twice"
