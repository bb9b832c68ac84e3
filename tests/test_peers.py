"""Peer views (spdu_cli/peers.py): each site's pool on its own Knot server,
read without a key; `spdu status --peers` shows the matrix in a pipe and as
JSON, the metrics file has it, and a split that lasts is noticed once."""

from __future__ import annotations

import json
import time

import dns.flags
import dns.message
import dns.rrset
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spdu_cli import peerreport, peers, trouble
from spdu_cli.config import load
from spdu_cli.spool import Spool
from tests.conftest import _tsig_key
from tests.dnsservers import KnotServer, free_port
from tests.test_reconcile import BETA, GAMMA, SELF, set_state

POOL = "api.pool.domain.tld"


def records(*addrs):
    return tuple(("api", "A", a) for a in addrs)


@pytest.fixture
def sites(tmp_path):
    """alpha's server (this site, 127.0.0.1), beta's (127.0.0.2) and gamma's
    (127.0.0.3), all on one port: alpha's zone names beta's server in its NS
    set (nsb -> 127.0.0.2, beta's own address); gamma's is set by targetDNS.
    gamma does not serve alpha."""
    port = free_port()
    made = []
    try:
        for name, addr, recs in (
                ("alpha", "127.0.0.1", records(SELF, BETA, GAMMA) + (
                    ("@", "NS", "nsb.pool.domain.tld."), ("nsb", "A", "127.0.0.2"))),
                ("beta", "127.0.0.2", records(SELF, BETA, GAMMA)),
                ("gamma", "127.0.0.3", records(BETA, GAMMA))):
            s = KnotServer(tmp_path / name, address=addr, records=recs, start=False,
                           key=_tsig_key())
            s.want_port = port
            made.append(s.start(attempts=1))
        yield dict(zip(("alpha", "beta", "gamma"), made))
    finally:
        for s in made:
            s.stop()


def conf(confdir, sites, spool, extra=""):
    a = sites["alpha"]
    confdir.write("\n".join([
        "domain=domain.tld", "myTag=alpha", "targets='beta gamma'", f"spoolDir={spool}",
        f"nameServer={a.address}", f"namePort={a.port}", "nameTimeout=1", f"selfIP={SELF}",
        "peerInterval=1", "peerDivergence=30"]) + "\n" + extra)
    # beta's server is found in the NS set by its address; gamma's is given
    confdir.write("targetIP='127.0.0.2'\n", target="beta")
    confdir.write(f"targetIP='127.0.0.3'\ntargetDNS=127.0.0.3@{sites['gamma'].port}\n",
                  target="gamma")


def test_the_views_are_read_and_the_split_shown_in_a_pipe_and_as_json(
        run, confdir, tmp_path, sites):
    spool = tmp_path / "spool"
    conf(confdir, sites, spool)
    Spool(str(spool)).ensure_dir()
    r = run("status", "--peers", "--json")
    assert r.exit_code == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["source"] == "read now"  # no loop has read them: read by status itself
    assert rep["self"] == "alpha"
    assert rep["sites"]["beta"]["how"] == "NS nsb.pool.domain.tld."
    assert rep["sites"]["gamma"]["how"] == "targetDNS"
    assert rep["sites"]["alpha"]["addresses"] == [SELF, BETA, GAMMA]
    assert rep["sites"]["gamma"]["addresses"] == [BETA, GAMMA]
    # 127.0.0.2/3 are beta's and gamma's addresses here: nobody's pool holds them
    assert rep["matrix"]["alpha"] == {"serve": ["alpha", "beta"], "not": ["gamma"],
                                      "unreadable": []}
    assert rep["splits"][0]["text"].startswith(
        "alpha and beta serve alpha; gamma does not, for")
    r = run("status", "--peers")
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:5] == ["alpha", "(this", "site)", f"127.0.0.1:{sites['alpha'].port}",
                                   "alpha=yes"]
    gamma = next(ln for ln in lines if ln.startswith("gamma"))
    assert "alpha=no" in gamma
    assert any(ln.startswith("split: alpha and beta serve alpha; gamma does not") for ln in lines)


