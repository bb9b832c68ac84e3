"""The cron loop: probe, reconcile and notify in one process, every `interval`
seconds, for about a minute; cron starts the next one.

It calls the same functions as the three subcommands, and the spool is the
only state between steps, so a crash loses nothing. Every target's probes go
on by themselves in one event loop (probe.pacer): a target is due on its own
schedule, and its run is recorded as soon as its own probes settle it, so a
peer that hangs holds up no other. A suspect target (up, but its last probe
failed) is probed again after `fastInterval` (HAProxy's fastinter). DNS is
read at once when a state changed or the spool asks for something new, and
otherwise every DRIFT_CHECK seconds, to put right what someone else changed;
in a thread of its own (background.Worker), so a DNS server that hangs
delays no probe. Mail goes out from another thread, so a relay that hangs
delays nothing either. One loop per spool at a time: a second copy exits at
once, after asking the running one to cover its minute.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable

import spdu_cli.lag as lag
import spdu_cli.spool as spool
from spdu_cli import handover
from spdu_cli.errors import ExitStatus, SpduError
from spdu_cli.looplock import hold_lock, relock
from spdu_cli.peers import Watch as PeerWatch
from spdu_cli.schedule import Schedule, Tally, aligned  # (Schedule: the tests know it here)
from spdu_cli.sitecache import SiteCache
from spdu_cli.spool import Spool

log = logging.getLogger(__name__)

END_MARGIN = handover.MARGIN  # no tick starts this close to the end of the minute
MAX_RUN = 3600.0  # seconds: a following loop then leaves the next minute to a new process
CODE_CHECK = 60.0  # a run longer than this looks every as often for an upgrade of spdu
DNS_WAIT = 30.0  # at the end of a run, how long the DNS step asked for may take to finish
NOTIFY_RETRY = 10.0  # seconds before mail that failed is tried again
DRIFT_CHECK = 10.0  # DNS agreed and the spool asks nothing new: read it again after this
MAIL_WAIT = 5.0  # seconds a change's mail waits for the DNS step to say what it did
STOP_BUDGET = 0.8  # on SIGTERM, seconds in all for the DNS step and a mail run to finish


def make_pacer(loop: Loop):
    """The probes' event loop for one run of the loop (tests put a scripted one here)."""
    from spdu_cli.probe.pacer import Pacer

    return Pacer(loop.wake, loop.lock_timeout)


