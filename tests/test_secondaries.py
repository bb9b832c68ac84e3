"""Secondaries fed by NOTIFY and IXFR: a Knot primary that spdu updates, a
BIND and a Knot secondary; every secondary converges, and `spdu status
--dns` shows each one's serial and a lagging one (its transfers frozen with
`knotc zone-freeze`) with how long it has lagged."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from spdu_cli import secondaries
from tests.dnsservers import BindServer, KnotServer, free_port
from tests.test_reconcile import BETA, GAMMA, SELF, pool, set_state, write_conf

CONVERGE = 10.0  # seconds a secondary may take: NOTIFY, then IXFR (about 1 s here)


@pytest.fixture
def cluster(tmp_path):
    """(primary, bind secondary, knot secondary), all on 127.0.0.1."""
    ports = (free_port(), free_port())
    primary = KnotServer(tmp_path / "primary", notify=[("127.0.0.1", p) for p in ports])
    started = [primary]
    try:
        for cls, name, port in ((BindServer, "bind", ports[0]), (KnotServer, "knot", ports[1])):
            s = cls(tmp_path / name, primary=("127.0.0.1", primary.port), start=False)
            s.want_port = port
            started.append(s.start(attempts=1))
        yield tuple(started)
    finally:
        for s in started:
            s.stop()


def converge(servers, want, timeout=CONVERGE):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(pool(s) == want for s in servers):
            return
        time.sleep(0.02)
    raise AssertionError(f"not converged on {want}: {[pool(s) for s in servers]}")


def status(run) -> dict:
    r = run("status", "--dns", "--json", "beta")
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)["dns"]


def test_every_secondary_converges_and_status_shows_a_lagging_one(run, confdir, spool_dir,
                                                                   cluster):
    primary, bind, knot = cluster
    spool = spool_dir
    servers = f"127.0.0.1@{bind.port} 127.0.0.1@{knot.port}"
    write_conf(confdir, primary, spool, extra=f"secondaryServers='{servers}'\n")
    set_state(spool, "beta", "down", [BETA])
    set_state(spool, "gamma", "up", [GAMMA])

    before = status(run)
    assert before["serial"] == 1
    assert [(s["server"], s["serial"], s["in_step"]) for s in before["servers"]] == [
        (f"127.0.0.1:{bind.port}", 1, True), (f"127.0.0.1:{knot.port}", 1, True)]

    assert run("reconcile").exit_code == 0
    assert pool(primary) == [SELF, GAMMA]
    converge([bind, knot], [SELF, GAMMA])
    after = status(run)
    assert after["serial"] == 2
    assert all(s["in_step"] and s["serial"] == 2 and s["lag_s"] is None
               for s in after["servers"])

    # the Knot secondary stops taking transfers: it lags, and status says so
    assert knot.knotc("zone-freeze", knot.zone).returncode == 0
    set_state(spool, "gamma", "down", [GAMMA])
    set_state(spool, "beta", "up", [BETA])
    assert run("reconcile").exit_code == 0
    converge([bind], [SELF, BETA])
    time.sleep(1.1)
    lagging = status(run)
    b, k = lagging["servers"]
    assert b["in_step"] and b["serial"] == 3
    assert not k["in_step"] and k["behind"] and k["serial"] == 2
    assert k["addresses"] == [SELF, GAMMA] and 1.0 <= k["lag_s"] < CONVERGE + 5
    r = run("status", "--dns", "beta")  # the same, in plain lines
    assert f"on 127.0.0.1:{bind.port}: serial 3, in step" in r.stdout
    assert f"on 127.0.0.1:{knot.port}: serial 2, behind the primary: lagging" in r.stdout

    assert knot.knotc("zone-thaw", knot.zone).returncode == 0
    converge([knot], [SELF, BETA])
    assert all(s["in_step"] for s in status(run)["servers"])


def test_a_stopped_secondary_is_reported_and_does_not_hide_the_others(run, confdir,
                                                                      spool_dir, cluster):
    primary, bind, knot = cluster
    write_conf(confdir, primary, spool_dir,
               extra=f"secondaryServers='127.0.0.1@{bind.port} 127.0.0.1@{knot.port}'\n"
                     "nameTimeout=0.3\n")
    set_state(spool_dir, "beta", "up", [BETA])
    bind.stop()
    d = status(run)
    assert d["servers"][0]["error"] == "no answer within 0.3 s"
    assert d["servers"][1]["in_step"]


def test_the_ns_set_is_the_default_list(run, confdir, tmp_path, spool_dir):
    # The zone's NS names, with their addresses from the primary: ns1 is the
    # primary itself, ns2 a Knot secondary on another loopback address, on
    # the same port (namePort is used for servers found in the NS set).
    port = free_port("127.0.0.2")
    records = [("@", "NS", "ns2"), ("ns2", "A", "127.0.0.3"), ("api", "A", SELF)]
    primary = KnotServer(tmp_path / "p", address="127.0.0.2", records=records,
                         notify=[("127.0.0.3", port)], start=False)
    secondary = KnotServer(tmp_path / "s", address="127.0.0.3", start=False,
                           primary=("127.0.0.2", port))
    primary.want_port = secondary.want_port = port
    try:
        primary.start(attempts=1)
        secondary.start(attempts=1)
        write_conf(confdir, primary, spool_dir, targets={"beta": BETA})
        set_state(spool_dir, "beta", "up", [BETA])
        d = status(run)
        got = {(s["ns"], s["server"]): s for s in d["servers"]}
        assert got[("ns2.pool.domain.tld.", f"127.0.0.3:{port}")]["in_step"]
        # ns1 (zone_text's) is 127.0.0.1, where nothing listens on that port
        assert got[("ns1.pool.domain.tld.", f"127.0.0.1:{port}")]["error"]
        assert len(got) == 2
    finally:
        primary.stop()
        secondary.stop()


class Relay:
    """A DNS server on `address`:`port` (UDP) that passes each query on to an
    upstream server and its answer back: authoritative or not, as a caching
    resolver in front of the primary answers (AA cleared)."""

    def __init__(self, address: str, port: int, upstream, authoritative: bool):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((address, port))
        self.sock.settimeout(0.2)
        self.upstream, self.authoritative = upstream, authoritative
        self.asked = 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        import dns.flags
        import dns.message
        import dns.query

        while not self._stop.is_set():
            try:
                wire, client = self.sock.recvfrom(65535)
            except (TimeoutError, OSError):
                continue
            self.asked += 1
            q = dns.message.from_wire(wire)
            r = dns.query.udp(q, self.upstream.address, port=self.upstream.port, timeout=2)
            if not self.authoritative:
                r.flags &= ~dns.flags.AA
            self.sock.sendto(r.to_wire(), client)

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(2)
        self.sock.close()


def test_a_server_that_answers_without_authority_is_not_taken_for_a_secondary(
        run, confdir, spool_dir, knot):
    """A resolver that caches the primary's zone answers the same serial and pool,
    but it is no copy of the zone: status says so instead of "in step"."""
    relay = Relay("127.0.0.1", free_port(), knot, authoritative=False)
    try:
        write_conf(confdir, knot, spool_dir,
                   extra=f"secondaryServers='127.0.0.1@{relay.sock.getsockname()[1]}'\n")
        set_state(spool_dir, "beta", "up", [BETA])
        (s,) = status(run)["servers"]
        assert relay.asked >= 1 and not s["in_step"]
        assert s["error"] == "not authoritative for pool.domain.tld (NOERROR without AA)"
    finally:
        relay.stop()


def test_a_secondary_without_a_port_is_asked_on_port_53(run, confdir, spool_dir, knot):
    """secondaryServers ADDRESS: port 53, whatever namePort the primary is on."""
    relay = Relay("127.0.5.53", 53, knot, authoritative=True)
    try:
        write_conf(confdir, knot, spool_dir, extra="secondaryServers='127.0.5.53'\n")
        set_state(spool_dir, "beta", "up", [BETA])
        (s,) = status(run)["servers"]
        assert s["server"] == "127.0.5.53:53" and s["error"] is None
        assert s["in_step"] and s["serial"] == 1
    finally:
        relay.stop()


def test_serial_arithmetic_and_the_lag_from_spdus_updates():
    assert secondaries.serial_lt(1, 2) and not secondaries.serial_lt(2, 1)
    assert secondaries.serial_lt(2**32 - 1, 5)  # wrapped around (RFC 1982)
    view = secondaries.ServerView("192.0.2.53", 53, None, 7, ("192.0.2.1",))
    updates = [(100.0, 6), (200.0, 8), (300.0, 9)]
    st = secondaries.judge(view, 9, {"192.0.2.1", "192.0.2.2"}, updates)
    assert st.behind and not st.in_step and st.lagging_since == 200.0
    assert st.describe(260.0) == "serial 7, behind the primary: lagging 60 s"
    unknown = secondaries.judge(view, 9, {"192.0.2.1"}, [])
    assert "since before spdu's last recorded update" in unknown.describe(0)
    same = secondaries.judge(secondaries.ServerView("192.0.2.53", 53, None, 9, ("192.0.2.1",)),
                             9, {"192.0.2.1"}, updates)
    assert same.to_json(0)["in_step"] and same.describe(0) == "serial 9, in step"


@pytest.fixture
def spool_dir(tmp_path):
    from spdu_cli.spool import Spool

    return Spool(str(tmp_path / "spool"))


def test_an_ns_name_this_hosts_resolver_cannot_answer_holds_up_nothing(tmp_path):
    """An out-of-zone NS name is looked up by this host's resolver (getaddrinfo,
    which cannot be cancelled); behind a resolver that never answers (a mount
    namespace whose resolv.conf points at a socket nobody reads, 3 s a try)
    the NS set is still read within its timeout, that name with no address,
    the in-zone ones with theirs."""
    import subprocess
    import sys

    hole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # takes queries, answers none
    hole.bind(("127.0.0.77", 53))
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 127.0.0.77\noptions timeout:3 attempts:1\n")
    records = [("@", "NS", "ns.elsewhere.test."), ("api", "A", SELF)]
    knot = KnotServer(tmp_path / "k", records=records)
    code = ("import sys, time, socket\n"
            "from spdu_cli import secondaries\n"
            "t = time.monotonic()\n"
            "got = secondaries.ns_servers('127.0.0.1', int(sys.argv[1]), 'pool.domain.tld', 1.0)\n"
            "print(round(time.monotonic() - t, 2), sorted(got))\n"
            "t = time.monotonic()\n"
            "try:\n"
            "    socket.getaddrinfo('ns.elsewhere.test', None)\n"
            "except OSError:\n"
            "    pass\n"
            "print(round(time.monotonic() - t, 2))\n")
    try:
        r = subprocess.run(["unshare", "--mount", "sh", "-c",
                            'mount --bind "$0" /etc/resolv.conf && exec "$@"', str(conf),
                            sys.executable, "-c", code, str(knot.port)],
                           capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    finally:
        knot.stop()
        hole.close()
    assert r.returncode == 0, r.stderr
    (took, got), alone = r.stdout.splitlines()[0].split(" ", 1), r.stdout.splitlines()[1]
    assert float(alone) >= 3, r.stdout  # the resolver does hang: the test can fail
    assert float(took) < 2.5, r.stdout
    want = [("ns.elsewhere.test.", ""), ("ns1.pool.domain.tld.", "127.0.0.1")]
    assert got == str(sorted(want)), r.stdout
