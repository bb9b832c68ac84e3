"""How far the cron loop falls behind its probe schedule, and why: the lateness
of each probe run, summed up in one warning a minute, and the gauge
spdu_probe_lag_seconds of the metrics file.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import spdu_cli.spool as spool

log = logging.getLogger(__name__)

PERIOD = 60.0  # seconds: at most one warning this often (the loop's minute when shorter)
SCHEDSTAT = "/proc/self/schedstat"  # Linux: the main thread's time waiting for a CPU


def tolerance(interval: float) -> float:
    """Lateness below this is a timer's jitter or one slow moment, not a loop
    that cannot keep up: a quarter of the interval, at least 0.1 s."""
    return max(0.1, interval / 4)


def cpu_wait() -> float | None:
    """Seconds this process's main thread has spent runnable but waiting for a
    CPU (the run queue), since it started; None where the kernel does not say."""
    try:
        with open(SCHEDSTAT, "rb") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


@dataclass
class Minute:
    """What one period of the loop spent, for the cause of its lateness."""

    interval: float = 0.0
    seconds: float = 0.0  # wall
    cpu: float = 0.0  # the process's CPU time (every thread)
    waited: float | None = None  # for a CPU (None: unknown)
    spool: float = 0.0  # writing spool (and metrics) files, fsync included
    probing: float = 0.0  # wall time of the loop's own work (ticks, recording probes)
    longest: float = 0.0  # the longest such step, wall
    longest_cpu: float = 0.0  # and the CPU it took
    worst: float = 0.0  # the latest a probe run started
    runs: int = 0
    late: int = 0  # runs later than tolerance(interval)


def cause(m: Minute) -> str:
    """The likely reason for the lateness, the most basic first: a machine that
    gives the process no CPU slows every step, a slow disk slows every probe run."""
    if m.waited is not None and m.waited >= 0.2 * (m.cpu + m.waited):
        return (f"the process did not get the CPU: it waited {m.waited:.2f} s for one and ran"
                f" {m.cpu:.2f} CPU-s (the machine is overloaded)")
    if m.spool >= 0.3 * m.probing:
        return (f"spool writes took {m.spool:.2f} s of the loop's {m.probing:.2f} s of work"
                " (a slow disk?)")
    if m.longest > m.interval:
        if m.longest_cpu >= 0.5 * m.longest:
            return (f"one step of the loop took {m.longest:.2f} s ({m.longest_cpu:.2f} CPU-s),"
                    f" longer than the interval ({m.interval:g} s): too many targets for one loop"
                    " at this interval")
        return (f"one step of the loop took {m.longest:.2f} s (only {m.longest_cpu:.2f} CPU-s),"
                f" longer than the interval ({m.interval:g} s): it waited on the disk or the"
                " spool lock")
    return (f"the loop's own work took {m.probing:.2f} s of {m.seconds:.2f} s (reading the"
            " spool, the metrics file, starting probes)")


def text(m: Minute) -> str:
    return (f"the loop is falling behind: probe runs started up to {m.worst:.2f} s late in"
            f" the last {m.seconds:.0f} s ({m.late} of {m.runs} later than"
            f" {tolerance(m.interval):.2f} s; interval {m.interval:g} s); likely cause: "
            f"{cause(m)}")


class Watch:
    """The loop's lateness: `started` and `ran` around each probe run, `report`
    after each tick (a warning's text once a period, when a run was late)."""

    def __init__(self, now: float, period: float = PERIOD):
        self.period = period
        self.due = now + period  # the periods keep to the loop's minutes
        self.current = 0.0  # the gauge: how late the latest probe run started
        self.m = Minute()
        self._begin(now)

    def _begin(self, now: float) -> None:
        self.since, self.cpu0, self.wait0 = now, time.process_time(), cpu_wait()
        self.spool0 = spool.WriteTime.seconds
        self.m = Minute(interval=self.m.interval)

    def started(self, late: float, interval: float) -> None:
        """A probe run starts `late` seconds after its most overdue target was due."""
        late = max(0.0, late)
        self.current = late
        m = self.m
        m.interval, m.runs = interval, m.runs + 1
        if late > tolerance(interval):
            m.late += 1
            m.worst = max(m.worst, late)

    def ran(self, wall: float, cpu: float) -> None:
        m = self.m
        m.probing += wall
        if wall > m.longest:
            m.longest, m.longest_cpu = wall, cpu

    def report(self, now: float, final: bool = False) -> str | None:
        """Once a period (and at the loop's end, `final`): the warning, logged
        and returned, or None when no probe run was late; the next period begins."""
        if now < self.due and not final:
            return None
        while self.due <= now:
            self.due += self.period
        m = self.m
        if not m.late:
            self._begin(now)
            return None
        m.seconds = now - self.since
        m.cpu = time.process_time() - self.cpu0
        waited = cpu_wait()
        m.waited = None if waited is None or self.wait0 is None else waited - self.wait0
        m.spool = spool.WriteTime.seconds - self.spool0
        out = text(m)
        log.warning("%s", out)
        self._begin(now)
        return out
