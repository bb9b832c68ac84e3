"""Two ways the cron loop sees a failure sooner (issue 14), against real servers:

- the probe schedule is aligned to the wall clock, so every site probes a peer
  at the same moments and all of the pool's servers drop a dead site within
  one phase of each other, not the slowest of several;
- the connection of each target's last good probe is kept open between probes
  (`probe.kept.Kept`): a peer whose server process dies closes it at once, and the
  loop probes that target right away instead of at its next interval.

Real HTTP servers on 127.0.4.x (tests/rawserver.py), a real Knot for DNS."""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

import spdu_cli.probe.step as probe_step
from spdu_cli import config, cycle
from spdu_cli.health import Health, State
from spdu_cli.probe.kept import KEPT_DISCARD, Kept
from spdu_cli.spool import Spool
from tests.rawserver import RawServer

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n"
_hosts = iter(range(10, 250))


# -- the aligned schedule (pure) -------------------------------------------------------------


@given(now=st.floats(0, 1e6), period=st.sampled_from([0.1, 0.25, 0.5, 1, 1.5, 2, 7, 60]),
       offset=st.floats(0, 2e9))
def test_aligned_falls_on_a_multiple_of_the_period_on_the_wall_clock(now, period, offset):
    due = cycle.aligned(now, period, offset)
    assert period / 2 - 1e-6 <= due - now <= 1.5 * period + 1e-6
    wall = due + offset
    assert min(wall % period, period - wall % period) < 1e-5 * max(1.0, wall / 1e6)


def test_loops_started_apart_probe_at_the_same_wall_moments():
    """Two sites whose loops started 0.7 s apart (and whose monotonic clocks differ)."""
    up = Health(State.UP, 0, 3, 0)
    wall0 = 1_700_000_000.3
    a, b = cycle.Schedule(), cycle.Schedule()
    a_offset, b_offset = wall0 - 50.0, wall0 + 0.7 - 9000.0  # wall - monotonic, each site
    a.probed("t", up, now=50.0, interval=2, fast=0.25, down=0.5, offset=a_offset)
    b.probed("t", up, now=9000.0, interval=2, fast=0.25, down=0.5, offset=b_offset)
    assert a.due_at["t"] + a_offset == pytest.approx(b.due_at["t"] + b_offset)
    assert (a.due_at["t"] + a_offset) % 2 == pytest.approx(0, abs=1e-6)
    # a down target: every downInterval, aligned too; a suspect one: fastInterval later
    a.probed("t", Health(State.DOWN, 0, 0, 3), now=50.0, interval=2, fast=0.25, down=0.5,
             offset=a_offset)
    assert (a.due_at["t"] + a_offset) % 0.5 == pytest.approx(0, abs=1e-6)
    a.probed("t", Health(State.UP, 0, 0, 1), now=50.0, interval=2, fast=0.25, down=0.5,
             offset=a_offset)
    assert a.due_at["t"] == 50.25
    # without an offset (no wall clock): an interval after the probe, as before
    a.probed("t", up, now=50.0, interval=2, fast=0.25, down=0.5)
    assert a.due_at["t"] == 52.0


# -- kept connections ---------------------------------------------------------------------


class Peer(RawServer):
    """An HTTP status server on its own loopback address whose answer can be changed."""

    def __init__(self, answer: bytes = OK, after=("until-closed",), port: int = 0):
        self.answer, self.after = answer, list(after)
        super().__init__(f"127.0.4.{next(_hosts)}", lambda: [self.answer, *self.after],
                         port=port)


@pytest.fixture
def lab(confdir, tmp_path):
    """lab(peer, extra=..., name_port=...) -> a site loader for one target, t0."""
    def make(peer: Peer, extra: str = "", name_port: int = 9):
        confdir.write(f"domain=domain.tld\ntargets=t0\nspoolDir={tmp_path}/spool\n"
                      f"selfCheck=no\nselfIP=192.0.2.1\nsyslogSocket=none\nnameServer=127.0.0.1\n"
                      f"namePort={name_port}\nnameTimeout=1\nprobeTimeout=1\n{extra}")
        confdir.write(f"targetIP={peer.host}\nprobePort={peer.port}\n", target="t0")
        return lambda: config.load(str(confdir.main))

    peers: list[Peer] = []

    def peer(*a, **kw) -> Peer:
        peers.append(Peer(*a, **kw))
        return peers[-1]

    yield make, peer
    for p in peers:
        p.stop()


