"""The TCP probe (probeType=tcp), for a service that is not HTTP: connect,
optionally TLS with the public name as SNI, optionally a banner that must
contain probeMatch. Nothing is sent.
"""

from __future__ import annotations

from spdu_cli.probe.attempt import Failure, Needle, Try, shown
from spdu_cli.probe.spec import MAX_BODY, MAX_RAW, ProbeSpec


class TcpTry(Try):
    """A TCP probe (probeType=tcp): good once connected (and the TLS handshake
    done); with probeMatch, once the banner the peer sends first contains it.
    Nothing is sent: the banner is read until the match, the peer's close,
    MAX_BODY bytes or the deadline, whichever comes first."""

    def __init__(self, spec: ProbeSpec, address: str, ssl_context, now: float):
        self.banner = Needle(spec.match)
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
                raise Failure("connection closed before a banner")
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
        begins = shown(self.banner.text[:64], limit=40)
        return False, None, f"{self.banner.missing(where)} (it begins {begins})"
