"""The record of DNS changes (spdu_cli/flipflop.py): spdu's own changes back
and forth are no flip-flop, and a damaged record stops no reconcile."""

from __future__ import annotations

import json
import time

from spdu_cli import flipflop, peers, reconcile, trouble
from spdu_cli.config import load
from spdu_cli.spool import Spool
from tests.conftest import ConfDir
from tests.test_reconcile import BETA, GAMMA, SELF, set_state

POOL = "api.pool.domain.tld on 127.0.0.1 port 53"
NESTED = '{"changes":[],"x":' + "[" * 30000 + "]" * 30000 + "}"  # within MAX_FILE


def change(at, action, state="down 2026-12-03T15:00:00.000Z", address=BETA, target="beta"):
    return {"at": at, "pool": POOL, "action": action, "address": address, "target": target,
            "state": state}


def test_the_quorum_taking_a_peer_back_and_letting_it_go_is_no_flip_flop():
    """Removed (down), taken back (the quorum, peerWait later), removed again
    (the witnesses stopped serving it): one state, but each change undoes
    spdu's own last one."""
    now = 1000.0
    got = [change(now - 30, "delete"), change(now - 20, "add"), change(now - 10, "delete")]
    assert flipflop.repeats(got, now) == {}
    # the self-check: selfIP leaves, comes back, leaves, in one state
    mine = [change(now - 30 + i, a, "down 2026-12-03T15:00:00.000Z", SELF, "self")
            for i, a in enumerate(("delete", "add", "delete", "add"))]
    assert flipflop.repeats(mine, now) == {}


def test_the_same_change_twice_in_a_row_is_one_and_said_in_words():
    now = 1000.0
    got = flipflop.repeats([change(now - 30, "delete"), change(now - 20, "add"),
                            change(now - 10, "delete"), change(now - 5, "delete")], now)
    r = got[(POOL, BETA)]
    assert (r["deletes"], r["adds"]) == (3, 1)
    assert f"this site removed it 3 times and added it once ({BETA}, beta) in 25 s" in \
        flipflop.text(POOL, BETA, r)
    assert "removed it twice (" in flipflop.text(POOL, BETA, {**r, "deletes": 2, "adds": 0})
    # a change "in the future" (the clock stepped back) is no repeat
    assert flipflop.repeats([change(now + 5, "delete"), change(now + 6, "delete")], now) == {}


def test_a_damaged_record_is_empty_and_said(tmp_path, caplog):
    (tmp_path / flipflop.FLIPS_NAME).write_text(NESTED)
    assert len(NESTED) <= flipflop.MAX_FILE  # json itself gives up (RecursionError)
    with caplog.at_level("WARNING", logger="spdu_cli.flipflop"):
        assert flipflop.standing(str(tmp_path), time.time()) == []
        assert flipflop.note(str(tmp_path), [], {}, time.time()) == []
    assert any("is damaged" in r.getMessage() and "recursion" in r.getMessage()
               for r in caplog.records), caplog.records
    # changes of the wrong shape are left out, whatever they hold
    (tmp_path / flipflop.FLIPS_NAME).write_text(json.dumps({"changes": [
        {**change(1.0, "add"), "pool": ["not", "a", "str"]}, "x", {"at": float("nan")},
        change(float("inf"), "add"), change(float("inf"), "add")], "noticed": [1, ["x"]]}))
    assert flipflop._load(str(tmp_path)) == {"changes": [], "noticed": []}
    assert flipflop.standing(str(tmp_path), time.time()) == []


