"""`spdu notify`: mail each state change recorded in the spool once, post it to
each webhook once, and log it to syslog.

Pending transitions -> a Plan of mails and webhook POSTs (single notices, digests,
flap summaries; pure functions) -> SMTP / HTTP -> marked per channel in the
spool. Delivery is at least once: a transition is marked for a channel only
after that channel accepted it, and notified once every channel has (see run).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import logging.handlers
import os
import re
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the mail modules are loaded only when there is mail to send
    import smtplib
    import ssl
    from email.message import EmailMessage

from spdu_cli import __version__
from spdu_cli.config import MailConfig, TargetConfig, WebhookConfig
from spdu_cli.errors import ConfigError, ServiceUnavailable, SpduError
from spdu_cli.logsetup import SYSLOG_SOCKETS, system_socket
from spdu_cli.spool import Spool, SpoolEntry, duration, epoch, iso

log = logging.getLogger(__name__)

MAIL = "mail"  # the mail channel's name in the spool (a webhook's: WebhookConfig.channel)
MAX_SUBJECT = 150
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MESSAGE_ID = re.compile(r"<spdu\.[0-9a-f]{20}@[A-Za-z0-9.-]{1,253}>")  # what message_id makes


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
        done = f"added {self.address} to" if self.action == "add" else f"removed {self.address} from"
        when = f" at {_clock(self.at)}" if self.at else ""
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

    @property
    def key(self) -> tuple[int, str]:
        return (self.id, self.stamp)

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
            dns=dns,
            notified=bool(e.get("notified")),
            notified_at=_epoch(e.get("notified_at")),
            flap=bool(e.get("flap")),
            logged=bool(e.get("logged")),
            until=_epoch(e.get("until")),
            sent=_sent(e.get("sent")),
            mail_id=(e["mail_id"] if isinstance(e.get("mail_id"), str)
                     and _MESSAGE_ID.fullmatch(e["mail_id"]) else None),  # goes into a header
        )

    def on(self, channel: str) -> StateChange:
        """As `channel` sees it: done once that channel took it, or once every channel
        did (`notified`; from before channels, the mail fields tell)."""
        rec = next((r for r in self.sent if r[0] == channel), None)
        if rec is not None:
            return dataclasses.replace(self, notified=True, notified_at=rec[1], flap=rec[2])
        if self.notified and self.sent:
            return dataclasses.replace(self, flap=False)  # settled without this channel
        return self


def _sent(value: Any) -> tuple[tuple[str, float | None, bool], ...]:
    if not isinstance(value, dict):
        return ()
    return tuple((str(ch), _epoch(r.get("at")), bool(r.get("flap")))
                 for ch, r in value.items() if isinstance(r, dict))


@dataclass(frozen=True)
class TargetView:
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
    def from_spool(cls, cfg: TargetConfig, entry: SpoolEntry) -> TargetView:
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

    def on(self, channel: str) -> TargetView:
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


# -- the plan: which transitions go in which mail (pure) -----------------------------


@dataclass(frozen=True)
class Notice:
    """One section of a mail: one transition, or a flapping target's summary."""

    view: TargetView
    changes: tuple[StateChange, ...]
    flapping: int = 0  # > 0: a flap summary; transitions within the window
    next_summary: float | None = None

    @property
    def final(self) -> str:
        return self.changes[-1].new

    def headline(self) -> str:
        if self.flapping:
            return (f"{self.view.target} is flapping ({self.flapping} changes in"
                    f" {duration(self.view.flap_window)}), now {_state(self.final)}")
        c = self.changes[-1]
        if c.new == "maint":
            why = f" ({c.reason})" if c.reason and c.reason != "maintenance" else ""
            return f"{self.view.target} is in maintenance until {_clock(c.until)}{why}"
        if c.old == "maint":
            return f"{self.view.target} is back from maintenance: {_state(c.new)}"
        return f"{self.view.target} is {_state(self.final)}"


@dataclass(frozen=True)
class Mail:
    """What goes to one set of recipients over one relay: one notice or a digest."""

    config: MailConfig
    notices: tuple[Notice, ...]
    message_id: str | None = None  # set: a mail sent before (maybe) whose marking was lost

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

    view: TargetView
    changes: tuple[StateChange, ...]
    until: float
    channel: str = MAIL