def test_a_stopped_server_is_unreadable_and_counts_for_nothing(run, confdir, tmp_path, sites):
    spool = tmp_path / "spool"
    conf(confdir, sites, spool)
    Spool(str(spool)).ensure_dir()
    sites["gamma"].stop()
    t0 = time.monotonic()
    rep = json.loads(run("status", "--peers", "--json").stdout)
    assert time.monotonic() - t0 < 5  # nameTimeout=1 for both questions, in parallel
    assert rep["sites"]["gamma"]["fresh"] is False
    assert "within 1 s" in rep["sites"]["gamma"]["error"] or "refused" in \
        rep["sites"]["gamma"]["error"]
    assert rep["matrix"]["alpha"]["unreadable"] == ["gamma"]
    assert rep["splits"] == []  # the only site that did not serve alpha is not read


def test_the_loop_state_is_kept_and_a_lasting_split_is_noticed_once(
        run, confdir, tmp_path, sites):
    spool = tmp_path / "spool"
    conf(confdir, sites, spool, extra=f"metricsFile={tmp_path / 'm.prom'}\n")
    store = Spool(str(spool))
    set_state(store, "beta", "up", ["127.0.0.2"])
    set_state(store, "gamma", "up", ["127.0.0.3"])
    site = load(str(confdir.main))
    site.check()
    trouble._drain()
    finder = peers.Finder()
    now = time.time()
    peers.refresh(site, finder, time.monotonic(), now=now - 40)
    assert trouble._drain() == []  # a split, but not for peerDivergence yet
    peers.refresh(site, finder, time.monotonic(), now=now - 2)
    got = trouble._drain()
    assert [(n.key, n.level) for n in got] == [("peers alpha", "WARNING")]
    assert "alpha and beta serve alpha; gamma does not, for 38 s" in got[0].problem.text
    peers.refresh(site, finder, time.monotonic(), now=now)
    assert trouble._drain() == []  # once
    rep = json.loads(run("status", "--peers", "--json").stdout)
    assert rep["source"] == "loop"
    assert rep["splits"][0]["seconds"] >= 38
    from spdu_cli import metrics

    text = metrics.exposition(site)
    assert 'spdu_peer_view_readable{site="gamma"} 1' in text
    assert 'spdu_peer_serves{site="gamma",serves="alpha"} 0' in text
    assert 'spdu_peer_serves{site="beta",serves="alpha"} 1' in text
    assert 'spdu_peer_split_seconds{serves="alpha"}' in text
    # gamma serves alpha again: the split is over, said once
    done = sites["gamma"].nsupdate(f"update add {POOL}. 5 IN A {SELF}",
                                   key=sites["gamma"].key)
    assert done.returncode == 0, done.stderr
    assert sorted(sites["gamma"].query("api", "A")) == sorted([SELF, BETA, GAMMA])
    peers.refresh(site, finder, time.monotonic(), now=time.time())
    got = trouble._drain()
    assert [(n.key, n.level) for n in got] == [("peers alpha", "NOTICE")]
    peers.refresh(site, finder, time.monotonic(), now=time.time())
    assert trouble._drain() == []


# -- a peer's answer is hostile input ---------------------------------------------------


def _answer(addrs, name=POOL, aa=True, extra=()):
    q = dns.message.make_query(POOL + ".", "A")
    r = dns.message.make_response(q)
    if aa:
        r.flags |= dns.flags.AA
    if addrs:
        r.answer.append(dns.rrset.from_text(name + ".", 5, "IN", "A", *addrs))
    for rr in extra:
        r.answer.append(rr)
    return r


def test_only_the_pool_names_addresses_are_taken():
    other = dns.rrset.from_text("evil.pool.domain.tld.", 5, "IN", "A", "203.0.113.9")
    assert peers.take(_answer([BETA], extra=[other]), POOL + ".", "A") == [BETA]
    with pytest.raises(ValueError, match="not authoritative"):
        peers.take(_answer([BETA], aa=False), POOL + ".", "A")
    many = [f"198.51.100.{i}" for i in range(1, 80)]
    with pytest.raises(ValueError, match="more than 64"):
        peers.take(_answer(many), POOL + ".", "A")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_answers_give_only_pool_addresses_or_an_error(data):
    wire = bytearray(_answer([BETA, GAMMA], extra=[dns.rrset.from_text(
        "x.pool.domain.tld.", 5, "IN", "A", "203.0.113.9")]).to_wire())
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(wire) - 1))
        wire[i] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        wire = wire[:data.draw(st.integers(0, len(wire)))]
    try:
        msg = dns.message.from_wire(bytes(wire))
    except Exception:  # noqa: BLE001 - dnspython refuses it: read_view says so
        return
    try:
        got = peers.take(msg, POOL + ".", "A")
    except ValueError:
        return
    assert len(got) <= peers.MAX_ADDRESSES
    assert "203.0.113.9" not in got or any(
        rr.name.to_text().lower() == POOL + "." for rr in msg.answer)
    import ipaddress

    for a in got:
        ipaddress.ip_address(a)


