"""The confirming probes of the cron loop: a probe that disagrees with a target's
state is followed by others within the same run, sooner for a certain failure,
overlapping one that hangs, until the target is settled.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from spdu_cli.probe.engine import Engine, verdict
from spdu_cli.probe.names import addresses_of
from spdu_cli.probe.spec import AddressResult, ProbeResult, ProbeSpec

CERTAIN = ("connection refused", "connection reset", "network unreachable",
           "host unreachable")  # failures the peer's own kernel or a router states at once


def certain(r: ProbeResult) -> bool:
    """A failure known at once, not a silence that might still end."""
    return r.ok is False and (r.error or "").startswith(CERTAIN)


@dataclass
class Rounds:
    """How one target's probes go on within one run: `after` is told each
    result in the order they end and answers the seconds until the next
    probe, or None when the target is settled; `overdue` (seconds, or None)
    starts an overlapping probe beside one that has not answered by then,
    up to `overlap` probes in flight; at most `limit` probes in all."""

    after: Callable[[ProbeResult], float | None]
    overdue: Callable[[], float | None]
    overlap: Callable[[], int]
    limit: int


class _Target:
    def __init__(self, spec: ProbeSpec, addrs: tuple[str, ...], rules: Rounds):
        self.spec, self.addrs, self.rules = spec, addrs, rules
        self.inflight: list[tuple[float, float, list[int]]] = []  # (started, wall, jobs)
        self.results: dict[int, AddressResult] = {}
        self.next_at: float | None = time.monotonic()
        self.started = 0
        self.settled = False
        self.out: list[ProbeResult] = []
        self.good: list[int] = []  # the jobs of its last round, when that round was good


@dataclass
class Settled:
    """One target's probes of one run, in the order they ended; `kept`: the
    connections of its last round, when it was good and every address's peer
    agreed to keep them open (with `keep`)."""

    target: str
    results: list[ProbeResult]
    kept: list | None = None


class Confirmer:
    """Each target's probes and their confirmation (`Rounds`) on one Engine,
    every target on its own: `begin` starts a target's run, `poll` starts
    the probes that are due and says when it must be called again, and
    `done` (the Engine's on_done) ends runs; `on_settled(Settled)` hears of
    each target whose run is over, as soon as it is, whatever the others do."""

    def __init__(self, engine: Engine, on_settled: Callable[[Settled], None],
                 keep: bool = False):
        self.engine = engine
        self.on_settled = on_settled
        self.keep = keep
        self.targets: dict[str, _Target] = {}
        self.owner: dict[int, _Target] = {}
        engine.on_done = self.done

    def begin(self, spec: ProbeSpec, addrs: tuple[str, ...] | str, rules: Rounds) -> None:
        """Start the target's run (its probes begin at the next poll); `addrs` an
        error text: the run is over at once, with that failure."""
        if isinstance(addrs, str):
            self.on_settled(Settled(spec.target, [verdict(spec.target, time.time(), addrs, [])]))
            return
        self.targets[spec.target] = _Target(spec, addrs, rules)

    def abandon(self, target: str) -> None:
        """Drop the target's run unfinished (its configuration went away)."""
        tg = self.targets.pop(target, None)
        if tg is not None:
            self._cancel(tg)

    def done(self, i: int, r: AddressResult) -> None:
        tg = self.owner.pop(i, None)
        if tg is None:  # its round was decided, or its target settled, meanwhile
            return
        tg.results[i] = r
        for k, (_started, wall, jobs) in enumerate(tg.inflight):  # noqa: B007 - used below
            if i in jobs:
                break
        else:
            return
        if r.ok and not all(j in tg.results for j in jobs):
            return  # this round waits for its other addresses
        del tg.inflight[k]
        for j in jobs:  # a failed address decides the round: the others need not answer
            if j not in tg.results:
                self.owner.pop(j, None)
                self.engine.cancel(j)
        result = verdict(tg.spec.target, wall, tg.addrs, [tg.results.pop(j) for j in jobs
                                                          if j in tg.results])
        tg.out.append(result)
        tg.good = jobs if result.ok else []
        if tg.settled:
            return
        delay = tg.rules.after(result)
        if delay is None or tg.started >= tg.rules.limit:
            self._settle(tg)
        else:  # started when there is room beside the probes still in flight
            tg.next_at = time.monotonic() + delay

    def _cancel(self, tg: _Target) -> None:
        for _, _, jobs in tg.inflight:
            for j in jobs:
                self.owner.pop(j, None)
                self.engine.cancel(j)
        tg.inflight.clear()

    def _settle(self, tg: _Target) -> None:
        tg.settled, tg.next_at = True, None
        self._cancel(tg)
        self.targets.pop(tg.spec.target, None)
        kept = None
        if self.keep:
            tries = [self.engine.take_kept(j) for j in tg.good if j in self.engine.kept]
            if tries and len(tries) == len(tg.addrs):
                kept = [t.sock for t in tries]
            else:
                for t in tries:
                    t.close()
        for j in [j for j in self.engine.kept if self.engine.jobs[j][0] is tg.spec]:
            self.engine.take_kept(j).close()  # an earlier round's: not the one kept
        self.on_settled(Settled(tg.spec.target, tg.out, kept))

    def _start(self, tg: _Target, now: float) -> None:
        jobs = [self.engine.add(tg.spec, a) for a in tg.addrs]
        for j in jobs:
            self.owner[j] = tg
        tg.inflight.append((now, time.time(), jobs))
        tg.started += 1
        tg.next_at = None

    def poll(self, now: float) -> float | None:
        """Start every probe that is due; the next moment one will be (or None)."""
        wake: float | None = None
        for tg in list(self.targets.values()):
            room = len(tg.inflight) < max(1, tg.rules.overlap())
            if tg.next_at is not None and now >= tg.next_at and room:
                self._start(tg, now)
            elif tg.inflight and room and tg.started < tg.rules.limit:
                overdue = tg.rules.overdue()
                if overdue is not None:
                    due = tg.inflight[-1][0] + overdue
                    if now >= due:
                        self._start(tg, now)
                    else:
                        wake = due if wake is None else min(wake, due)
            if tg.next_at is not None:
                wake = tg.next_at if wake is None else min(wake, tg.next_at)
            if not tg.inflight and tg.next_at is None:
                self._settle(tg)
        return wake


def probe_rounds(specs: list[ProbeSpec], rules: dict[str, Rounds], stop=None,
                 kept: dict | None = None) -> dict[str, list[ProbeResult]]:
    """Probe every target, and probe again the ones whose `rules` want it
    (confirmation), overlapping a probe that hangs: target -> its results, in
    the order they ended. Returns when every target is settled.
    `kept` (a dict): HTTP probes ask for a persistent connection, and each
    target whose last round was good and whose every address's peer agreed to
    keep the connection open gets them there (target -> sockets), for `Kept`."""
    addresses = addresses_of(specs)
    out: dict[str, list[ProbeResult]] = {}

    def settled(s: Settled) -> None:
        out[s.target] = s.results
        if s.kept is not None and kept is not None:
            kept[s.target] = s.kept

    engine = Engine(stop, keep=kept is not None)
    confirmer = Confirmer(engine, settled, keep=kept is not None)
    try:
        for s in specs:
            confirmer.begin(s, addresses[s.target], rules[s.target])
        while True:
            wake = confirmer.poll(time.monotonic())
            if not engine.busy and wake is None:
                break
            engine.step(wake)
    finally:
        engine.close()
        if kept is not None and len(out) < len(specs):  # interrupted: nothing is kept
            for socks in kept.values():
                for sock in socks:
                    sock.close()
            kept.clear()
    return {s.target: out.get(s.target, []) for s in specs}
