"""The cron loop's schedule, driven deterministically: a fake clock that the
loop's own sleeps advance, and the three steps (probe, reconcile, notify)
replaced by scripted ones. The spool is real, so what the loop reads of it
(pending mail) agrees with what the scripted steps say they did.

These pin what the loop does and when, tick by tick; test_cycle.py runs the
real loop against real servers."""

from __future__ import annotations

import threading
import time
from itertools import pairwise
from types import SimpleNamespace

import pytest

from spdu_cli import cycle
from spdu_cli.errors import ConfigError, ServiceUnavailable, TemporaryFailure
from spdu_cli.health import Health, State, Transition
from spdu_cli.spool import Spool

T0 = 1000.0
INTERVAL, FAST = 2.0, 0.5
UP, SUSPECT = Health(State.UP, 0, 3, 0), Health(State.UP, 0, 0, 1)
DOWN = Health(State.DOWN, 0, 0, 2)


class Site(SimpleNamespace):
    """The few settings the loop reads."""


class Cache:
    def __init__(self, site):
        self.site = site

    def get(self):
        return self.site


class Sleeps:
    """Stands in for the loop's stop event: each wait moves the fake clock on at
    once, after the mail run of that tick (a background thread) has ended."""

    def __init__(self, loop):
        self.loop = loop
        self.taken: list[float] = []

    def is_set(self) -> bool:
        return False

    def set(self) -> None:
        pass

    def wait(self, timeout: float) -> bool:
        if self.loop.mailer is not None:
            self.loop.mailer.join(5)
        self.taken.append(timeout)
        if len(self.taken) > 500:
            raise AssertionError("busy loop: the loop does not sleep between ticks")
        self.loop.clock.now += timeout
        return False


class ScriptedPacer:
    """Stands in for the probes' event loop (probe.pacer.Pacer): each run ends
    at once, through the scripted probe step; waiting moves the fake clock on
    (loop.stop, Sleeps), once the DNS step asked for has run."""

    def __init__(self, script, loop):
        self.script, self.loop = script, loop
        self.reports: list = []
        self.running = 0
        self.kept = None

    def busy(self, target: str) -> bool:
        return False

    def start(self, site, names) -> None:
        self.reports += self.script.probe_run(site, names)

    def spurious(self, target: str) -> None:
        pass

    def forget(self, targets) -> None:
        pass

    def wait(self, until: float):
        from spdu_cli.probe.pacer import Batch

        if self.reports:
            out, self.reports = Batch(reports=self.reports), []
            return out
        if self.loop.dns.busy or self.loop.dns.results:
            assert self.loop.dns.join(5)
            return Batch(woke=True)
        if until > self.loop.clock():
            self.loop.stop.wait(until - self.loop.clock())
        return Batch()

    def close(self) -> None:
        pass


class Clock:
    def __init__(self):
        self.now = T0

    def __call__(self) -> float:
        return self.now


class Script:
    """The steps, each a function of the fake time; every call is recorded."""

    def __init__(self, site):
        self.site = site
        self.store = Spool(site.spool_dir)
        self.calls: dict[str, list[float]] = {"probe": [], "reconcile": [], "notify": []}
        self.probe = lambda now, due: dict.fromkeys(due, UP)  # -> {target: Health} or raise
        self.transitions: dict[float, str] = {}  # time -> target that changes state then
        self.plans = lambda now: []  # reconcile's plans (their `error` and `in_sync`)
        self.standing = lambda now: "as before"  # what the spool asks of DNS (reconcile.standing)
        self.mail = lambda now: SimpleNamespace(errors=[], plan=SimpleNamespace(held=[]))
        self.clock: Clock | None = None

    def journal(self, target: str, at: float) -> None:
        """What a real probe leaves behind a transition: a pending journal entry."""
        with self.store.locked():
            e = self.store.read(target)
            e.add_transition(Transition(State.UP, State.DOWN, at, "scripted"))
            self.store.write(e)

    def mark_all(self) -> None:
        with self.store.locked():
            for t in self.site.targets:
                e = self.store.read(t)
                for j in e.journal:
                    j["notified"] = True
                self.store.write(e)

    # -- the stand-ins for probe.run, reconcile.run, notify.run --------------------

    def probe_run(self, site, names, lock_timeout=5.0, **_):  # stop=, confirm=: not needed
        now = self.clock()
        self.calls["probe"].append(now)
        healths = self.probe(now, list(names))
        reports = []
        for t, h in healths.items():
            changed = self.transitions.get(now) == t
            if changed:
                self.journal(t, now)
            reports.append(SimpleNamespace(result=SimpleNamespace(target=t), health=h,
                                           spool_error=None,
                                           transition={"to": h.state.value} if changed else None))
        return reports

    def reconcile_run(self, site, lock_timeout=5.0):
        now = self.clock()
        self.calls["reconcile"].append(now)
        return self.plans(now)

    def notify_run(self, site, lock_timeout=5.0):
        now = self.clock()
        self.calls["notify"].append(now)
        outcome = self.mail(now)
        if not outcome.errors and not outcome.plan.held:
            self.mark_all()
        return outcome


