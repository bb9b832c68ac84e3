"""A target's journal of transitions as notify, probe and maint read it
(its configuration beside it), and the syslog line each transition gets as
soon as it is journaled, so a log line never waits for a mail run.
"""

from __future__ import annotations

import dataclasses
import logging
import logging.handlers
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from spdu_cli.config import MailConfig, TargetConfig, WebhookConfig
from spdu_cli.entry import SpoolEntry, duration, epoch
from spdu_cli.logsetup import SYSLOG_SOCKETS, system_socket

log = logging.getLogger(__name__)

MAIL = "mail"  # the mail channel's name in the spool (a webhook's: WebhookConfig.channel)
MESSAGE_ID = re.compile(r"<spdu\.[0-9a-f]{20}@[A-Za-z0-9.-]{1,253}>")  # what message_id makes
POST_ID = re.compile(r"spdu\.[0-9a-f]{20}")  # what webhook.delivery_id makes


def _epoch(value: Any) -> float | None:
    try:
        return epoch(value)
    except (ValueError, TypeError):
        return None


# -- what notify knows of a target: its journal, seen through its config -----------


@dataclass(frozen=True)
class DnsAction:
    """What reconcile did for a transition (spool journal `dns` entries)."""

    at: float | None
    action: str  # "add" or "delete"
    address: str
    rrset: str
    server: str

    def words(self) -> str:
        done = {"add": f"added {self.address} to", "delete": f"removed {self.address} from",
                # found so by a later reconcile: an UPDATE whose answer was lost
                "present": f"found {self.address} already in",
                "absent": f"found {self.address} already gone from"}.get(
                    self.action, f"{self.action} {self.address} in")
        when = f" at {clock(self.at)}" if self.at else ""
        return f"{done} {self.rrset} on {self.server}{when}"


@dataclass(frozen=True)
class StateChange:
    """One transition of a target's journal."""

    id: int
    stamp: str  # `at` as the journal spells it: with `id`, what marking matches on
    at: float
    old: str
    new: str
    reason: str
    dns: tuple[DnsAction, ...] = ()
    notified: bool = False
    notified_at: float | None = None
    flap: bool = False  # went out in a flap summary
    logged: bool = False  # written to syslog
    until: float | None = None  # a change to maint: when the maintenance ends
    sent: tuple[tuple[str, float | None, bool], ...] = ()  # (channel, at, flap summary)
    mail_id: str | None = None  # the Message-ID of a mail about to carry it (see run)
    mail_at: float | None = None  # when that mail was first tried
    # Per webhook channel, the POST about to carry it: (channel, Idempotency-Key,
    # when it was first tried, its flap count); see notify's run.
    posted: tuple[tuple[str, str, float | None, int], ...] = ()
    mailed_to: tuple[str, ...] = ()  # recipients that took the mail `mail_id` (a 4xx for others)
    # As one channel sees it (`on`): (id, first tried, flap count) of the mail or
    # POST that was about to carry it, to be sent again alone under that id.
    repeat: tuple[str, float | None, int] | None = None
    steady: Any = None  # the journal's "clock": [boot id, monotonic] (entry.elapsed)

    @property
    def key(self) -> tuple[int, str]:
        return (self.id, self.stamp)

    @property
    def is_flap(self) -> bool:
        """Whether it counts towards flapCount: not discovery (a change from
        unknown) and not maintenance (a change to or from maint)."""
        return self.old != "unknown" and "maint" not in (self.old, self.new)

    @classmethod
    def from_journal(cls, e: dict[str, Any]) -> StateChange:
        dns = tuple(
            DnsAction(
                _epoch(d.get("at")), str(d.get("action", "")), str(d.get("address", "")),
                str(d.get("rrset", "")), str(d.get("server", "")),
            )
            for d in (e.get("dns") if isinstance(e.get("dns"), list) else ())
            if isinstance(d, dict)
        )
        return cls(
            id=e["id"],
            stamp=str(e.get("at")),
            at=_epoch(e.get("at")) or 0.0,
            old=str(e.get("from", "unknown")),
            new=str(e.get("to", "unknown")),
            reason=str(e.get("reason") or ""),
            steady=e.get("clock"),
            dns=dns,
            notified=bool(e.get("notified")),
            notified_at=_epoch(e.get("notified_at")),
            flap=bool(e.get("flap")),
            logged=bool(e.get("logged")),
            until=_epoch(e.get("until")),
            sent=_sent(e.get("sent")),
            mail_id=(e["mail_id"] if isinstance(e.get("mail_id"), str)
                     and MESSAGE_ID.fullmatch(e["mail_id"]) else None),  # goes into a header
            mail_at=_epoch(e.get("mail_at")),
            posted=_posted(e.get("post_id")),
            mailed_to=tuple(a for a in (e.get("mailed_to") if isinstance(e.get("mailed_to"),
                                                                        list) else ())
                            if isinstance(a, str)),
        )

    def on(self, channel: str) -> StateChange:
        """As `channel` sees it: done once that channel took it, or once every channel
        did (`notified`; from before channels, the mail fields tell)."""
        rec = next((r for r in self.sent if r[0] == channel), None)
        if rec is not None:
            return dataclasses.replace(self, notified=True, notified_at=rec[1], flap=rec[2])
        if self.notified and self.sent:
            return dataclasses.replace(self, flap=False)  # settled without this channel
        if channel == MAIL:
            note = (self.mail_id, self.mail_at, 0) if self.mail_id else None
        else:
            note = next((r[1:] for r in self.posted if r[0] == channel), None)
        if note is None or note[1] is None:
            return dataclasses.replace(self, repeat=note)
        # sent again as it was first tried: what reconcile recorded since is not in it
        return dataclasses.replace(self, repeat=note, dns=tuple(
            d for d in self.dns if d.at is None or d.at <= note[1]))


