"""Hysteresis: a target's state from its previous state and one probe outcome.

HAProxy's fall/rise: down after `fall` consecutive failed probes, up after
`rise` consecutive good ones. A target with no history takes the first result.
Pure functions over dataclasses, so any sequence can be tested without I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum


class State(str, Enum):
    UP = "up"
    DOWN = "down"
    UNKNOWN = "unknown"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Health:
    state: State = State.UNKNOWN
    since: float | None = None  # when the current state began (epoch seconds)
    good: int = 0  # consecutive good probes
    bad: int = 0  # consecutive failed probes


@dataclass(frozen=True)
class Transition:
    old: State
    new: State
    at: float
    reason: str


def advance(
    h: Health, ok: bool | None, rise: int, fall: int, now: float, reason: str = ""
) -> tuple[Health, Transition | None]:
    """Apply one probe outcome. `ok=None` (inconclusive: we could not even try,
    e.g. the target's name did not resolve here) changes nothing."""
    if ok is None:
        return h, None
    good, bad = (h.good + 1, 0) if ok else (0, h.bad + 1)
    if h.state is State.UNKNOWN:
        new = State.UP if ok else State.DOWN
    elif h.state is State.UP and bad >= fall:
        new = State.DOWN
    elif h.state is State.DOWN and good >= rise:
        new = State.UP
    else:
        return replace(h, good=good, bad=bad), None
    return Health(new, now, good, bad), Transition(h.state, new, now, reason)


def suspect(h: Health) -> bool:
    """Up but failing, not yet down: worth re-probing soon (HAProxy's fastinter)."""
    return h.state is State.UP and h.bad > 0


@dataclass(frozen=True)
class Failover:
    """Worst-case seconds, from the settings, until DNS is changed (`dns`) and
    until every client sees it (`clients`, after nameTTL of caching)."""

    out_refused: float  # a dead site that refuses connections: each try fails at once
    out_hang: float  # a dead site that accepts nothing and answers nothing
    back: float  # a site that answers again
    ttl: float

    def to_json(self) -> dict[str, dict[str, float]]:
        return {
            case: {"dns": round(v, 3), "clients": round(v + self.ttl, 3)}
            for case, v in (("out_refused", self.out_refused), ("out_hang", self.out_hang),
                            ("back", self.back))
        }


def failover(interval: float, fast_interval: float, timeout: float, retries: int,
             fall: int, rise: int, ttl: float) -> Failover:
    """What fall/rise mean in seconds under the cron loop (spdu cron).

    The loop probes a target every `interval`, and a suspect one (up, last
    probe failed) `fast_interval` after the start of its failed probe, or at
    once when that probe took longer; a probe takes up to timeout x retries
    when the site hangs, about nothing when it refuses; reconcile runs right
    after a probe that changed a state, taking milliseconds on a local server.
    Worst case for going out: the site dies just after a good probe, so the
    first failure ends `interval` + one probe later, and each further one a
    max(fast_interval, probe) later. Coming back: it recovers just after a
    probe began (which still fails, up to one probe long), the next probe
    comes `interval` after that one began (or when it ends), then rise-1 more
    at `interval`. Other targets are assumed to answer (a hanging target's
    probe runs alongside, not before, theirs).
    """
    probe = timeout * retries
    return Failover(
        out_refused=interval + (fall - 1) * fast_interval,
        out_hang=interval + probe + (fall - 1) * max(fast_interval, probe),
        back=max(interval, probe) + (rise - 1) * interval,
        ttl=ttl,
    )


def carried_over(before: Health, h: Health, t: Transition | None) -> tuple[Health, Transition | None]:
    """After a restart from unknown (the target's addresses changed): the same
    state as before is no transition; another one is a transition from it."""
    if h.state is before.state:
        return replace(h, since=before.since), None
    return h, replace(t, old=before.state) if t else None
