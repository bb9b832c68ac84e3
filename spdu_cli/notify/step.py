"""The `spdu notify` step: mail and post every pending transition once per
channel, log it to syslog if probe has not, and mark it (see run).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from email.message import EmailMessage

import spdu_cli.notify.certs as certs
from spdu_cli.entry import iso
from spdu_cli.errors import ServiceUnavailable, SpduError
from spdu_cli.journal import (
    MAIL,
    JournalView,
    clock,
    log_transitions,
    open_syslog,
    state_word,
)
from spdu_cli.notify.mail import compose, relay_where, send
from spdu_cli.notify.marks import Marks, sent_mark, write_marks, write_notes
from spdu_cli.notify.outbox import Held, Mail, Plan, Post, plan
from spdu_cli.notify.text import CONTROL, subject
from spdu_cli.spool import Spool

log = logging.getLogger(__name__)


@dataclass
class Delivery:
    """One mail: composed, and (unless a dry run) handed to the relay or not."""

    mail: Mail
    message: EmailMessage
    to: list[str]  # the envelope: mailTo, less who took this very mail before
    sent: bool = False
    refused: dict[str, str] = field(default_factory=dict)
    error: SpduError | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "channel": MAIL,
            "subject": str(self.message["Subject"]),
            "message_id": str(self.message["Message-ID"]),
            "to": list(self.to),
            "relay": relay_where(self.mail.config),
            "transitions": [{"target": t, "id": c.id} for t, c in self.mail.changes],
            "sent": self.sent,
            "refused": self.refused,
            "error": str(self.error) if self.error else None,
        }


def _unmailed(mail: Mail) -> list[str]:
    """mailTo, less the recipients that already took this very mail (a repeat
    after a temporary failure for the others)."""
    done = None
    for _, c in mail.changes:
        done = set(c.mailed_to) if done is None else done & set(c.mailed_to)
    return [r for r in mail.config.to if not (mail.message_id and done and r in done)]


@dataclass
class PostDelivery:
    """One webhook POST: rendered, and (unless a dry run) accepted by the receiver or not."""

    post: Post
    sending: Any  # webhook.Sending: the request, then the receiver's answer

    @property
    def sent(self) -> bool:
        return self.sending.status is not None and self.sending.error is None

    @property
    def error(self) -> SpduError | None:
        return self.sending.error

    def to_json(self) -> dict[str, Any]:
        return {
            "channel": "webhook",
            "webhook": self.post.config.where,
            "format": self.post.config.format,
            "id": self.sending.request.headers["Idempotency-Key"],
            "subject": CONTROL.sub(" ", subject(self.post)),
            "transitions": [{"target": t, "id": c.id} for t, c in self.post.changes],
            "sent": self.sent,
            "status": self.sending.status,
            "error": str(self.error) if self.error else None,
        }


def held_words(h: Held) -> str:
    """One line for a flapping target's changes held back: what, and until when."""
    where = "" if h.channel == MAIL else " (webhook)"
    return (f"{h.view.target} is {state_word(h.changes[-1].new)} and flapping:"
            f" {len(h.changes)} change(s) held{where} for the summary due at {clock(h.until)}")


def held_json(h: Held) -> dict[str, Any]:
    """--json: one object per flapping target held back, per channel."""
    return {
        "channel": MAIL if h.channel == MAIL else "webhook",
        "held": h.view.target,
        "state": h.changes[-1].new,
        "summary_due": iso(h.until),
        "transitions": [{"target": h.view.target, "id": c.id} for c in h.changes],
        "sent": False,
    }


@dataclass
class Outcome:
    plan: Plan
    deliveries: list[Delivery]
    dry_run: bool = False
    posts: list[PostDelivery] = field(default_factory=list)
    notices: list = field(default_factory=list)  # certs.CertNotice

    @property
    def errors(self) -> list[SpduError]:
        return [d.error for d in [*self.deliveries, *self.posts, *self.notices] if d.error]