def three_sites(tmp_path, knot, *extra):
    """alpha, with beta and gamma up and in its pool on `knot`, the quorum on."""
    d = ConfDir(tmp_path / "etc")
    d.root.mkdir()
    spool = tmp_path / "spool"
    d.write("\n".join([
        "domain=domain.tld", "myTag=alpha", "targets='beta gamma'", f"spoolDir={spool}",
        f"nameServer={knot.address}", f"namePort={knot.port}", "nameTimeout=1",
        f"selfIP={SELF}", "peerQuorum=yes", *extra]) + "\n")
    d.write(f"targetIP='{BETA}'\n", target="beta")
    d.write(f"targetIP='{GAMMA}'\n", target="gamma")
    store = Spool(str(spool))
    set_state(store, "beta", "up", [BETA])
    set_state(store, "gamma", "up", [GAMMA])
    site = load(str(d.main))
    site.check()
    reconcile.run(site)
    assert sorted(knot.query("api", "A")) == sorted([SELF, BETA, GAMMA])
    return site, store, spool


def test_reconcile_goes_on_over_deeply_nested_peer_and_change_records(tmp_path, knot):
    """Both files nested deep (json raises RecursionError): beta, seen
    down, leaves the pool all the same, and both files are usable again."""
    site, store, spool = three_sites(tmp_path, knot, "peerViews=yes")
    (spool / peers.VIEWS_NAME).write_text(
        '{"version":1,"sites":{},"x":' + "[" * 200000 + "]" * 200000 + "}")
    (spool / flipflop.FLIPS_NAME).write_text(NESTED)
    set_state(store, "beta", "down", [BETA])
    trouble._drain()
    plans = reconcile.run(site)
    assert [p.error for p in plans] == [None] and any(p.sent for p in plans)
    assert sorted(knot.query("api", "A")) == sorted([SELF, GAMMA])
    record = json.loads((spool / flipflop.FLIPS_NAME).read_text())
    assert [(c["action"], c["address"]) for c in record["changes"]] == [("delete", BETA)]


def test_the_quorum_back_and_forth_through_reconcile_is_no_flip_flop(tmp_path, knot):
    """A real Knot: beta seen down leaves the pool at once; peerWait (2.1 s, just
    above its minimum for these settings: 0.5 + 0.3 + 0.25 + peerInterval 1)
    later the quorum takes it back (gamma serves it, since before); gamma
    stops serving it, and it leaves again. One state of beta all along, three
    UPDATEs, each undoing spdu's own last: no flip-flop notice."""
    from spdu_cli.entry import iso

    site, store, spool = three_sites(tmp_path, knot, "peerWait=2.1", "peerInterval=1",
                                     "interval=0.5", "probeTimeout=0.3")

    def views(gamma_serves_beta: bool):
        now, long_ago = iso(time.time()), iso(time.time() - 600)
        rec = {"server": "127.0.0.3:53", "how": "targetDNS", "read_at": now, "ok_at": now,
               "since": long_ago, "error": None,
               "addresses": [SELF, BETA, GAMMA] if gamma_serves_beta else [SELF, GAMMA],
               "serving": {"alpha": long_ago, "gamma": long_ago,
                           **({"beta": long_ago} if gamma_serves_beta else {})}}
        mine = {**rec, "server": "127.0.0.1:53", "how": "nameServer"}
        (spool / peers.VIEWS_NAME).write_text(json.dumps({
            "version": 1, "self": "alpha", "read_at": now,
            "sites": {"alpha": mine, "beta": {**rec, "ok_at": None, "error": "timed out"},
                      "gamma": rec}}))

    views(True)
    set_state(store, "beta", "down", [BETA])
    trouble._drain()
    pools = []
    reconcile.run(site)  # removed at once
    pools.append(sorted(knot.query("api", "A")))
    time.sleep(2.3)  # peerWait
    views(True)
    reconcile.run(site)  # taken back: gamma serves it since before
    pools.append(sorted(knot.query("api", "A")))
    views(False)
    reconcile.run(site)  # gamma no longer serves it: it leaves again
    pools.append(sorted(knot.query("api", "A")))
    assert pools == [sorted([SELF, GAMMA]), sorted([SELF, BETA, GAMMA]), sorted([SELF, GAMMA])]
    said = [n.key for n in trouble._drain()]
    assert not [k for k in said if k.startswith("flipflop")], said
    assert flipflop.standing(str(spool), time.time()) == []
