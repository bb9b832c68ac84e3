"""The event loop that probes every address of every target at once, in one
thread on non-blocking sockets, each try retried up to probeRetries times;
`probe()`, one result per target (the first failed address decides).
"""

from __future__ import annotations

import selectors
import time

from spdu_cli.errors import ProbeInterrupted
from spdu_cli.probe.attempt import Failure, Try, ssl_context
from spdu_cli.probe.cert import Cert
from spdu_cli.probe.http import HttpTry
from spdu_cli.probe.names import addresses_of
from spdu_cli.probe.spec import STOP_POLL, AddressResult, ProbeResult, ProbeSpec
from spdu_cli.probe.tcp import TcpTry


def _fd_budget() -> int:
    """Raise the soft descriptor limit to the hard one; keep some for the rest."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > 65536:
        hard = 65536
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return max(16, soft - 64)


class Engine:
    """The event loop: jobs of (spec, address), each tried up to spec.retries
    times, all at once in one thread. Jobs may be added while it runs (the
    confirming probes of `probe_rounds`); `on_done(i, result)` hears of each.
    Other sockets may share its selector (the kept connections, the loop's
    wake pipe): their key's data is not a job number, and `other(key)` hears
    when one is readable."""

    def __init__(self, stop=None, on_done=None, keep: bool = False, other=None):
        self.keep = keep  # HTTP tries ask to keep the connection; good ones are kept
        self.kept: dict[int, Try] = {}  # job -> its good try, connection still open
        self.jobs: dict[int, tuple[ProbeSpec, str]] = {}  # until done (a long loop's run)
        self.tries: dict[int, int] = {}
        self.count = 0
        self.ended = 0  # tries that ended, ever
        self.results: dict[int, AddressResult] = {}  # without on_done: kept for the caller
        self.waiting: list[int] = []  # stack of job indexes to start
        self.active: dict[int, Try] = {}
        self.sel = selectors.DefaultSelector()
        self.contexts: dict = {}
        self.budget = _fd_budget()
        self.stop = stop
        self.on_done = on_done
        self.other = other

    def add(self, spec: ProbeSpec, address: str) -> int:
        i = self.count
        self.count += 1
        self.jobs[i] = (spec, address)
        self.tries[i] = 0
        self.waiting.append(i)
        return i

    def _close(self, i: int) -> None:
        t = self.active.pop(i, None)
        if t is not None:
            self.sel.unregister(t.sock)
            t.close()

    def take_kept(self, i: int) -> Try:
        """Job i's good try, its connection still open (see `keep`): the caller's now."""
        self.jobs.pop(i, None)
        self.tries.pop(i, None)
        return self.kept.pop(i)

    def cancel(self, i: int) -> None:
        """Drop job i unfinished (its answer is no longer needed)."""
        self._close(i)
        if i in self.waiting:
            self.waiting.remove(i)
        if i not in self.kept:
            self.jobs.pop(i, None)
            self.tries.pop(i, None)

    @property
    def busy(self) -> bool:
        return bool(self.waiting or self.active)

    def finish(self, i: int, ok: bool, status: int | None, error: str | None,
               t: Try | None) -> None:
        spec, address = self.jobs[i]
        self.ended += 1
        if ok or self.tries[i] >= spec.retries:
            answered = t is not None and (ok or status is not None)  # e.g. HTTP 503 in 12 ms
            latency = round((time.monotonic() - t.started) * 1000, 1) if answered else None
            r = AddressResult(address, ok, status, latency, error, self.tries[i],
                              t.cert if t else None)
            if self.on_done is None:
                self.results[i] = r
            else:
                if i not in self.kept:  # a kept try's job goes with it
                    del self.jobs[i], self.tries[i]
                self.on_done(i, r)
        else:
            self.waiting.append(i)  # try again at once

    def _start(self) -> None:
        while self.waiting and len(self.active) < self.budget:
            i = self.waiting.pop()
            spec, address = self.jobs[i]
            self.tries[i] += 1
            ctx = ssl_context(spec, self.contexts) if spec.tls else None
            try:
                if spec.kind == "tcp":  # a banner protocol's server is not kept waiting
                    t = TcpTry(spec, address, ctx, time.monotonic())
                else:
                    t = HttpTry(spec, address, ctx, time.monotonic(), keep=self.keep)
            except Failure as e:
                self.finish(i, False, None, str(e), None)
                continue
            except OSError as e:
                self.finish(i, False, None, (e.strerror or str(e)).lower(), None)
                continue
            self.active[i] = t
            self.sel.register(t.sock, t.want, i)

    def step(self, wake_at: float | None = None) -> None:
        """Start what waits, then wait for sockets until the first deadline (or
        `wake_at`, monotonic), and move every try that can move. A try that
        failed at once as it started (an unreachable network) returns at once:
        its answer may have made the caller's next moment sooner than `wake_at`."""
        ended = self.ended
        self._start()
        if self.ended != ended:
            return
        now = time.monotonic()
        until = [t.deadline for t in self.active.values()]
        if wake_at is not None:
            until.append(wake_at)
        if not until:
            return
        timeout = max(0.0, min(until) - now)
        if self.stop is not None:
            if self.stop.is_set():
                raise ProbeInterrupted("probe interrupted: spdu is stopping")
            timeout = min(timeout, STOP_POLL)
        for key, _ in self.sel.select(timeout):
            i = key.data
            if not isinstance(i, int):
                if self.other is not None:
                    self.other(key)
                continue
            t = self.active.get(i)
            if t is None:  # cancelled by an earlier answer of this round
                continue
            decided = t.step()
            if decided is None:
                self.sel.modify(t.sock, t.want, i)
                continue
            if decided[0] and t.reusable:
                del self.active[i]
                self.sel.unregister(t.sock)
                self.kept[i] = t
            else:
                self._close(i)
            self.finish(i, *decided, t)
        now = time.monotonic()
        for i, t in list(self.active.items()):
            if now >= t.deadline and i in self.active:  # (an earlier one may cancel it)
                self._close(i)
                self.finish(i, *t.timed_out(), t)

    def close(self) -> None:
        for t in [*self.active.values(), *self.kept.values()]:
            t.close()
        self.active.clear()
        self.kept.clear()
        self.sel.close()