@pytest.fixture
def script(tmp_path, monkeypatch):
    import spdu_cli.notify.step as notify
    import spdu_cli.probe.step as probe_step
    from spdu_cli import reconcile

    site = Site(targets=["beta", "gamma"], interval=INTERVAL, fast_interval=FAST,
                down_interval=INTERVAL,  # (downInterval: tests/test_confirm.py)
                spool_dir=str(tmp_path / "spool"), metrics_file=None)
    s = Script(site)
    monkeypatch.setattr(probe_step, "run", s.probe_run)
    monkeypatch.setattr(cycle, "make_pacer", lambda loop: ScriptedPacer(s, loop))
    monkeypatch.setattr(reconcile, "run", s.reconcile_run)
    monkeypatch.setattr(notify, "run", s.notify_run)
    monkeypatch.setattr(reconcile, "standing", lambda site, entries, now: s.standing(s.clock()))
    return s


def run_loop(script, seconds: float) -> tuple[cycle.Loop, cycle.Tally]:
    clock = Clock()
    script.clock = clock
    loop = cycle.Loop(Cache(script.site), seconds, clock=clock, wall=clock)
    loop.stop = Sleeps(loop)
    return loop, loop.run()


def ticks(start: float, step: float, end: float) -> list[float]:
    out, t = [], start
    while t < end:
        out.append(t)
        t += step
    return out


def test_quiet_targets_are_probed_once_an_interval_and_dns_read_every_drift_check(script):
    _loop, tally = run_loop(script, 25)
    expected = ticks(T0, INTERVAL, T0 + 25 - cycle.END_MARGIN)
    assert script.calls["probe"] == expected
    # DNS agreed and nothing changed: read again every DRIFT_CHECK, not every tick
    assert script.calls["reconcile"] == ticks(T0, cycle.DRIFT_CHECK, T0 + 25)
    assert script.calls["notify"] == []  # nothing to mail
    assert tally.ticks == len(expected) and tally.last_error is None


def test_what_the_spool_asks_of_dns_anew_is_reconciled_in_the_next_tick(script):
    """`spdu maint` by hand, an edited target file, a maintenance that ended, a
    probe gone stale: no transition in the loop, but reconcile acts on it."""
    script.standing = lambda now: "as before" if now < T0 + 4 else "beta in maintenance"
    run_loop(script, 12)
    assert script.calls["reconcile"] == [T0, T0 + 4]  # then quiet again until the drift check


def test_a_changed_configuration_is_reconciled_in_the_next_tick(script):
    """selfIP, nameServer or poolName edited (a new configuration read): the spool
    asks the same of DNS, but under other settings: DNS is read at once, not at
    the next drift check."""
    clock = Clock()
    script.clock = clock
    edited = Site(**vars(script.site))

    class Edited(Cache):
        def get(self):
            return edited if clock() >= T0 + 4 else self.site

    loop = cycle.Loop(Edited(script.site), 12, clock=clock, wall=clock)
    loop.stop = Sleeps(loop)
    loop.run()
    assert script.calls["reconcile"] == [T0, T0 + 4]  # then quiet again until the drift check


def test_the_probes_fall_on_whole_intervals_of_the_wall_clock(script):
    """The loop's clock is not the wall clock: its probes after the first (at the
    start) fall where the wall clock is a whole multiple of the interval, as on
    every other site."""
    clock = Clock()
    script.clock = clock
    offset = 1_700_000_000.3 - T0  # wall minus the loop's clock
    loop = cycle.Loop(Cache(script.site), 12, clock=clock, wall=lambda: clock() + offset)
    loop.stop = Sleeps(loop)
    loop.run()
    phases = [(t + offset) % INTERVAL for t in script.calls["probe"][1:]]
    assert len(phases) >= 4
    assert all(min(p, INTERVAL - p) < 1e-6 for p in phases), phases


