"""The HTTP(S) probe: a GET of the status URL with the public name in the Host
header, its response parsed by h11 and judged as it arrives (status code,
redirect, probeMatch in the decoded body), every part of it capped.
"""

from __future__ import annotations

import re

from spdu_cli import __version__
from spdu_cli.probe.attempt import Failure, Needle, Try, shown
from spdu_cli.probe.spec import MAX_BODY, MAX_CHUNKS, MAX_HEADER, MAX_RAW, ProbeSpec


class HttpTry(Try):
    """An HTTP(S) GET of the status URL. h11 parses the response; this class
    only judges it. Beside the base class's caps (every byte read), the
    decoded body (MAX_BODY) and the chunks of a chunked body (MAX_CHUNKS) are
    capped: chunks, not reads, so a body trickled in small writes is read whole."""

    def __init__(self, spec: ProbeSpec, address: str, ssl_context, now: float,
                 keep: bool = False):
        import h11

        self.keep = keep  # ask for a persistent connection (HTTP/1.1's default)
        self.location: str | None = None
        self.length: int | None = None  # Content-Length of the final response
        self.decoder = None  # zlib decompressor, for a gzip/deflate body
        self.body = Needle(spec.match)  # decoded, at most MAX_BODY bytes
        self.body_raw = 0  # body bytes as framed by h11, before any decoding
        self.chunks = 0  # chunks begun, of a chunked body
        self.head_start = 0  # where the response head being read began
        self.first = b""  # the response's first bytes, for a status line h11 refuses
        self.interim: int | None = None  # the last 1xx answer, while the real one is due
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

        if self.received <= len(data) and data:
            self.first = data[:80]
            if not b"HTTP/".startswith(data[:5]):
                raise Failure(f"not an HTTP response (it begins {shown(data[:24])})")
        self.conn.receive_data(data)
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as e:
                return self.protocol_error(e, eof=not data)
            except ValueError as e:  # e.g. a Content-Length of 5000 digits: int() refuses it
                return False, self.status, f"malformed response: {shown(str(e))}"
            if event is h11.NEED_DATA:
                return None
            if isinstance(event, (h11.InformationalResponse, h11.Response)):
                consumed = self.received - len(self.conn.trailing_data[0])
                if consumed - self.head_start > MAX_HEADER:  # whatever the TCP segments were
                    raise Failure(f"response headers larger than {MAX_HEADER} bytes")
                self.head_start = consumed
                if isinstance(event, h11.InformationalResponse):
                    self.interim = event.status_code
                    continue  # 100 Continue, 103 Early Hints: the answer is still to come
                decided = self.head(event)
            elif isinstance(event, h11.Data):
                decided = self.take(event.data, event.chunk_start)
            elif isinstance(event, h11.EndOfMessage):
                if self.decoder is not None and not self.decoder.eof:
                    raise Failure(f"malformed response: bad {self.coding} body (it ends"
                                  " before its compressed data does)")
                decided = self.verdict()
            else:  # ConnectionClosed before a response, or h11 in a state we did not ask for
                raise Failure("connection closed before a response")
            if decided is not None:
                return decided

    def protocol_error(self, e, eof: bool):
        # h11 shows the offending bytes as bytearray(b'...'), already escaped
        detail = shown(re.sub(r"bytearray\(b(['\"])(.*)\1\)", r"'\2'", str(e)), quote=False)
        if self.status is None:
            if eof:
                if self.received == 0:
                    return False, None, "connection closed before a response"
                if self.interim is not None and self.received == self.head_start:
                    return False, None, (f"connection closed after an interim {self.interim}"
                                         " answer, before the response")
                return False, None, "connection closed in the middle of the headers"
            if "status_code should be in range" in str(e):  # h11's words for 000-099
                line = self.first.split(b"\r\n", 1)[0] if self.head_start == 0 else b""
                return False, None, ("malformed response: the status code is not one of"
                                     f" HTTP's (100-599){f': {shown(line)}' if line else ''}")
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
                self.location = shown(value, quote=False)
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
                                            f" ({shown(b', '.join(codings), quote=False)}),"
                                            " so probeMatch cannot be checked")
            import zlib

            self.decoder = zlib.decompressobj(_DECODERS[codings[0]])
            self.coding = codings[0].decode()
        return None

    def take(self, data: bytes, chunk_start: bool = False):
        self.chunks += chunk_start  # h11 marks the first Data of each chunk
        self.body_raw += len(data)
        if self.decoder is not None:
            import zlib

            try:
                data = self.decoder.decompress(data, MAX_BODY - len(self.body.text))
            except zlib.error as e:  # "Error -3 while decompressing data: incorrect header check"
                why = re.sub(r"^Error -?\d+ while \w+ data: ", "", str(e))
                raise Failure(f"malformed response: bad {self.coding} body ({why})") from None
        self.body.add(data)
        if self.body.full:
            return self.verdict(f"the first {MAX_BODY} bytes of the body")
        if self.chunks >= MAX_CHUNKS:
            return self.verdict(f"the first {MAX_CHUNKS} chunks of the body")
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


_DECODERS = {b"gzip": 16 + 15, b"x-gzip": 16 + 15, b"deflate": 15}
