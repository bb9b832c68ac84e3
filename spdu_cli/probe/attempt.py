"""One connection attempt to one target address under one deadline: connect,
TLS, then what the probe type does with it; the words for what went wrong,
peer-sent text made safe to show, and probeMatch looked for as bytes arrive.
"""

from __future__ import annotations

import errno
import os
import re
import selectors
import socket
import time

from spdu_cli.errors import ConfigError
from spdu_cli.probe.cert import peer
from spdu_cli.probe.spec import MAX_BODY, MAX_RAW, READ_SIZE, ProbeSpec

_CONNECT_ERRORS = {
    errno.ECONNREFUSED: "connection refused",
    errno.ENETUNREACH: "network unreachable",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ETIMEDOUT: "connection timed out",
    errno.ECONNRESET: "connection reset",
    errno.EADDRNOTAVAIL: "address not available",
}


class Failure(Exception):
    pass


# OpenSSL's reason codes, in an operator's words (the rest: lower case, no C names)
_TLS_REASONS = {
    "WRONG_VERSION_NUMBER": "the server did not answer in TLS (plain HTTP on this port?"
                            " then set probeSSL=no)",
    "HTTP_REQUEST": "the server did not answer in TLS (plain HTTP on this port? then set"
                    " probeSSL=no)",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the server wants a client certificate, which spdu"
                                         " does not send",
    "SSLV3_ALERT_HANDSHAKE_FAILURE": "the server refused the TLS handshake (no protocol"
                                     " version or cipher in common, or it wants a client"
                                     " certificate)",
    "UNSUPPORTED_PROTOCOL": "the server offers only a TLS version too old to be safe",
    "TLSV1_ALERT_PROTOCOL_VERSION": "the server refused every TLS version spdu offers",
    "TLSV1_UNRECOGNIZED_NAME": "the server has no certificate for this name (SNI)",
    "TLSV1_ALERT_INTERNAL_ERROR": "the server's TLS failed (it sent an internal error alert)",
}


def _tls_words(e) -> str:
    import ssl

    if isinstance(e, ssl.SSLEOFError) or "EOF occurred" in str(e):
        return ("the server closed the connection in the TLS handshake (does it want a"
                " client certificate?)")
    reason = getattr(e, "reason", None)
    if reason in _TLS_REASONS and not getattr(e, "verify_message", ""):
        return _TLS_REASONS[reason]
    msg = (getattr(e, "verify_message", "") or reason or str(e)).rstrip(".")
    msg = re.sub(r"\s*\(_ssl\.c:\d+\)|\[SSL(: [A-Z_]+)?\]\s*", "", msg).strip()
    if msg.isupper() or "_" in msg:  # a bare reason code: words, not a C name
        msg = msg.replace("_", " ").lower()
    lowered = msg.lower()
    if "expired" in lowered:
        return "certificate expired"
    if "not yet valid" in lowered:
        return "certificate not yet valid"
    if "hostname mismatch" in lowered or "ip address mismatch" in lowered:
        return f"certificate does not match the name ({msg})"
    if "self-signed" in lowered or "self signed" in lowered:
        return "self-signed certificate"
    if "unable to get local issuer" in lowered:
        return "certificate not trusted (unknown issuer)"
    return f"TLS error: {msg}"


