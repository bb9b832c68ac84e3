"""`spdu status --peers` (spdu_cli/peerreport.py) beyond the views themselves
(tests/test_peers.py): when it reads the views now it shows none of the
loop's old kept peers and splits; only configured sites; a loop state read in
the future (a clock stepped back) is not fresh; the views line says who read
them; TARGET filters, --dns is refused (2), peerViews=no reads none. Against the
three real Knot servers of tests/test_peers.py."""

from __future__ import annotations

import json
import time

from spdu_cli import peers
from spdu_cli.config import load
from spdu_cli.entry import iso
from spdu_cli.spool import Spool
from tests.test_peers import conf, sites  # noqa: F401 - the fixture
from tests.test_reconcile import set_state


def loop_state(confdir, spool, now):
    """The views as the cron loop reads them (peers.refresh), at `now`."""
    store = Spool(str(spool))
    set_state(store, "beta", "up", ["127.0.0.2"])
    set_state(store, "gamma", "up", ["127.0.0.3"])
    site = load(str(confdir.main))
    site.check()
    peers.refresh(site, peers.Finder(), time.monotonic(), now=now)
    return peers.load(str(spool))


def rewrite(spool, state, **changes):
    peers.save(str(spool), {**state, **changes})


def test_read_now_shows_none_of_the_loops_old_kept_peers_and_splits(run, confdir, tmp_path,
                                                                     sites):  # noqa: F811
    spool = tmp_path / "spool"
    conf(confdir, sites, spool)
    long_ago = time.time() - 3600
    state = loop_state(confdir, spool, long_ago)
    rewrite(spool, state, held={"beta": {"why": "kept an hour ago"}},
            divergence={"alpha": {"since": iso(long_ago - 100), "noticed": True}})
    r = run("status", "--peers", "--json")
    assert r.exit_code == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["source"] == "read now"
    assert rep["held"] == {}
    [split] = rep["splits"]  # gamma does not serve alpha, now too: but since when, not known
    assert split["since"] is None and split["seconds"] is None
    assert split["text"] == ("alpha and beta serve alpha; gamma does not, for how long is not"
                             " known (views read now)")
    lines = run("status", "--peers").stdout.splitlines()
    assert not any(ln.startswith("kept:") for ln in lines)
    assert any(ln.startswith("views read now at ") for ln in lines), lines


def test_a_loop_state_read_in_the_future_is_not_fresh(run, confdir, tmp_path,
                                                       sites):  # noqa: F811
    spool = tmp_path / "spool"
    conf(confdir, sites, spool)
    state = loop_state(confdir, spool, time.time() + 60)  # the clock stepped back since
    rewrite(spool, state, held={"beta": {"why": "kept in the future"}})
    rep = json.loads(run("status", "--peers", "--json").stdout)
    assert rep["source"] == "read now" and rep["held"] == {}


def test_the_loops_state_shows_only_configured_sites_and_says_who_read_it(
        run, confdir, tmp_path, sites):  # noqa: F811
    spool = tmp_path / "spool"
    conf(confdir, sites, spool)
    state = loop_state(confdir, spool, time.time())
    zeta = {**state["sites"]["gamma"], "server": "127.0.0.9:53"}
    rewrite(spool, state, sites={**state["sites"], "zeta": zeta},
            held={"beta": {"why": "served by gamma"}, "zeta": {"why": "gone from targets"}})
    rep = json.loads(run("status", "--peers", "--json").stdout)
    assert rep["source"] == "loop"
    assert sorted(rep["sites"]) == ["alpha", "beta", "gamma"]
    assert rep["held"] == {"beta": "served by gamma"}
    assert rep["splits"][0]["seconds"] is not None  # the loop's: since when it knows
    lines = run("status", "--peers").stdout.splitlines()
    assert not any(ln.startswith("zeta") for ln in lines)
    assert any(ln.startswith("views read by the cron loop at ") for ln in lines), lines
    assert "kept: beta: served by gamma" in lines


def test_a_target_filters_dns_is_refused_and_peer_views_off_reads_none(run, confdir, tmp_path,
                                                                  sites):  # noqa: F811
    spool = tmp_path / "spool"
    conf(confdir, sites, spool)
    Spool(str(spool)).ensure_dir()
    rep = json.loads(run("status", "--peers", "--json", "gamma").stdout)
    assert rep["owners"] == ["gamma"] and list(rep["matrix"]) == ["gamma"]
    assert sorted(rep["sites"]) == ["alpha", "beta", "gamma"]  # every view says
    r = run("status", "--peers", "--dns")
    assert r.exit_code == 2 and "--dns does not go with --peers" in r.stderr
    assert run("status", "--peers", "nosuch").exit_code == 2
    conf(confdir, sites, spool, extra="peerViews=no\n")
    for s in sites.values():
        s.stop()  # no server is asked: a stopped one would cost nameTimeout and an error
    t0 = time.monotonic()
    r = run("status", "--peers")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.splitlines() == ["no views: peerViews=no (none is read)"]
    rep = json.loads(run("status", "--peers", "--json").stdout)
    assert rep["source"] == "off" and rep["sites"] == {} and rep["held"] == {}
    assert time.monotonic() - t0 < 0.9


def test_the_loops_read_time_counts_with_a_second_of_leeway_either_way_of_now():
    from spdu_cli.peerreport import _lately

    now = 1_000_000.0
    for ago, ok in ((0, True), (-0.9, True), (-1.1, False), (-3600, False), (4.0, True),
                    (4.1, False)):
        assert _lately({"read_at": iso(now - ago)}, now, 4.0) is ok, ago
    assert not _lately({}, now, 4.0) and not _lately({"read_at": "garbage"}, now, 4.0)