@pytest.mark.parametrize("reply", ["garbage", "silence", "huge"])
def test_a_peer_that_sends_garbage_or_nothing_costs_its_deadline_only(reply):
    """A real UDP socket answering each question with bytes that are no DNS
    message, a message for the pool with 200 addresses, or nothing."""
    import socket
    import threading

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                data, peer = sock.recvfrom(4096)
            except TimeoutError:
                continue
            q = dns.message.from_wire(data)
            if reply == "garbage":
                sock.sendto(data[:2] + b"\x84\x00" + b"\xff" * 40, peer)
            elif reply == "huge":
                r = _answer([f"198.51.{i // 250}.{i % 250 + 1}" for i in range(200)])
                r.id = q.id
                sock.sendto(r.to_wire(), peer)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        s = peers.Server("beta", "127.0.0.1", sock.getsockname()[1], "targetDNS")
        t0 = time.monotonic()
        v = peers.read_view(s, POOL, 0.5)
        took = time.monotonic() - t0
    finally:
        stop.set()
        t.join()
        sock.close()
    assert v.error is not None and v.addresses == (), v
    assert took < 1.5, took  # one deadline for both questions


# -- two writers of one zone (a hidden primary) -----------------------------------------


def test_two_sites_writing_one_zone_are_told_apart_from_a_flapping_target(tmp_path, knot):
    """alpha sees beta down, beta (selfIP) keeps itself in: both update one Knot.
    Each undoes the other's change; each notices, once, that it makes the same
    change again in one state, and `status --peers` says so."""
    from spdu_cli import reconcile
    from tests.conftest import ConfDir

    sites = {}
    for me, self_ip, others in (("alpha", SELF, {"beta": BETA, "gamma": GAMMA}),
                                ("beta", BETA, {"alpha": SELF, "gamma": GAMMA})):
        d = ConfDir(tmp_path / me)
        d.root.mkdir()
        d.write("\n".join([
            "domain=domain.tld", f"myTag={me}", f"targets='{' '.join(others)}'",
            f"spoolDir={tmp_path / me / 'spool'}", f"nameServer={knot.address}",
            f"namePort={knot.port}", "nameTimeout=1", f"selfIP={self_ip}",
            "peerViews=no"]) + "\n")
        for name, ip in others.items():
            d.write(f"targetIP='{ip}'\n", target=name)
        store = Spool(str(tmp_path / me / "spool"))
        for name, ip in others.items():
            set_state(store, name, "down" if (me, name) == ("alpha", "beta") else "up", [ip])
        site = load(str(d.main))
        site.check()
        sites[me] = site
    trouble._drain()
    said = []
    for _ in range(3):
        for me in ("alpha", "beta"):
            reconcile.run(sites[me])
            said += [(me, n.key, n.level) for n in trouble._drain()]
    pool = f"{POOL} on {knot.address} port {knot.port}"
    assert said == [("alpha", f"flipflop {pool} {BETA}", "WARNING"),
                    ("beta", f"flipflop {pool} {BETA}", "WARNING")]
    rep = peerreport.report(sites["beta"])
    [flip] = rep["flipflops"]
    assert flip["address"] == BETA and flip["target"] == "selfIP" and flip["adds"] == 3
    assert "something else undoes each change" in flip["text"]
    [flip] = peerreport.report(sites["alpha"])["flipflops"]
    assert flip["deletes"] == 3 and flip["target"] == "beta"


