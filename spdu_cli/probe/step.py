"""Health checks of the peer sites, all at once, each under a hard deadline.

What the original did with `curl --resolve`: GET the status URL with the public
name in the Host header and TLS SNI, connected to one target address. Or, for a
service that is not HTTP (probeType=tcp): connect, optionally TLS, optionally
read a banner. Every try has one deadline covering connect, TLS and every
byte read, so a server that hangs or trickles cannot stretch it. One thread
and non-blocking sockets probe every address of every target concurrently.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import selectors
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from spdu_cli import __version__, health, maint
from spdu_cli.errors import ConfigError, ProbeInterrupted, SpduError
from spdu_cli.health import Health
from spdu_cli.spool import ResultRecord, Spool, iso

log = logging.getLogger(__name__)

MAX_HEADER = 16 * 1024  # one response head (interim ones each count alone)
MAX_BODY = 8 * 1024  # decoded body (tcp: banner) examined for probeMatch, read only when set
MAX_PIECES = 1024  # body pieces (chunks): parsing each costs CPU that other probes wait for
MAX_RAW = 64 * 1024  # every byte read on one try: heads, framing, compressed body
READ_SIZE = 16 * 1024  # one recv()
STOP_POLL = 0.2  # how often a probe run looks at its stop event (SIGTERM in the cron loop)
KEPT_DISCARD = 64 * 1024  # bytes a kept connection may bring (an unread body) before it is let go
RESOLVE_TIMEOUT = 5.0


@dataclass(frozen=True)
class ProbeSpec:
    """One target's probe, as the configuration says."""

    target: str
    host: str  # the public API name: Host header, SNI, certificate name
    addresses: tuple[str, ...]  # empty: resolve `resolve_name`
    resolve_name: str
    port: int
    path: str
    tls: bool
    verify: bool
    cafile: str | None
    timeout: float
    retries: int
    codes: tuple[tuple[int, int], ...]
    match: str
    kind: str = "http"  # probeType: "http", or "tcp" (connect, TLS, banner; no request)

    @classmethod
    def from_config(cls, cfg) -> ProbeSpec:
        return cls(
            target=cfg.target,
            host=cfg.api_name,
            addresses=tuple(str(ip) for ip in cfg.target_ips),
            resolve_name=cfg.target_name,
            port=cfg.probe_port,
            path=cfg.probe_path,
            tls=cfg.probe_ssl,
            verify=cfg.probe_verify,
            cafile=cfg.probe_ca_file,
            timeout=cfg.probe_timeout,
            retries=cfg.probe_retries,
            codes=cfg.probe_codes,
            match=cfg.probe_match,
            kind=cfg.probe_type,
        )

    def accepts(self, status: int) -> bool:
        return any(low <= status <= high for low, high in self.codes)



@dataclass(frozen=True)
class AddressResult:
    address: str
    ok: bool
    status: int | None
    latency_ms: float | None
    error: str | None
    tries: int


@dataclass(frozen=True)
class ProbeResult:
    """One probe of one target: every address must answer for it to be good.

    `ok` is None when the probe could not be made at all (the target's name
    did not resolve here): that says nothing about the target's health.
    """

    target: str
    at: float
    ok: bool | None
    addresses: tuple[str, ...]
    status: int | None
    latency_ms: float | None
    error: str | None
    address: str | None  # the address the status/error refers to

    @property
    def summary(self) -> str:
        if self.ok:  # a good TCP probe has no status
            return "connected" if self.status is None else f"HTTP {self.status}"
        return self.error or "failed"


# -- name resolution (only for targets without targetIP) --------------------------