def probe_addresses(jobs: list[tuple[ProbeSpec, str]], stop=None) -> list[AddressResult]:
    """Probe every (spec, address) concurrently: up to spec.retries tries each.
    `stop` (a threading.Event): when set, every try is abandoned within
    STOP_POLL seconds and ProbeInterrupted is raised."""
    engine = Engine(stop)
    try:
        for spec, address in jobs:
            engine.add(spec, address)
        engine.waiting.reverse()  # start them in order
        while engine.busy:
            engine.step()
    finally:
        engine.close()
    return [engine.results[i] for i in range(len(jobs))]


def verdict(target: str, at: float, addrs: tuple[str, ...] | str,
            rs: list[AddressResult]) -> ProbeResult:
    """One target's result from its addresses' (the first failure decides)."""
    if isinstance(addrs, str):
        return ProbeResult(target, at, None, (), None, None, addrs, None)
    failed = [r for r in rs if not r.ok]
    worst = failed[0] if failed else max(rs, key=lambda r: r.latency_ms or 0)
    error = worst.error
    if failed and len(addrs) > 1:
        error = f"{error} ({worst.address})"
    return ProbeResult(target, at, not failed, addrs, worst.status, worst.latency_ms, error,
                       worst.address, earliest([r.cert for r in rs if r.cert is not None]))


def earliest(certs: list[Cert]) -> Cert | None:
    """The certificate that expires first; one whose date is unreadable only
    when no other has one."""
    dated = [c for c in certs if c.not_after is not None]
    return min(dated, key=lambda c: c.not_after) if dated else (certs[0] if certs else None)


def probe(specs: list[ProbeSpec], now: float | None = None, stop=None) -> list[ProbeResult]:
    """Probe every target concurrently; one ProbeResult per spec, in order."""
    now = time.time() if now is None else now
    addresses = addresses_of(specs)
    jobs = [(s, a) for s in specs if isinstance(addresses[s.target], tuple)
            for a in addresses[s.target]]
    by_target: dict[str, list[AddressResult]] = {}
    for (spec, _), r in zip(jobs, probe_addresses(jobs, stop)):
        by_target.setdefault(spec.target, []).append(r)
    return [verdict(s.target, now, addresses[s.target], by_target.get(s.target, []))
            for s in specs]
