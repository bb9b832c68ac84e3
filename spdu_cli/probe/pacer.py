"""The cron loop's probes: one event loop for the loop's whole run, in which
every target's probes, confirmations and kept connections go on by
themselves. A target's run starts when the loop says it is due and ends as
soon as its own results settle it: it is then recorded in the spool at once,
whatever the other targets' probes are doing (one that hangs holds up only
itself). One selector serves the probes, the kept connections and the loop's
wake pipe, so a signal, a closed kept connection or a finished DNS step in
another thread is heard at once.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field

from spdu_cli.errors import SpduError
from spdu_cli.probe import names, step
from spdu_cli.probe.engine import Engine
from spdu_cli.probe.kept import Held, Kept
from spdu_cli.probe.names import RESOLVE_TIMEOUT
from spdu_cli.probe.rounds import Confirmer, Rounds, Settled
from spdu_cli.probe.spec import ProbeSpec

log = logging.getLogger(__name__)

WAKE = "wake"  # the wake pipe's key data in the selector


@dataclass
class Batch:
    """What one `wait` brought: the targets whose runs ended (recorded), the
    targets whose kept connection the peer closed, and whether the wake pipe
    was written to (a signal, or another thread with news)."""

    reports: list = field(default_factory=list)
    tripped: list[str] = field(default_factory=list)
    woke: bool = False
    took: float = 0.0  # seconds recording them took (wall), for the loop's lag
    cpu: float = 0.0  # and CPU

    def __bool__(self) -> bool:
        return bool(self.reports or self.tripped or self.woke)


class _Lookup:
    """A name looked up in a daemon thread (getaddrinfo cannot be cancelled)."""

    def __init__(self, name: str, timeout: float, wake_fd: int | None):
        self.name, self.deadline = name, time.monotonic() + timeout
        self.timeout = timeout
        self.result: tuple[str, ...] | str | None = None
        threading.Thread(target=self._run, args=(wake_fd,), daemon=True,
                         name="spdu-resolve").start()

    def _run(self, wake_fd: int | None) -> None:
        self.result = names.lookup(self.name)
        if wake_fd is not None:
            try:
                os.write(wake_fd, b"\0")
            except OSError:
                pass

    def answer(self, now: float) -> tuple[str, ...] | str | None:
        if self.result is not None:
            return self.result
        if now >= self.deadline:
            return f"cannot resolve {self.name}: timed out after {self.timeout:g} s"
        return None


class Pacer:
    """The loop's probes (see the module): `start` begins the runs of targets
    that are due, `wait` runs the event loop until something happened or a
    moment came, `busy` says whether a target's run is still going."""

    def __init__(self, wake: tuple[int, int] | None = None, lock_timeout: float = 5.0):
        self.engine = Engine(keep=True, other=self._other)
        self.confirmer = Confirmer(self.engine, self._settled, keep=True)
        self.kept = Kept(sel=self.engine.sel)
        self.lock_timeout = lock_timeout
        self.wake = wake
        if wake is not None:
            self.engine.sel.register(wake[0], 1, WAKE)  # selectors.EVENT_READ
        self.site = None
        self.cfgs: dict[str, object] = {}  # target -> its configuration, for its run
        self.lookups: dict[str, tuple[ProbeSpec, Rounds, _Lookup]] = {}
        self.done: list[Settled] = []
        self.tripped: list[str] = []
        self.woke = False

    def busy(self, target: str) -> bool:
        return target in self.cfgs

    @property
    def running(self) -> int:
        return len(self.cfgs)

    def start(self, site, names: list[str]) -> None:
        """Begin the runs of these targets (none may be running)."""
        self.site = site
        cfgs = [site.target(n) for n in names]
        step.warn_unverified(cfgs)
        rules = step.confirm_rules(site, cfgs)
        for cfg, r in zip(cfgs, rules):
            spec = ProbeSpec.from_config(cfg)
            self.kept.drop(cfg.target)  # this run's connection, if good, replaces it
            self.cfgs[cfg.target] = cfg
            if spec.addresses:
                self.confirmer.begin(spec, spec.addresses, r)
                continue
            # A slow resolver holds up this target only, as a probe would.
            timeout = min(RESOLVE_TIMEOUT, spec.timeout)
            self.lookups[cfg.target] = (spec, r, _Lookup(spec.resolve_name, timeout,
                                                         self.wake[1] if self.wake else None))

    def forget(self, targets) -> None:
        """Targets no longer configured: their runs and connections go."""
        for t in list(targets):
            self.confirmer.abandon(t)
            self.lookups.pop(t, None)
            self.cfgs.pop(t, None)
            self.kept.drop(t)

    def spurious(self, target: str) -> None:
        self.kept.spurious(target)

    def _settled(self, s: Settled) -> None:
        self.done.append(s)

    def _other(self, key) -> None:
        if key.data == WAKE:
            try:
                while os.read(key.fileobj, 512):
                    pass
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                pass
            self.woke = True
        elif isinstance(key.data, Held):
            target = self.kept.readable(key)
            if target is not None:
                self.tripped.append(target)

    def _resolved(self, now: float) -> float | None:
        """Start the runs whose names are looked up; when the next lookup times out."""
        wake = None
        for target, (spec, rules, lookup) in list(self.lookups.items()):
            answer = lookup.answer(now)
            if answer is None:
                wake = lookup.deadline if wake is None else min(wake, lookup.deadline)
                continue
            del self.lookups[target]
            self.confirmer.begin(spec, answer or f"{spec.resolve_name} has no address", rules)
        return wake

    def wait(self, until: float) -> Batch:
        """Run the probes until a target's run ends, a kept connection closes,
        the wake pipe is written to, or `until` (monotonic) comes; the runs that
        ended are recorded in the spool (one hold of its lock) before it returns."""
        while True:
            now = time.monotonic()
            wakes = [until]
            for w in (self._resolved(now), self.confirmer.poll(now)):
                if w is not None:
                    wakes.append(w)
            if not (self.done or self.tripped or self.woke):
                self.engine.step(min(wakes))
                self._resolved(time.monotonic())
            if self.done or self.tripped or self.woke or time.monotonic() >= until:
                return self._batch()

    def _batch(self) -> Batch:
        done, self.done = self.done, []
        out = Batch(tripped=self.tripped, woke=self.woke)
        self.tripped, self.woke = [], False
        probed = []
        for s in done:
            cfg = self.cfgs.pop(s.target, None)
            if cfg is None:  # forgotten meanwhile
                for sock in s.kept or ():
                    sock.close()
                continue
            if s.kept:
                self.kept.keep(s.target, s.kept)
            probed.append((cfg, s.results))
        if probed:
            began, cpu = time.monotonic(), time.thread_time()
            try:
                out.reports = step.record(self.site, probed, self.lock_timeout, defer=True)
            except Exception as e:  # the lock not had in time, or a bug:
                if not isinstance(e, SpduError):  # these results are lost, the loop goes on
                    log.exception("recording the probes failed")
                out.reports = [step.TargetReport(rs[-1], step.Health(), None, str(e), len(rs))
                               for _cfg, rs in probed]
            out.took, out.cpu = time.monotonic() - began, time.thread_time() - cpu
        return out

    def close(self) -> None:
        for t in list(self.cfgs):
            self.confirmer.abandon(t)
        self.cfgs.clear()
        self.lookups.clear()
        self.kept.close()
        if self.wake is not None:
            try:
                self.engine.sel.unregister(self.wake[0])
            except (KeyError, ValueError):
                pass
        self.engine.close()