def resolve(names: Iterable[str], timeout: float) -> dict[str, tuple[str, ...] | str]:
    """name -> its IPv4/IPv6 addresses, or an error text. getaddrinfo cannot be
    cancelled, so each lookup runs in a daemon thread that we stop waiting for."""
    out: dict[str, tuple[str, ...] | str] = {}

    def lookup(name: str) -> None:
        try:
            infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
            out[name] = tuple(dict.fromkeys(str(i[4][0]) for i in infos))
        except (OSError, UnicodeError) as e:
            out[name] = f"cannot resolve {name}: {getattr(e, 'strerror', None) or e}"

    threads = [threading.Thread(target=lookup, args=(n,), daemon=True) for n in set(names)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    for name in set(names):
        out.setdefault(name, f"cannot resolve {name}: timed out after {timeout:g} s")
    return out


# -- the event loop ------------------------------------------------------------------

_CONNECT_ERRORS = {
    errno.ECONNREFUSED: "connection refused",
    errno.ENETUNREACH: "network unreachable",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ETIMEDOUT: "connection timed out",
    errno.ECONNRESET: "connection reset",
    errno.EADDRNOTAVAIL: "address not available",
}


class _Failure(Exception):
    pass


def _tls_words(e) -> str:
    msg = (getattr(e, "verify_message", "") or getattr(e, "reason", "") or str(e)).rstrip(".")
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


class _Try:
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
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setblocking(False)
        self.ssl_context = ssl_context
        err = self.sock.connect_ex((address, spec.port))
        if err not in (0, errno.EINPROGRESS):
            self.sock.close()
            raise _Failure(_CONNECT_ERRORS.get(err, os.strerror(err).lower()))
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
                    raise _Failure(_CONNECT_ERRORS.get(err, os.strerror(err).lower()))
                if self.spec.tls:
                    self.sock = self.ssl_context.wrap_socket(
                        self.sock, server_hostname=self.spec.host, do_handshake_on_connect=False
                    )
                    self.phase = "in the TLS handshake"
                else:
                    self.phase = "connected"
            if self.phase == "in the TLS handshake":
                self.sock.do_handshake()
                self.phase = "connected"
            if self.phase == "connected":
                decided = self.established()  # decides, or moves to its next phase
                if decided is not None:
                    return decided
            return self.exchange()
        except (BlockingIOError, InterruptedError):
            pass
        except _Failure as e:
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


class _Needle:
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


class _HttpTry(_Try):
    """An HTTP(S) GET of the status URL. h11 parses the response; this class
    only judges it. Beside the base class's caps, the decoded body (MAX_BODY)
    and its pieces (MAX_PIECES) are capped."""

    def __init__(self, spec: ProbeSpec, address: str, ssl_context, now: float,
                 keep: bool = False):
        import h11

        self.keep = keep  # ask for a persistent connection (HTTP/1.1's default)
        self.location: str | None = None
        self.length: int | None = None  # Content-Length of the final response
        self.decoder = None  # zlib decompressor, for a gzip/deflate body
        self.body = _Needle(spec.match)  # decoded, at most MAX_BODY bytes
        self.body_raw = 0  # body bytes as framed by h11, before any decoding
        self.pieces = 0
        self.head_start = 0  # where the response head being read began
        self.conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEADER)
        host = spec.host
        host_header = host if spec.port == (443 if spec.tls else 80) else f"{host}:{spec.port}"
        self.request = self.conn.send(h11.Request(method="GET", target=f"/{spec.path}", headers=[
            ("Host", host_header), ("User-Agent", f"spdu/{__version__}"), ("Accept", "*/*"),
            # Whatever coding comes anyway is decoded before probeMatch.
            ("Accept-Encoding", "identity"), *([] if keep else [("Connection", "close")]),
        ])) + self.conn.send(h11.EndOfMessage())
        super().__init__(spec, address, ssl_context, now)

    def established(self):
        self.phase = "sending the request"

    def exchange(self):
        if self.phase == "sending the request":
            while self.request:
                n = self.sock.send(self.request)
                self.request = self.request[n:]
            self.phase = "waiting for the response"
        return self.read()

    # -- judging what h11 parsed ---------------------------------------------------------

    def feed(self, data: bytes):
        """Hand h11 what arrived (b"": the peer closed); decide as soon as the
        answer is known."""
        import h11

        if self.received <= len(data) and data and not b"HTTP/".startswith(data[:5]):
            raise _Failure(f"not an HTTP response (it begins {_shown(data[:24])})")
        self.conn.receive_data(data)
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as e:
                return self.protocol_error(e, eof=not data)
            except ValueError as e:  # e.g. a Content-Length of 5000 digits: int() refuses it
                return False, self.status, f"malformed response: {_shown(str(e))}"
            if event is h11.NEED_DATA:
                return None
            if isinstance(event, (h11.InformationalResponse, h11.Response)):
                consumed = self.received - len(self.conn.trailing_data[0])
                if consumed - self.head_start > MAX_HEADER:  # whatever the TCP segments were
                    raise _Failure(f"response headers larger than {MAX_HEADER} bytes")
                self.head_start = consumed
                if isinstance(event, h11.InformationalResponse):
                    continue  # 100 Continue, 103 Early Hints: the answer is still to come
                decided = self.head(event)
            elif isinstance(event, h11.Data):
                decided = self.take(event.data)
            elif isinstance(event, h11.EndOfMessage):
                if self.decoder is not None and not self.decoder.eof:
                    raise _Failure(f"malformed response: bad {self.coding} body (it ends"
                                   " before its compressed data does)")
                decided = self.verdict()
            else:  # ConnectionClosed before a response, or h11 in a state we did not ask for
                raise _Failure("connection closed before a response")
            if decided is not None:
                return decided

    def protocol_error(self, e, eof: bool):
        # h11 shows the offending bytes as bytearray(b'...'), already escaped
        detail = _shown(re.sub(r"bytearray\(b(['\"])(.*)\1\)", r"'\2'", str(e)), quote=False)
        if self.status is None:
            if eof:
                return False, None, ("connection closed before a response" if self.received == 0
                                     else "connection closed in the middle of the headers")
            if getattr(e, "error_status_hint", None) == 431:
                return False, None, f"response headers larger than {MAX_HEADER} bytes"
            return False, None, f"malformed response: {detail}"
        if eof:
            of = f" of {self.length}" if self.length is not None else ""
            return False, self.status, (f"body cut short: the connection closed after"
                                        f" {self.body_raw}{of} bytes")
        if getattr(e, "error_status_hint", None) == 431:
            detail = f"a chunk header or trailer longer than {MAX_HEADER} bytes"
        return False, self.status, f"malformed response: {detail}"

    def head(self, response):
        self.status = response.status_code
        self.phase = "reading the body"
        codings = []
        self.reusable = self.keep and response.http_version == b"1.1"
        for name, value in response.headers:  # h11 gives lower-case names
            if name == b"connection" and b"close" in (t.strip() for t in value.lower().split(b",")):
                self.reusable = False  # a token of the list, as h11 reads it
            elif name == b"location":
                self.location = _shown(value, quote=False)
            elif name == b"content-length" and len(value) < 20:  # h11 checked the digits
                self.length = int(value)
            elif name == b"content-encoding":
                codings += [c.strip() for c in value.lower().split(b",") if c.strip()]
        if not self.spec.accepts(self.status):
            return False, self.status, self.status_words()
        if not self.spec.match:
            return True, self.status, None  # the body is not even read
        codings = [c for c in codings if c != b"identity"]
        if codings:
            if len(codings) > 1 or codings[0] not in _DECODERS:
                return False, self.status, (f"the body is in an encoding spdu cannot read"
                                            f" ({_shown(b', '.join(codings), quote=False)}),"
                                            " so probeMatch cannot be checked")
            import zlib

            self.decoder = zlib.decompressobj(_DECODERS[codings[0]])
            self.coding = codings[0].decode()
        return None

    def take(self, data: bytes):
        self.pieces += 1
        self.body_raw += len(data)
        if self.decoder is not None:
            import zlib

            try:
                data = self.decoder.decompress(data, MAX_BODY - len(self.body.text))
            except zlib.error as e:
                raise _Failure(f"malformed response: bad {self.coding} body ({e})") from None
        self.body.add(data)
        if self.body.full:
            return self.verdict(f"the first {MAX_BODY} bytes of the body")
        if self.pieces >= MAX_PIECES:
            return self.verdict(f"the first {MAX_PIECES} pieces of the body")
        return None

    def verdict(self, read: str | None = None):
        """Up when probeMatch is in the body read: all of it, or the first part of
        a body too long to read whole (`read` says which)."""
        if self.body.found:
            return True, self.status, None
        return False, self.status, self.body.missing(read or "the body")

    def gave_up(self, when: str):
        if self.status is None:
            return False, None, f"no response {when}"
        if self.spec.match:
            return self.verdict(f"the body read in {MAX_RAW} bytes")
        return True, self.status, None

    def status_words(self) -> str:
        if 300 <= self.status < 400 and self.location:
            return f"HTTP {self.status} redirect to {self.location} (not followed)"
        return f"HTTP {self.status}"