class Loop:
    def __init__(self, cache: SiteCache, seconds: float, lock_timeout: float = 5.0,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time, follow: str | None = None,
                 lock: int | None = None):
        """`follow`: the spool directory whose loop lock this run holds; the run
        then goes on for another `seconds` each time the next copy cron started
        leaves its note there (cronstart), up to MAX_RUN. `lock`: that lock, whose
        mtime tells copies when the current minute ends."""
        self.cache = cache
        self.seconds = seconds
        self.follow = follow
        self.lock = lock
        self.lock_dir: str | None = None  # where `lock` must stay (relock), set by run()
        self.lock_timeout = lock_timeout
        self.clock = clock
        self.wall = wall  # what the probe schedule is aligned to (the wall clock)
        self.stop = threading.Event()
        self.stopped_at: float | None = None  # when SIGTERM came (monotonic)
        self.wake: tuple[int, int] | None = None  # a pipe that request_stop writes to
        self.pacer = None  # probe.pacer.Pacer: every target's probes, each on its own
        self.early: set[str] = set()  # targets probed early: their kept connection closed
        self.schedule = Schedule()
        self.tally = Tally()
        self.next_reconcile = 0.0  # inf while DNS agrees: the drift check rides on a tick
        # (site, reconcile.standing) when every pool was last found in agreement with DNS
        self.agreed: tuple | None = None
        self.next_drift_check = math.inf  # set while DNS agrees
        self.next_notify: float | None = 0.0  # None: nothing pending
        self.next_pending_check = 0.0
        self.mail_wanted: float | None = None  # a change to mail once DNS has it (since when)
        # the tick whose runs are still going: its DNS and mail wait for them (up to
        # half an interval), so a quiet tick reads the spool once, after its probes
        self.tick_open: float | None = None
        self.tick_runs: set[str] = set()
        self.started: dict[str, float] = {}  # target -> when its run started (the loop's clock)
        self._site = None  # the configuration of the last tick
        self.mailer: threading.Thread | None = None
        from spdu_cli.background import Worker

        self.dns = Worker(lambda site, _standing: self.reconcile(site), "spdu-reconcile",
                          lambda: self.wake)
        self.lag = lag.Watch(clock(), min(lag.PERIOD, seconds))
        self.peers = PeerWatch(lambda: self.wake)  # the other sites' views, in a thread
        self.trouble = None  # trouble.Trouble, with a lock (a loop cron started)
        self.hup = False  # SIGHUP came: the next tick reads the configuration again

    @property
    def kept(self):
        """The connections of good probes, watched (probe.kept.Kept), once probing."""
        return self.pacer.kept if self.pacer is not None else None

    # -- steps, each of which may fail without stopping the others --------------------

    def _open(self):
        if self.wake is None:
            self.wake = os.pipe()
            for end in self.wake:
                os.set_blocking(end, False)
        if self.pacer is None:
            self.pacer = make_pacer(self)
        return self.pacer

    def probe(self, site, now: float) -> None:
        """Start the runs of the targets that are due (each ends by itself: absorb)."""
        pacer = self._open()
        due = [t for t in self.schedule.due(site.targets, now) if not pacer.busy(t)]
        if not due:
            return
        self.tally.probes += 1
        self.lag.started(max((now - self.schedule.due_at[t] for t in due
                              if t in self.schedule.due_at), default=0.0), site.interval)
        try:
            pacer.start(site, due)
        except SpduError as e:
            log.error("probe: %s", e)
            self.tally.failed("probe", e.exit_status, e)
            for t in due:
                self.schedule.due_at[t] = now + site.interval
            return
        for t in due:  # due again once its run has ended
            if pacer.busy(t):
                self.schedule.due_at[t] = math.inf
                self.tick_runs.add(t)
                self.started[t] = now

    def absorb(self, site, batch, now: float) -> bool:
        """What the probes brought (pacer.Batch): the next probe of each target
        whose run ended, the early probe of one whose kept connection closed.
        True when a state changed."""
        changed = False
        reports = batch.reports
        unwritten = [rep for rep in reports if rep.spool_error]
        if unwritten:  # what was probed is not recorded: as `spdu probe` says, 75
            self.tally.failed("probe", ExitStatus.TEMPFAIL, unwritten[0].spool_error)
        elif reports:
            self.tally.ok("probe")
        offset = self.wall() - self.clock()
        for rep in reports:
            target = rep.result.target
            self.tick_runs.discard(target)
            # counted from when the run started, as the schedule had it: a run that
            # took longer than its interval makes the next one late (lag says so)
            self.schedule.probed(target, rep.health, self.started.pop(target, now),
                                 site.interval,
                                 site.fast_interval, site.down_interval, offset)
            if self.schedule.due_at[target] < now and _own_delay(rep):
                # its run outlasted its slot by its own doing (a peer that hangs, the
                # confirmations of a change): late, but not the loop's lag
                self.schedule.due_at[target] = now
            changed |= rep.transition is not None
            if target in self.early:
                self.early.discard(target)
                if rep.result.ok and rep.transition is None:
                    log.info("%s: its peer closes idle connections sooner than the next probe;"
                             " they are not watched until the next run", target)
                    self.pacer.spurious(target)
        for target in batch.tripped:
            log.info("%s: the connection of its last good probe was closed; probing it now",
                     target)
            self.schedule.trip(target, now)
            self.early.add(target)
        return changed

    def request_stop(self) -> None:
        """SIGTERM: end at once (within a second, whatever is in flight), waking
        the loop if it waits."""
        if self.stopped_at is None:
            self.stopped_at = time.monotonic()
        self.stop.set()
        if self.wake is not None:
            try:
                os.write(self.wake[1], b"\0")
            except OSError:
                pass

    def reconcile(self, site) -> bool:
        """True when every pool was read and already agreed (nothing sent, no error)."""
        from spdu_cli import reconcile

        self.tally.reconciles += 1
        try:
            plans = reconcile.run(site, lock_timeout=self.lock_timeout)
        except SpduError as e:
            log.error("reconcile: %s", e)
            self.tally.failed("reconcile", e.exit_status, e)
            return False
        except Exception:
            log.exception("reconcile failed")
            self.tally.failed("reconcile")
            return False
        self.tally.ok("reconcile")
        for p in plans:
            if p.error:
                self.tally.failed("reconcile", p.error.exit_status, p.error)
        return all(p.in_sync for p in plans)

    def standing(self, site, entries):
        """What the spool asks of DNS now (reconcile.standing); None when unknown."""
        if entries is None:
            return None
        from spdu_cli import reconcile

        try:
            return site, reconcile.standing(site, entries, time.time())
        except SpduError:
            return None  # reconcile says what is wrong

    def notify(self, site) -> None:
        """Start a mail run in the background unless one is still going."""
        if self.mailer is not None and self.mailer.is_alive():
            return
        self.tally.notifies += 1
        self.next_notify = None
        self.mailer = threading.Thread(target=self._mail, args=(site,), name="spdu-notify",
                                       daemon=True)
        self.mailer.start()

    def _mail(self, site) -> None:
        import spdu_cli.notify.step as notify

        try:
            outcome = notify.run(site, lock_timeout=self.lock_timeout)
        except SpduError as e:
            log.error("notify: %s", e)
            self.tally.failed("notify", e.exit_status, e)
            self.next_notify = self.clock() + NOTIFY_RETRY
            return
        except Exception:  # a bug in one step must not end the loop
            log.exception("notify failed")
            self.tally.failed("notify")
            self.next_notify = self.clock() + NOTIFY_RETRY
            return
        if outcome.errors:
            worst = max(outcome.errors, key=lambda e: e.exit_status)
            self.tally.failed("notify", worst.exit_status, worst)
            self.next_notify = self.clock() + NOTIFY_RETRY
            return
        self.tally.ok("notify")
        if outcome.plan.held:  # a flapping target's summary is due later
            wall = time.time()
            self.next_notify = self.clock() + max(0.0, min(h.until for h in outcome.plan.held)
                                                  - wall)

    # -- the loop ------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """One tick driven by hand (tests, benchmarks): start what is due, then
        wait until every probe it started and the DNS step it asked for are
        done, as the loop would hear of them."""
        site = self._tick(now)
        self.settle(site, now)

    def settle(self, site, now: float, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.pacer is not None and self.pacer.running:
                batch = self.pacer.wait(deadline)
                if self.absorb(site, batch, now):
                    self.housekeeping(site, now, changed=True)
                self._close_tick(site, now)
                continue
            self._close_tick(site, now, force=True)
            if self.dns.busy:
                self.dns.join(max(0.0, deadline - time.monotonic()))
            if not self.dns.results:
                return
            self.dns_done(site, now)

    def _tick(self, now: float):
        if self.hup:  # SIGHUP: read the configuration again, as when a file changed
            self.hup, self.cache.stamp = False, ("SIGHUP",)
            log.warning("SIGHUP: reading the configuration again")
        site = self.cache.get()
        if site is not self._site and self.pacer is not None and self._site is not None:
            gone = set(self._site.targets) - set(site.targets)  # taken out of targets=
            if gone:
                self.pacer.forget(gone)
        self._site = site
        self.tally.ticks += 1
        try:
            self.probe(site, now)
        except Exception:
            log.exception("probe failed")
            self.tally.failed("probe")
        if self.pacer is not None and not self.pacer.running:
            batch = self.pacer.wait(now)  # what is already there (nothing left to wait for)
            if self.absorb(site, batch, now):
                self.housekeeping(site, now, changed=True)
        self.tick_open = now
        self._close_tick(site, now)
        return site

    def _close_tick(self, site, now: float, force: bool = False) -> None:
        """The tick's own DNS check and mail, once its runs have ended."""
        if self.tick_open is None:
            return
        if self.tick_runs and not force and now < self.tick_open + site.interval / 2:
            return
        self.tick_open = None
        self.tick_runs.clear()
        self.housekeeping(site, now)

    def housekeeping(self, site, now: float, changed: bool = False) -> None:
        """After a tick, or a change of state the probes brought: DNS, mail,
        the metrics and the trouble notices, each when due."""
        if self.stop.is_set():
            return  # SIGTERM: end now
        try:
            entries = _entries(site)
            standing = self.standing(site, entries)
        except Exception:  # a bug: reconcile every interval, as when the spool is unreadable
            log.exception("reading the spool failed")
            entries = standing = None
        self.peers.step(self, site, now)  # may ask for a DNS read (the quorum)
        # DNS is read at once when a state changed, or when anything else reconcile
        # acts on did (`spdu maint` by hand, an edited file, a maintenance that ended,
        # a probe gone stale); every interval while it disagrees or cannot be read;
        # and every DRIFT_CHECK seconds while it agrees. In a thread of its own: a
        # server that hangs holds up no probe.
        if (changed or now >= self.next_reconcile or now >= self.next_drift_check
                or not _same(standing, self.agreed)):
            self.next_reconcile = now + site.interval
            self.agreed, self.next_drift_check = None, math.inf
            self.dns.request(site, standing)
        if self.next_notify is None and now >= self.next_pending_check:
            # a transition made outside the loop (`spdu maint` by hand) is mailed too
            self.next_pending_check = now + site.interval
            changed |= _pending(site, entries)
        if changed and self.mail_wanted is None:
            self.mail_wanted = now
        self.mail(site, now)
        if site.metrics_file:
            from spdu_cli import metrics

            metrics.write_after_run(site, self.lag.current)
        if self.trouble is not None:
            self.trouble.update(site, self.cache.stale, self.tally, now)

    def mail(self, site, now: float) -> None:
        """A change is mailed once DNS has it (the mail says what DNS did), or
        MAIL_WAIT after it when the DNS step takes longer."""
        if self.mail_wanted is not None and (not self.dns.busy
                                             or now >= self.mail_wanted + MAIL_WAIT):
            self.mail_wanted = None
            self.notify(site)
        elif self.next_notify is not None and now >= self.next_notify:
            self.notify(site)

    def dns_done(self, site, now: float) -> None:
        """The DNS step's runs that ended: while DNS agrees, it is read again only
        at the drift check (the first tick from then on: no wake of its own)."""
        for in_sync, (_site, standing) in self.dns.take():
            if in_sync and standing is not None and not self.dns.busy:
                self.agreed = standing
                self.next_reconcile = math.inf
                self.next_drift_check = now + max(site.interval, DRIFT_CHECK)
        self.mail(site, now)
        if self.trouble is not None:
            self.trouble.update(site, self.cache.stale, self.tally, now)

    def _may_go_on(self, site, age: float, code) -> bool:
        """Whether a --follow loop may cover one more minute, or ends at the end
        of this one, before the next copy comes (which then finds the lock free
        and loops): after MAX_RUN, when spdu was upgraded on disk, or when
        spoolDir moved away from the lock this run holds. (A copy's note that
        is already there is covered all the same: its copy is gone.)"""
        if getattr(self.cache, "stale", None):
            return True  # a new process would refuse the configuration: none takes over
        if age + self.seconds > MAX_RUN:
            log.info("this loop has run for %.0f s; a new process takes over", age)
            return False
        if _code_stamp() != code:
            log.info("spdu was changed on disk (an upgrade?); a new process takes over")
            return False
        if site.spool_dir != self.follow:
            log.info("spoolDir is now %s; a new process takes over", site.spool_dir)
            return False
        return True

    def run(self) -> Tally:
        self._open()
        try:
            return self._run()
        finally:
            if self.pacer is not None:
                self.pacer.close()
                self.pacer = None
            try:  # the routine results kept in memory (Spool.defer)
                spool.flush(self.lock_timeout)
            except SpduError as e:  # not recorded: as a probe run's failed write, 75
                log.error("%s", e)
                self.tally.failed("probe", e.exit_status)
            wake, self.wake = self.wake, None
            for end in wake:
                os.close(end)

    def _due(self, site, now: float) -> float:
        """When the loop must next do something of its own (a tick)."""
        return min(self.schedule.next(site.targets, now),  # a new target: at once
                   self.next_reconcile if self.tick_open is None else math.inf,
                   self.next_notify if self.next_notify is not None else math.inf,
                   self.mail_wanted + MAIL_WAIT if self.mail_wanted is not None else math.inf)

    def _publish(self, end: float) -> None:
        if self.lock is not None:  # the wall clock of now: it may have been stepped
            handover.publish_end(self.lock, end + self.wall() - self.clock())
        if self.trouble is not None:  # and the monotonic clock, which no step moves
            self.trouble.end = end
            self.trouble._write()

    def _run(self) -> Tally:
        start = self.clock()
        # With --follow, the minutes end on the wall clock's: cron starts each copy
        # just after one, when the loop is waiting for it.
        end = (aligned(start, self.seconds, self.wall() - start) if self.follow
               else start + self.seconds)
        code, next_code_check = _code_stamp(), start + CODE_CHECK
        site = self.cache.site or self.cache.get()
        if not _pending(site):
            self.next_notify = None
        self._publish(end)
        first = True  # the first tick at once
        while not self.stop.is_set():
            if self.lock is not None and self.lock_dir is not None:
                fd = relock(self.lock_dir, self.lock, end + self.wall() - self.clock())
                if fd is None:
                    self.tally.failed("lock", ExitStatus.TEMPFAIL, "the loop lock moved")
                    break
                self.lock = fd
            now = self.clock()
            if now >= end - END_MARGIN:
                # A copy cron started for the next minute found us running: cover its
                # minute. (A copy started with us shares our minute.) With --follow, the
                # copy is waited for: this is how one process serves minute after minute.
                after = end + self.wall() - now - self.seconds / 2
                if handover.asked(site.spool_dir, after=after):
                    handover.take(site.spool_dir)
                    end += self.seconds
                    self._publish(end)
                    log.debug("covering the next minute for a copy that found this one"
                              " running")
                    continue
                if self.follow and not self._may_go_on(site, now - start, code):
                    break  # before the next copy comes: it finds the lock free
                if not self.follow or now >= end + handover.GRACE:
                    break
            elif not self.follow and now >= next_code_check:  # a long run (systemd's hour)
                next_code_check = now + CODE_CHECK
                if _code_stamp() != code:
                    log.info("spdu was changed on disk (an upgrade?); this run ends")
                    break
            if first or now >= self._due(site, now):
                first = False
                busy, cpu = self.clock(), time.thread_time()
                site = self._tick(now)
                self.lag.ran(self.clock() - busy, time.thread_time() - cpu)
                self.lag.report(self.clock())
            due = self._due(site, now)
            limit = end - END_MARGIN if now < end - END_MARGIN else now + handover.POLL
            if self.tick_open is not None:  # its DNS check waits no longer than this
                limit = min(limit, self.tick_open + site.interval / 2)
            batch = self.pacer.wait(min(due, limit))
            if self.stop.is_set():
                break
            if batch.reports:
                self.lag.ran(batch.took, batch.cpu)
            now = self.clock()
            if self.absorb(site, batch, now):
                self.housekeeping(site, now, changed=True)  # to DNS at once
            self._close_tick(site, now)
            if self.dns.results:
                self.dns_done(site, now)
            site = self.cache.site or site
        self.lag.report(self.clock(), final=True)
        if self.stop.is_set():  # SIGTERM: a second in all, whatever is in flight
            budget = self.stopped_at + STOP_BUDGET if self.stopped_at else self.clock()
            if not self.dns.join(max(0.0, budget - time.monotonic())):
                log.warning("the DNS step was still waiting on its server; it is done again"
                            " by the next run")
        else:  # the minute ended: let the DNS step asked for finish (its own timeouts)
            self.dns.join(DNS_WAIT)
        if self.mailer is not None:
            # On SIGTERM, within the second; else until the end of the minute. A mail run
            # still waiting on the relay then is abandoned: its transitions stay pending
            # (they are marked only once the relay accepted) and the next run sends them.
            if self.stop.is_set():
                budget = (self.stopped_at or time.monotonic()) + STOP_BUDGET
                self.mailer.join(max(0.05, budget - time.monotonic()))
            else:
                self.mailer.join(max(0.0, end - self.clock()))
            if self.mailer.is_alive():
                log.warning("a mail run is still waiting on the SMTP relay or a webhook; its"
                            " transitions stay pending for the next run")
                self.tally.failed("notify", 69)
        return self.tally