def test_dns_that_disagreed_is_read_again_an_interval_later(script):
    """Changes were sent (or withheld): the next reconcile checks them an
    interval later, not a drift check later."""
    script.plans = lambda now: [SimpleNamespace(error=None, in_sync=now >= T0 + 4)]
    run_loop(script, 16)
    assert script.calls["reconcile"] == [T0, T0 + 2, T0 + 4, T0 + 14]


def test_dns_that_disagrees_is_read_once_an_interval_not_every_tick(script):
    """A suspect target is probed every fastInterval: those ticks do not each
    read DNS while it disagrees (or cannot be read)."""
    script.probe = lambda now, due: {t: SUSPECT if t == "beta" else UP for t in due}
    script.plans = lambda now: [SimpleNamespace(
        error=ServiceUnavailable("DNS server 127.0.0.1 port 53 did not answer"), in_sync=False)]
    _loop, _tally = run_loop(script, 7)
    assert len(script.calls["probe"]) > 8  # beta every 0.5 s
    assert script.calls["reconcile"] == [T0, T0 + 2, T0 + 4, T0 + 6]


def test_the_drift_check_has_no_wake_of_its_own(script):
    """It rides on the first probe tick from its time on. Each wake comes a
    little late, so the probe ticks (each now + interval) drift later than a
    time set 10 s before: that time must not get a tick of its own."""

    class LateSleeps(Sleeps):
        def wait(self, timeout: float) -> bool:
            return super().wait(timeout + 0.003)

    script.clock = Clock()
    loop = cycle.Loop(Cache(script.site), 25, clock=script.clock, wall=script.clock)
    loop.stop = LateSleeps(loop)
    tally = loop.run()
    assert len(script.calls["reconcile"]) == 3  # at the start, then every DRIFT_CHECK
    assert script.calls["reconcile"][1] - T0 >= cycle.DRIFT_CHECK
    assert tally.ticks == len(script.calls["probe"])  # no tick for DNS alone


def test_a_spool_that_cannot_be_read_is_reconciled_once_an_interval(script):
    script.standing = lambda now: (_ for _ in ()).throw(TemporaryFailure("permission denied"))
    run_loop(script, 7)
    assert script.calls["reconcile"] == [T0, T0 + 2, T0 + 4, T0 + 6]


def test_a_change_is_reconciled_in_the_tick_that_saw_it(script):
    """Both targets fail once (suspect) and are probed again fastInterval later;
    beta fails again and goes down, gamma is still only suspect: DNS is updated
    right then, not at the next interval."""
    def probe(now, due):
        if now == T0 + 2:
            return dict.fromkeys(due, SUSPECT)
        if now == T0 + 2.5:
            return {t: DOWN if t == "beta" else SUSPECT for t in due}
        return dict.fromkeys(due, UP)

    script.probe = probe
    script.transitions = {T0 + 2.5: "beta"}
    run_loop(script, 6)
    assert T0 + 2.5 in script.calls["probe"]
    assert T0 + 2.5 in script.calls["reconcile"]
    assert script.calls["notify"] == [T0 + 2.5]  # and mailed in the same tick


def test_a_failed_probe_run_is_tried_again_an_interval_later_not_at_once(script):
    def probe(now, due):
        if now > T0:
            raise TemporaryFailure("spool lock held")
        return dict.fromkeys(due, UP)

    script.probe = probe
    _loop, tally = run_loop(script, 10)
    assert script.calls["probe"] == ticks(T0, INTERVAL, T0 + 10 - cycle.END_MARGIN)
    assert tally.last_error == 75  # and the exit status says so


def test_a_failed_mail_run_is_an_error_and_is_retried_later(script):
    script.transitions = {T0: "beta"}
    script.mail = lambda now: SimpleNamespace(errors=[ServiceUnavailable("relay down")],
                                              plan=SimpleNamespace(held=[]))
    _loop, tally = run_loop(script, 25)
    calls = script.calls["notify"]
    assert calls[0] == T0 and len(calls) >= 2  # tried again within the run...
    assert all(b - a > INTERVAL for a, b in pairwise(calls))  # ...but not every tick
    assert tally.last_error == 69  # still failing at the end: not a success


