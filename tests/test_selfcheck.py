"""The self-check (selfCheck=yes): this site's own service, probed at selfIP as
target `self`; while it is down and a peer of the pool is up, selfIP leaves the
pool, and it comes back when self is up again; never an empty pool.

The decision as pure logic (hypothesis), the mail's words, then the cron loop
against real servers: an HTTP status server on this site's own address
(tests/httpd.py), one for the peer, a real Knot and a real SMTP relay."""

from __future__ import annotations

import contextlib
import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import spdu_cli.notify.text as notice
from spdu_cli import config, cycle, journal
from spdu_cli.config import MailConfig
from spdu_cli.health import State
from spdu_cli.notify import outbox
from spdu_cli.plan import TargetView, decide
from spdu_cli.selfcheck import SELF
from spdu_cli.spool import Spool
from tests.dnsservers import KnotServer
from tests.httpd import StatusServer
from tests.test_kept import run_loop, wait_for

NOW = 1000.0
OWN, BETA, GAMMA = "192.0.2.1", "192.0.2.2", "192.0.2.3"


def view(name, state, addrs, checked=NOW - 1, configured=(), stale=10.0, maint=None):
    return TargetView(name, State(state), tuple(addrs), checked, tuple(configured), 5, stale,
                      maint)


def me(state, checked=NOW - 1, addrs=(OWN,), configured=(OWN,), maint=None):
    return view(SELF, state, addrs, checked, configured, maint=maint)


def changes(d):
    return sorted((c.action, c.address, c.target) for c in d.changes)


# -- the decision (pure) --------------------------------------------------------------------


def test_self_down_with_a_peer_up_removes_self_ip():
    d = decide([OWN, BETA], [view("beta", "up", [BETA])], [OWN], 5, NOW, self_view=me("down"))
    assert changes(d) == [("delete", OWN, SELF)] and d.blocked is None


def test_self_down_and_no_peer_up_keeps_self_ip_and_says_why():
    d = decide([OWN, BETA], [view("beta", "down", [BETA])], [OWN], 5, NOW,
               self_view=me("down"))
    assert changes(d) == [("delete", BETA, "beta")]
    assert any(n.startswith("self: down, but no peer of this pool is up") for n in d.notes)
    # an unknown or stale peer is not an up one either
    for beta in (view("beta", "unknown", [BETA]), view("beta", "up", [BETA], checked=NOW - 60)):
        d = decide([OWN, BETA], [beta], [OWN], 5, NOW, self_view=me("down"))
        assert d.changes == ()


def test_self_up_again_adds_self_ip_for_self():
    d = decide([BETA], [view("beta", "up", [BETA])], [OWN], 5, NOW, self_view=me("up"))
    assert changes(d) == [("add", OWN, SELF)]


@pytest.mark.parametrize("own", [me("unknown"), me("down", checked=NOW - 60),
                                 me("down", checked=None),
                                 me("down", addrs=("192.0.2.9",))])  # selfIP changed since
def test_unknown_or_stale_self_keeps_self_ip(own):
    d = decide([OWN, BETA], [view("beta", "up", [BETA])], [OWN], 5, NOW, self_view=own)
    assert d.changes == ()
    assert any(n.startswith("self: ") and "selfIP is kept" in n for n in d.notes), d.notes


def test_self_and_a_peer_are_judged_by_one_rule_addresses_compared_as_addresses():
    """Addresses written another way (2001:DB8::0001; the configuration gives
    them canonical, a caller may not) are the ones probed, for self as for a
    peer (entry.standing, the one rule of both)."""
    six = "2001:db8::1"
    own = me("down", addrs=(six,), configured=("2001:DB8::0001",))
    d = decide([six, BETA], [view("beta", "up", [BETA])], [six], 5, NOW, self_view=own)
    assert changes(d) == [("delete", six, SELF)], d.notes
    beta = view("beta", "down", [BETA], configured=(BETA,))
    d = decide([six, BETA], [beta], [six], 5, NOW)
    assert changes(d) == [("delete", BETA, "beta")]


def test_self_in_maintenance_leaves_while_a_peer_is_up():
    own = me("up", maint=NOW + 60)
    d = decide([OWN, BETA], [view("beta", "up", [BETA])], [OWN], 5, NOW, self_view=own)
    assert changes(d) == [("delete", OWN, SELF)]
    d = decide([OWN], [view("beta", "down", [BETA])], [OWN], 5, NOW, self_view=own)
    assert d.changes == ()


def test_without_the_self_check_self_ip_is_always_present():
    d = decide([BETA], [view("beta", "up", [BETA])], [OWN], 5, NOW)
    assert changes(d) == [("add", OWN, None)]  # as before: no target, selfIP