def kept_after_probe(site) -> tuple[dict, list]:
    kept: dict = {}
    reports = probe_step.run(site, confirm=True, kept=kept)
    return kept, reports


def test_the_loop_asks_to_keep_the_connection_and_spdu_probe_does_not(lab):
    make, peer = lab
    p = peer()
    site = make(p)()
    kept, [rep] = kept_after_probe(site)
    assert rep.result.ok and list(kept) == ["t0"]
    probe_step.run(site)  # by hand: nothing is kept, and the peer is told so
    assert b"connection: close" not in p.requests[0].lower()
    assert b"connection: close" in p.requests[-1].lower()
    for sock in kept["t0"]:
        sock.close()


def test_a_peer_that_dies_is_heard_at_once_and_an_idle_one_is_not(lab):
    make, peer = lab
    p = peer()
    kept, _ = kept_after_probe(make(p)())
    watch = Kept()
    try:
        watch.keep("t0", kept["t0"])
        assert watch.wait(0.3) == []  # open and quiet: nothing to hear
        assert watch
        p.stop()  # the server process ends: its kernel closes the connection
        t0 = time.monotonic()
        assert watch.wait(2.0) == ["t0"]
        assert time.monotonic() - t0 < 0.3
        assert not watch  # heard once; the next probe keeps a new one
    finally:
        watch.close()


def test_a_reset_is_heard_too(lab):
    make, peer = lab
    p = peer(after=[0.3, "rst"])  # answers, then resets the idle connection
    kept, _ = kept_after_probe(make(p)())
    watch = Kept()
    try:
        watch.keep("t0", kept["t0"])
        assert watch.wait(2.0) == ["t0"]
    finally:
        watch.close()


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: keep-alive, Close\r\n\r\nok\n",
    b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n",
    b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n",
], ids=["connection-close", "close-in-a-list", "http-1.0", "a-failed-probe"])
def test_nothing_is_kept_when_the_peer_will_close_or_the_probe_failed(lab, answer):
    make, peer = lab
    kept, _ = kept_after_probe(make(peer(answer))())
    assert kept == {}


class TlsPeer:
    """An HTTPS status server that keeps each connection open after its answer
    until it is stopped (its process dies: the connections close, without
    close_notify)."""

    def __init__(self, ca):
        self.host = f"127.0.4.{next(_hosts)}"
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("api.domain.tld").configure_cert(self.ctx)
        self.sock = socket.create_server((self.host, 0))
        self.port = self.sock.getsockname()[1]
        self.conns: list = []
        self.stopped = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                raw, _ = self.sock.accept()
                conn = self.ctx.wrap_socket(raw, server_side=True)
                self.conns.append(conn)
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(4096)
                conn.sendall(OK)
            except OSError:
                if self.stopped.is_set():
                    return

    def stop(self) -> None:
        self.stopped.set()
        self.sock.close()
        for c in self.conns:
            c.close()


def test_an_https_peer_that_dies_is_heard_too(lab, tmp_path):
    import trustme

    make, _ = lab
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    p = TlsPeer(ca)
    try:
        site = make(p, extra=f"probeSSL=yes\nprobeCAFile={tmp_path / 'ca.pem'}\n")()
        kept, [rep] = kept_after_probe(site)
        assert rep.result.ok, rep.result.error
        watch = Kept()
        try:
            watch.keep("t0", kept["t0"])
            assert watch.wait(0.3) == []
            p.stop()
            assert watch.wait(2.0) == ["t0"]
        finally:
            watch.close()
    finally:
        p.stop()


def test_a_tcp_probe_keeps_nothing(lab):
    make, peer = lab
    p = peer(b"220 smtp ready\r\n")
    p.read_request = False
    kept, [rep] = kept_after_probe(make(p, extra="probeType=tcp\nprobeMatch=220\n")())
    assert rep.result.ok and kept == {}