class _TcpTry(_Try):
    """A TCP probe (probeType=tcp): good once connected (and the TLS handshake
    done); with probeMatch, once the banner the peer sends first contains it.
    Nothing is sent: the banner is read until the match, the peer's close,
    MAX_BODY bytes or the deadline, whichever comes first."""

    def __init__(self, spec: ProbeSpec, address: str, ssl_context, now: float):
        self.banner = _Needle(spec.match)
        super().__init__(spec, address, ssl_context, now)

    def established(self):
        if not self.spec.match:
            return True, None, None
        self.phase = "waiting for the banner"

    def exchange(self):
        return self.read()

    def feed(self, data: bytes):
        if not data:  # the peer closed
            if not self.banner.text:
                raise _Failure("connection closed before a banner")
            return self.verdict("the banner")
        self.phase = "reading the banner"
        self.banner.add(data)
        if self.banner.found:
            return True, None, None
        if self.banner.full:
            return self.verdict(f"the first {MAX_BODY} bytes of the banner")
        return None

    def gave_up(self, when: str):  # MAX_BODY comes first; kept for the base class's loop
        return self.verdict(f"the banner read in {MAX_RAW} bytes")

    def verdict(self, where: str):
        begins = _shown(self.banner.text[:64], limit=40)
        return False, None, f"{self.banner.missing(where)} (it begins {begins})"