def test_a_peer_only_held_by_the_quorum_is_no_peer_up_self_ip_stays():
    """A view can keep an address in, never remove one: a peer this site sees
    down, kept in by the others' views (`held`), does not make selfIP leave."""
    d = decide([OWN, BETA, GAMMA], [view("beta", "down", [BETA]), view("gamma", "down", [GAMMA])],
               [OWN], 5, NOW, self_view=me("down"), held={"beta": "kept (peerQuorum)"})
    assert ("delete", OWN, SELF) not in changes(d)
    assert changes(d) == [("delete", GAMMA, "gamma")]
    assert any(n.startswith("self: down, but no peer of this pool is up") for n in d.notes)
    # a peer this site sees up does make it leave, held ones or not
    d = decide([OWN, BETA, GAMMA], [view("beta", "down", [BETA]), view("gamma", "up", [GAMMA])],
               [OWN], 5, NOW, self_view=me("down"), held={"beta": "kept (peerQuorum)"})
    assert changes(d) == [("delete", OWN, SELF)]


addresses = st.sampled_from([OWN, BETA, GAMMA, "192.0.2.4", "2001:db8::1", "2001:db8::2"])
peers = st.lists(
    st.builds(view, st.sampled_from(["beta", "gamma", "delta"]),
              st.sampled_from(["up", "down", "unknown"]),
              st.lists(addresses.filter(lambda a: a != OWN), min_size=1, max_size=2),
              st.sampled_from([NOW - 1, NOW - 100, None])),
    max_size=4)
selves = st.one_of(st.none(), st.builds(me, st.sampled_from(["up", "down", "unknown"]),
                                        st.sampled_from([NOW - 1, NOW - 100, None])))


@given(st.sets(addresses, max_size=6), peers, selves)
def test_properties(current, targets, own):
    self_ips = {OWN}
    d = decide(current, targets, self_ips, 5, NOW, self_view=own)
    deleted = {c.address for c in d.changes if c.action == "delete"}
    added = {c.address for c in d.changes if c.action == "add"}
    after = (current - deleted) | added
    assert not current or after  # never an empty pool
    fresh = [t for t in targets if t.state is not State.UNKNOWN and t.checked == NOW - 1]
    peer_in = {a for t in fresh if t.state is State.UP for a in t.addresses}
    self_down = own is not None and own.state is State.DOWN and own.checked == NOW - 1
    if self_down and peer_in:  # down with a peer up: out, and the peer is in
        assert OWN not in after and peer_in <= after
    else:  # up, unknown, stale, off, or no peer up: kept, as the original did
        assert OWN in after
    self_up = own is not None and own.state is State.UP and own.checked == NOW - 1
    for c in d.changes:  # in the journal of self when the self-check decided it
        if c.address == OWN:
            assert c.target == (SELF if c.action == "delete" or self_up else None)


@settings(max_examples=1000, deadline=None)
@given(st.sets(addresses, max_size=6), peers, selves, st.data())
def test_held_never_removes_self_ip_nor_anything_else(current, targets, own, data):
    """Whatever the quorum keeps (`held`, from views that may lie): selfIP is
    deleted only while some target is really up (fresh, as seen here), and
    held causes no delete that decide without it would not make."""
    held = {t.target: "kept" for t in targets if data.draw(st.booleans())}
    alone = decide(current, targets, {OWN}, 5, NOW, self_view=own)
    kept = decide(current, targets, {OWN}, 5, NOW, self_view=own, held=held)
    gone = {c.address for c in kept.changes if c.action == "delete"}
    assert gone <= {c.address for c in alone.changes if c.action == "delete"}
    really_up = any(t.state is State.UP and t.checked == NOW - 1 for t in targets)
    if OWN in gone:
        assert really_up


# -- the mail's words (pure) ------------------------------------------------------------------

MAIL = MailConfig(("ops@domain.tld",), "robot@domain.tld", "127.0.0.1", 25, False, "", "",
                  tag="alpha")


def self_mail(old, new, dns=()):
    c = journal.StateChange.from_journal({"id": 2, "at": "2026-01-01T10:00:00Z", "from": old,
                                          "to": new, "reason": "connection refused",
                                          "dns": list(dns)})
    v = journal.JournalView(SELF, "alpha.domain.tld", (OWN, "2001:db8::1"),
                            "http://api.domain.tld:80/status", MAIL, 4, 600.0, (c,))
    return outbox.Mail(MAIL, (outbox.Notice(v, (c,)),))