@dataclass
class Plan:
    mails: list[Mail] = field(default_factory=list)
    silent: list[tuple[TargetView, StateChange]] = field(default_factory=list)  # no channel
    held: list[Held] = field(default_factory=list)
    posts: list[Post] = field(default_factory=list)


def notices_for(view: TargetView, now: float,
                pending: tuple[StateChange, ...] | None = None) -> list[Notice] | Held:
    """A target's pending transitions as notices, or held back while it flaps.

    Flapping: more than flapCount transitions within flapWindow (ending at the
    latest pending one). Its pending transitions then go out as one summary,
    and the next summary comes no sooner than flapWindow later; what happens
    meanwhile stays pending (and in syslog) until then.
    """
    pending = tuple(view.pending()) if pending is None else pending
    if not view.flap_count:
        return [Notice(view, (c,)) for c in pending]
    last = view.last_flap_summary()
    if last is not None and now < last + view.flap_window:
        return Held(view, pending, last + view.flap_window)
    end = pending[-1].at
    recent = [c for c in view.journal if end - view.flap_window < c.at <= end]
    held_since_last = last is not None and pending[0].at < last + view.flap_window
    if len(recent) > view.flap_count or held_since_last:
        return [Notice(view, pending, max(len(recent), len(pending)), now + view.flap_window)]
    return [Notice(view, (c,)) for c in pending]


def _gather(pairs: Iterable[tuple[Any, TargetView]], now: float, channel: str = MAIL
            ) -> tuple[dict[tuple[Any, str | None], tuple[Notice, ...]], list[Held]]:
    """(channel configuration, the target as that channel sees it) pairs -> the
    notices for each (configuration, Message-ID) in time order, and the flapping
    targets held. For mail, transitions that a mail was about to carry when spdu
    last stopped (`mail_id`) go out again in a mail of their own, under the same
    Message-ID, so the receiver can drop the repeat; newer ones go in another."""
    groups: dict[tuple[Any, str | None], list[Notice]] = {}
    held = []
    for cfg, v in pairs:
        pending = v.pending()
        if not pending:
            continue
        fresh = pending
        if channel == MAIL:
            for c in pending:
                if c.mail_id:
                    groups.setdefault((cfg, c.mail_id), []).append(Notice(v, (c,)))
            fresh = tuple(c for c in pending if not c.mail_id)
            if not fresh:
                continue
        notices = notices_for(v, now, fresh)
        if isinstance(notices, Held):
            held.append(dataclasses.replace(notices, channel=channel))
        else:
            groups.setdefault((cfg, None), []).extend(notices)
    order = lambda n: (n.changes[0].at, n.view.target, n.changes[0].id)  # noqa: E731
    return {key: tuple(sorted(ns, key=order)) for key, ns in groups.items()}, held


def plan(views: Iterable[TargetView], now: float) -> Plan:
    """Group every pending transition into mails: one per mail configuration
    (recipients, relay...), a digest when it holds several notices; and into
    POSTs: one per webhook receiver. Each channel sees its own pending ones."""
    views = list(views)
    out = Plan()
    out.silent = [(v, c) for v in views if not v.channels() for c in v.pending()]
    mailed = [(v.mail, v.on(MAIL)) for v in views if v.mail is not None]
    groups, out.held = _gather(mailed, now)
    out.mails = [Mail(cfg, notices, mail_id) for (cfg, mail_id), notices in groups.items()]
    for channel in dict.fromkeys(w.channel for v in views for w in v.webhooks):
        posted = [(w, v.on(channel)) for v in views for w in v.webhooks if w.channel == channel]
        groups, held = _gather(posted, now, channel)
        out.posts += [Post(cfg, notices) for (cfg, _), notices in groups.items()]
        out.held += held
    return out


# -- the message (pure) -----------------------------------------------------------


def _state(state: str) -> str:
    return {"down": "DOWN", "maint": "in maintenance"}.get(state, state)


def _clock(ts: float | None) -> str:
    if ts is None:
        return "an unknown time"
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _addresses(view: TargetView) -> str:
    return ", ".join(view.addresses) or "no known address"


