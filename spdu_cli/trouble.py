"""spdu's own trouble in the cron loop: a target file it cannot use, an edit of
the configuration it refused, a step that keeps failing for longer than
alertAfter. Said where someone looks: syslog every minute, the status file
that each copy cron starts prints on its stderr (so cron mails it), and a
notice through every channel (mail, webhooks) once, and once more when it is over
(a notice no channel took is tried again, less and less often).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field

from spdu_cli import handover
from spdu_cli.errors import SpduError
from spdu_cli.notify import notices as channels

log = logging.getLogger(__name__)

REPEAT = 60.0  # s: a standing problem is logged again this often (syslog)
ONCE_KEPT = 600.0  # s: a one-off line stays in the status file this long for a copy to print
STEPS = ("probe", "reconcile", "notify")
RETRY = 30.0  # s: a notice no channel took is tried again after this, then twice as long
RETRY_MAX = 600.0  # each time up to this...
MAX_TRIES = 12  # ...and this many tries in all (over an hour), then given up (logged)


@dataclass
class Problem:
    text: str
    every: bool  # printed by every copy (True) or by the first one only
    notice: str  # the notice's subject


@dataclass(eq=False)
class Notice:
    """A notice about spdu itself: WARNING when a problem starts, NOTICE when it is over."""

    key: str  # the problem's
    level: str
    problem: Problem
    at: float  # wall clock, when raised: every try is the same mail and POST (ids too)
    tries: int = 0
    due: float = 0.0  # clock: when it is tried again


@dataclass
class Trouble:
    """What the loop says of itself, kept in step with the status file."""

    spool_dir: str
    config_path: str
    clock: object = time.monotonic
    current: dict[str, Problem] = field(default_factory=dict)
    failing: dict[str, float] = field(default_factory=dict)  # step -> since (clock)
    once: list[tuple[int, str, float]] = field(default_factory=list)  # (n, text, at)
    last_said: float = -1e18
    written: str | None = None
    end: float | None = None  # time.monotonic() when the loop's minute ends (cycle sets it)
    sender: threading.Thread | None = None
    latest: dict[str, Notice] = field(default_factory=dict)  # problem -> its newest notice
    unsent: dict[str, Notice] = field(default_factory=dict)  # ...when no channel took it
    returned: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)  # (notice, out)

    def problems(self, site, stale, tally, now: float) -> dict[str, Problem]:
        out = {}
        for name, e in site.broken.items():
            out[f"target {name}"] = Problem(
                f"{e}; {name} is not probed and its addresses are left as they are in DNS"
                " until that is fixed", True, f"target {name} is not probed")
        if stale:
            words = "; ".join(str(e) for e in stale)
            out["config"] = Problem(
                f"{words}; the cron loop goes on with the last good configuration until"
                " that is fixed", True, "a configuration edit was refused")
        after = site.alert_after
        for step in STEPS:
            if tally.latest.get(step):
                since = self.failing.setdefault(step, now)
                if after and now - since >= after:
                    why = tally.why.get(step, "")
                    out[f"step {step}"] = Problem(
                        f"{step} has kept failing for {now - since:.0f} s (alertAfter="
                        f"{after:g}): {why}", False, f"{step} keeps failing")
            else:
                self.failing.pop(step, None)
        return out

    def update(self, site, stale, tally, now: float) -> None:
        """Once a tick: say what is new, what is over, and every REPEAT s what stands."""
        got = self.problems(site, stale, tally, now)
        new = [k for k in got if k not in self.current]
        over = [k for k in self.current if k not in got]
        wall = time.time()
        for k in new:
            if not got[k].every:
                self._once(got[k].text, wall)
        for k in over:
            text = f"over: {self.current[k].notice} no more"
            log.warning("%s", text)
            if not self.current[k].every:
                self._once(text, wall)
        if new or (got and now - self.last_said >= REPEAT):
            self.last_said = now
            for p in got.values():
                log.error("%s", p.text)
        notices = ([Notice(k, "WARNING", got[k], wall) for k in new]
                   + [Notice(k, "NOTICE", self.current[k], wall) for k in over] + _drain())
        self.current = got
        self.once = [o for o in self.once if wall - o[2] < ONCE_KEPT]
        self._write()
        self._send(site, notices, now)

    def _once(self, text: str, wall: float) -> None:
        n = max(time.time_ns() // 1000, (self.once[-1][0] + 1) if self.once else 0)
        self.once.append((n, text, wall))

    def _write(self) -> None:
        lines = [f"config\t{os.path.abspath(self.config_path)}"]
        if self.end is not None:  # when the loop's minute ends, on the monotonic clock
            lines.append(f"end\t{self.end:.3f}")
        lines += [f"every\t{_line(p.text)}" for p in self.current.values() if p.every]
        lines += [f"once\t{n}\t{_line(t)}" for n, t, _ in self.once]
        text = "\n".join(lines) + "\n"
        if text == self.written:
            return
        from spdu_cli.spool import atomic_write

        try:
            atomic_write(os.path.join(self.spool_dir, handover.STATUS), text.encode(), 0o640,
                         "the cron loop's status", sync=False)
            self.written = text
        except SpduError as e:
            log.warning("%s", e)

    def _send(self, site, fresh: list[Notice], now: float) -> None:
        """Send the new notices, and those no channel took that are due again."""
        while True:
            try:
                n, out = self.returned.get_nowait()
            except queue.Empty:
                break
            if out or self.latest.get(n.key) is not n:
                continue  # sent, or a newer notice of the same problem says more
            name = f"{n.level}: {n.problem.notice}"
            if n.tries >= MAX_TRIES:
                log.error("the notice %r went out through no channel in %d tries; given up",
                          name, n.tries)
                continue
            n.due = now + min(RETRY_MAX, RETRY * 2 ** (n.tries - 1))
            log.warning("the notice %r went out through no channel; tried again in %.0f s",
                        name, n.due - now)
            self.unsent[n.key] = n
        for n in fresh:
            self.latest[n.key] = n
            self.unsent.pop(n.key, None)
        again = [] if self.sender is not None and self.sender.is_alive() else [
            n for n in self.unsent.values() if n.due <= now]
        for n in again:
            del self.unsent[n.key]
        if fresh or again:
            self._notify(site, fresh + again)

    def _notify(self, site, notices: list[Notice]) -> None:
        if self.sender is not None and self.sender.is_alive():
            self.sender.join(1.0)  # the previous notice is still out: a moment, no more
        for n in notices:
            n.tries += 1

        def send() -> None:
            try:
                outs = send_notices(site, notices)
            except Exception:  # a bug must not end the loop: each is tried again
                log.exception("sending spdu's notices failed")
                outs = [False] * len(notices)
            for n, out in zip(notices, outs, strict=True):
                self.returned.put((n, out))

        self.sender = threading.Thread(target=send, name="spdu-trouble", daemon=True)
        self.sender.start()


def _line(text: str) -> str:
    return " ".join(text.split())


# Notices that a step raises itself (reconcile: a signed pool's signatures gone
# bad, and good again), the step keeping in the spool that it did, once: the
# cron loop's Trouble sends them with its own on its next tick (tried again when
# no channel took them); a command run by hand sends them as it ends.
_posted: queue.SimpleQueue = queue.SimpleQueue()


def post(key: str, level: str, problem: Problem) -> None:
    """A WARNING that a problem began, or a NOTICE that it is over (`key`: the
    problem's, the same for both)."""
    _posted.put(Notice(key, level, problem, time.time()))


def _drain() -> list[Notice]:
    out = []
    while True:
        try:
            out.append(_posted.get_nowait())
        except queue.Empty:
            return out


def send_posted(site) -> list[Notice]:
    """What a command run by hand posted, sent now through every channel, once
    (no loop is there to try again). Returns the notices no channel took."""
    notices = _drain()
    if not notices:
        return []
    return [n for n, ok in zip(notices, send_notices(site, notices), strict=True) if not ok]


def send_notices(site, notices: list[Notice]) -> list[bool]:
    """Each notice through every channel (notify.notices): one that fails does
    not stop the others. For each: did it go out through one channel at least
    (or is there none)? Every try of a notice is the same mail and POST."""
    outs = []
    for n in notices:
        failed = channels.send_notices(site, [(n.level, n.problem, n.at)])
        outs.append(not failed or any(e is None for e in failed.values()))
    return outs
