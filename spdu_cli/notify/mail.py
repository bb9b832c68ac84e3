"""Mail: a notice or digest composed as a message (the same Message-ID for
every retry) and handed to the SMTP relay, with implicit TLS, STARTTLS or
plain, and optional AUTH.
"""

from __future__ import annotations

import hashlib
import socket
from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the mail modules are loaded only when there is mail to send
    import smtplib
    import ssl
    from email.message import EmailMessage

from spdu_cli import __version__
from spdu_cli.config import MailConfig
from spdu_cli.errors import ConfigError, ServiceUnavailable, SpduError
from spdu_cli.notify.outbox import Mail
from spdu_cli.notify.text import CONTROL, body, subject


def message_id(mail: Mail) -> str:
    """The same for every retry of the same mail, so a receiver can drop a repeat."""
    if mail.message_id:
        return mail.message_id
    keys = "\n".join(f"{t}:{c.id}:{c.stamp}" for t, c in mail.changes)
    digest = hashlib.sha256(f"{mail.config.tag}\n{keys}".encode()).hexdigest()[:20]
    domain = mail.config.sender.rpartition("@")[2]
    return f"<spdu.{digest}@{domain}>"


def from_name(cfg: MailConfig) -> str:
    """The original's From words: `Robot SPDU on alpha`."""
    return f"Robot SPDU on {cfg.tag}"


def compose(mail: Mail, now: float) -> EmailMessage:
    from email.message import EmailMessage
    from email.utils import format_datetime

    cfg = mail.config
    msg = EmailMessage()
    msg["From"] = f'"{from_name(cfg)}" <{cfg.sender}>'  # the original's words, quoted
    msg["To"] = ", ".join(cfg.to)
    # The subject may carry words from the spool (a maintenance reason): one line,
    # always, so nothing read there can add a header (Bcc:...) or break the mail.
    msg["Subject"] = CONTROL.sub(" ", subject(mail))
    msg["Date"] = format_datetime(datetime.fromtimestamp(  # a repeat: as first tried
        now if mail.first_at is None else mail.first_at, UTC))
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


def send(cfg: MailConfig, msg: EmailMessage, to: list[str] | None = None) -> dict[str, str]:
    """Hand `msg` to the relay, for `to` (default: mailTo; the To header stays
    as composed). Returns the recipients it refused (address -> reply) when it
    took the mail for the others; raises when it took it for no one. The
    password is sent only over TLS unless smtpStartTLS=no."""
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
        refused = conn.send_message(msg, cfg.sender, list(cfg.to if to is None else to))
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
    return {rcpt: f"{code} {text.decode(errors='replace')}"
            for rcpt, (code, text) in refused.items()}