def _posted(value: Any) -> tuple[tuple[str, str, float | None, int], ...]:
    if not isinstance(value, dict):
        return ()
    out = []
    for ch, r in value.items():
        if isinstance(r, dict) and isinstance(r.get("id"), str) and POST_ID.fullmatch(r["id"]):
            flap = r.get("flap")
            flap = flap if isinstance(flap, int) and not isinstance(flap, bool) else 0
            out.append((str(ch), r["id"], _epoch(r.get("at")), max(0, flap)))
    return tuple(out)


def _sent(value: Any) -> tuple[tuple[str, float | None, bool], ...]:
    if not isinstance(value, dict):
        return ()
    return tuple((str(ch), _epoch(r.get("at")), bool(r.get("flap")))
                 for ch, r in value.items() if isinstance(r, dict))


@dataclass(frozen=True)
class JournalView:
    target: str
    host: str  # targetName
    addresses: tuple[str, ...]
    url: str
    mail: MailConfig | None  # None: mailTo is empty
    flap_count: int  # 0: flap summaries off
    flap_window: float
    journal: tuple[StateChange, ...]
    webhooks: tuple[WebhookConfig, ...] = ()

    @classmethod
    def from_spool(cls, cfg: TargetConfig, entry: SpoolEntry) -> JournalView:
        addresses = tuple(entry.addresses) or tuple(str(ip) for ip in cfg.target_ips)
        return cls(
            target=cfg.target,
            host=cfg.target_name,
            addresses=addresses,
            url=entry.url or cfg.probe_url,
            mail=cfg.mail,
            flap_count=cfg.flap_count,
            flap_window=cfg.flap_window,
            journal=tuple(StateChange.from_journal(e) for e in entry.journal),
            webhooks=cfg.webhooks,
        )

    def channels(self) -> set[str]:
        """Every channel that must take a transition before it is notified."""
        return ({MAIL} if self.mail else set()) | {w.channel for w in self.webhooks}

    def on(self, channel: str) -> JournalView:
        """The journal as one channel sees it."""
        return dataclasses.replace(self, journal=tuple(c.on(channel) for c in self.journal))

    def pending(self) -> list[StateChange]:
        return [c for c in self.journal if not c.notified]

    def previous(self, change: StateChange) -> StateChange | None:
        """The transition that began the state `change` ended, if still in the journal."""
        return next((c for c in self.journal if c.id == change.id - 1), None)

    def last_failure(self, change: StateChange) -> StateChange | None:
        """The latest transition to down up to `change`: its reason is the failure."""
        earlier = [c for c in self.journal if c.id <= change.id and c.new == "down"]
        return earlier[-1] if earlier else None

    def last_flap_summary(self) -> float | None:
        return max((c.notified_at for c in self.journal if c.flap and c.notified_at), default=None)

    def held_until(self, now: float) -> float | None:
        """When the next flap summary is due, if a change pending at `now` is held
        for it (a summary went out less than flapWindow ago); else None."""
        last = self.last_flap_summary() if self.flap_count else None
        if last is not None and now < last + self.flap_window:
            return last + self.flap_window
        return None