_DECODERS = {b"gzip": 16 + 15, b"x-gzip": 16 + 15, b"deflate": 15}


def _shown(value, quote: bool = True, limit: int = 60) -> str:
    """Peer-sent text made safe for a log line or a mail: printable, one line, short."""
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("latin-1")
    text = "".join(c if " " <= c <= "~" else repr(c)[1:-1] for c in value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"'{text}'" if quote else text


def _ssl_context(spec: ProbeSpec, cache: dict):
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


def _fd_budget() -> int:
    """Raise the soft descriptor limit to the hard one; keep some for the rest."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > 65536:
        hard = 65536
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return max(16, soft - 64)


class _Engine:
    """The event loop: jobs of (spec, address), each tried up to spec.retries
    times, all at once in one thread. Jobs may be added while it runs (the
    confirming probes of `probe_rounds`); `on_done(i, result)` hears of each."""

    def __init__(self, stop=None, on_done=None, keep: bool = False):
        self.keep = keep  # HTTP tries ask to keep the connection; good ones are kept
        self.kept: dict[int, _Try] = {}  # job -> its good try, connection still open
        self.jobs: list[tuple[ProbeSpec, str]] = []
        self.tries: list[int] = []
        self.results: dict[int, AddressResult] = {}
        self.waiting: list[int] = []  # stack of job indexes to start
        self.active: dict[int, _Try] = {}
        self.sel = selectors.DefaultSelector()
        self.contexts: dict = {}
        self.budget = _fd_budget()
        self.stop = stop
        self.on_done = on_done

    def add(self, spec: ProbeSpec, address: str) -> int:
        self.jobs.append((spec, address))
        self.tries.append(0)
        self.waiting.append(len(self.jobs) - 1)
        return len(self.jobs) - 1

    def cancel(self, i: int) -> None:
        """Drop job i unfinished (its answer is no longer needed)."""
        t = self.active.pop(i, None)
        if t is not None:
            self.sel.unregister(t.sock)
            t.close()
        if i in self.waiting:
            self.waiting.remove(i)

    @property
    def busy(self) -> bool:
        return bool(self.waiting or self.active)

    def finish(self, i: int, ok: bool, status: int | None, error: str | None,
               t: _Try | None) -> None:
        spec, address = self.jobs[i]
        if ok or self.tries[i] >= spec.retries:
            answered = t is not None and (ok or status is not None)  # e.g. HTTP 503 in 12 ms
            latency = round((time.monotonic() - t.started) * 1000, 1) if answered else None
            self.results[i] = r = AddressResult(address, ok, status, latency, error,
                                                self.tries[i])
            if self.on_done is not None:
                self.on_done(i, r)
        else:
            self.waiting.append(i)  # try again at once

    def _start(self) -> None:
        while self.waiting and len(self.active) < self.budget:
            i = self.waiting.pop()
            spec, address = self.jobs[i]
            self.tries[i] += 1
            ctx = _ssl_context(spec, self.contexts) if spec.tls else None
            try:
                if spec.kind == "tcp":  # a banner protocol's server is not kept waiting
                    t = _TcpTry(spec, address, ctx, time.monotonic())
                else:
                    t = _HttpTry(spec, address, ctx, time.monotonic(), keep=self.keep)
            except _Failure as e:
                self.finish(i, False, None, str(e), None)
                continue
            except OSError as e:
                self.finish(i, False, None, (e.strerror or str(e)).lower(), None)
                continue
            self.active[i] = t
            self.sel.register(t.sock, t.want, i)

    def step(self, wake_at: float | None = None) -> None:
        """Start what waits, then wait for sockets until the first deadline (or
        `wake_at`, monotonic), and move every try that can move."""
        self._start()
        now = time.monotonic()
        until = [t.deadline for t in self.active.values()]
        if wake_at is not None:
            until.append(wake_at)
        if not until:
            return
        timeout = max(0.0, min(until) - now)
        if self.stop is not None:
            if self.stop.is_set():
                raise ProbeInterrupted("probe interrupted: spdu is stopping")
            timeout = min(timeout, STOP_POLL)
        for key, _ in self.sel.select(timeout):
            i = key.data
            t = self.active.get(i)
            if t is None:  # cancelled by an earlier answer of this round
                continue
            decided = t.step()
            if decided is None:
                self.sel.modify(t.sock, t.want, i)
                continue
            if decided[0] and t.reusable:
                del self.active[i]
                self.sel.unregister(t.sock)
                self.kept[i] = t
            else:
                self.cancel(i)
            self.finish(i, *decided, t)
        now = time.monotonic()
        for i, t in list(self.active.items()):
            if now >= t.deadline and i in self.active:  # (an earlier one may cancel it)
                self.cancel(i)
                self.finish(i, *t.timed_out(), t)

    def close(self) -> None:
        for t in [*self.active.values(), *self.kept.values()]:
            t.close()
        self.active.clear()
        self.kept.clear()
        self.sel.close()


def probe_addresses(jobs: list[tuple[ProbeSpec, str]], stop=None) -> list[AddressResult]:
    """Probe every (spec, address) concurrently: up to spec.retries tries each.
    `stop` (a threading.Event): when set, every try is abandoned within
    STOP_POLL seconds and ProbeInterrupted is raised."""
    engine = _Engine(stop)
    try:
        for spec, address in jobs:
            engine.add(spec, address)
        engine.waiting.reverse()  # start them in order
        while engine.busy:
            engine.step()
    finally:
        engine.close()
    return [engine.results[i] for i in range(len(jobs))]


def _addresses(specs: list[ProbeSpec]) -> dict[str, tuple[str, ...] | str]:
    """target -> the addresses to probe, or why there are none."""
    need = [s for s in specs if not s.addresses]
    # A slow resolver must not hold up the probes more than a probe would take.
    budget = min(RESOLVE_TIMEOUT, max((s.timeout for s in need), default=0))
    resolved = resolve([s.resolve_name for s in need], budget) if need else {}
    out: dict[str, tuple[str, ...] | str] = {}
    for s in specs:
        addrs = s.addresses or resolved[s.resolve_name]
        out[s.target] = addrs or f"{s.resolve_name} has no address"
    return out


def _verdict(target: str, at: float, addrs: tuple[str, ...] | str,
             rs: list[AddressResult]) -> ProbeResult:
    """One target's result from its addresses' (the first failure decides)."""
    if isinstance(addrs, str):
        return ProbeResult(target, at, None, (), None, None, addrs, None)
    failed = [r for r in rs if not r.ok]
    worst = failed[0] if failed else max(rs, key=lambda r: r.latency_ms or 0)
    error = worst.error
    if failed and len(addrs) > 1:
        error = f"{error} ({worst.address})"
    return ProbeResult(target, at, not failed, addrs, worst.status, worst.latency_ms, error,
                       worst.address)


def probe(specs: list[ProbeSpec], now: float | None = None, stop=None) -> list[ProbeResult]:
    """Probe every target concurrently; one ProbeResult per spec, in order."""
    now = time.time() if now is None else now
    addresses = _addresses(specs)
    jobs = [(s, a) for s in specs if isinstance(addresses[s.target], tuple)
            for a in addresses[s.target]]
    by_target: dict[str, list[AddressResult]] = {}
    for (spec, _), r in zip(jobs, probe_addresses(jobs, stop)):
        by_target.setdefault(spec.target, []).append(r)
    return [_verdict(s.target, now, addresses[s.target], by_target.get(s.target, []))
            for s in specs]


# -- confirming probes (the cron loop) ---------------------------------------------------


CERTAIN = ("connection refused", "connection reset", "network unreachable",
           "host unreachable")  # failures the peer's own kernel or a router states at once


def certain(r: ProbeResult) -> bool:
    """A failure known at once, not a silence that might still end."""
    return r.ok is False and (r.error or "").startswith(CERTAIN)


@dataclass
class Rounds:
    """How one target's probes go on within one run: `after` is told each
    result in the order they end and answers the seconds until the next
    probe, or None when the target is settled; `overdue` (seconds, or None)
    starts an overlapping probe beside one that has not answered by then,
    up to `overlap` probes in flight; at most `limit` probes in all."""

    after: Callable[[ProbeResult], float | None]
    overdue: Callable[[], float | None]
    overlap: Callable[[], int]
    limit: int


class _Target:
    def __init__(self, spec: ProbeSpec, addrs: tuple[str, ...], rules: Rounds):
        self.spec, self.addrs, self.rules = spec, addrs, rules
        self.inflight: list[tuple[float, float, list[int]]] = []  # (started, wall, jobs)
        self.results: dict[int, AddressResult] = {}
        self.next_at: float | None = time.monotonic()
        self.started = 0
        self.settled = False
        self.out: list[ProbeResult] = []
        self.good: list[int] = []  # the jobs of its last round, when that round was good


def probe_rounds(specs: list[ProbeSpec], rules: dict[str, Rounds], stop=None,
                 kept: dict | None = None) -> dict[str, list[ProbeResult]]:
    """Probe every target, and probe again the ones whose `rules` want it
    (confirmation), overlapping a probe that hangs: target -> its results, in
    the order they ended. Returns when every target is settled.
    `kept` (a dict): HTTP probes ask for a persistent connection, and each
    target whose last round was good and whose every address's peer agreed to
    keep the connection open gets them there (target -> sockets), for `Kept`."""
    addresses = _addresses(specs)
    targets: dict[str, _Target] = {}
    out: dict[str, list[ProbeResult]] = {}
    owner: dict[int, _Target] = {}

    def ended(i: int, r: AddressResult) -> None:
        tg = owner.pop(i, None)
        if tg is None:  # its round was decided, or its target settled, meanwhile
            return
        tg.results[i] = r
        for k, (started, wall, jobs) in enumerate(tg.inflight):
            if i in jobs:
                break
        else:
            return
        if r.ok and not all(j in tg.results for j in jobs):
            return  # this round waits for its other addresses
        del tg.inflight[k]
        for j in jobs:  # a failed address decides the round: the others need not answer
            if j not in tg.results:
                owner.pop(j, None)
                engine.cancel(j)
        result = _verdict(tg.spec.target, wall, tg.addrs, [tg.results.pop(j) for j in jobs
                                                           if j in tg.results])
        tg.out.append(result)
        tg.good = jobs if result.ok else []
        if tg.settled:
            return
        delay = tg.rules.after(result)
        if delay is None or tg.started >= tg.rules.limit:
            settle(tg)
        else:  # started when there is room beside the probes still in flight
            tg.next_at = time.monotonic() + delay

    def settle(tg: _Target) -> None:
        tg.settled, tg.next_at = True, None
        for _, _, jobs in tg.inflight:
            for j in jobs:
                owner.pop(j, None)
                engine.cancel(j)
        tg.inflight.clear()

    def start(tg: _Target, now: float) -> None:
        jobs = [engine.add(tg.spec, a) for a in tg.addrs]
        for j in jobs:
            owner[j] = tg
        tg.inflight.append((now, time.time(), jobs))
        tg.started += 1
        tg.next_at = None

    engine = _Engine(stop, on_done=ended, keep=kept is not None)
    try:
        for s in specs:
            addrs = addresses[s.target]
            if isinstance(addrs, str):
                out[s.target] = [_verdict(s.target, time.time(), addrs, [])]
                continue
            targets[s.target] = _Target(s, addrs, rules[s.target])
        while True:
            now = time.monotonic()
            wake: list[float] = []
            for tg in targets.values():
                if tg.settled:
                    continue
                room = len(tg.inflight) < max(1, tg.rules.overlap())
                if tg.next_at is not None and now >= tg.next_at and room:
                    start(tg, now)
                elif tg.inflight and room and tg.started < tg.rules.limit:
                    overdue = tg.rules.overdue()
                    if overdue is not None:
                        due = tg.inflight[-1][0] + overdue
                        if now >= due:
                            start(tg, now)
                        else:
                            wake.append(due)
                if tg.next_at is not None:
                    wake.append(tg.next_at)
                if not tg.inflight and tg.next_at is None:
                    tg.settled = True
            if not engine.busy and not wake:
                break
            engine.step(min(wake) if wake else None)
        if kept is not None:
            for name, tg in targets.items():
                tries = [engine.kept.pop(j) for j in tg.good if j in engine.kept]
                if tries and len(tries) == len(tg.addrs):
                    kept[name] = [t.sock for t in tries]
                else:
                    for t in tries:
                        t.close()
    finally:
        engine.close()
    for name, tg in targets.items():
        out[name] = tg.out
    return out


class Kept:
    """The connections of each target's last good probe, kept open between
    probes (the cron loop). A peer whose server process dies, or is stopped,
    closes them at once (its kernel sends FIN or RST), and `wait` hears it:
    the loop then probes that target right away instead of at its next
    interval. Nothing is sent on them. A peer that closes idle connections
    by itself sooner than the next probe causes one early probe that finds it
    up (`spurious`), and its connections are not kept again for the rest of
    the loop's run."""

    def __init__(self, wake_fd: int | None = None):
        self.sel = selectors.DefaultSelector()
        self.held: dict[str, list[socket.socket]] = {}
        self.read: dict[int, int] = {}  # fileno -> bytes discarded (the rest of a body)
        self.off: set[str] = set()
        if wake_fd is not None:  # written to by a signal handler: wait returns at once
            self.sel.register(wake_fd, selectors.EVENT_READ, None)

    def __bool__(self) -> bool:
        return bool(self.held)

    def keep(self, target: str, socks: list[socket.socket]) -> None:
        self.drop(target)
        if target in self.off:
            for sock in socks:
                sock.close()
            return
        for sock in socks:
            self.sel.register(sock, selectors.EVENT_READ, target)
            self.read[sock.fileno()] = 0
        self.held[target] = socks

    def drop(self, target: str) -> None:
        for sock in self.held.pop(target, []):
            self.read.pop(sock.fileno(), None)
            self.sel.unregister(sock)
            sock.close()

    def spurious(self, target: str) -> None:
        """The target's early probe found it up: its peer closes idle connections."""
        self.off.add(target)
        self.drop(target)

    def wait(self, timeout: float) -> list[str]:
        """Wait up to `timeout` seconds, less when a kept connection is closed
        (or the wake descriptor is written): the targets whose were closed."""
        closed: list[str] = []
        for key, _ in self.sel.select(max(0.0, timeout)):
            target = key.data
            if target is None or target not in self.held:
                continue
            verdict = self._look(key.fileobj)
            if verdict is not None:
                self.drop(target)
                if verdict:
                    closed.append(target)
        return closed

    def _look(self, sock) -> bool | None:
        """True: the peer closed; None: let go (it sends too much); False: still open."""
        try:
            data = sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as e:  # a reset, or a TLS alert
            ssl = sys.modules.get("ssl")  # loaded when there is a TLS connection at all
            return not (ssl is not None
                        and isinstance(e, (ssl.SSLWantReadError, ssl.SSLWantWriteError)))
        if not data:
            return True
        self.read[sock.fileno()] += len(data)
        return False if self.read[sock.fileno()] <= KEPT_DISCARD else None

    def close(self) -> None:
        for target in list(self.held):
            self.drop(target)
        self.sel.close()


# -- the `spdu probe` step ------------------------------------------------------------


@dataclass(frozen=True)
class TargetReport:
    """What one probe did to one target's spool entry."""

    result: ProbeResult
    health: Health
    transition: dict | None  # the journal entry, when the state changed
    spool_error: str | None = None
    probes: int = 1  # results recorded in this run (more when confirmed at once)

    def to_json(self) -> dict:
        r = self.result
        return {
            "target": r.target,
            "state": self.health.state.value,
            "since": iso(self.health.since),
            "ok": r.ok,
            "status": r.status,
            "latency_ms": r.latency_ms,
            "error": r.error,
            "address": r.address,
            "addresses": list(r.addresses),
            "good": self.health.good,
            "bad": self.health.bad,
            "transition": self.transition,
            "spool_error": self.spool_error,
        }


def _reason(r: ProbeResult) -> str:
    if r.ok:
        return f"{r.summary} in {r.latency_ms:g} ms"
    return r.error or "failed"


def _rules(cfg, entry, fast: float) -> Rounds:
    """The cron loop's confirmation of one target (see health.confirm_after)."""
    state = {"h": entry.health}
    latencies = [r.latency_ms for r in entry.results if r.ok and r.latency_ms is not None]

    def after(r: ProbeResult) -> float | None:
        h, _ = health.advance(state["h"], r.ok, cfg.probe_rise, cfg.probe_fall, r.at)
        state["h"] = h
        return health.confirm_after(h, r.ok, certain(r), fast)

    def overdue() -> float | None:
        if state["h"].state is health.State.UNKNOWN:
            return None  # the first outcome decides: nothing to confirm
        return health.overdue(latencies, fast)

    return Rounds(after, overdue,
                  lambda: health.overlap(state["h"], cfg.probe_fall, cfg.probe_rise),
                  limit=cfg.probe_fall + cfg.probe_rise + 2)


def run(site, names=(), lock_timeout: float = 5.0, stop=None,
        confirm: bool = False, kept: dict | None = None) -> list[TargetReport]:
    """Probe the named targets (default: all), update their spool entries.
    `stop`: an Event that abandons the probes (ProbeInterrupted, nothing written).
    A transition is logged to syslog as it is journaled (not by the mail run).
    A target whose spool file cannot be read or written gets `spool_error`;
    the others go on.
    `confirm` (the cron loop): a probe that disagrees with the target's state is
    followed by confirming ones within this run (fastInterval apart, sooner for
    a certain failure, overlapping one that hangs), so a change of state is
    settled, and recorded, before the run returns. `kept` (with `confirm`):
    see probe_rounds."""
    cfgs = [site.target(n) for n in site.select(names)]
    for c in cfgs:
        if c.probe_ssl and not c.probe_verify:
            log.warning(
                "%s: probeVerify=no: the certificate of %s is NOT verified; a wrong or"
                " expired certificate will not mark the target down",
                c.target,
                c.api_name,
            )
    specs = [ProbeSpec.from_config(c) for c in cfgs]
    store = Spool(site.spool_dir)
    if confirm:
        fast = site.fast_interval
        rules = {c.target: _rules(c, _entry_or_fresh(store, c.target), fast) for c in cfgs}
        rounds = probe_rounds(specs, rules, stop=stop, kept=kept)
        results = [rounds[c.target] for c in cfgs]
    else:
        results = [[r] for r in probe(specs, stop=stop)]
    reports = []
    journal_log = None
    with store.locked(lock_timeout):
        for cfg, rs in zip(cfgs, results):
            try:
                entry = store.read(cfg.target)
            except SpduError as e:  # unreadable: rewriting it would lose what it holds
                log.error("%s", e)
                reports.append(TargetReport(rs[-1], Health(), None, str(e)))
                continue
            journal = None
            for r in rs:
                journal = _record(entry, cfg, r) or journal
            if journal is not None:
                if journal_log is None:
                    from spdu_cli.notify import JournalLog

                    journal_log = JournalLog(site.syslog_socket)
                journal_log(cfg, entry)
            error = None
            try:
                store.write(entry)
            except SpduError as e:  # one target's failed write must not stop the others
                log.error("%s", e)
                error = str(e)
            reports.append(TargetReport(rs[-1], entry.health, journal, error, len(rs)))
    if journal_log is not None:
        journal_log.close()
    return reports


def _entry_or_fresh(store: Spool, target: str):
    """The entry the confirmation starts from; a fresh one when it cannot be read
    (the write phase reports that, and leaves the file alone)."""
    try:
        return store.read(target)
    except SpduError:
        from spdu_cli.spool import SpoolEntry

        return SpoolEntry(target)


def _record(entry, cfg, r: ProbeResult) -> dict | None:
    """Apply one result to a spool entry; the journal entry it added, if any."""
    ended = maint.expire(entry, r.at)
    before = entry.health
    moved = r.ok is not None and entry.readdress(list(r.addresses))
    if moved:
        # New addresses have earned nothing yet: this probe decides their state
        # at once, so an address that never answered is never added to the pool.
        log.warning("%s: its addresses changed to %s; the old ones (%s) leave the"
                    " pool", cfg.target, " ".join(r.addresses), " ".join(entry.retired))
    h, t = health.advance(
        health.Health() if moved else before, r.ok, cfg.probe_rise, cfg.probe_fall,
        r.at, _reason(r),
    )
    if moved and before.state is not health.State.UNKNOWN:
        h, t = health.carried_over(before, h, t)
    entry.health = h
    entry.url = cfg.probe_url
    if r.ok is not None:
        entry.checked = r.at
    entry.record(ResultRecord(r.at, r.ok, r.address, r.status, r.latency_ms, r.error))
    entry.counters["probes"] += 1
    entry.counters["probe_failures"] += r.ok is False
    if t and entry.maint is not None:  # the way back from maint is journaled then
        log.info("%s: %s -> %s during maintenance: %s", cfg.target, t.old, t.new, t.reason)
        t = None
    if t:
        log.debug("%s: %s -> %s: %s", cfg.target, t.old, t.new, t.reason)
    return entry.add_transition(t) if t else ended