def test_the_mail_says_it_is_this_site_and_keeps_the_original_subject():
    gone = {"at": "2026-01-01T10:00:01Z", "action": "delete", "address": OWN,
            "rrset": "api.pool.domain.tld A", "server": "127.0.0.1:53"}
    m = self_mail("up", "down", [gone])
    assert notice.subject(m) == "WARNING: Server self is DOWN."  # what mail filters match
    body = notice.body(m)
    assert body.startswith(f"self (this site, alpha: {OWN}, 2001:db8::1) is DOWN,"
                           " as seen from alpha itself.")
    assert "This site's own service stopped answering http://api.domain.tld:80/status" in body
    assert "this site's addresses (selfIP) leave its own pool" in body
    assert f"DNS: removed {OWN} from api.pool.domain.tld A on 127.0.0.1:53" in body
    kept = notice.body(self_mail("up", "down"))  # no peer up: nothing removed
    assert "DNS: selfIP is still in the pool (no peer is up" in kept
    m = self_mail("down", "up")
    assert notice.subject(m) == "NOTICE: Server self is up."
    assert "Its addresses (selfIP) are in its own pool again." in notice.body(m)


# -- the loop, against real servers -------------------------------------------------------------

SELF_IP, PEER_IP = "127.0.6.1", "127.0.6.2"


class Site:
    """This site's own status server at selfIP, a peer's, Knot, a relay, and the files."""

    def __init__(self, confdir, tmp_path, relay):
        self.confdir, self.tmp_path, self.relay = confdir, tmp_path, relay
        self.own = StatusServer(SELF_IP)
        self.peer = StatusServer(PEER_IP)
        self.knot = KnotServer(tmp_path / "knot", records=(("api", "A", SELF_IP),
                                                           ("api", "A", PEER_IP)))
        self.write()

    def write(self, extra: str = "") -> None:
        self.confdir.write(
            f"domain=domain.tld\nmyTag=alpha\ntargets=beta\nselfIP={SELF_IP}\n"
            f"spoolDir={self.tmp_path}/spool\nsyslogSocket=none\n"
            f"nameServer=127.0.0.1\nnamePort={self.knot.port}\nnameTimeout=2\n"
            f"probePort={self.own.port}\nprobeTimeout=1\ninterval=0.5\nflapCount=0\n"
            f"mailTo=ops@domain.tld\nmailFrom=robot@domain.tld\nsmtpRelay=127.0.0.1\n"
            f"smtpPort={self.relay.port}\nsmtpSSL=no\nsmtpStartTLS=no\nsmtpTimeout=5\n{extra}")
        self.confdir.write(f"targetIP={PEER_IP}\nprobePort={self.peer.port}\n", target="beta")

    def load(self):
        return config.load(str(self.confdir.main))

    def pool(self) -> set[str]:
        return set(self.knot.query("api", "A"))

    def restart_own(self) -> None:
        self.own = StatusServer(SELF_IP, port=self.own.port)

    def stop(self) -> None:
        for s in (self.own, self.peer):
            s.stop()
        self.knot.stop()


@pytest.fixture
def site(confdir, tmp_path, smtp_relay):
    s = Site(confdir, tmp_path, smtp_relay())
    yield s
    s.stop()


@contextlib.contextmanager
def looping(site, confdir):
    """The cron loop of the site, in a thread, until the block ends."""
    loop = cycle.Loop(cycle.SiteCache(site.load, str(confdir.main)), 120)
    thread = run_loop(loop)
    try:
        yield Spool(site.load().spool_dir)
    finally:
        loop.request_stop()
        thread.join(5)
    assert not thread.is_alive()


def subjects(relay) -> list[str]:
    return [str(r.message["Subject"]) for r in relay.received]


def test_self_stops_serving_its_address_leaves_the_pool_and_comes_back(site, confdir):
    with looping(site, confdir) as store:
        wait_for(lambda: store.read(SELF).health.state is State.UP, 10, "self up")
        assert site.pool() == {SELF_IP, PEER_IP}
        # probed as a peer is: apiName as Host (with the port), at selfIP
        assert set(site.own.hosts) == {f"api.domain.tld:{site.own.port}"}
        site.own.stop()  # this site's HTTP dies; its DNS server lives
        took = wait_for(lambda: SELF_IP not in site.pool(), 10, "selfIP out of the pool")
        assert took < 5.0, took  # refused: one interval and the confirmation
        assert site.pool() == {PEER_IP}
        entry = store.read(SELF)
        assert entry.health.state is State.DOWN
        assert [(e["from"], e["to"]) for e in entry.journal][-1] == ("up", "down")
        wait_for(lambda: "WARNING: Server self is DOWN." in subjects(site.relay), 15,
                 "the mail that self is down")
        site.restart_own()
        wait_for(lambda: SELF_IP in site.pool(), 10, "selfIP back in the pool")
        assert site.pool() == {SELF_IP, PEER_IP}
        wait_for(lambda: "NOTICE: Server self is up." in subjects(site.relay), 15,
                 "the mail that self is up")
        down = next(r for r in site.relay.received
                    if str(r.message["Subject"]) == "WARNING: Server self is DOWN.")
        text = down.message.get_content()
        assert "self (this site, alpha: 127.0.6.1) is DOWN, as seen from alpha itself." in text
        assert f"DNS: removed {SELF_IP} from api.pool.domain.tld A" in text


