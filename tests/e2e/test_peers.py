"""End to end, the peer views and the quorum on the namespaced lab (three
sites, each with Knot, HAProxy and spdu's loop; netlab.FAST, peerInterval 1,
peerWait 12):

(b) the alpha<->beta path is cut (a blackhole route to each other's
    addresses in both namespaces, nothing else touched): without the quorum
    alpha removes beta (and beta alpha) for as long as the cut lasts; with it
    each takes the other back peerWait after removing it and keeps it, and
    `status --peers` on every site shows the split;
(c) beta dies for everyone (its link goes down): it leaves every pool with
    the quorum on as fast as without it (within 1 s), and stays out.
"""

from __future__ import annotations

import statistics
import time

import pytest

from tests.e2e.netlab import FAST, SITES, Lab, LabError, run

OUT = 15.0  # seconds allowed for a change to reach DNS (expected: 1.5-3 s)
WAIT = 12.0  # peerWait here: longer than a view stays fresh (3 x 1 + nameTimeout 3 + 1 s)
FRESH = 7.0
SETTINGS = {**FAST, "peerInterval": "1", "peerWait": f"{WAIT:g}", "peerDivergence": "3"}


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with Lab(tmp_path_factory.mktemp("e2e-peers"), settings=dict(SETTINGS)) as lab:
        lab.wait_pool(lab.full(), 30)
        lab.wait(lambda: not lab.pending(), 30, "the first transitions to be mailed")
        yield lab


def cut(a, b, on: bool = True) -> None:
    """Drop every packet between sites a and b only."""
    for x, y in ((a, b), (b, a)):
        for addr in y.addresses:
            run(["ip", "-n", x.ns, "-6" if ":" in addr else "-4", "route",
                 "add" if on else "del", "blackhole", addr])


def status_peers(site) -> dict:
    import json

    from tests.e2e.netlab import spdu_command

    r = run(site.exec([*spdu_command(), "-c", str(site.conf), "status", "--peers", "--json"]))
    return json.loads(r.stdout)


def quorum(lab, on: bool) -> None:
    for s in lab.sites.values():
        s.reconfigure(peerQuorum="yes" if on else "no")


def watch(lab, seconds: float, poll: float = 0.2) -> list[tuple[float, dict[str, set[str]]]]:
    """What every site answers, every `poll` s for `seconds`."""
    out, t0 = [], time.monotonic()
    while time.monotonic() - t0 < seconds:
        out.append((time.monotonic() - t0, lab.pool()))
        time.sleep(poll)
    return out


def changes(history) -> list[tuple[float, dict[str, list[str]]]]:
    """A watch's history, only where what a site serves changed (for a message)."""
    out, last = [], None
    for t, p in history:
        if p != last:
            out.append((round(t, 2), {s: sorted(v) for s, v in p.items()}))
            last = p
    return out


def splits(rep: dict) -> dict[str, tuple[list[str], list[str]]]:
    return {s["owner"]: (s["serve"], s["not"]) for s in rep["splits"]}


@pytest.mark.parametrize("on", [False, True], ids=["quorum-off", "quorum-on"])
def test_b_a_cut_link_between_alpha_and_beta(lab, on):
    lab.restore()
    quorum(lab, on)
    alpha, beta = lab.sites["alpha"], lab.sites["beta"]
    try:
        t_cut = time.monotonic()
        cut(alpha, beta)
        # at once, as without the quorum: each removes the other
        out = lab.wait_pool({"alpha": {"alpha", "gamma"}, "beta": {"beta", "gamma"},
                             "gamma": set(SITES)}, OUT, poll=0.02)
        # every site shows the split: alpha and beta cannot read each other's view
        # until alpha's and beta's last good views of each other are stale (FRESH),
        # before peerWait brings them back
        lab.wait(lambda: not status_peers(alpha)["sites"]["beta"]["fresh"]
                 and not status_peers(beta)["sites"]["alpha"]["fresh"], FRESH + 3,
                 "alpha's and beta's views of each other to be stale", poll=0.3)
        seen = {n: status_peers(s) for n, s in lab.sites.items()}
        assert splits(seen["gamma"]) == {"alpha": (["alpha", "gamma"], ["beta"]),
                                         "beta": (["beta", "gamma"], ["alpha"])}, seen["gamma"]
        if not on:  # alpha and beta each see the other's view unreadable
            assert splits(seen["alpha"]) == {"beta": (["gamma"], ["alpha"])}, seen["alpha"]
            assert splits(seen["beta"]) == {"alpha": (["gamma"], ["beta"])}, seen["beta"]
        assert seen["alpha"]["sites"]["beta"]["fresh"] is False
        assert seen["beta"]["sites"]["alpha"]["fresh"] is False
        t_history = time.monotonic()
        history = watch(lab, WAIT + 4)  # (times from t_history; removed about FRESH before)
        last = history[-1][1]
        if on:
            # taken back peerWait after it was removed, and kept while the cut lasts
            assert last == lab.full(), history[-1]
            # each of alpha and beta takes the other back peerWait after its own removal
            # (the two removals are apart by up to a probe round), and keeps it
            backs = {s: next(t for t, p in history if p[s] == set(SITES)) for s in ("alpha",
                                                                                  "beta")}
            assert all(p[s] == set(SITES) for t, p in history for s, b in backs.items()
                       if t >= b + 0.5), (backs, changes(history))
            back = backs["alpha"]
            print(f"(b) quorum on: out of alpha's pool {out:.2f} s after the cut, back"
                  f" {t_history - t_cut + back:.2f} s after it (peerWait {WAIT:g}); alpha back"
                  f" in beta's {backs['beta'] - back:+.2f} s from then")
            kept = {n: status_peers(s)["held"] for n, s in lab.sites.items()}
            assert set(kept["alpha"]) == {"beta"} and set(kept["beta"]) == {"alpha"}, kept
            assert "served by gamma" in kept["alpha"]["beta"]
            assert kept["gamma"] == {}
        else:
            assert all(p["alpha"] == {"alpha", "gamma"} and p["beta"] == {"beta", "gamma"}
                       for _, p in history), changes(history)
    finally:
        cut(alpha, beta, on=False)
    lab.wait_pool(lab.full(), OUT)
    quorum(lab, False)


def test_c_beta_dies_for_everyone(lab):
    beta = lab.sites["beta"]
    others = {s: set(SITES) - {"beta"} for s in SITES if s != "beta"}
    times: dict[bool, list[float]] = {False: [], True: []}
    for run_ in range(2):  # 2 runs each way (3 for the README's figures), for CI's time
        for on in (False, True):
            lab.restore()
            quorum(lab, on)
            time.sleep(2)  # the views read with every site in
            t0 = time.monotonic()
            beta.set_link(False)
            try:
                lab.wait_pool(others, OUT, poll=0.02)
                times[on].append(time.monotonic() - t0)
                if on and run_ == 0:  # and it stays out: no witness serves it after peerWait
                    history = watch(lab, WAIT + 4)
                    assert all(p[s] == others[s] for _, p in history for s in others), (
                        changes(history))
            finally:
                beta.set_link(True)
    quorum(lab, False)
    off, on_ = statistics.median(times[False]), statistics.median(times[True])
    print(f"beta leaves every pool: quorum off {times[False]}, on {times[True]}")
    assert on_ <= off + 1.0, times
    if max(times[True]) > OUT:
        raise LabError(f"too slow: {times}")