def _dns_lines(changes: Iterable[StateChange]) -> list[str]:
    actions = [d for c in changes for d in c.dns]
    if not actions:
        return ["DNS has not been changed yet (spdu reconcile has not recorded an update"
                " for this change)."]
    return [f"DNS: {d.words()}." for d in actions]


def _history_line(view: TargetView, change: StateChange) -> str:
    prev = view.previous(change)
    if change.old == "unknown":
        return "Its state before was unknown (first probe, or the spool was reset)."
    if prev is None:
        return f"It had been {_state(change.old)} since before the journal begins."
    return (
        f"It had been {_state(change.old)} for {duration(change.at - prev.at)}"
        f" (since {_clock(prev.at)})."
    )


def change_text(view: TargetView, change: StateChange, tag: str) -> list[str]:
    """One transition, as the original's mail said it, plus what DNS did."""
    who = f"{view.target} ({view.host}, {_addresses(view)})"
    if change.new == "maint":
        lines = [
            f"{who} is in maintenance until {_clock(change.until)}, as set on {tag}"
            f" at {_clock(change.at)}.",
            f"Reason: {change.reason or 'not given'}",
            "Its addresses are taken out of the pool; probes go on, and decide again"
            " when the maintenance ends.",
            _history_line(view, change),
        ]
    elif change.old == "maint":
        lines = [
            f"{who} is back from maintenance ({change.reason or 'ended'} at"
            f" {_clock(change.at)}), and {_state(change.new)} as seen from {tag}.",
            f"Probed at {view.url}.",
            _history_line(view, change),
        ]
    elif change.new == "down":
        lines = [
            f"{who} is DOWN, as seen from {tag}.",
            f"It stopped answering {view.url} at {_clock(change.at)}.",
            f"Last failure: {change.reason or 'not recorded'}",
            _history_line(view, change),
        ]
    else:
        failure = view.last_failure(change)
        lines = [
            f"{who} is {_state(change.new)}, as seen from {tag}.",
            f"It answers {view.url} since {_clock(change.at)}"
            + (f": {change.reason}." if change.reason else "."),
            _history_line(view, change),
        ]
        if failure is not None and failure.id < change.id:
            lines.append(f"Last failure: {failure.reason or 'not recorded'}"
                         f" (at {_clock(failure.at)})")
    return lines + _dns_lines([change])


def notice_text(n: Notice, tag: str) -> list[str]:
    v = n.view
    if not n.flapping:
        return change_text(v, n.changes[0], tag)
    first, last = n.changes[0], n.changes[-1]
    failure = v.last_failure(last)
    lines = [
        f"{v.target} ({v.host}, {_addresses(v)}) is flapping, as seen from {tag}:"
        f" {n.flapping} changes within {duration(v.flap_window)} (flapCount={v.flap_count}).",
        "They are summarized here instead of one mail each; the next summary comes no"
        f" sooner than {_clock(n.next_summary)}.",
        f"Now: {_state(last.new)} since {_clock(last.at)} ({v.url}).",
    ]
    if failure is not None:
        lines.append(f"Last failure: {failure.reason or 'not recorded'} (at {_clock(failure.at)})")
    lines.append(f"Changes not mailed before ({_clock(first.at)} to {_clock(last.at)}):")
    lines += [
        f"  {_clock(c.at)}  {_state(c.old)} -> {_state(c.new)}: {c.reason or '-'}"
        for c in n.changes
    ]
    return lines + _dns_lines(n.changes)


def subject(mail: Mail) -> str:
    """The original's style: `WARNING: beta is DOWN`, `NOTICE: beta is up`; a
    digest lists each target once with its latest state."""
    latest: dict[str, Notice] = {}
    for n in mail.notices:
        latest.pop(n.view.target, None)
        latest[n.view.target] = n
    flapping = {n.view.target for n in mail.notices if n.flapping}
    warn = flapping or any(n.final == "down" for n in latest.values())
    level = "WARNING" if warn else "NOTICE"
    if len(mail.notices) == 1:
        return f"{level}: {mail.notices[0].headline()}"
    words = [
        f"{t} is flapping" if t in flapping else f"{t} is {_state(n.final)}"
        for t, n in latest.items()
    ]
    text = f"{level}: {len(mail.changes)} changes: {', '.join(words)}"
    return text if len(text) <= MAX_SUBJECT else text[: MAX_SUBJECT - 3] + "..."


