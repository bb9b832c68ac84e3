"""Confirming probes (issue 14): in the cron loop, a probe that disagrees with a
target's state is confirmed within the same run, in both directions; a certain
failure sooner than a silence; a hang by overlapping probes, each with its own
deadline. And what must not change: a slow but healthy target stays up, one
failed probe changes nothing, overlap is bounded, flapping is summarized.
Real HTTP servers on 127.0.2.x, a real Knot for the same-tick DNS update."""

from __future__ import annotations

import threading
import time

import pytest

import spdu_cli.probe.step as probe_step
from spdu_cli import config, cycle, health
from spdu_cli.health import State
from spdu_cli.probe.engine import Engine
from spdu_cli.spool import Spool
from tests.rawserver import RawServer

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n"
_hosts = iter(range(10, 250))


class Peer(RawServer):
    """A RawServer whose behaviour can be switched, counting connections in flight."""

    def __init__(self, host: str, delay: float = 0.0, port: int = 0):
        self.mode = "ok"
        self.queue: list[str] = []
        self.delay = delay
        self.inflight = self.most = 0
        self._count = threading.Lock()
        self.resumed = threading.Event()
        super().__init__(host, self._script, port=port)

    def _script(self):
        mode = self.queue.pop(0) if self.queue else self.mode
        with self._count:
            self.inflight += 1
            self.most = max(self.most, self.inflight)
        try:
            if mode == "hang":
                yield "until-closed"  # so `inflight` counts what the prober holds open
            elif mode == "pause":  # SIGSTOP: the kernel accepts, the answer comes on resume
                while not self.resumed.wait(0.01):
                    pass
                yield OK
            elif mode == "rst":
                yield "rst"
            elif mode == "503":
                yield b"HTTP/1.1 503 X\r\nContent-Length: 0\r\n\r\n"
            else:
                if self.delay:
                    yield self.delay
                yield OK
        finally:
            with self._count:
                self.inflight -= 1


@pytest.fixture
def lab(confdir, tmp_path):
    """lab(n, **settings) -> (site loader, [Peer...]): n targets, one Peer each."""
    peers: list[Peer] = []

    def make(n: int = 1, delay: float = 0.0, extra: str = "", name_port: int = 9):
        names = [f"t{i}" for i in range(n)]
        confdir.write(f"domain=domain.tld\ntargets='{' '.join(names)}'\n"
                      f"spoolDir={tmp_path}/spool\nselfCheck=no\nselfIP=192.0.2.1\nsyslogSocket=none\n"
                      f"nameServer=127.0.0.1\nnamePort={name_port}\nnameTimeout=1\n"
                      f"probeTimeout=1\ninterval=2\n{extra}")
        for name in names:
            p = Peer(f"127.0.2.{next(_hosts)}", delay)
            peers.append(p)
            confdir.write(f"targetIP={p.host}\nprobePort={p.port}\n", target=name)
        return (lambda: config.load(str(confdir.main))), peers[-n:]

    yield make
    for p in peers:
        p.stop()


def confirmed(site, **kw):
    t0 = time.monotonic()
    reports = probe_step.run(site, confirm=True, **kw)
    return reports, time.monotonic() - t0


def state(site, target: str = "t0") -> health.Health:
    return Spool(site.spool_dir).read(target).health


def up_first(site, peers):
    """Probe until every target is up (a fresh target takes its first result)."""
    reports, _ = confirmed(site)
    assert all(r.health.state is State.UP for r in reports), reports


# -- faster confirmation -------------------------------------------------------------------


def test_a_refused_target_goes_down_within_one_run_at_once(lab):
    load, [p] = lab(extra="fastInterval=1\n")
    site = load()
    up_first(site, [p])
    p.stop()  # nothing listens: refused
    [rep], took = confirmed(site)
    assert rep.health.state is State.DOWN and rep.probes == 2
    assert rep.transition is not None
    assert took < 0.5  # a certain failure is checked CERTAIN_GAP later, not fastInterval (1 s)


def test_a_hung_target_goes_down_in_one_probe_timeout_not_two(lab):
    load, [p] = lab()
    site = load()
    up_first(site, [p])
    p.mode = "hang"
    [rep], took = confirmed(site)
    assert rep.health.state is State.DOWN and rep.probes == 2
    # the confirming probe started beside the first (overdue), each its own 1 s deadline
    assert 1.0 <= took < 1.0 + 0.25 + 0.3, took
    assert p.most == 2


def test_a_repaired_target_comes_back_within_one_run(lab):
    load, [p] = lab(extra="fastInterval=0.2\n")
    site = load()
    p.mode = "503"
    confirmed(site)
    assert state(site).state is State.DOWN
    p.mode = "ok"
    [rep], took = confirmed(site)
    assert rep.health.state is State.UP and rep.probes == 2  # rise 2, fastInterval apart
    assert 0.2 <= took < 0.2 + 0.3


def test_a_hung_site_that_resumes_is_back_at_once(lab):
    # down and hung: its probes overlap (as many as rise still needs), so when it
    # resumes they all get their answers at once and rise is met in one go
    load, [p] = lab(extra="fastInterval=0.5\n")
    site = load()
    p.mode = "503"
    confirmed(site)
    assert state(site).state is State.DOWN
    p.mode = "pause"
    threading.Timer(0.7, p.resumed.set).start()
    t0 = time.monotonic()
    [rep], _ = confirmed(site)
    assert rep.health.state is State.UP and rep.probes == 2
    assert time.monotonic() - t0 < 0.7 + 0.3  # not resume + fastInterval
    assert p.most == 2


