"""Value checkers for configuration keys: each turns a string into a value or
raises ValueError with a short reason a user can act on."""

from __future__ import annotations

import ipaddress
import re

from spdu_cli.paths import absolute_path  # noqa: F401 - shared with spdu-cron's copy

_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_LOCAL_PART = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}")
_PATH = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:@%/?-]*")
_TARGET = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,62}")

TSIG_ALGORITHMS = (
    "hmac-md5",
    "hmac-sha1",
    "hmac-sha224",
    "hmac-sha256",
    "hmac-sha384",
    "hmac-sha512",
)


def hostname(value: str) -> str:
    """A DNS host name (LDH labels); a trailing dot is dropped, case folded."""
    name = value.removesuffix(".")
    if not name:
        raise ValueError("empty name")
    if len(name) > 253:
        raise ValueError("name longer than 253 characters")
    for label in name.split("."):
        if not _LABEL.fullmatch(label):
            raise ValueError(
                f"label {label!r} is not a valid host name label "
                "(letters, digits and '-', 1-63 characters, no '-' at either end)"
            )
    return name.lower()


def fqdn(value: str) -> str:
    name = hostname(value)
    if "." not in name:
        raise ValueError("not a fully qualified name (no dot)")
    return name


def ip_address(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise ValueError("not an IPv4 or IPv6 address") from None


def host_ip(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, shown: str = ""
            ) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address spdu may probe and publish: one host's, the same from anywhere.
    An IPv4-mapped IPv6 address (::ffff:192.0.2.1) is its IPv4 address, judged
    and published as such (an A record), never as AAAA."""
    shown = shown or str(ip)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if getattr(ip, "scope_id", None) or (ip.is_link_local and ip.version == 6):
        raise ValueError(f"{shown!r} is an IPv6 link-local address: it names a host on one"
                         " link of this machine only, so it can neither go in a DNS pool"
                         " nor be probed as a site; use the site's global address")
    if ip.is_unspecified or ip.is_multicast or ip == ipaddress.IPv4Address("255.255.255.255"):
        raise ValueError(f"{shown!r} is not the address of one host")
    return ip


def ip_list(value: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]:
    """Addresses of the pool: each one is published in DNS and probed from here,
    so it must mean the same host from anywhere (see host_ip)."""
    out = []
    for item in value.split():
        try:
            ip = ipaddress.ip_address(item)
        except ValueError:
            raise ValueError(f"{item!r} is not an IPv4 or IPv6 address") from None
        out.append(host_ip(ip, item))
    return tuple(dict.fromkeys(out))


def server_list(value: str) -> tuple[tuple[str, int | None], ...]:
    """DNS servers as ADDRESS or ADDRESS@PORT (Knot's form, clear for IPv6)."""
    out = []
    for item in value.split():
        addr, _, port = item.partition("@")
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            raise ValueError(f"{item!r} is not ADDRESS or ADDRESS@PORT (an IP address,"
                             " not a name)") from None
        if port and not (port.isdigit() and 1 <= int(port) <= 65535):
            raise ValueError(f"{item!r}: the port must be 1 to 65535")
        out.append((str(ip), int(port) if port else None))
    return tuple(dict.fromkeys(out))


def integer(low: int, high: int):
    def check(value: str) -> int:
        if not re.fullmatch(r"[0-9]+", value):
            raise ValueError(f"not a whole number (expected {low} to {high})")
        n = int(value)
        if not low <= n <= high:
            raise ValueError(f"out of range (expected {low} to {high})")
        return n

    return check


def decimal(low: float, high: float):
    def check(value: str) -> float:
        if not re.fullmatch(r"[0-9]+(\.[0-9]+)?|\.[0-9]+", value):
            raise ValueError(f"not a decimal number (expected {low:g} to {high:g})")
        n = float(value)
        if not low <= n <= high:
            raise ValueError(f"out of range (expected {low:g} to {high:g})")
        return n

    return check


def yes_no(value: str) -> bool:
    lowered = value.lower()
    if lowered in ("yes", "true", "on", "1"):
        return True
    if lowered in ("no", "false", "off", "0"):
        return False
    raise ValueError("expected yes or no")


def email(value: str) -> str:
    local, at, domain = value.rpartition("@")
    if not at or not _LOCAL_PART.fullmatch(local) or ".." in local:
        raise ValueError("not an e-mail address (expected user@example.org)")
    try:
        hostname(domain)
    except ValueError as e:
        raise ValueError(f"not an e-mail address: domain {domain!r}: {e}") from None
    return value


def email_list(value: str) -> tuple[str, ...]:
    out = []
    for item in value.replace(",", " ").split():
        try:
            out.append(email(item))
        except ValueError as e:
            raise ValueError(f"{item!r}: {e}") from None
    return tuple(dict.fromkeys(out))


def url_path(value: str) -> str:
    """The part after the first '/' of the probe URL, query allowed."""
    path = value.lstrip("/")
    if not _PATH.fullmatch(path) or "#" in path:
        raise ValueError(
            "not a URL path: use only URL characters (percent-encode spaces and the like)"
        )
    return path


def optional(check):
    """An empty value means 'not set'; anything else must pass `check`."""

    def wrapped(value: str):
        return check(value) if value else ""

    return wrapped


def target_name(value: str) -> str:
    """A target's short name: also a file name under the spool and config dirs."""
    if not _TARGET.fullmatch(value) or ".." in value:
        raise ValueError(
            "not a target name (letters, digits, '.', '_' and '-', starting with a "
            "letter or digit, at most 63 characters)"
        )
    return value


def target_list(value: str) -> tuple[str, ...]:
    out = []
    for item in value.split():
        try:
            out.append(target_name(item))
        except ValueError as e:
            raise ValueError(f"{item!r}: {e}") from None
    return tuple(dict.fromkeys(out))


def tag(value: str) -> str:
    """This site's short name: it goes into mail headers, so plain text only."""
    if not _TAG.fullmatch(value):
        raise ValueError(
            "not a site tag (letters, digits, spaces, '.', '_' and '-', at most 63 characters)"
        )
    return value


def text(value: str) -> str:
    if any(ord(c) < 32 or c == "\x7f" for c in value):
        raise ValueError("control character (newline, NUL...) in the value")
    return value


def choice(*words: str):
    """One of `words` (any case), as spelled there."""

    def check(value: str) -> str:
        if value.lower() not in words:
            raise ValueError(f"{value!r} is not one of {', '.join(words)}")
        return value.lower()

    return check


def status_codes(value: str) -> tuple[tuple[int, int], ...]:
    """'200-299 301' -> ((200, 299), (301, 301))."""
    out = []
    for item in value.replace(",", " ").split():
        m = re.fullmatch(r"([1-5][0-9][0-9])(?:-([1-5][0-9][0-9]))?", item)
        if not m:
            raise ValueError(f"{item!r} is not an HTTP status code or range (like 200-299)")
        low = int(m.group(1))
        high = int(m.group(2) or low)
        if high < low:
            raise ValueError(f"{item!r}: range ends before it starts")
        out.append((low, high))
    if not out:
        raise ValueError("no status code given")
    return tuple(out)


WEBHOOK_FORMATS = ("json", "slack", "ntfy")


def url_list(value: str) -> tuple[str, ...]:
    """Space-separated http(s) URLs. An error never repeats a URL: its path or
    query may be the only secret a webhook has."""
    from urllib.parse import urlsplit

    out = []
    for i, item in enumerate(value.split(), 1):
        where = f"URL {i}"
        if any(ord(c) < 32 or c == "\x7f" for c in item):
            raise ValueError(f"{where}: control character")
        try:
            u = urlsplit(item)
            u.port  # noqa: B018 - raises on a bad port
        except ValueError as e:
            raise ValueError(f"{where}: not a URL ({e})") from None
        if u.scheme not in ("http", "https"):
            raise ValueError(f"{where}: the scheme must be https or http")
        if not u.hostname:
            raise ValueError(f"{where}: no host name")
        if u.username is not None or u.password is not None:
            raise ValueError(f"{where}: credentials in the URL; put a token in webhookTokenFile")
        if u.fragment:
            raise ValueError(f"{where}: a #fragment is never sent; remove it")
        out.append(item)
    return tuple(dict.fromkeys(out))


def webhook_formats(value: str) -> tuple[str, ...]:
    items = tuple(value.lower().split())
    if not items:
        raise ValueError(f"empty; one of {', '.join(WEBHOOK_FORMATS)}")
    for item in items:
        if item not in WEBHOOK_FORMATS:
            raise ValueError(f"{item!r} is not one of {', '.join(WEBHOOK_FORMATS)}")
    return items