def _own_delay(rep) -> bool:
    """The run took long because of its peer: it timed out, or was confirmed."""
    return rep.probes > 1 or "timed out" in (rep.result.error or "")


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _same(standing, agreed) -> bool:
    """`standing` asks nothing of DNS beyond what it `agreed` with (also true
    when nothing agreed: the interval rules then). One configuration, by
    identity: an edited target file makes a new one, equal or not."""
    if agreed is None:
        return True
    return standing is not None and standing[0] is agreed[0] and standing[1] == agreed[1]


def _entries(site) -> dict | None:
    """Every target's spool entry (a file not changed since it was last read is
    not parsed again); None when one cannot be read."""
    store = Spool(site.spool_dir)
    try:
        return {t: store.read(t) for t in site.targets}
    except SpduError:
        return None


def _pending(site, entries: dict | None = None) -> bool:
    """Any transition not yet notified, or certificate notice due (cheap: the
    spool only, no mail modules)."""
    if entries is None:
        entries = _entries(site)
    if entries is None:
        return True  # the mail run says what is wrong (and exits with it)
    from spdu_cli import certs

    return (any(e.pending() for e in entries.values())
            or certs.any_due(site, entries, time.time()))


def _code_stamp() -> tuple | None:
    """spdu's installed code as it is on disk: an upgrade changes it."""
    try:
        st = os.stat(os.path.join(os.path.dirname(handover.__file__), "cronstart.py"))
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def run(load: Callable[[], object], config_path: str, seconds: float = 60.0,
        lock_timeout: float = 5.0, site=None, follow: bool = False) -> Tally:
    """`spdu cron`: the loop, for `seconds` (with `follow`, on for as long as
    cron's copies ask it to), under the loop lock; SIGTERM ends it after the
    current tick. `site`: the configuration, when already read."""
    cache = SiteCache(load, config_path, site)
    site = cache.get()
    fd = hold_lock(site.spool_dir, seconds)
    loop = Loop(cache, seconds, lock_timeout, follow=site.spool_dir if follow else None,
                lock=fd)
    from spdu_cli.trouble import Trouble

    loop.trouble = Trouble(site.spool_dir, config_path)
    loop.lock_dir = site.spool_dir
    loop.trouble.update(site, cache.stale, loop.tally, loop.clock())  # before the first tick
    previous = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP)
    in_main = threading.current_thread() is threading.main_thread()
    if in_main:
        signal.signal(signal.SIGTERM, lambda *_: loop.request_stop())
        signal.signal(signal.SIGHUP, lambda *_: setattr(loop, "hup", True))
    try:
        tally = loop.run()
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous[0])
            signal.signal(signal.SIGHUP, previous[1])
        os.close(loop.lock)
    refused = [*cache.site.broken.values(), *cache.stale]
    if refused:  # the others went on; the exit status still says it (78)
        tally.failed("config", refused[0].exit_status, refused[0])
    failed = ", ".join(f"{k} {v}x" for k, v in sorted(tally.failures.items()))
    log.info("cron loop done: %s, %s, %s, %s%s", _n(tally.ticks, "tick"),
             _n(tally.probes, "probe run"), _n(tally.reconciles, "reconcile"),
             _n(tally.notifies, "mail run"), f"; failed: {failed}" if failed else "")
    return tally
