"""The notices that are not transitions (the cron loop's own trouble, a
certificate about to expire): a subject and a text sent through each mail
relay and webhook on its own, so one that is down does not stop the others.
"""

from __future__ import annotations

import logging
import time

from spdu_cli.errors import SpduError

log = logging.getLogger(__name__)


def channels(site):
    """The mail and webhook configurations of the site's usable targets, once each."""
    mails, hooks = {}, {}
    for name in site.targets:
        try:
            c = site.target(name)
        except SpduError:
            continue
        if c.mail is not None and c.mail.to:
            mails.setdefault((c.mail.relay, c.mail.port, c.mail.to), c.mail)
        for w in c.webhooks:
            hooks.setdefault(w.channel, w)
    return list(mails.values()), list(hooks.values())


def send_notices(site, notices, through=None) -> dict:
    """Each (level, notice[, at]) through every channel of the site (`through`:
    these (mails, webhooks) instead): one that fails does not stop the others. A
    notice has `notice` (its subject, after "LEVEL: spdu on TAG: ") and `text`;
    a NOTICE says that a WARNING's trouble is over; `at` (wall clock, when it
    was raised) makes every try of it the same mail (Message-ID) and POST.
    Returns each channel's configuration -> the first error it gave, or None
    when it took every notice."""
    mails, hooks = channels(site) if through is None else through
    failed: dict = dict.fromkeys([*mails, *hooks])
    for level, p, *when in notices:
        at = when[0] if when else time.time()
        title = subject(level, mails, hooks, p)
        text = (p.text if level == "WARNING" else f"Over: {p.notice} no more.\n"
                f"It was: {p.text}") + "\n"
        for cfg in mails:
            try:
                from spdu_cli.notify.mail import send

                send(cfg, _mail(cfg, title, text, at))
            except SpduError as e:
                log.error("the notice %r could not be mailed: %s", title, e)
                failed[cfg] = failed[cfg] or e
        for cfg in hooks:
            try:
                import spdu_cli.notify.webhook as webhook

                webhook.send(cfg, webhook.notice(cfg, title, text, at))
            except SpduError as e:
                log.error("the notice %r could not be posted: %s", title, e)
                failed[cfg] = failed[cfg] or e
    return failed


def subject(level: str, mails, hooks, p, tag: str = "") -> str:
    return f"{level}: spdu on {tag or _tag(mails, hooks)}: {p.notice}"


def _tag(mails, hooks) -> str:
    for c in [*mails, *hooks]:
        if c.tag:
            return c.tag
    import socket

    return socket.gethostname()


def _mail(cfg, subject: str, text: str, at: float):
    import hashlib
    from datetime import UTC, datetime
    from email.message import EmailMessage
    from email.utils import format_datetime

    from spdu_cli.notify.mail import from_name
    from spdu_cli.notify.text import CONTROL

    msg = EmailMessage()
    msg["From"] = f'"{from_name(cfg)}" <{cfg.sender}>'
    msg["To"] = ", ".join(cfg.to)
    msg["Subject"] = CONTROL.sub(" ", subject)
    msg["Date"] = format_datetime(datetime.now(UTC))
    digest = hashlib.sha256(f"{cfg.tag}\n{subject}\n{at}".encode()).hexdigest()[:20]
    msg["Message-ID"] = f"<spdu.notice.{digest}@{cfg.sender.rpartition('@')[2]}>"  # each try
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(text)
    return msg