def test_self_down_and_every_peer_down_keeps_self_ip(site, confdir):
    with looping(site, confdir) as store:
        wait_for(lambda: store.read(SELF).health.state is State.UP, 10, "self up")
        site.peer.stop()
        wait_for(lambda: PEER_IP not in site.pool(), 10, "the peer out of the pool")
        site.own.stop()
        wait_for(lambda: store.read(SELF).health.state is State.DOWN, 10, "self down")
        time.sleep(1.5)  # reconcile has had its turns: selfIP stays, the pool is not empty
        assert site.pool() == {SELF_IP}
        site.peer = StatusServer(PEER_IP, port=site.peer.port)  # a peer is back: self leaves
        wait_for(lambda: site.pool() == {PEER_IP}, 10, "the peer in, selfIP out")


def test_probe_self_status_and_dry_run(site, run):
    r = run("probe", "self", "--json")
    assert r.exit_code == 0, r.stderr
    got = json.loads(r.stdout)
    assert (got["target"], got["state"], got["address"]) == ("self", "up", SELF_IP)
    r = run("status", "--json")
    states = {o["target"]: o["state"] for o in map(json.loads, r.stdout.splitlines())}
    assert states == {"beta": "unknown", "self": "up"}  # like any target
    run("probe", "beta")
    site.own.behaviour = "503"
    for _ in range(2):  # probeFall=2
        r = run("probe", "self", "--json")
    assert r.exit_code == 1 and json.loads(r.stdout)["error"] == "HTTP 503", r.stdout
    r = run("reconcile", "--dry-run")
    assert r.exit_code == 0, r.stderr
    assert f"update delete api.pool.domain.tld. IN A {SELF_IP}" in r.stdout
    r = run("reconcile", "--dry-run", "--json")
    [plan] = [json.loads(line) for line in r.stdout.splitlines()]
    assert plan["changes"] == [{"action": "delete", "type": "A", "address": SELF_IP,
                                "ttl": None, "target": "self", "pruned": False}]
    assert site.pool() == {SELF_IP, PEER_IP}  # a dry run sends nothing
    r = run("status")
    assert any(line.split()[:2] == ["self", "down"] for line in r.stdout.splitlines()), r.stdout
    r = run("history", "self")
    assert r.exit_code == 0 and "down" in r.stdout


def test_self_check_off_is_the_original(site, run):
    site.write("selfCheck=no\n")
    assert site.load().targets == ("beta",)
    r = run("probe", "self")
    assert r.exit_code == 2 and "selfCheck=yes" in r.stderr


def test_a_target_named_self_needs_self_check_off(site, run):
    site.write("targets='beta self'\n")
    r = run("config", "check")
    assert r.exit_code == 78 and "selfCheck=no" in r.stderr, r.stderr
    r = run("config", "show")
    assert r.exit_code == 78


def test_config_show_and_check_show_the_self_check(site, run):
    r = run("config", "show")
    assert r.exit_code == 0, r.stderr
    url = f"http://api.domain.tld:{site.own.port}/status"
    assert f"#   probe: GET {url} (Host: api.domain.tld) at {SELF_IP} (selfIP)" in r.stdout
    assert f"in the pool while target self answers (selfCheck=yes): {SELF_IP}" in r.stdout
    assert any(line.startswith("selfCheck=yes ") and line.endswith("# default")
               for line in r.stdout.splitlines())
    r = run("config", "check", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["targets"] == ["beta", "self"]
    site.write("selfCheck=maybe\n")
    r = run("config", "check")
    assert r.exit_code == 78 and "selfCheck=maybe: expected yes or no" in r.stderr, r.stderr
    site.write("selfCheck=no\n")
    r = run("config", "show", "beta")
    assert f"always in the pool: {SELF_IP} (selfIP, selfCheck=no)" in r.stdout


def test_maintenance_of_self_drains_this_site_while_a_peer_is_up(site, run):
    assert run("probe").exit_code == 0
    r = run("maint", "self", "--for", "1h", "--reason", "upgrade")
    assert r.exit_code == 0, r.stderr
    r = run("reconcile")
    assert r.exit_code == 0, r.stderr
    assert site.pool() == {PEER_IP}  # this site's service is taken out, its DNS goes on
    assert run("maint", "self", "--clear").exit_code == 0
    assert run("reconcile").exit_code == 0
    assert site.pool() == {SELF_IP, PEER_IP}
