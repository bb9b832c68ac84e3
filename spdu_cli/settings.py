"""The keys of spdu.conf and spdu/TARGET (each one's check, default and help:
the table spdu.conf(5) documents), and how a key's effective value is found:
set in a file, else its default, which may use other keys or the host's name.
"""

from __future__ import annotations

import functools
import ipaddress
import shlex
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from spdu_cli import tsig, validate
from spdu_cli.errors import ConfigError
from spdu_cli.paths import DEFAULT_SPOOL_DIR

# -- the keys ------------------------------------------------------------------

Getter = Callable[[str], str]


@dataclass(frozen=True)
class Key:
    name: str
    check: Callable[[str], Any]
    default: str | Callable[[Getter], str]
    help: str
    site_only: bool = False  # meaningless per target: ignored there, with a warning
    secret: bool = False  # a file setting it must not be readable by others


def _port_default(ssl_key: str, with_ssl: str, without: str) -> Callable[[Getter], str]:
    return lambda get: with_ssl if validate.yes_no(get(ssl_key)) else without


def _host_or_ip(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return validate.hostname(value)


def _auto_yes_no(value: str) -> str:
    return "auto" if value.lower() == "auto" else ("yes" if validate.yes_no(value) else "no")


def _one_server(value: str) -> tuple[tuple[str, int | None], ...]:
    out = validate.server_list(value)
    if len(out) > 1:
        raise ValueError("one server only: ADDRESS or ADDRESS@PORT")
    return out


def _syslog_socket(value: str) -> str:
    return value.lower() if value.lower() in ("", "none") else validate.absolute_path(value)


KEYS: dict[str, Key] = {
    k.name: k
    for k in [
        # The original's keys, with its defaults (see spdu.conf(5) for the choices).
        Key("domain", validate.fqdn, lambda get: get("@domain"), "base of the defaults"),
        Key("nameServer", validate.ip_address, "127.0.0.1", "DNS server to update"),
        Key("nameTTL", validate.integer(0, 2147483647), "5", "TTL of added records"),
        Key("mailTo", validate.email_list, "", "recipients, space-separated"),
        Key("mailFrom", validate.email, lambda get: "robot@" + get("domain"), "sender"),
        Key("myTag", validate.tag, lambda get: get("@shortname"), "this site's short name"),
        Key("smtpRelay", _host_or_ip, lambda get: "smtp." + get("domain"), "SMTP relay"),
        Key("smtpSSL", validate.yes_no, "yes", "yes: implicit TLS; no: plain SMTP"),
        Key("smtpPort", validate.integer(1, 65535), _port_default("smtpSSL", "465", "25"), ""),
        Key("smtpUser", validate.text, lambda get: get("mailFrom"), "SMTP AUTH user"),
        Key("smtpPassword", validate.text, "", "SMTP AUTH password", secret=True),
        Key("apiDomain", validate.hostname, lambda get: get("domain"), ""),
        Key("apiName", validate.hostname, "api", "public name of the service"),
        Key("probePath", validate.url_path, "status", "path of the status URL"),
        Key("probeTimeout", validate.decimal(0.1, 60), "1.5", "seconds per try"),
        Key("probeRetries", validate.integer(1, 10), "1", "tries per probe"),
        Key("loopWait", validate.decimal(0.1, 60), "2", "the original's probe interval"),
        Key("probeSSL", validate.yes_no, "no", "probe with HTTPS"),
        Key("probePort", validate.integer(1, 65535), _port_default("probeSSL", "443", "80"), ""),
        Key("poolDomain", validate.hostname, lambda get: get("domain"), ""),
        Key("poolZone", validate.hostname, "pool", "zone of the pool name"),
        Key("poolName", validate.hostname, "api", "the name whose A/AAAA RRset is the pool"),
        Key("targetName", validate.hostname, lambda get: get("@target"), "target's host name"),
        Key("targetDomain", validate.hostname, lambda get: get("domain"), ""),
        Key("targetIP", validate.ip_list, "", "target's addresses (else targetName's)"),
        # New keys.
        Key("targets", validate.target_list, "", "targets of this site", site_only=True),
        Key("spoolDir", validate.absolute_path, DEFAULT_SPOOL_DIR, "state", site_only=True),
        Key("interval", validate.decimal(0.1, 60), lambda get: get("loopWait"), "", site_only=True),
        Key("namePort", validate.integer(1, 65535), "53", "port of nameServer"),
        Key("probeRise", validate.integer(1, 100), "2", "good probes to go up"),
        Key("probeFall", validate.integer(1, 100), "2", "failed probes to go down"),
        Key("probeCodes", validate.status_codes, "200-299", "accepted HTTP statuses"),
        Key("probeMatch", validate.text, "", "text the body (tcp: the banner) must contain"),
        Key("probeType", validate.choice("http", "tcp"), "http",
            "http: GET the status URL; tcp: connect (and read a banner with probeMatch)"),
        Key("probeVerify", validate.yes_no, "yes", "verify HTTPS certificates"),
        Key("probeCAFile", validate.optional(validate.absolute_path), "",
            "CA bundle for HTTPS probes"),
        Key("certWarnDays", validate.integer(0, 3650), "14",
            "a TLS peer's certificate expiring within this many days is mailed once (0: off)"),
        Key("selfIP", validate.ip_list, "",
            "this site's own addresses, kept in the pool (selfCheck=yes: while its service"
            " answers, or no peer is up)"),
        Key("selfCheck", validate.yes_no, "yes",
            "probe this site's own service at selfIP (target self); while it is down and a"
            " peer is up, selfIP leaves the pool (no: always kept, as the original)",
            site_only=True),
        Key("staleAfter", validate.decimal(1, 86400),
            lambda get: f"{max(1.0, 5 * float(get('interval'))):g}",
            "a probe older than this leaves the target's records as they are"),
        Key("nameTimeout", validate.decimal(0.1, 60), "3", "deadline of each DNS exchange"),
        Key("secondaryServers", validate.server_list, "",
            "the pool zone's servers that status --dns compares (empty: its NS set)"),
        Key("tsigKey", validate.optional(tsig.parse_inline), "", "[alg:]name:secret", secret=True),
        Key("tsigKeyFile", validate.optional(validate.absolute_path), "", "TSIG key file"),
        Key("smtpStartTLS", _auto_yes_no, "auto",
            "with smtpSSL=no: auto upgrades when the relay offers it, yes requires it, no never"),
        Key("smtpCAFile", validate.optional(validate.absolute_path), "",
            "CA bundle to verify the relay's certificate (else the system's)"),
        Key("smtpTimeout", validate.decimal(0.1, 300), "10", "deadline of each SMTP exchange"),
        Key("flapCount", validate.integer(0, 50), "4",
            "more changes than this within flapWindow: one summary mail per window (0: off)"),
        Key("flapWindow", validate.decimal(10, 86400), "600", "seconds, for flapCount"),
        Key("fastInterval", validate.decimal(0.05, 60),
            lambda get: f"{min(float(get('interval')), 0.25):g}",
            "seconds before a probe confirms one that disagrees with the state",
            site_only=True),
        Key("downInterval", validate.decimal(0.1, 60),
            lambda get: f"{min(float(get('interval')), 0.5):g}",
            "seconds between probes of a target that is down", site_only=True),
        Key("syslogSocket", _syslog_socket, "",
            "where transitions are logged (empty: /dev/log or /var/run/log; none: off)",
            site_only=True),
        Key("alertAfter", validate.decimal(0, 86400), "300",
            "seconds a step of the cron loop may keep failing before spdu says so (0: never)",
            site_only=True),
        Key("metricsFile", validate.optional(validate.absolute_path), "",
            "Prometheus text file written after each run (empty: none)", site_only=True),
        Key("webhookURL", validate.optional(validate.url_list), "",
            "URLs that get each change as an HTTP POST (empty: none)", secret=True),
        Key("webhookFormat", validate.webhook_formats, "json",
            "json, slack or ntfy: one for every webhookURL, or one each"),
        Key("webhookTokenFile", validate.optional(validate.absolute_path), "",
            "file holding a token sent as Authorization: Bearer"),
        Key("webhookCAFile", validate.optional(validate.absolute_path), "",
            "CA bundle to verify HTTPS receivers (else the system's)"),
        Key("webhookTimeout", validate.decimal(0.1, 60), "5",
            "deadline of each webhook POST, whole"),
        # Peer views (spdu_cli/peers.py) and the quorum (spdu_cli/quorum.py).
        Key("targetDNS", _one_server, "",
            "the target's own DNS server, one ADDRESS[@PORT], whose pool is its view"
            " (empty: the pool zone's NS set, matched to the target's addresses)"),
        Key("peerViews", validate.yes_no, "yes",
            "read each peer's pool from its own DNS server (status --peers)", site_only=True),
        Key("peerInterval", validate.decimal(1, 3600), "3",
            "seconds between reads of the peers' views", site_only=True),
        Key("peerDivergence", validate.decimal(0, 86400), "30",
            "seconds the sites may disagree before a notice is mailed (0: never)",
            site_only=True),
        Key("peerQuorum", validate.yes_no, "yes",
            "with 3+ sites, keep a peer this site sees down while most other sites serve it",
            site_only=True),
        Key("peerWait", validate.decimal(0, 600), "10",
            "seconds after a peer was seen down before the other sites may bring it back"
            " (at least the worst time out of DNS plus peerInterval: config show)",
            site_only=True),
    ]
}


# -- the system's own names ----------------------------------------------------


class System:
    """The host's names, looked up only when a default needs them."""

    def __init__(self, hostname: str | None = None, fqdn: str | None = None):
        self._hostname = hostname
        self._fqdn = fqdn

    def hostname(self) -> str:
        if self._hostname is None:
            self._hostname = socket.gethostname()
        return self._hostname

    def short_name(self) -> str:
        return self.hostname().split(".")[0]

    def domain(self) -> str:
        name = self.hostname()
        if "." not in name:
            if self._fqdn is None:
                self._fqdn = socket.getfqdn(name)  # what `hostname -d` consults too
            name = self._fqdn
        if "." not in name:
            raise MissingDefault(
                f"domain is not set, and this host's name {self.hostname()!r} has no domain"
                " part",
                'set domain="example.org"',
            )
        return name.split(".", 1)[1]



class MissingDefault(Exception):
    def __init__(self, message: str, hint: str):
        super().__init__(message)
        self.message, self.hint = message, hint


# -- a key's value --------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    value: str
    file: str | None = None  # None: a default
    line: int | None = None

    @property
    def source(self) -> str:
        return f"{self.file}:{self.line}" if self.file else "default"


def _quote(value: str) -> str:
    """A value as it may be shown in a one-line message: control characters
    (a newline, NUL...) escaped, so a message is always one line."""
    if any(ord(c) < 32 or c == "\x7f" for c in value):
        return "$" + repr(value)  # a shell $'...' string, readable and unambiguous
    return shlex.quote(value) if value else "''"


class Values:
    """Effective values: what the files set, else the key's default, lazily."""

    def __init__(self, settings: Mapping[str, Setting], target: str | None, system: System):
        self.settings = settings
        self.target = target
        self.system = system
        self._cache: dict[str, Setting] = {}

    def setting(self, key: str) -> Setting:
        if key in self.settings:
            return self.settings[key]
        if key not in self._cache:
            if key == "@target":
                if self.target is None:
                    raise MissingDefault("targetName has no default outside a target", "")
                value = self.target
            elif key == "@domain":
                value = self.system.domain()
            elif key == "@shortname":
                value = self.system.short_name()
            else:
                default = KEYS[key].default
                value = default if isinstance(default, str) else default(self.get)
            self._cache[key] = Setting(value)
        return self._cache[key]

    def get(self, key: str) -> str:
        return self.setting(key).value

    def checked(self, key: str) -> Any:
        s = self.setting(key)
        return check_value(key, s)


@functools.lru_cache(maxsize=1 << 16)
def _checked(key: str, value: str) -> Any:
    """A key's checker is a pure function of the value: thousands of targets
    sharing the main file's values check each once."""
    return KEYS[key].check(value)


def check_value(key: str, s: Setting) -> Any:
    try:
        return _checked(key, s.value)
    except ValueError as e:
        where = f"{s.file}:{s.line}: " if s.file else "default "
        shown = "(secret not shown)" if KEYS[key].secret else _quote(s.value)
        raise ConfigError(f"{where}{key}={shown}: {e}") from None