def test_a_target_that_flaps_is_no_flip_flop(tmp_path, knot):
    """Removed, added, removed again: each change in a state of its own."""
    from spdu_cli import flipflop, reconcile
    from tests.conftest import ConfDir

    d = ConfDir(tmp_path / "etc")
    d.root.mkdir()
    d.write("\n".join([
        "domain=domain.tld", "myTag=alpha", "targets=beta", f"spoolDir={tmp_path / 'spool'}",
        f"nameServer={knot.address}", f"namePort={knot.port}", "nameTimeout=1",
        f"selfIP={SELF}", "peerViews=no"]) + "\n")
    d.write(f"targetIP='{BETA}'\n", target="beta")
    store = Spool(str(tmp_path / "spool"))
    site = load(str(d.main))
    site.check()
    trouble._drain()
    for state in ("down", "up", "down", "up", "down"):
        set_state(store, "beta", state, [BETA])
        time.sleep(0.01)  # a transition of its own: another `since`
        reconcile.run(site)
    assert [n for n in trouble._drain() if n.key.startswith("flipflop")] == []
    assert flipflop.standing(str(tmp_path / "spool"), time.time()) == []


def test_since_when_each_view_serves_each_site_survives_the_reads():
    owned = {"alpha": {SELF}, "beta": {BETA}}
    server = {"gamma": peers.Server("gamma", "127.0.0.3", 53, "targetDNS")}
    state = {}
    for t, addrs in ((100.0, (SELF, BETA)), (101.0, (SELF, BETA)), (102.0, (SELF,)),
                     (103.0, (SELF, BETA))):
        state = peers.merge(state, {"gamma": peers.View(addrs)}, server, {}, "alpha", t)
        peers.note_serving(state, owned, t)
    from spdu_cli.entry import epoch

    serving = state["sites"]["gamma"]["serving"]
    assert epoch(serving["alpha"]) == 100.0  # without a break
    assert epoch(serving["beta"]) == 103.0  # it stopped at 102: since it came back
    # a read that fails keeps what was known, and it counts until its last good read
    # (103) is older than the bound (spdu.conf(5), peerInterval): one lost datagram
    # drops no view; then it is stale, not "not serving"
    state = peers.merge(state, {"gamma": peers.View(error="timed out")}, server, {}, "alpha",
                        104.0)
    peers.note_serving(state, owned, 104.0)
    gamma = state["sites"]["gamma"]
    assert gamma["serving"] == serving and gamma["addresses"] == [SELF, BETA]
    assert peers.fresh(gamma, 104.0, 10.0) and peers.fresh(gamma, 113.0, 10.0)
    assert peers.matrix(state, owned, 104.0, 10.0)["beta"]["serve"] == ["gamma"]
    assert not peers.fresh(gamma, 113.5, 10.0)
    # read "in the future": the clock stepped back; stale (a second of slack)
    assert peers.fresh(gamma, 102.0, 10.0) and not peers.fresh(gamma, 101.5, 10.0)


def test_the_matrix_on_a_terminal():
    """rich's table, as `spdu status --peers` prints it on a terminal."""
    from spdu_cli import render

    rep = {"self": "alpha", "source": "loop", "read_at": "2026-12-03T15:00:00.000Z",
           "owners": ["alpha", "beta", "gamma"],
           "sites": {"alpha": {"server": "127.0.0.1:53", "serves": ["alpha", "gamma"],
                               "fresh": True, "since": "2026-12-03T14:59:00.000Z",
                               "error": None},
                     "beta": {"server": "192.0.2.2:53", "serves": [], "fresh": False,
                              "since": None, "error": "no answer within 3 s"},
                     "gamma": {"server": "192.0.2.3:53", "serves": ["alpha", "beta", "gamma"],
                               "fresh": True, "since": "2026-12-03T14:00:00.000Z",
                               "error": None}},
           "splits": [{"text": "gamma serves beta; alpha does not, for 60 s"}],
           "flipflops": [], "held": {"beta": "served by gamma"}}
    out = render.table(*render.peers_rows(rep), width=140)
    import re

    plain = re.sub(r"\x1b\[[0-9;]*m", "", out)
    rows = {ln.split()[0]: ln.split() for ln in plain.splitlines() if ln.strip()}
    assert rows["VIEW"][:5] == ["VIEW", "OF", "SERVER", "ALPHA", "BETA"]
    assert rows["alpha"][3:6] == ["127.0.0.1:53", "yes", "no"]
    assert rows["beta"][2:5] == ["?", "?", "?"] and "no answer within 3 s" in plain
    assert rows["gamma"][2:5] == ["yes", "yes", "yes"]
    notes = list(render.peers_notes(rep))
    assert notes[1:] == ["split: gamma serves beta; alpha does not, for 60 s",
                         "kept: beta: served by gamma"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30)
    | st.sampled_from(["2026-12-03T15:00:00.000Z", "192.0.2.2", "not a time", "2001:db8::2"]),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(["sites", "alpha", "beta", "addresses", "serving",
                                       "ok_at", "since", "error", "read_at", "divergence",
                                       "held", "noticed", "self", "down", "x"]), children,
                      max_size=6),
    max_leaves=30)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["sites", "self", "read_at", "divergence", "held",
                                        "down"]), json_values, max_size=6))