class Try:
    """One connection attempt under one deadline: connect, TLS, then what the
    probe type does with the connection (`established`, then `exchange`).

    Every read is bounded (READ_SIZE), the deadline is checked after each one,
    and the bytes read (MAX_RAW) are capped, so no peer can hold the loop or
    its memory. Subclasses judge what arrives (`feed`).
    """

    reusable = False  # the peer will keep the connection open after its answer

    def __init__(self, spec: ProbeSpec, address: str, ssl_context, now: float):
        self.spec = spec
        self.address = address
        self.started = now
        self.deadline = now + spec.timeout
        self.phase = "connecting"
        self.status: int | None = None
        self.received = 0  # every byte read on this try
        self.cert = None  # probe.cert.Cert: the peer's, once the TLS handshake is done
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setblocking(False)
        self.ssl_context = ssl_context
        err = self.sock.connect_ex((address, spec.port))
        if err not in (0, errno.EINPROGRESS):
            self.sock.close()
            raise Failure(_CONNECT_ERRORS.get(err, os.strerror(err).lower()))
        self.want = selectors.EVENT_WRITE

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def timed_out(self):
        return False, self.status, f"timed out after {self.spec.timeout:g} s {self.phase}"

    def step(self):
        """Advance as far as the socket allows. Returns None to wait for
        `self.want`, or (ok, status, error) when this try is decided."""
        try:
            if self.phase == "connecting":
                err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    raise Failure(_CONNECT_ERRORS.get(err, os.strerror(err).lower()))
                if self.spec.tls:
                    self.sock = self.ssl_context.wrap_socket(
                        self.sock, server_hostname=self.spec.host, do_handshake_on_connect=False
                    )
                    self.phase = "in the TLS handshake"
                else:
                    self.phase = "connected"
            if self.phase == "in the TLS handshake":
                self.sock.do_handshake()
                self.cert = peer(self.sock, self.spec.verify, self.address)
                self.phase = "connected"
            if self.phase == "connected":
                decided = self.established()  # decides, or moves to its next phase
                if decided is not None:
                    return decided
            return self.exchange()
        except (BlockingIOError, InterruptedError):
            pass
        except Failure as e:
            return False, self.status, str(e)
        except OSError as e:
            return self.os_error(e)
        return None

    def read(self):
        """Feed what the socket holds to `feed` until it decides; raises
        BlockingIOError (or an SSL want-read) when the socket runs dry."""
        self.want = selectors.EVENT_READ
        while True:
            # A peer that keeps data coming never sees EAGAIN: the deadline and the
            # cap on bytes read end this loop, not the peer.
            if time.monotonic() >= self.deadline:
                return self.timed_out()
            room = MAX_RAW - self.received
            if room <= 0:
                return self.gave_up(f"after {MAX_RAW} bytes")
            data = self.sock.recv(min(READ_SIZE, room))
            self.received += len(data)
            decided = self.feed(data)
            if decided is not None:
                return decided

    def os_error(self, e: OSError):
        if self.spec.tls:
            import ssl  # only TLS sockets raise these; plain probes never load ssl

            if isinstance(e, ssl.SSLWantReadError):
                self.want = selectors.EVENT_READ
                return None
            if isinstance(e, ssl.SSLWantWriteError):
                self.want = selectors.EVENT_WRITE
                return None
            if isinstance(e, ssl.SSLError):
                return False, self.status, _tls_words(e)
        if isinstance(e, ConnectionRefusedError):
            return False, None, "connection refused"
        if isinstance(e, ConnectionResetError):
            return False, self.status, f"connection reset {self.phase}"
        return False, self.status, f"{(e.strerror or str(e)).lower()} {self.phase}"


class Needle:
    """probeMatch looked for in the first MAX_BODY bytes of what arrives, piece
    by piece (a match may straddle two pieces)."""

    def __init__(self, match: str):
        self.match = match
        self.needle = match.encode()
        self.text = bytearray()
        self.found = False

    def add(self, data: bytes) -> None:
        seen = len(self.text)
        self.text += data[: MAX_BODY - seen]
        if not self.found:
            self.found = self.text.find(self.needle, max(0, seen - len(self.needle) + 1)) >= 0

    @property
    def full(self) -> bool:
        return len(self.text) >= MAX_BODY

    def missing(self, where: str) -> str:
        shown = self.match if len(self.match) <= 40 else self.match[:37] + "..."
        return f"{where} does not contain {shown!r}"


def shown(value, quote: bool = True, limit: int = 60) -> str:
    """Peer-sent text made safe for a log line or a mail: printable, one line, short."""
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("latin-1")
    text = "".join(c if " " <= c <= "~" else repr(c)[1:-1] for c in value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"'{text}'" if quote else text


def ssl_context(spec: ProbeSpec, cache: dict):
    key = (spec.verify, spec.cafile)
    if key not in cache:
        import ssl

        if spec.verify:
            try:
                ctx = ssl.create_default_context(cafile=spec.cafile)
            except (OSError, ssl.SSLError) as e:
                raise ConfigError(
                    f"probeCAFile {spec.cafile}: cannot load CA certificates"
                    f" ({getattr(e, 'strerror', None) or e})",
                    "point probeCAFile at a readable PEM file of CA certificates",
                ) from None
        else:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        cache[key] = ctx
    return cache[key]
