"""The cron loop's schedule and tally, pure: when each target is due (on whole
multiples of its period on the wall clock), and what one run of the loop did.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from spdu_cli import health

# -- the schedule (pure) -----------------------------------------------------------------


def aligned(now: float, period: float, offset: float) -> float:
    """The first moment (on the loop's clock, `now`) at least half a `period`
    away at which the wall clock (`now + offset`) is a whole multiple of
    `period`. Every site whose clock is set by NTP thus probes a peer at the
    same moments, so when it fails, all of the pool's servers drop it within
    one phase of each other instead of the slowest of several independent
    phases."""
    wall = now + offset
    nxt = (math.floor(wall / period) + 1) * period
    if nxt - wall < period / 2:
        nxt += period
    return nxt - offset


@dataclass
class Schedule:
    """When each target is due for its next probe."""

    due_at: dict[str, float] = field(default_factory=dict)

    def due(self, targets, now: float) -> list[str]:
        return [t for t in targets if self.due_at.get(t, now) <= now]

    def probed(self, target: str, h: health.Health, now: float, interval: float,
               fast: float, down: float | None = None, offset: float | None = None) -> None:
        """`offset`: the wall clock minus the loop's; given, the regular probes
        (every `interval`, and `down` for a down target) fall on whole multiples
        of their period on the wall clock (`aligned`)."""
        if health.suspect(h):
            self.due_at[target] = now + fast
            return
        # HAProxy's downinter: a repaired site is seen soon
        wait = down if h.state is health.State.DOWN and down is not None else interval
        self.due_at[target] = now + wait if offset is None else aligned(now, wait, offset)

    def trip(self, target: str, now: float) -> None:
        """The connection kept from the target's last good probe was closed by
        the peer: probe it now."""
        self.due_at[target] = min(self.due_at.get(target, now), now)

    def next(self, targets, default: float) -> float:
        return min([self.due_at.get(t, default) for t in targets] or [default])


@dataclass
class Tally:
    """What one run of the loop did, for the log line at its end and the tests."""

    ticks: int = 0
    probes: int = 0
    reconciles: int = 0
    notifies: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    latest: dict[str, int] = field(default_factory=dict)  # step -> status of its last run
    why: dict[str, str] = field(default_factory=dict)  # step -> its last error

    def failed(self, step: str, status: int = 70, why: object = "") -> None:
        self.failures[step] = self.failures.get(step, 0) + 1
        self.latest[step] = int(status)
        self.why[step] = str(why) or f"exit status {int(status)}"

    def ok(self, step: str) -> None:
        self.latest[step] = 0

    @property
    def last_error(self) -> int | None:
        """The exit status: what still failed when the loop ended (a mail that
        failed once and went out later is no error), the most serious first."""
        return max((s for s in self.latest.values() if s), default=None)