def test_a_damaged_state_file_counts_for_nothing_and_breaks_nothing(tmp_path_factory, d):
    """Whatever .peers.json holds (JSON of any shape), reading it, the matrix,
    the quorum's input and the divergence work, on typed fields only."""
    spool = tmp_path_factory.mktemp("s")
    (spool / peers.VIEWS_NAME).write_text(json.dumps({**d, "version": peers.VERSION}))
    state = peers.load(str(spool))
    if not state:
        return
    owned = {"alpha": {SELF}, "beta": {BETA}}
    m = peers.matrix(state, owned, time.time(), 10.0)
    peers.divergence(state, m, time.time(), 30.0)
    peers.note_serving(state, owned, time.time())
    for rec in state["sites"].values():
        assert all(isinstance(a, str) for a in rec["addresses"])


def test_targetdns_is_one_address(run, confdir, tmp_path):
    confdir.write(f"domain=domain.tld\ntargets=beta\nspoolDir={tmp_path / 's'}\n")
    confdir.write("targetIP=192.0.2.2\ntargetDNS='192.0.2.2 192.0.2.53'\n", target="beta")
    r = run("config", "check")
    assert r.exit_code == 78
    assert "targetDNS='192.0.2.2 192.0.2.53': one server only" in r.stderr
    confdir.write("targetIP=192.0.2.2\ntargetDNS=ns.beta\n", target="beta")
    r = run("config", "check")
    assert r.exit_code == 78 and "targetDNS=ns.beta" in r.stderr and "not a name" in r.stderr


# -- in the cron loop ---------------------------------------------------------------------


def test_the_loop_reads_the_views_and_a_silent_peer_server_holds_up_no_probe(
        run, confdir, tmp_path, knot, http_server):
    """A real `spdu cron`: beta's status server answers, beta's DNS server
    (targetDNS) takes every question and never answers. beta is probed on its
    schedule all the same, and the views are in the spool, beta's with its error."""
    import socket

    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        web = http_server("127.0.0.22")
        spool = tmp_path / "spool"
        confdir.write("\n".join([
            "domain=domain.tld", "myTag=alpha", "targets=beta", f"spoolDir={spool}",
            f"nameServer={knot.address}", f"namePort={knot.port}", "nameTimeout=1",
            f"selfIP={SELF}", "interval=0.5", "peerInterval=1", "syslogSocket=none",
            f"tsigKey=hmac-sha256:{knot.key[0]}:{knot.key[2]}"]) + "\n", mode=0o600)
        confdir.write(f"targetIP=127.0.0.22\nprobePort={web.port}\n"
                      f"targetDNS=127.0.0.1@{silent.getsockname()[1]}\n", target="beta")
        t0 = time.monotonic()
        r = run("cron", "--for", "5")
        took = time.monotonic() - t0
        assert r.exit_code == 0, r.stderr
        entry = Spool(str(spool)).read("beta")
        # every 0.5 s for 5 s: the reads of a server that never answers (1 s each) cost none
        assert entry.counters["probes"] >= 8, (entry.counters, took)
        state = peers.load(str(spool))
        assert state["sites"]["alpha"]["error"] is None
        assert "127.0.0.22" in state["sites"]["alpha"]["addresses"]
        assert "within 1 s" in (state["sites"]["beta"]["error"] or ""), state["sites"]["beta"]
    finally:
        silent.close()