def test_the_cron_schedule_probes_a_down_target_every_down_interval():
    s = cycle.Schedule()
    s.probed("down", health.Health(State.DOWN, 0, 0, 3), now=10, interval=2, fast=0.25,
             down=0.5)
    s.probed("up", health.Health(State.UP, 0, 3, 0), now=10, interval=2, fast=0.25, down=0.5)
    s.probed("rising", health.Health(State.DOWN, 0, 1, 0), now=10, interval=2, fast=0.25,
             down=0.5)
    assert s.due_at == {"down": 10.5, "up": 12, "rising": 10.25}


# -- safety kept ---------------------------------------------------------------------------


def test_a_slow_healthy_target_is_never_taken_out(lab):
    # 20 targets that always answer in 0.8 x probeTimeout, 5 runs: 100 probes (and the
    # overlapping ones beside them); none may fail, no state may change.
    load, peers = lab(20, delay=0.8)
    site = load()
    up_first(site, peers)
    for _ in range(5):
        reports, _ = confirmed(site)
        assert [r.health.state for r in reports] == [State.UP] * 20
        assert all(r.transition is None for r in reports)
    entries = [Spool(site.spool_dir).read(f"t{i}") for i in range(20)]
    assert sum(e.counters["probes"] for e in entries) >= 120
    assert sum(e.counters["probe_failures"] for e in entries) == 0


@pytest.mark.parametrize("once, failures", [("503", 1), ("rst", 1), ("hang", 0)])
def test_one_failed_probe_changes_nothing(lab, once, failures):
    load, [p] = lab()
    site = load()
    up_first(site, [p])
    p.queue = [once]
    [rep], _ = confirmed(site)
    assert rep.health.state is State.UP and rep.transition is None
    assert rep.health.bad == 0  # the confirming probe answered
    # (a hung one is abandoned, unjudged, once the probe overlapping it has answered)
    assert Spool(site.spool_dir).read("t0").counters["probe_failures"] == failures


@pytest.mark.parametrize("fall, bound", [(2, 2), (3, 3), (8, health.MAX_OVERLAP)])
def test_overlapping_probes_are_bounded(lab, fall, bound, monkeypatch):
    # counted where the connections are held, in the prober (the server notices a
    # close only a moment later, and would count one that has just ended)
    load, [p] = lab(extra=f"probeFall={fall}\nprobeTimeout=0.5\n")
    site = load()
    up_first(site, [p])
    p.mode = "hang"
    most = [0]
    start = Engine._start

    def counting(engine):
        start(engine)
        most[0] = max(most[0], len(engine.active))

    monkeypatch.setattr(Engine, "_start", counting)
    [rep], _ = confirmed(site)
    assert rep.health.state is State.DOWN and rep.probes == fall
    assert 2 <= most[0] <= bound


def test_a_flapping_target_is_summarized_not_mailed_per_flap(lab, run):
    load, [p] = lab(extra="mailTo=ops@domain.tld\nsmtpRelay=127.0.0.1\nflapCount=3\n"
                          "fastInterval=0.05\n")
    site = load()
    for i in range(10):  # up, down, up...: each change confirmed within its run
        p.mode = "ok" if i % 2 == 0 else "503"
        confirmed(site)
    journal = Spool(site.spool_dir).read("t0").journal
    assert len(journal) == 10
    r = run("notify", "--dry-run")
    assert r.exit_code == 0, r.stderr
    assert "flapping" in r.stdout or "flapp" in r.stdout.lower(), r.stdout


# -- the transition reaches DNS in the same tick -------------------------------------------


def test_the_tick_that_sees_the_change_updates_dns(lab, knot, confdir):
    load, [p] = lab(name_port=knot.port, extra="interval=5\n")
    cache = cycle.SiteCache(load, str(confdir.main))
    loop = cycle.Loop(cache, 60)
    loop.tick(0.0)
    assert p.host in knot.query("api", "A")
    p.stop()
    loop.tick(loop.schedule.due_at["t0"])  # the next probe: refused, confirmed, updated
    assert p.host not in knot.query("api", "A")
    assert loop.tally.reconciles == 2


def two_addresses_up(lab, confdir):
    """One target t0 on two addresses (a, and b on a new host), both up."""
    load, [a] = lab()
    b = Peer(f"127.0.2.{next(_hosts)}", port=a.port)
    confdir.write(f"targetIP='{a.host} {b.host}'\nprobePort={a.port}\n", target="t0")
    site = load()
    up_first(site, [a, b])
    return site, a, b


@pytest.mark.parametrize("mode", ["hang", "refused"])
def test_one_of_two_addresses_fails(lab, confdir, mode):
    # every address must answer: a round fails on its first failed address (the
    # others' tries are dropped), and the next round confirms it
    site, _a, b = two_addresses_up(lab, confdir)
    try:
        if mode == "hang":
            b.mode = "hang"
        else:
            b.stop()
        [rep], took = confirmed(site)
        assert rep.health.state is State.DOWN and rep.probes == 2
        assert rep.result.address == b.host
        assert took < (1.0 + 0.25 + 0.3 if mode == "hang" else 0.5), took
    finally:
        b.stop()


def test_a_refused_address_decides_at_once_beside_one_that_hangs(lab, confdir):
    """The refusal is known at once: the round, and the confirming one, need not wait
    probeTimeout for the other address's silence."""
    site, a, b = two_addresses_up(lab, confdir)
    try:
        a.mode = "hang"
        b.stop()
        [rep], took = confirmed(site)
        assert rep.health.state is State.DOWN and rep.probes == 2
        assert rep.result.address == b.host and "connection refused" in rep.result.error
        assert took < 0.5, took
    finally:
        b.stop()
