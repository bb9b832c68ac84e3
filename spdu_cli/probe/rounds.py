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


def probe_rounds(specs: list[ProbeSpec], rules: dict[str, Rounds], stop=None,
                 kept: dict | None = None) -> dict[str, list[ProbeResult]]:
    """Probe every target, and probe again the ones whose `rules` want it
    (confirmation), overlapping a probe that hangs: target -> its results, in
    the order they ended. Returns when every target is settled.
    `kept` (a dict): HTTP probes ask for a persistent connection, and each
    target whose last round was good and whose every address's peer agreed to
    keep the connection open gets them there (target -> sockets), for `Kept`."""
    addresses = addresses_of(specs)
    targets: dict[str, _Target] = {}
    out: dict[str, list[ProbeResult]] = {}
    owner: dict[int, _Target] = {}

    def ended(i: int, r: AddressResult) -> None:
        tg = owner.pop(i, None)
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
                owner.pop(j, None)
                engine.cancel(j)
        result = verdict(tg.spec.target, wall, tg.addrs, [tg.results.pop(j) for j in jobs
                                                          if j in tg.results])
        tg.out.append(result)
        tg.good = jobs if result.ok else []
        if tg.settled:
            return
        delay = tg.rules.after(result)
        if delay is None or tg.started >= tg.rules.limit:
            settle(tg)
        else:  # started when there is room beside the probes still in flight
            tg.next_at = time.monotonic() + delay

    def settle(tg: _Target) -> None:
        tg.settled, tg.next_at = True, None
        for _, _, jobs in tg.inflight:
            for j in jobs:
                owner.pop(j, None)
                engine.cancel(j)
        tg.inflight.clear()

    def start(tg: _Target, now: float) -> None:
        jobs = [engine.add(tg.spec, a) for a in tg.addrs]
        for j in jobs:
            owner[j] = tg
        tg.inflight.append((now, time.time(), jobs))
        tg.started += 1
        tg.next_at = None

    engine = Engine(stop, on_done=ended, keep=kept is not None)
    try:
        for s in specs:
            addrs = addresses[s.target]
            if isinstance(addrs, str):
                out[s.target] = [verdict(s.target, time.time(), addrs, [])]
                continue
            targets[s.target] = _Target(s, addrs, rules[s.target])
        while True:
            now = time.monotonic()
            wake: list[float] = []
            for tg in targets.values():
                if tg.settled:
                    continue
                room = len(tg.inflight) < max(1, tg.rules.overlap())
                if tg.next_at is not None and now >= tg.next_at and room:
                    start(tg, now)
                elif tg.inflight and room and tg.started < tg.rules.limit:
                    overdue = tg.rules.overdue()
                    if overdue is not None:
                        due = tg.inflight[-1][0] + overdue
                        if now >= due:
                            start(tg, now)
                        else:
                            wake.append(due)
                if tg.next_at is not None:
                    wake.append(tg.next_at)
                if not tg.inflight and tg.next_at is None:
                    tg.settled = True
            if not engine.busy and not wake:
                break
            engine.step(min(wake) if wake else None)
        if kept is not None:
            for name, tg in targets.items():
                tries = [engine.kept.pop(j) for j in tg.good if j in engine.kept]
                if tries and len(tries) == len(tg.addrs):
                    kept[name] = [t.sock for t in tries]
                else:
                    for t in tries:
                        t.close()
    finally:
        engine.close()
    for name, tg in targets.items():
        out[name] = tg.out
    return out
