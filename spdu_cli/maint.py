"""Maintenance: an operator takes a target out of the pool on purpose, for a while.

The override lives in the target's spool entry (`maint`), so it survives
restarts; it is journaled as a change to `maint` and back, which notify mails.
It expires by itself: the first step that reads the entry under the lock after
`until` clears it (see `expire`), and reconcile ignores it once past `until`.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass

from spdu_cli.entry import Maintenance, SpoolEntry, iso
from spdu_cli.errors import UsageError
from spdu_cli.spool import Spool

log = logging.getLogger(__name__)

DEFAULT = 3600.0
MAX = 7 * 86400.0  # a forgotten maintenance never keeps a healthy site out for long
MAX_REASON = 200
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """'90s', '30m', '2h', '1d' or plain seconds -> seconds, within (0, MAX]."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text.lower())
    if not m:
        raise ValueError(f"{text!r} is not a duration like 90s, 30m, 2h, 1d or plain seconds")
    seconds = float(m.group(1)) * UNITS[m.group(2) or "s"]
    if not 0 < seconds <= MAX:
        raise ValueError(f"{text!r} is not between 1 s and {MAX / 86400:g} days")
    return seconds


def _shown(entry: SpoolEntry) -> str:
    """What the target was seen as outside maintenance: its probed state."""
    return entry.health.state.value


def expire(entry: SpoolEntry, now: float) -> dict | None:
    """Clear a maintenance that is over and journal the way back; call under the lock.
    The change is dated at `until`, when the maintenance really ended."""
    m = entry.maint
    if m is None or m.active(now):
        return None
    entry.maint = None
    log.info("%s: maintenance ended at %s", entry.target, iso(m.until))
    return entry.add_change("maint", _shown(entry), m.until, "maintenance expired")


def _log_now(site, entry: SpoolEntry) -> None:
    """Log the change to syslog as it is journaled, not when it is mailed."""
    from spdu_cli.journal import JournalLog

    journal_log = JournalLog(site.syslog_socket)
    try:
        journal_log(site.target(entry.target), entry)
    finally:
        journal_log.close()


@dataclass(frozen=True)
class Outcome:
    """What `spdu maint` did to one target."""

    target: str
    maint: Maintenance | None  # in effect afterwards
    change: dict | None  # the journal entry added, if any
    state: str  # the probed state

    def to_json(self) -> dict:
        return {
            "target": self.target,
            "maint": self.maint.to_json() if self.maint else None,
            "state": self.state,
            "transition": self.change and {k: v for k, v in self.change.items()
                                           if k != "clock"},  # the spool's own
        }


def start(site, target: str, seconds: float, reason: str = "", now: float | None = None,
          lock_timeout: float = 5.0) -> Outcome:
    """Put `target` in maintenance for `seconds` from now. Again while in
    maintenance: a new end and reason, without a new transition."""
    now = time.time() if now is None else now
    [target] = site.select([target])
    if not 0 < seconds <= MAX:
        raise UsageError(f"a maintenance of {seconds:g} s is not within 1 s to"
                         f" {MAX / 86400:g} days")
    if len(reason) > MAX_REASON or any(ord(c) < 32 or c == "\x7f" for c in reason):
        raise UsageError(f"--reason: one line of at most {MAX_REASON} characters, please"
                         " (it goes into mail subjects)")
    store = Spool(site.spool_dir)
    with store.locked(lock_timeout):
        entry = store.read(target)
        expire(entry, now)
        change = None
        if entry.maint is None:
            entry.maint = Maintenance(now, now + seconds, reason)
            change = entry.add_change(_shown(entry), "maint", now, reason or "maintenance",
                                      until=iso(now + seconds))
            _log_now(site, entry)
        else:
            entry.maint = Maintenance(entry.maint.since, now + seconds,
                                      reason or entry.maint.reason)
        store.write(entry)
    log.info("%s: in maintenance until %s", target, iso(now + seconds))
    return Outcome(target, entry.maint, change, _shown(entry))


def clear(site, target: str, now: float | None = None, lock_timeout: float = 5.0) -> Outcome:
    """End `target`'s maintenance now: the probes decide again."""
    now = time.time() if now is None else now
    [target] = site.select([target])
    store = Spool(site.spool_dir)
    with store.locked(lock_timeout):
        entry = store.read(target)
        change = expire(entry, now)
        if entry.maint is not None:
            entry.maint = None
            change = entry.add_change("maint", _shown(entry), now, "maintenance cleared")
        if change is not None:
            _log_now(site, entry)
            store.write(entry)
    return Outcome(target, None, change, _shown(entry))
