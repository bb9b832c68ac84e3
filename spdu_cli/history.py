"""`spdu history`: a target's journal of transitions, the time spent in each
state, and its availability over the period the journal covers.

Availability is the share of time up among the time up or down: time in
maintenance (planned) and time unknown (not probed) count neither way.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any

from spdu_cli import maint
from spdu_cli.entry import SpoolEntry, elapsed, epoch, iso, lasted

STATES = ("up", "down", "maint", "unknown")


@dataclass(frozen=True)
class Period:
    """One transition and the time spent in the state it began."""

    id: int
    at: float
    old: str
    new: str
    reason: str
    seconds: float  # until the next transition, or until now
    current: bool
    notified: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "at": iso(self.at), "from": self.old, "to": self.new,
            "reason": self.reason, "seconds": round(self.seconds, 3),
            "current": self.current, "notified": self.notified,
        }


@dataclass(frozen=True)
class History:
    target: str
    periods: list[Period]  # newest first
    start: float | None  # the oldest transition in the journal
    end: float
    seconds: dict[str, float] = field(default_factory=dict)  # per state

    @property
    def availability(self) -> float | None:
        """Share of time up among the time up or down; None when there is none."""
        counted = self.seconds["up"] + self.seconds["down"]
        return self.seconds["up"] / counted if counted > 0 else None

    def to_json(self) -> dict[str, Any]:
        a = self.availability
        return {
            "target": self.target,
            "from": iso(self.start),
            "to": iso(self.end),
            "availability": None if a is None else round(a, 6),
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
            "transitions": [p.to_json() for p in self.periods],
        }


def of_journal(target: str, journal: list[dict[str, Any]], now: float) -> History:
    """The periods between transitions (oldest first in the journal)."""
    rows = []
    for e in journal:
        try:
            at = epoch(e.get("at"))
        except (ValueError, TypeError):
            at = None
        if at is not None:
            rows.append((at, e))
    rows.sort(key=lambda r: (r[0], r[1]["id"]))
    seconds = dict.fromkeys(STATES, 0.0)
    periods = []
    for i, (at, e) in enumerate(rows):
        # on the monotonic clock within one boot: a step of the wall clock is not time spent
        if i + 1 < len(rows):
            spent = elapsed(e.get("clock"), rows[i + 1][1].get("clock"),
                            max(0.0, rows[i + 1][0] - at))
        else:
            spent = lasted(at, e.get("clock"), now)
        new = str(e.get("to", "unknown"))
        seconds[new if new in seconds else "unknown"] += spent
        periods.append(Period(e["id"], at, str(e.get("from", "unknown")), new,
                              str(e.get("reason") or ""), spent, i == len(rows) - 1,
                              bool(e.get("notified"))))
    return History(target, periods[::-1], rows[0][0] if rows else None, now, seconds)


def of_entry(entry: SpoolEntry, now: float | None = None) -> History:
    """A target's history; a maintenance past its end is shown as ended, as the
    next probe will record it."""
    now = time.time() if now is None else now
    entry = copy.deepcopy(entry)
    maint.expire(entry, now)
    return of_journal(entry.target, entry.journal, now)