def body(mail: Mail) -> str:
    tag = mail.config.tag
    sections = [notice_text(n, tag) for n in mail.notices]
    if len(sections) > 1:
        head = [f"{len(mail.changes)} changes seen from {tag} since the last mail:"]
        head += [f"  - {n.headline()}" for n in mail.notices]
        sections.insert(0, head)
    text = ("\n\n" + "-" * 72 + "\n\n").join("\n".join(s) for s in sections)
    return f"{text}\n\n-- \nspdu {__version__} notify on {tag}\n"


def message_id(mail: Mail) -> str:
    """The same for every retry of the same mail, so a receiver can drop a repeat."""
    if mail.message_id:
        return mail.message_id
    keys = "\n".join(f"{t}:{c.id}:{c.stamp}" for t, c in mail.changes)
    digest = hashlib.sha256(f"{mail.config.tag}\n{keys}".encode()).hexdigest()[:20]
    domain = mail.config.sender.rpartition("@")[2]
    return f"<spdu.{digest}@{domain}>"


def compose(mail: Mail, now: float) -> EmailMessage:
    from email.message import EmailMessage
    from email.utils import format_datetime

    cfg = mail.config
    msg = EmailMessage()
    msg["From"] = f'"spdu on {cfg.tag}" <{cfg.sender}>'  # the original's form, quoted
    msg["To"] = ", ".join(cfg.to)
    # The subject may carry words from the spool (a maintenance reason): one line,
    # always, so nothing read there can add a header (Bcc:...) or break the mail.
    msg["Subject"] = _CONTROL.sub(" ", subject(mail))
    msg["Date"] = format_datetime(datetime.fromtimestamp(now, timezone.utc))
    msg["Message-ID"] = message_id(mail)
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies to a robot
    msg["X-Mailer"] = f"spdu/{__version__}"
    text = body(mail)
    # Plain 7bit keeps long lines (URLs) readable in the raw mail; qp only if needed.
    msg.set_content(text, cte="7bit" if text.isascii() else "quoted-printable")
    return msg


# -- SMTP --------------------------------------------------------------------------


def relay_where(cfg: MailConfig) -> str:
    host = f"[{cfg.relay}]" if ":" in cfg.relay else cfg.relay
    return f"{host}:{cfg.port}"


def _helo_name(cfg: MailConfig) -> str:
    # smtplib's default (getfqdn) may wait on DNS; relays want a dotted name.
    name = socket.gethostname()
    return name if "." in name else f"{name}.{cfg.sender.rpartition('@')[2]}"


def _failure(cfg: MailConfig, e: BaseException, during: str) -> SpduError:
    """One clear error for whatever the SMTP conversation raised."""
    import smtplib
    import ssl

    where = f"SMTP relay {relay_where(cfg)}"
    later = "the mail stays pending and goes out with the next run"
    if isinstance(e, smtplib.SMTPAuthenticationError):
        return ConfigError(
            f"{where} refused the login of smtpUser {cfg.user} "
            f"({e.smtp_code} {e.smtp_error.decode(errors='replace')})",
            f"check smtpUser and smtpPassword; {later}",
        )
    if isinstance(e, smtplib.SMTPRecipientsRefused):
        why = "; ".join(
            f"{rcpt}: {code} {msg.decode(errors='replace')}"
            for rcpt, (code, msg) in e.recipients.items()
        )
        return ServiceUnavailable(f"{where} refused every recipient ({why})", later)
    if isinstance(e, smtplib.SMTPResponseException):
        reply = f"{e.smtp_code} {e.smtp_error.decode(errors='replace')}"
        return ServiceUnavailable(f"{where} answered {reply} {during}", later)
    if isinstance(e, ssl.SSLCertVerificationError):
        return ServiceUnavailable(
            f"{where}: certificate not trusted ({e.verify_message})",
            f"set smtpCAFile to the CA that signed it; {later}",
        )
    if isinstance(e, ssl.SSLError):
        hint = "smtpSSL=yes is implicit TLS (port 465); for STARTTLS set smtpSSL=no"
        return ServiceUnavailable(f"{where}: TLS failed {during} ({e.reason or e})",
                                  f"{hint}; {later}")
    if isinstance(e, TimeoutError) or (
        isinstance(e, smtplib.SMTPServerDisconnected) and "timed out" in str(e)
    ):  # smtplib reports a timed-out read as a disconnection
        return ServiceUnavailable(
            f"{where} did not answer within {cfg.timeout:g} s {during}",
            f"check smtpRelay and smtpPort (smtpTimeout); {later}",
        )
    if isinstance(e, smtplib.SMTPServerDisconnected):
        return ServiceUnavailable(f"{where} closed the connection {during}", later)
    if isinstance(e, ConnectionRefusedError):
        return ServiceUnavailable(f"{where} refused the connection", f"is it running? {later}")
    if isinstance(e, socket.gaierror):
        return ServiceUnavailable(f"cannot resolve {cfg.relay}: {e.strerror}", later)
    if isinstance(e, smtplib.SMTPException):
        return ServiceUnavailable(f"{where}: {e} {during}", later)
    if isinstance(e, OSError):
        return ServiceUnavailable(f"{where}: {e.strerror or e} {during}", later)
    raise e


