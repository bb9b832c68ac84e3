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