def test_the_flip_flop_says_what_this_site_did():
    from spdu_cli import flipflop

    r = {"adds": 3, "deletes": 0, "first": 0.0, "last": 45.0, "target": "selfIP"}
    assert flipflop.text("api.pool.domain.tld on 127.0.0.1 port 53", BETA, r).startswith(
        f"api.pool.domain.tld on 127.0.0.1 port 53: this site added it 3 times ({BETA},"
        " selfIP) in 45 s, its target's state unchanged: something else undoes each change.")


# -- review fixes: damaged files, freshness, the NS set, the address cap ------------------


NESTED = '{"version":1,"sites":{},"x":' + "[" * 200000 + "]" * 200000 + "}"


def test_a_deeply_nested_state_file_is_empty_and_said_once(tmp_path, caplog):
    (tmp_path / peers.VIEWS_NAME).write_text(NESTED)
    with caplog.at_level("WARNING", logger="spdu_cli.peers"):
        assert peers.load(str(tmp_path)) == {}
        assert peers.load(str(tmp_path)) == {}  # the same bytes: not parsed, not said again
    said = [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()]
    assert len(said) == 1 and peers.VIEWS_NAME in said[0], said


def test_status_peers_reads_now_over_a_deeply_nested_state_file(run, confdir, tmp_path, sites):
    spool = tmp_path / "spool"
    conf(confdir, sites, spool)
    Spool(str(spool)).ensure_dir()
    (spool / peers.VIEWS_NAME).write_text(NESTED)
    r = run("status", "--peers", "--json")
    assert r.exit_code == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["source"] == "read now" and rep["sites"]["gamma"]["addresses"] == [BETA, GAMMA]


def test_the_state_file_is_read_again_when_its_bytes_change_whatever_its_stat(tmp_path):
    """Rewritten in place, same size, same mtime (a coarse clock), same inode."""
    import os

    path = tmp_path / peers.VIEWS_NAME

    def write(site):
        path.write_text(json.dumps({"version": 1, "sites": {site: {"addresses": [BETA]}}}))

    write("beta")
    st = os.stat(path)
    assert list(peers.load(str(tmp_path))["sites"]) == ["beta"]
    write("gama")  # as long as "beta"
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(path).st_ino == st.st_ino and os.stat(path).st_size == st.st_size
    assert list(peers.load(str(tmp_path))["sites"]) == ["gama"]


def test_a_record_that_is_not_as_written_is_unreadable_not_cut():
    """65 addresses, or one that is no address: not cut down to another view."""
    base = {"version": 1, "read_at": "2026-12-03T15:00:00.000Z"}
    many = [f"198.51.100.{i}" for i in range(1, 64)] + ["2001:db8::1", "2001:db8::2"]
    for addrs in (many, [BETA, "not an address"]):
        rec = {"addresses": addrs, "ok_at": "2026-12-03T15:00:00.000Z", "error": None}
        got = peers.clean({**base, "sites": {"gamma": rec}})["sites"]["gamma"]
        assert got["addresses"] == [] and got["error"] == "unreadable record"
        assert not peers.fresh(got, epoch_of("2026-12-03T15:00:01.000Z"), 10.0)
    rec = {"addresses": many[:64], "ok_at": "2026-12-03T15:00:00.000Z", "error": None}
    got = peers.clean({**base, "sites": {"gamma": rec}})["sites"]["gamma"]
    assert got["addresses"] == many[:64] and got["error"] is None


def epoch_of(text):
    from spdu_cli.entry import epoch

    return epoch(text)