def _tls_context(cfg: MailConfig) -> ssl.SSLContext:
    import ssl

    try:
        return ssl.create_default_context(cafile=cfg.ca_file)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"smtpCAFile {cfg.ca_file}: cannot load it ({e})") from None


def _connect(cfg: MailConfig, during: list[str]) -> tuple[smtplib.SMTP, bool]:
    """Connected, greeted, encrypted as configured: (connection, encrypted)."""
    import smtplib

    context = _tls_context(cfg)
    helo = _helo_name(cfg)
    if cfg.ssl:
        during[0] = "connecting with implicit TLS"
        conn = smtplib.SMTP_SSL(cfg.relay, cfg.port, local_hostname=helo, timeout=cfg.timeout,
                                context=context)
        conn.ehlo()
        return conn, True
    during[0] = "connecting"
    conn = smtplib.SMTP(cfg.relay, cfg.port, local_hostname=helo, timeout=cfg.timeout)
    try:
        during[0] = "after EHLO"
        conn.ehlo()
        if cfg.starttls != "no" and conn.has_extn("starttls"):
            during[0] = "in STARTTLS"
            conn.starttls(context=context)
            conn.ehlo()
            return conn, True
        if cfg.starttls == "yes":
            raise ServiceUnavailable(
                f"SMTP relay {relay_where(cfg)} does not offer STARTTLS, which"
                " smtpStartTLS=yes requires",
                "the mail stays pending; fix the relay, or use smtpSSL=yes with port 465",
            )
        return conn, False
    except BaseException:
        conn.close()
        raise


def send(cfg: MailConfig, msg: EmailMessage) -> dict[str, str]:
    """Hand `msg` to the relay. Returns the recipients it refused (address ->
    reply) when it took the mail for the others; raises when it took it for
    no one. The password is sent only over TLS unless smtpStartTLS=no."""
    import smtplib

    during = ["connecting"]
    conn = None
    try:
        conn, encrypted = _connect(cfg, during)
        if cfg.password:
            if not encrypted and cfg.starttls != "no":
                raise ConfigError(
                    f"SMTP relay {relay_where(cfg)} does not offer STARTTLS: refusing to send"
                    " smtpPassword in plain text",
                    "set smtpStartTLS=no to allow it (a relay on this host), or use smtpSSL=yes;"
                    " the mail stays pending",
                )
            during[0] = "in AUTH"
            conn.login(cfg.user, cfg.password)
        during[0] = "while sending the mail"
        refused = conn.send_message(msg, cfg.sender, list(cfg.to))
    except SpduError:
        if conn is not None:
            conn.close()
        raise
    except (OSError, smtplib.SMTPException) as e:
        if conn is not None:
            conn.close()
        err = _failure(cfg, e, during[0])
        # Failed once the mail was on its way: the relay may have taken it all the same.
        err.maybe_sent = during[0] == "while sending the mail"
        raise err from None
    try:  # accepted: whatever QUIT does cannot undo that
        conn.quit()
    except (OSError, smtplib.SMTPException):
        conn.close()
    return {rcpt: f"{code} {text.decode(errors='replace')}" for rcpt, (code, text) in refused.items()}