# -- words shared by the log line, mails and webhooks --------------------------------


def state_word(state: str) -> str:
    return {"down": "DOWN", "maint": "in maintenance"}.get(state, state)


def clock(ts: float | None) -> str:
    if ts is None:
        return "an unknown time"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def address_list(view: JournalView) -> str:
    return ", ".join(view.addresses) or "no known address"


# -- syslog ------------------------------------------------------------------------


class _Syslog(logging.handlers.SysLogHandler):
    def handleError(self, record):
        raise  # noqa: PLE0704 - called from emit's except block


def open_syslog(setting: str) -> _Syslog | None:
    """The daemon facility at `setting` (a socket path), or the system's socket
    when empty; None when off or there is none."""
    if setting == "none":
        return None
    path = setting or system_socket()
    if path is None:
        log.debug("no syslog socket (%s): transitions are not logged to syslog",
                  " or ".join(SYSLOG_SOCKETS))
        return None
    try:
        handler = _Syslog(address=path, facility=logging.handlers.SysLogHandler.LOG_DAEMON)
    except OSError as e:
        log.warning("cannot log to syslog at %s: %s", path, e.strerror or e)
        return None
    handler.ident = f"spdu[{os.getpid()}]: "
    try:  # a stuck syslogd must not hold up a probe
        handler.socket.settimeout(1.0)
    except (AttributeError, OSError):
        pass  # not connected: emit says so
    return handler


def since(prev: StateChange, change: StateChange) -> float:
    """How long `prev` lasted until `change`: on the monotonic clock when both
    were made in this boot, so a step of the wall clock between them is not counted."""
    from spdu_cli.entry import elapsed

    return elapsed(prev.steady, change.steady, change.at - prev.at)


def log_line(view: JournalView, change: StateChange) -> str:
    """The original's log line: which target, which URL, what happened."""
    line = (
        f"{view.target} is {state_word(change.new)}: {view.url} at {address_list(view)}:"
        f" {change.reason or 'no reason recorded'}"
    )
    prev = view.previous(change)
    if change.old != "unknown" and prev is not None:
        line += f" (was {state_word(change.old)} for {duration(since(prev, change))})"
    elif change.old == "unknown":
        line += " (first probe)"
    due = max((d for ch in view.channels() if (d := view.on(ch).held_until(change.at))),
              default=None) if not change.notified else None
    if due is not None:
        line += f"; flapping: its mail is held for the summary due at {clock(due)}"
    return line


def log_transitions(views: Iterable[JournalView], handler) -> dict[str, set[tuple[int, str]]]:
    """Log each pending transition not logged yet; returns what was logged."""
    done: dict[str, set[tuple[int, str]]] = {}
    if handler is None:
        return done
    for v in views:
        for c in v.pending():
            if c.logged:
                continue
            level = logging.WARNING if c.new == "down" else logging.INFO
            record = logging.LogRecord("spdu", level, __file__, 0, log_line(v, c), None, None)
            try:
                handler.emit(record)
            except OSError as e:
                log.warning("cannot log to syslog: %s", e.strerror or e)
                return done
            done.setdefault(v.target, set()).add(c.key)
    return done


class JournalLog:
    """Logs transitions to syslog when they are journaled (by probe, maint),
    so a log line never waits for a mail run; each one logged is marked
    `logged` in the entry, before the caller writes it. Opened on first use."""

    def __init__(self, setting: str):
        self.setting = setting
        self.handler = None
        self.opened = False

    def __call__(self, cfg: TargetConfig, entry: SpoolEntry) -> None:
        if not self.opened:
            self.handler, self.opened = open_syslog(self.setting), True
        done = log_transitions([JournalView.from_spool(cfg, entry)], self.handler)
        keys = done.get(entry.target, set())
        for e in entry.journal:
            if (e.get("id"), str(e.get("at"))) in keys:
                e["logged"] = True

    def close(self) -> None:
        if self.handler is not None:
            self.handler.close()