def run(
    site,
    dry_run: bool = False,
    now: float | None = None,
    lock_timeout: float = 5.0,
    syslog: str | None = None,
) -> Outcome:
    """Mail and post every pending transition of the configured targets, then mark it.

    At least once, per channel: a transition is marked for mail only after the
    relay accepted the mail that carries it, for a webhook only after that
    receiver answered 2xx, under the spool lock, re-reading the entry so
    transitions a concurrent probe added are kept; it is `notified` once every
    channel took it. The lock is not held while talking SMTP or HTTP. Before
    that, each transition notes the Message-ID of the mail about to carry it
    (`mail_id`; per webhook, the POST's Idempotency-Key, `post_id`): if spdu dies
    between the relay's (receiver's) acceptance and the marking, the next run
    sends those transitions again alone, with the same Message-ID (key) and
    content; it is never lost.
    When that note cannot be written (a full disk), nothing is sent (exit 75):
    else every run would send the same mail again. A relay or receiver that is
    down, times out or refuses leaves the transitions pending for that channel
    only (exit 69, or 78 for a refusal). Webhooks are posted in parallel, each
    under its own deadline, while the mail goes out. Without any channel,
    transitions are marked (logged only). `syslog` overrides syslogSocket. A dry
    run composes, sends and marks nothing. Then the certificate notices that
    are due (certs.notify), whose errors count as the mail's.
    """
    now = time.time() if now is None else now
    cfgs = [site.target(n) for n in site.select(())]
    store = Spool(site.spool_dir)
    views = [JournalView.from_spool(c, store.read(c.target)) for c in cfgs]
    p = plan(views, now)
    outcome = Outcome(p, [Delivery(m, compose(m, now), _unmailed(m)) for m in p.mails], dry_run)
    if p.posts:
        import spdu_cli.notify.webhook as webhook

        # A repeat is rendered as it was first (its sent_at), under the same key.
        outcome.posts = [PostDelivery(x, webhook.Sending(
            x.config, webhook.request(x, now if x.first_at is None else x.first_at)))
            for x in p.posts]
    for h in p.held:
        log.info("%s", held_words(h))
    if dry_run:
        for v, c in p.silent:
            log.info("%s: would mark transition %d notified without mail (mailTo is empty)",
                     v.target, c.id)
        outcome.notices = certs.notify(site, cfgs, store, now, lock_timeout, dry_run=True)
        return outcome

    notes: Marks = {}
    for d in outcome.deliveries:
        mid = str(d.message["Message-ID"])
        for n in d.mail.notices:
            for c in n.changes:
                if c.mail_id != mid:
                    notes.setdefault(n.view.target, {})[c.key] = {"mail_id": mid,
                                                                   "mail_at": iso(now)}
    for x in outcome.posts:  # as for mail: the key noted first, per channel
        key, channel = x.sending.request.headers["Idempotency-Key"], x.post.config.channel
        for n in x.post.notices:
            for c in n.changes:
                if c.repeat is None or c.repeat[0] != key:
                    notes.setdefault(n.view.target, {}).setdefault(c.key, {}).setdefault(
                        "post_id", {})[channel] = {"id": key, "at": iso(now),
                                                   "flap": n.flapping}
    if notes:
        try:
            write_notes(store, notes, lock_timeout)
        except SpduError as e:
            e.message += "; no mail is sent until that is recorded, and it stays pending"
            raise
    for d in outcome.posts:  # in flight while the mail goes out
        d.sending.start()
    handler = open_syslog(site.syslog_socket if syslog is None else syslog)
    try:
        logged = log_transitions(views, handler)
    finally:
        if handler is not None:
            handler.close()
    marks: Marks = {}
    for target, keys in logged.items():
        for key in keys:
            marks.setdefault(target, {}).setdefault(key, {})["logged"] = True
    for d in outcome.deliveries:
        try:
            d.refused = send(d.mail.config, d.message, d.to) if d.to else {}
        except SpduError as e:
            log.error("%s", e)
            d.error = e
            if not getattr(e, "maybe_sent", False) and len(d.to) == len(d.mail.config.to):
                for n in d.mail.notices:  # surely sent to no one: its transitions may
                    for c in n.changes:   # join the next digest, under a new id
                        marks.setdefault(n.view.target, {}).setdefault(c.key, {})[
                            "mail_id"] = None
            continue
        d.sent = True
        where = relay_where(d.mail.config)
        later = {r: reply for r, reply in d.refused.items() if reply.startswith("4")}
        for rcpt, reply in d.refused.items():
            if rcpt not in later:
                log.warning("SMTP relay %s refused recipient %s (%s); the others got the mail",
                            where, rcpt, reply)
        if later:  # a temporary failure: the same mail to those alone, next run
            d.error = ServiceUnavailable(
                f"SMTP relay {where} answered {'; '.join(f'{r}: {x}' for r, x in later.items())}"
                f" for {'recipient' if len(later) == 1 else 'recipients'}"
                f" {', '.join(later)}; the others got the mail",
                "the mail stays pending for "
                f"{'that recipient' if len(later) == 1 else 'those'} and goes out again with"
                " the next run, with the same Message-ID")
            log.error("%s", d.error)
            took = sorted(set(d.mail.config.to) - set(later))
            for n in d.mail.notices:
                for c in n.changes:
                    marks.setdefault(n.view.target, {}).setdefault(c.key, {})[
                        "mailed_to"] = took
            continue
        sent_mark(marks, d.mail.notices, MAIL, now, message_id=str(d.message["Message-ID"]))
    if outcome.posts:
        write_marks(store, views, marks, now, lock_timeout)  # mail's, not waiting on HTTP
        marks = {}
        for x in outcome.posts:
            if x.sending.wait():
                sent_mark(marks, x.post.notices, x.post.config.channel, now)
                continue
            log.error("%s", x.error)
            if not getattr(x.error, "maybe_sent", True):  # surely not taken: may join
                for n in x.post.notices:                   # the next digest, under a new key
                    for c in n.changes:
                        marks.setdefault(n.view.target, {}).setdefault(c.key, {})[
                            "post_id"] = {x.post.config.channel: None}
    write_marks(store, views, marks, now, lock_timeout)
    outcome.notices = certs.notify(site, cfgs, store, now, lock_timeout)
    return outcome