# -- syslog ------------------------------------------------------------------------


class _Syslog(logging.handlers.SysLogHandler):
    def handleError(self, record):  # noqa: N802 - raise to the caller instead of printing
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


def log_line(view: TargetView, change: StateChange) -> str:
    """The original's log line: which target, which URL, what happened."""
    line = (
        f"{view.target} is {_state(change.new)}: {view.url} at {_addresses(view)}:"
        f" {change.reason or 'no reason recorded'}"
    )
    prev = view.previous(change)
    if change.old != "unknown" and prev is not None:
        line += f" (was {_state(change.old)} for {duration(change.at - prev.at)})"
    elif change.old == "unknown":
        line += " (first probe)"
    return line


def log_transitions(views: Iterable[TargetView], handler) -> dict[str, set[tuple[int, str]]]:
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
        done = log_transitions([TargetView.from_spool(cfg, entry)], self.handler)
        keys = done.get(entry.target, set())
        for e in entry.journal:
            if (e.get("id"), str(e.get("at"))) in keys:
                e["logged"] = True

    def close(self) -> None:
        if self.handler is not None:
            self.handler.close()


# -- the `spdu notify` step ----------------------------------------------------------


@dataclass
class Delivery:
    """One mail: composed, and (unless a dry run) handed to the relay or not."""

    mail: Mail
    message: EmailMessage
    sent: bool = False
    refused: dict[str, str] = field(default_factory=dict)
    error: SpduError | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "channel": MAIL,
            "subject": str(self.message["Subject"]),
            "message_id": str(self.message["Message-ID"]),
            "to": list(self.mail.config.to),
            "relay": relay_where(self.mail.config),
            "transitions": [{"target": t, "id": c.id} for t, c in self.mail.changes],
            "sent": self.sent,
            "refused": self.refused,
            "error": str(self.error) if self.error else None,
        }


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
            "subject": _CONTROL.sub(" ", subject(self.post)),
            "transitions": [{"target": t, "id": c.id} for t, c in self.post.changes],
            "sent": self.sent,
            "status": self.sending.status,
            "error": str(self.error) if self.error else None,
        }


@dataclass
class Outcome:
    plan: Plan
    deliveries: list[Delivery]
    dry_run: bool = False
    posts: list[PostDelivery] = field(default_factory=list)

    @property
    def errors(self) -> list[SpduError]:
        return [d.error for d in [*self.deliveries, *self.posts] if d.error]


Marks = dict[str, dict[tuple[int, str], dict[str, Any]]]  # target -> transition -> fields


def _mark(entry: SpoolEntry, updates: dict[tuple[int, str], dict[str, Any]]) -> int:
    """Set the fields of each transition named; `sent` (per channel) is merged."""
    done = 0
    for e in entry.journal:
        fields = updates.get((e.get("id"), str(e.get("at"))))
        if fields:
            for name, value in fields.items():
                if name == "sent":
                    e["sent"] = {**(e["sent"] if isinstance(e.get("sent"), dict) else {}), **value}
                else:
                    e[name] = value
            done += 1
    return done


def _settle(entry: SpoolEntry, view: TargetView, now: float) -> int:
    """Mark notified each transition of `view` that every channel it has now took
    (or that has no channel: mailTo and webhookURL empty, or a channel removed)."""
    pending = {c.key for c in view.pending()}
    need = view.channels()
    done = 0
    for e in entry.journal:
        if e.get("notified") or (e.get("id"), str(e.get("at"))) not in pending:
            continue
        if need <= set(e["sent"] if isinstance(e.get("sent"), dict) else ()):
            e.update(notified=True, notified_at=iso(now))
            done += 1
    return done


def _write_marks(store: Spool, views: list[TargetView], marks: Marks, now: float,
                 lock_timeout: float) -> None:
    """Under the lock, re-reading each entry so transitions a concurrent probe added are kept."""
    targets = [v for v in views if v.target in marks or v.pending()]
    if not targets:
        return
    with store.locked(lock_timeout):
        for v in targets:
            updates = marks.get(v.target, {})
            entry = store.read(v.target)
            found = 0 if entry.fresh else _mark(entry, updates)
            if found < len(updates):
                log.warning("%s: the spool entry changed meanwhile; %d transition(s) not"
                            " found to mark", v.target, len(updates) - found)
            if found + (0 if entry.fresh else _settle(entry, v, now)):
                store.write(entry)


