"""The outbox: which pending transitions go out in which mail or webhook POST,
as one notice, a digest, or a flapping target's summary (pure functions over
the journal; nothing here sends).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from spdu_cli.config import MailConfig, WebhookConfig
from spdu_cli.entry import duration
from spdu_cli.journal import MAIL, JournalView, StateChange, clock, state_word


@dataclass(frozen=True)
class Notice:
    """One section of a mail: one transition, or a flapping target's summary."""

    view: JournalView
    changes: tuple[StateChange, ...]
    flapping: int = 0  # > 0: a flap summary; transitions within the window
    next_summary: float | None = None

    @property
    def final(self) -> str:
        return self.changes[-1].new

    def headline(self) -> str:
        if self.flapping:
            return (f"{self.view.target} is flapping ({self.flapping} changes in"
                    f" {duration(self.view.flap_window)}), now {state_word(self.final)}")
        c = self.changes[-1]
        if c.new == "maint":
            why = f" ({c.reason})" if c.reason and c.reason != "maintenance" else ""
            return f"{self.view.target} is in maintenance until {clock(c.until)}{why}"
        if c.old == "maint":
            return f"{self.view.target} is back from maintenance: {state_word(c.new)}"
        return f"{self.view.target} is {state_word(self.final)}"


@dataclass(frozen=True)
class Mail:
    """What goes to one set of recipients over one relay: one notice or a digest."""

    config: MailConfig
    notices: tuple[Notice, ...]
    message_id: str | None = None  # set: a mail sent before (maybe) whose marking was lost
    first_at: float | None = None  # then: when it was first tried (its Date, sent_at)

    @property
    def changes(self) -> list[tuple[str, StateChange]]:
        return [(n.view.target, c) for n in self.notices for c in n.changes]


@dataclass(frozen=True)
class Post(Mail):
    """What goes to one webhook receiver: one notice or a digest."""

    config: WebhookConfig  # type: ignore[assignment]


@dataclass(frozen=True)
class Held:
    """A flapping target's transitions kept pending until its next summary is due."""

    view: JournalView
    changes: tuple[StateChange, ...]
    until: float
    channel: str = MAIL


@dataclass
class Plan:
    mails: list[Mail] = field(default_factory=list)
    silent: list[tuple[JournalView, StateChange]] = field(default_factory=list)  # no channel
    held: list[Held] = field(default_factory=list)
    posts: list[Post] = field(default_factory=list)


def notices_for(view: JournalView, now: float,
                pending: tuple[StateChange, ...] | None = None) -> list[Notice] | Held:
    """A target's pending transitions as notices, or held back while it flaps.

    Flapping: more than flapCount flaps within flapWindow (ending at the
    latest pending transition); discovery (from unknown) and maintenance (to or
    from maint) are not flaps. Its pending transitions then go out as one
    summary, and the next summary comes no sooner than flapWindow later; what
    happens meanwhile stays pending (and in syslog) until then.
    """
    pending = tuple(view.pending()) if pending is None else pending
    if not view.flap_count:
        return [Notice(view, (c,)) for c in pending]
    due = view.held_until(now)
    if due is not None:
        return Held(view, pending, due)
    last = view.last_flap_summary()
    end = pending[-1].at
    recent = [c for c in view.journal if end - view.flap_window < c.at <= end and c.is_flap]
    held_since_last = last is not None and pending[0].at < last + view.flap_window
    if len(recent) > view.flap_count or held_since_last:
        return [Notice(view, pending, max(len(recent), len(pending)), now + view.flap_window)]
    return [Notice(view, (c,)) for c in pending]


def _gather(pairs: Iterable[tuple[Any, JournalView]], now: float, channel: str = MAIL
            ) -> tuple[dict[tuple[Any, str | None], tuple[Notice, ...]], list[Held]]:
    """(channel configuration, the target as that channel sees it) pairs -> the
    notices for each (configuration, Message-ID) in time order, and the flapping
    targets held. Transitions that a mail (a POST) was about to carry when spdu
    last stopped (`mail_id`, `post_id`) go out again in a mail of their own, under
    the same Message-ID (Idempotency-Key), so the receiver can drop the repeat;
    newer ones go in another."""
    groups: dict[tuple[Any, str | None], list[Notice]] = {}
    held = []
    for cfg, v in pairs:
        pending = v.pending()
        if not pending:
            continue
        again: dict[str, list[StateChange]] = {}
        for c in pending:
            if c.repeat:
                again.setdefault(c.repeat[0], []).append(c)
        for key, cs in again.items():  # as it was: one summary again, or one notice each
            _, at, flap = cs[0].repeat
            groups.setdefault((cfg, key), []).extend(
                [Notice(v, tuple(cs), flap, (at or now) + v.flap_window)] if flap
                else [Notice(v, (c,)) for c in cs])
        fresh = tuple(c for c in pending if not c.repeat)
        if not fresh:
            continue
        notices = notices_for(v, now, fresh)
        if isinstance(notices, Held):
            held.append(dataclasses.replace(notices, channel=channel))
        else:
            groups.setdefault((cfg, None), []).extend(notices)
    order = lambda n: (n.changes[0].at, n.view.target, n.changes[0].id)  # noqa: E731
    return {key: tuple(sorted(ns, key=order)) for key, ns in groups.items()}, held


def _first_at(notices: tuple[Notice, ...]) -> float | None:
    return next((c.repeat[1] for n in notices for c in n.changes if c.repeat), None)


def plan(views: Iterable[JournalView], now: float) -> Plan:
    """Group every pending transition into mails: one per mail configuration
    (recipients, relay...), a digest when it holds several notices; and into
    POSTs: one per webhook receiver. Each channel sees its own pending ones."""
    views = list(views)
    out = Plan()
    out.silent = [(v, c) for v in views if not v.channels() for c in v.pending()]
    mailed = [(v.mail, v.on(MAIL)) for v in views if v.mail is not None]
    groups, out.held = _gather(mailed, now)
    out.mails = [Mail(cfg, notices, mail_id, _first_at(notices) if mail_id else None)
                 for (cfg, mail_id), notices in groups.items()]
    for channel in dict.fromkeys(w.channel for v in views for w in v.webhooks):
        posted = [(w, v.on(channel)) for v in views for w in v.webhooks if w.channel == channel]
        groups, held = _gather(posted, now, channel)
        out.posts += [Post(cfg, notices, key, _first_at(notices) if key else None)
                      for (cfg, key), notices in groups.items()]
        out.held += held
    return out