def test_a_few_bytes_after_the_answer_are_discarded_and_the_connection_still_watched(lab):
    """An unread rest of a body, a stray byte: drained, and the connection is still
    watched, so the peer's death is heard all the same."""
    make, peer = lab
    p = peer(after=[b"x" * 1000, 0.1, b"y", "until-closed"])
    kept, _ = kept_after_probe(make(p)())
    watch = Kept()
    try:
        watch.keep("t0", kept["t0"])
        deadline = time.monotonic() + 0.6
        while time.monotonic() < deadline:
            assert watch.wait(0.1) == []
        assert watch  # still watched
        p.stop()
        deadline = time.monotonic() + 2
        closed: list[str] = []
        while not closed and time.monotonic() < deadline:
            closed = watch.wait(0.2)
        assert closed == ["t0"]
    finally:
        watch.close()


def test_a_kept_connection_that_keeps_sending_is_let_go_not_heard_as_a_failure(lab):
    make, peer = lab
    junk = b"x" * 16384
    p = peer(after=[junk] * 6 + ["until-closed"])  # more than KEPT_DISCARD after the answer
    kept, _ = kept_after_probe(make(p)())
    watch = Kept()
    try:
        watch.keep("t0", kept["t0"])
        deadline = time.monotonic() + 2
        while watch and time.monotonic() < deadline:
            assert watch.wait(0.2) == []  # drained, never reported as closed
        assert not watch  # let go after KEPT_DISCARD bytes
        assert 6 * len(junk) > KEPT_DISCARD
    finally:
        watch.close()


# -- the loop ---------------------------------------------------------------------------


def run_loop(loop: cycle.Loop) -> threading.Thread:
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    return thread


def wait_for(cond, timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)
    return time.monotonic() - t0


def test_a_peer_whose_server_dies_is_out_of_dns_long_before_its_next_probe(lab, knot, confdir):
    """interval 30: without the kept connection the next probe would be up to 30 s away."""
    make, peer = lab
    p = peer()
    load = make(p, extra="interval=30\n", name_port=knot.port)
    loop = cycle.Loop(cycle.SiteCache(load, str(confdir.main)), 60)
    thread = run_loop(loop)
    try:
        wait_for(lambda: p.host in knot.query("api", "A"), 10, "t0 in DNS")
        wait_for(lambda: bool(loop.kept), 5, "the kept connection")
        time.sleep(0.2)
        p.stop()
        took = wait_for(lambda: p.host not in knot.query("api", "A"), 5, "t0 out of DNS")
        assert took < 1.0, took
        assert Spool(load().spool_dir).read("t0").health.state is State.DOWN
    finally:
        t0 = time.monotonic()
        loop.request_stop()  # wakes the loop out of its wait on the kept connections
        thread.join(5)
    assert not thread.is_alive() and time.monotonic() - t0 < 1.0


def test_a_stop_request_ends_a_loop_that_waits_on_kept_connections_at_once(lab, confdir):
    """interval 30, the peer alive: the loop waits on its kept connection, and
    SIGTERM's request_stop wakes it there, not at the next tick."""
    make, peer = lab
    p = peer()
    load = make(p, extra="interval=30\n")
    loop = cycle.Loop(cycle.SiteCache(load, str(confdir.main)), 60)
    thread = run_loop(loop)
    try:
        wait_for(lambda: bool(loop.kept), 10, "the kept connection")
        time.sleep(0.3)  # into the wait
        assert loop.kept
    finally:
        t0 = time.monotonic()
        loop.request_stop()
        thread.join(5)
    assert not thread.is_alive() and time.monotonic() - t0 < 1.0


def test_a_peer_that_closes_idle_connections_costs_one_early_probe(lab, caplog):
    """A keep-alive timeout shorter than the interval: the close is heard, the early
    probe finds the peer up, and its connections are not watched again this run."""
    make, peer = lab
    p = peer(after=[0.2])  # closes 0.2 s after answering
    load = make(p, extra="interval=1\n")
    loop = cycle.Loop(cycle.SiteCache(load, "/nonexistent"), 4.5)
    with caplog.at_level(logging.INFO, logger="spdu_cli.cycle"):
        tally = loop.run()
    early = [r for r in caplog.records if "probing it now" in r.getMessage()]
    assert len(early) == 1, [r.getMessage() for r in caplog.records]
    assert any("closes idle connections" in r.getMessage() for r in caplog.records)
    assert len(p.requests) == tally.probes  # each run one probe: the peer answers at once
    assert tally.probes <= 5 + 1  # every interval (4.5 s), and the one early probe
    assert Spool(load().spool_dir).read("t0").health.state is State.UP