def _sent_mark(marks: Marks, notices: Iterable[Notice], channel: str, now: float,
               **fields: Any) -> None:
    for n in notices:
        for c in n.changes:
            mark = marks.setdefault(n.view.target, {}).setdefault(c.key, {})
            mark.setdefault("sent", {})[channel] = {"at": iso(now), "flap": bool(n.flapping)}
            mark.update(fields)


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
    (`mail_id`): if spdu dies between the relay's acceptance and the marking,
    the next run sends those transitions again in a mail of their own, with the
    same Message-ID (a webhook: the same Idempotency-Key); it is never lost.
    When that note cannot be written (a full disk), nothing is sent (exit 75):
    else every run would send the same mail again. A relay or receiver that is
    down, times out or refuses leaves the transitions pending for that channel
    only (exit 69, or 78 for a refusal). Webhooks are posted in parallel, each
    under its own deadline, while the mail goes out. Without any channel,
    transitions are marked (logged only). `syslog` overrides syslogSocket. A dry
    run composes, sends and marks nothing.
    """
    now = time.time() if now is None else now
    cfgs = [site.target(n) for n in site.select(())]
    store = Spool(site.spool_dir)
    views = [TargetView.from_spool(c, store.read(c.target)) for c in cfgs]
    p = plan(views, now)
    outcome = Outcome(p, [Delivery(m, compose(m, now)) for m in p.mails], dry_run)
    if p.posts:
        from spdu_cli import webhook

        outcome.posts = [PostDelivery(x, webhook.Sending(x.config, webhook.request(x, now)))
                         for x in p.posts]
    for h in p.held:
        log.info("%s: flapping; %d change(s) held for the summary due at %s%s",
                 h.view.target, len(h.changes), _clock(h.until),
                 "" if h.channel == MAIL else " (webhook)")
    if dry_run:
        for v, c in p.silent:
            log.info("%s: would mark transition %d notified without mail (mailTo is empty)",
                     v.target, c.id)
        return outcome

    notes: Marks = {}
    for d in outcome.deliveries:
        mid = str(d.message["Message-ID"])
        for n in d.mail.notices:
            for c in n.changes:
                if c.mail_id != mid:
                    notes.setdefault(n.view.target, {})[c.key] = {"mail_id": mid}
    if notes:
        try:
            _write_notes(store, notes, lock_timeout)
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
            d.refused = send(d.mail.config, d.message)
        except SpduError as e:
            log.error("%s", e)
            d.error = e
            if not getattr(e, "maybe_sent", False):  # not sent: its transitions may join
                for n in d.mail.notices:               # the next digest, under a new id
                    for c in n.changes:
                        marks.setdefault(n.view.target, {}).setdefault(c.key, {})[
                            "mail_id"] = None
            continue
        d.sent = True
        for rcpt, reply in d.refused.items():
            log.warning("SMTP relay %s refused recipient %s (%s); the others got the mail",
                        relay_where(d.mail.config), rcpt, reply)
        _sent_mark(marks, d.mail.notices, MAIL, now, message_id=str(d.message["Message-ID"]))
    if outcome.posts:
        _write_marks(store, views, marks, now, lock_timeout)  # mail's, not waiting on HTTP
        marks = {}
        for x in outcome.posts:
            if x.sending.wait():
                _sent_mark(marks, x.post.notices, x.post.config.channel, now)
            else:
                log.error("%s", x.error)
    _write_marks(store, views, marks, now, lock_timeout)
    return outcome


def _write_notes(store: Spool, marks: Marks, lock_timeout: float) -> None:
    """Set fields of journal entries (target -> (id, at) -> fields), under the
    lock, re-reading each entry so what a concurrent probe added is kept."""
    with store.locked(lock_timeout):
        for target, updates in marks.items():
            entry = store.read(target)
            found = 0 if entry.fresh else _mark(entry, updates)
            if found < len(updates):
                log.warning("%s: the spool entry changed meanwhile; %d transition(s) not"
                            " found to mark", target, len(updates) - found)
            if found:
                store.write(entry)