class FakeServer:
    """A real UDP socket on 127.0.0.1: answers each question with `answer(q)`
    (None: nothing), dropping the first `drop` datagrams of each question."""

    def __init__(self, answer, drop=0):
        import socket
        import threading

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.answer, self.drop, self.seen = answer, drop, {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while not self.stop.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            q = dns.message.from_wire(data)
            key = q.question[0].rdtype
            self.seen[key] = self.seen.get(key, 0) + 1
            r = self.answer(q)
            if self.seen[key] > self.drop and r is not None:
                self.sock.sendto(r.to_wire(), peer)

    def close(self):
        self.stop.set()
        self.thread.join()
        self.sock.close()


def _pool(q, a=(), aaaa=()):
    import dns.rdatatype

    r = dns.message.make_response(q)
    r.flags |= dns.flags.AA
    kind = dns.rdatatype.to_text(q.question[0].rdtype)
    got = a if kind == "A" else aaaa
    if got:
        r.answer.append(dns.rrset.from_text(POOL + ".", 5, "IN", kind, *got))
    return r


def test_a_lost_datagram_is_asked_again_within_the_deadline():
    srv = FakeServer(lambda q: _pool(q, (BETA, GAMMA), ("2001:db8::2",)), drop=1)
    try:
        t0 = time.monotonic()
        v = peers.read_view(peers.Server("beta", "127.0.0.1", srv.sock.getsockname()[1],
                                         "targetDNS"), POOL, 2.0)
        took = time.monotonic() - t0
    finally:
        srv.close()
    assert v == peers.View((BETA, GAMMA, "2001:db8::2")), v
    assert took < 2.5, took
    assert sorted(srv.seen.values()) == [2, 2]


def test_one_cap_for_a_and_aaaa_together():
    """40 A and 40 AAAA: 80 addresses, more than 64 for the view."""
    a = [f"198.51.100.{i}" for i in range(1, 41)]
    aaaa = [f"2001:db8::{i:x}" for i in range(1, 41)]
    srv = FakeServer(lambda q: _pool(q, a, aaaa))
    try:
        v = peers.read_view(peers.Server("beta", "127.0.0.1", srv.sock.getsockname()[1],
                                         "targetDNS"), POOL, 2.0)
    finally:
        srv.close()
    assert v.addresses == () and "more than 64 A and AAAA records" in v.error, v


def test_a_failed_ns_read_keeps_the_last_good_set_and_is_tried_again_soon(
        confdir, tmp_path, sites):
    """alpha's server (the NS set) stops: beta's server is still the one found
    from the last good set; the NS set is asked again after peerInterval (1 s),
    then 2 s, 4 s... never more than 5 minutes; with no good set yet, beta's
    error says to set targetDNS in its file."""
    spool = tmp_path / "spool"
    conf(confdir, sites, spool)
    site = load(str(confdir.main))
    site.check()
    finder = peers.Finder()
    found, missing = finder.servers(site, {}, 0.0)
    assert found["beta"].how == "NS nsb.pool.domain.tld." and missing == {}
    assert finder.ns_next == peers.NS_REFRESH
    sites["alpha"].stop()
    found, missing = finder.servers(site, {}, 300.0)
    assert found["beta"].address == "127.0.0.2" and missing == {}
    assert finder.ns_error and finder.ns_next == 301.0
    finder.servers(site, {}, 300.5)
    assert finder.ns_failed == 1  # not asked again yet
    finder.servers(site, {}, 301.0)
    assert finder.ns_failed == 2 and finder.ns_next == 303.0
    finder.ns_failed = 20
    finder.servers(site, {}, 400.0)
    assert finder.ns_next == 400.0 + peers.NS_REFRESH
    found, missing = peers.Finder().servers(site, {}, 0.0)
    assert "beta" not in found
    why = missing["beta"]
    assert why.startswith("cannot read the NS set of pool.domain.tld from 127.0.0.1"), why
    assert why.endswith(f"; set targetDNS in {confdir.root / 'spdu' / 'beta'}"), why
    assert ".;" not in why and "secondaryServers" not in why


def test_the_secondaries_keep_their_advice_without_a_stray_full_stop():
    """nothing answers on that port: dnspython's "The DNS operation timed out." ends
    in a full stop of its own, which is not followed by "; "."""
    import socket

    from spdu_cli.errors import ServiceUnavailable
    from spdu_cli.secondaries import ns_servers

    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        with pytest.raises(ServiceUnavailable) as e:
            ns_servers("127.0.0.1", silent.getsockname()[1], "pool.domain.tld", 0.3)
    finally:
        silent.close()
    assert str(e.value).endswith("timed out; set secondaryServers to list the servers to check")
    assert ".;" not in str(e.value)
