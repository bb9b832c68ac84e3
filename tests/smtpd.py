"""Real SMTP relays for the tests: aiosmtpd on a loopback port, plain, with
STARTTLS or implicit TLS (trustme certificates), with or without AUTH; and a
relay that accepts connections but never greets."""

from __future__ import annotations

import email
import email.policy
import socket
import warnings
from dataclasses import dataclass, field
from email.message import EmailMessage

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    auth: str | None  # the user that logged in
    tls: bool


class _Handler:
    def __init__(self, relay: SmtpRelay):
        self.relay = relay

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.relay.refuse:
            return "550 5.1.1 no such mailbox here"
        if address in self.relay.defer:
            return "452 4.2.2 mailbox full, try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.relay.on_data is not None:
            self.relay.on_data()
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        user = session.auth_data.login.decode() if session.auth_data else None
        tls = server.transport.get_extra_info("ssl_object") is not None
        self.relay.received.append(
            Received(envelope.mail_from, list(envelope.rcpt_tos), msg, user, tls)
        )
        return "250 2.0.0 queued"


class _Controller(Controller):
    def factory(self):
        # aiosmtpd warns of AUTH without STARTTLS even when the socket is implicit TLS.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Requiring AUTH while not requiring TLS")
            return super().factory()


@dataclass
class SmtpRelay:
    """aiosmtpd on host:port. tls: "plain", "starttls" or "implicit"; with
    `password`, AUTH (PLAIN/LOGIN) is offered (over TLS) and required."""

    port: int
    tls: str = "plain"
    cert: object = None  # trustme LeafCert, for tls != "plain"
    user: str = "robot@domain.tld"
    password: str | None = None
    host: str = "127.0.0.1"
    refuse: set[str] = field(default_factory=set)
    defer: set[str] = field(default_factory=set)  # answered 452 at RCPT
    received: list[Received] = field(default_factory=list)
    on_data: object = None  # called (in the relay's thread) before a mail is accepted

    def __post_init__(self):
        kwargs = {}
        if self.tls != "plain":
            import ssl

            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.cert.configure_cert(ctx)
            kwargs["ssl_context" if self.tls == "implicit" else "tls_context"] = ctx
        if self.password is not None:
            kwargs.update(
                authenticator=self._authenticate,
                auth_required=True,
                # aiosmtpd counts only STARTTLS as TLS; implicit TLS is TLS too.
                auth_require_tls=self.tls == "starttls",
            )
        self.controller = _Controller(
            _Handler(self), hostname=self.host, port=self.port, ready_timeout=5, **kwargs
        )
        self.controller.start()

    def _authenticate(self, server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and (
            auth_data.login.decode(),
            auth_data.password.decode(),
        ) == (self.user, self.password)
        return AuthResult(success=ok, handled=False, auth_data=auth_data)

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None


class SilentRelay:
    """Accepts TCP connections (the kernel does) and never says a word."""

    def __init__(self, host: str = "127.0.0.1"):
        self.sock = socket.socket()
        self.sock.bind((host, 0))
        self.sock.listen(8)
        self.host, self.port = self.sock.getsockname()

    def stop(self) -> None:
        self.sock.close()