def test_a_mail_run_that_raised_is_an_error_and_is_retried_later(script):
    script.transitions = {T0: "beta"}

    def mail(now):
        raise TemporaryFailure("spool lock held")

    script.mail = mail
    _loop, tally = run_loop(script, 25)
    calls = script.calls["notify"]
    assert calls[0] == T0 and len(calls) >= 2
    assert all(b - a > INTERVAL for a, b in pairwise(calls))
    assert tally.last_error == 75


def test_a_transition_made_outside_the_loop_is_mailed_within_an_interval(script):
    """`spdu maint` by hand journals a change; the loop notices it in the spool."""
    real = script.probe

    def probe(now, due):
        if now == T0 + 4:
            script.journal("gamma", now)  # as if written by another process just now
        return real(now, due)

    script.probe = probe
    run_loop(script, 10)
    (when,) = script.calls["notify"]
    assert T0 + 4 <= when <= T0 + 4 + INTERVAL


def test_a_pool_that_failed_is_an_error_at_the_end(script):
    script.plans = lambda now: [SimpleNamespace(
        error=ServiceUnavailable("DNS server 127.0.0.1 port 53 did not answer"), in_sync=False)]
    _loop, tally = run_loop(script, 7)
    assert script.calls["reconcile"] == [T0, T0 + 2, T0 + 4, T0 + 6]  # tried every interval
    assert tally.last_error == 69


def test_the_exit_status_is_the_most_serious_failure_still_standing(script):
    """A pool that did not answer (69) and a webhook that refuses the request (78)
    beside a relay that is down (69): a configuration error, 78, whatever the order."""
    script.transitions = {T0: "beta"}
    script.plans = lambda now: [SimpleNamespace(
        error=ServiceUnavailable("DNS server 127.0.0.1 port 53 did not answer"), in_sync=False)]
    script.mail = lambda now: SimpleNamespace(
        errors=[ConfigError("webhookURL #1 answered 404"), ServiceUnavailable("relay down")],
        plan=SimpleNamespace(held=[]))
    _loop, tally = run_loop(script, 7)
    assert tally.latest["reconcile"] == 69 and tally.latest["notify"] == 78
    assert tally.last_error == 78


def test_a_mail_run_that_failed_once_and_went_out_later_is_no_error(script):
    script.transitions = {T0: "beta"}
    results = [[ServiceUnavailable("relay down")], []]
    script.mail = lambda now: SimpleNamespace(errors=results.pop(0) if results else [],
                                              plan=SimpleNamespace(held=[]))
    _loop, tally = run_loop(script, 25)
    assert len(script.calls["notify"]) == 2
    assert tally.last_error is None


def test_a_held_flap_summary_is_sent_by_the_loop_when_it_is_due(script):
    """notify holds a flapping target's changes until its summary is due; the
    loop leaves mail alone meanwhile and starts a run right when it is due."""
    script.transitions = {T0: "beta"}
    due = []

    def mail(now):
        if not due:
            due.append(time.time() + 5)
        held = [SimpleNamespace(until=due[0])] if now < T0 + 4.9 else []
        return SimpleNamespace(errors=[], plan=SimpleNamespace(held=held))

    script.mail = mail
    run_loop(script, 10)
    first, *then = script.calls["notify"]
    assert first == T0
    assert len(then) == 1 and T0 + 4.9 <= then[0] <= T0 + 5.1, script.calls["notify"]


def test_one_mail_run_at_a_time(script):
    """A relay that is slow must not lead to a second run mailing the same changes."""
    release, started = threading.Event(), threading.Event()

    def mail(now):
        started.set()
        assert release.wait(10)
        return SimpleNamespace(errors=[], plan=SimpleNamespace(held=[]))

    script.mail = mail
    script.clock = Clock()
    loop = cycle.Loop(Cache(script.site), 10, clock=script.clock, wall=script.clock)
    loop.notify(script.site)
    assert started.wait(5)
    loop.notify(script.site)  # a change while the first run still waits on the relay
    release.set()
    loop.mailer.join(5)
    assert script.calls["notify"] == [T0]
    loop.notify(script.site)  # once it is done, the next change gets its run
    loop.mailer.join(5)
    assert script.calls["notify"] == [T0, T0]
