"""The certificate a TLS peer sent: when it expires and its serial, read once
the handshake is done: from ssl's decoding when it was verified, else from its
DER (unverified, so hostile: every length is checked, nothing is trusted).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

MAX_SERIAL = 64  # hex digits kept of a serial (RFC 5280: at most 20 octets, 40 digits)


@dataclass(frozen=True)
class Cert:
    """The leaf certificate one address sent."""

    not_after: float | None  # None: the peer's certificate holds no date spdu can read
    serial: str  # upper-case hex, as OpenSSL shows it
    address: str | None = None


def peer(sock, verified: bool, address: str) -> Cert | None:
    """The leaf of `sock`'s handshake, or None when the peer sent none. Never
    raises: what cannot be read is a Cert without a date."""
    import ssl

    try:
        if verified:  # checked by OpenSSL, dates included: its decoding is trusted
            d = sock.getpeercert()
            if not d:
                return None
            return Cert(float(ssl.cert_time_to_seconds(d["notAfter"])),
                        _serial(str(d.get("serialNumber", ""))), address)
        der = sock.getpeercert(binary_form=True)
        if not der:
            return None
        not_after, serial = validity(der)
        return Cert(not_after, serial, address)
    except (ValueError, KeyError, TypeError, OverflowError, OSError):
        return Cert(None, "", address)


def _serial(text: str) -> str:
    text = text.upper()
    return text[:MAX_SERIAL] if re.fullmatch(r"[0-9A-F]+", text) else ""


# -- DER, the few elements before the validity ---------------------------------------


def _element(der: bytes, i: int, end: int, tag: int | None = None) -> tuple[int, int, int]:
    """(tag, start, end of the contents) of the DER element at `i`, which must
    lie within `end`; ValueError for anything else."""
    if i + 2 > end:
        raise ValueError("truncated")
    t, n = der[i], der[i + 1]
    i += 2
    if n & 0x80:
        k = n & 0x7F
        if not 1 <= k <= 4 or i + k > end:
            raise ValueError("bad length")
        n = int.from_bytes(der[i:i + k], "big")
        i += k
    if i + n > end or (tag is not None and t != tag):
        raise ValueError("not a certificate")
    return t, i, i + n


SEQUENCE, INTEGER, UTC_TIME, GENERALIZED_TIME, VERSION = 0x30, 0x02, 0x17, 0x18, 0xA0


def validity(der: bytes) -> tuple[float | None, str]:
    """(notAfter as a Unix time or None when unreadable, serial) of a DER
    certificate; ValueError when it is not one. A fixed number of steps,
    whatever the bytes."""
    _, i, end = _element(der, 0, len(der), SEQUENCE)  # Certificate
    _, i, end = _element(der, i, end, SEQUENCE)  # tbsCertificate
    t, s, e = _element(der, i, end)
    if t == VERSION:
        t, s, e = _element(der, e, end)
    if t != INTEGER:
        raise ValueError("no serial")
    serial = der[s:e]
    if len(serial) > 1 and serial[0] == 0:
        serial = serial[1:]  # the sign octet: OpenSSL shows the magnitude
    _, _, e = _element(der, e, end, SEQUENCE)  # signature algorithm
    _, _, e = _element(der, e, end, SEQUENCE)  # issuer
    _, s, e = _element(der, e, end, SEQUENCE)  # validity
    _, _, after = _element(der, s, e)  # notBefore
    t, s, e = _element(der, after, e)  # notAfter
    return _time(t, der[s:e]), serial.hex().upper()[:MAX_SERIAL]


def _time(tag: int, text: bytes) -> float | None:
    """RFC 5280's two forms, in UTC with seconds: YYMMDDHHMMSSZ (UTCTime, 1950
    to 2049) or YYYYMMDDHHMMSSZ; None for anything else."""
    if tag == UTC_TIME and re.fullmatch(rb"\d{12}Z", text):
        year = int(text[:2])
        text = (b"19" if year >= 50 else b"20") + text
    elif tag != GENERALIZED_TIME or not re.fullmatch(rb"\d{14}Z", text):
        return None
    n = [int(text[a:b]) for a, b in ((0, 4), (4, 6), (6, 8), (8, 10), (10, 12), (12, 14))]
    try:
        return datetime(*n, tzinfo=UTC).timestamp()
    except ValueError:  # month 13, year 0, second 60...
        return None
