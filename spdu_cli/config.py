"""Read and validate the original spdu's configuration into frozen dataclasses.

The main file (default /usr/local/etc/spdu.conf) holds site-wide values; the
file `spdu/TARGET` beside it overrides them for one target. Files are parsed as
data (see shellconf), refused when unsafe (safefile), and every value is
validated (the key table: settings).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spdu_cli import peerwait, shellconf, tsig, validate
from spdu_cli.errors import ConfigError, UsageError
from spdu_cli.paths import CONFIG_ENV as ENV_VAR
from spdu_cli.paths import DEFAULT_CONFIG as DEFAULT_PATH
from spdu_cli.safefile import SafeFile, check_directory, read_safe_file, require_private
from spdu_cli.selfcheck import SELF, self_settings
from spdu_cli.settings import KEYS, MissingDefault, Setting, System, Values, check_value

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


# -- reading files -------------------------------------------------------------


_SECRET_KEYS = frozenset(k for k, v in KEYS.items() if v.secret)


def advisories(cfg: TargetConfig) -> list[str]:
    """Valid but risky settings, for `spdu config check` to warn about."""
    out = []
    if cfg.tsig is None and not cfg.name_server.is_loopback:
        out.append(
            f"{cfg.target}: reconcile sends UNSIGNED updates to {cfg.name_server}, which is not"
            " on this host: anyone who can send from an allowed address can change the pool"
            " (make a key with `spdu keygen` and set tsigKeyFile)"
        )
    if not cfg.self_ips:
        out.append(
            f"{cfg.target}: selfIP is empty: this site's own addresses are not kept in its"
            f" pool {cfg.pool_name}, and a change that would empty it is withheld"
            " (set selfIP)"
        )
    return out


def site_advisories(site: Site) -> list[str]:
    """Site-wide settings worth a warning in `spdu config check`."""
    out = []
    if site._site_value("fastInterval") > site.interval:
        out.append(f"fastInterval={site._site_value('fastInterval'):g} is longer than"
                   f" interval={site.interval:g}: interval is used")
    return out


@dataclass(frozen=True)
class UnknownKey:
    """A key spdu does not know, where it was set, and the key it may be a typo of."""

    path: str
    line: int
    key: str
    close: str  # the nearest known key, or ""
    helper: bool  # used as $key later in its file: a shell helper, as the original allowed


def _parse_file(
    file: SafeFile, inherited: Mapping[str, Setting], target: str | None, system: System,
    unknown: list[UnknownKey] | None = None,
) -> dict[str, Setting]:
    settings: dict[str, Setting] = {}

    def lookup(name: str, line: int, seen: Mapping[str, str]) -> str:
        if name in inherited:
            return inherited[name].value
        if name in KEYS:
            merged = {**inherited, **{k: Setting(v) for k, v in seen.items()}}
            try:
                return Values(merged, target, system).get(name)
            except MissingDefault as e:
                raise shellconf.ShellSyntaxError(line, f"${name}: {e.message}", e.hint) from None
        raise shellconf.ShellSyntaxError(
            line,
            f"${name} is not set before this line",
            "set it above; spdu never reads environment variables",
        )

    try:
        assignments = shellconf.parse(file.text, lookup, _SECRET_KEYS)
    except shellconf.ShellSyntaxError as e:
        raise ConfigError(f"{file.path}:{e.line}: {e.message}", e.hint) from None
    for a in assignments:
        settings[a.key] = Setting(a.value, file.path, a.line)
        if a.key not in KEYS:
            import difflib  # only for a key that is not known

            close = difflib.get_close_matches(a.key, KEYS, n=1)
            used = re.search(r"\$\{?" + re.escape(a.key) + r"(?![A-Za-z0-9_])", file.text)
            if unknown is not None:  # config check reports them itself
                unknown.append(UnknownKey(file.path, a.line, a.key, close[0] if close else "",
                                          bool(used)))
                continue
            if used:  # a shell helper (base=/x, then ${base}/y), as the original's files had
                continue
            hint = f"; did you mean {close[0]}?" if close else ""
            log.warning("%s:%d: unknown key %s ignored%s", file.path, a.line, a.key, hint)
        elif target is not None and KEYS[a.key].site_only:
            log.warning(
                "%s:%d: %s applies to the whole site; set it in the main file (ignored here)",
                file.path,
                a.line,
                a.key,
            )
    for key, s in settings.items():
        if key in KEYS and KEYS[key].secret and s.value:
            require_private(file, key)
    return settings


# -- the result ----------------------------------------------------------------


@dataclass(frozen=True)
class MailConfig:
    to: tuple[str, ...]
    sender: str
    relay: str
    port: int
    ssl: bool
    user: str
    password: str = field(repr=False)
    starttls: str = "auto"  # with ssl=False: "auto", "yes" (required) or "no"
    ca_file: str | None = None
    timeout: float = 10.0
    tag: str = ""  # myTag, for the From name


@dataclass(frozen=True)
class WebhookConfig:
    """One webhook receiver: a notification channel of its own."""

    url: str = field(repr=False)  # may hold the receiver's only secret (Slack...)
    format: str  # json, slack or ntfy
    token: str = field(default="", repr=False)
    ca_file: str | None = None
    timeout: float = 5.0
    tag: str = ""  # myTag
    position: int = 1  # in webhookURL, for messages that must not show the URL
    count: int = 1  # URLs in webhookURL

    @property
    def channel(self) -> str:
        """Its name in the spool: stable while URL and format stay, and no secret."""
        import hashlib

        return "webhook:" + hashlib.sha256(f"{self.format} {self.url}".encode()).hexdigest()[:12]

    @property
    def where(self) -> str:
        """The URL for messages: scheme, host and port only (its path may be a secret)."""
        from urllib.parse import urlsplit

        u = urlsplit(self.url)
        rest = "/..." if (u.path not in ("", "/") or u.query) else "/"
        which = f" #{self.position}" if self.count > 1 else ""
        return f"webhookURL{which} {u.scheme}://{u.netloc}{rest} ({self.format})"


@dataclass(frozen=True)
class TargetConfig:
    """Everything spdu needs to probe one target and keep its pool."""

    target: str
    files: tuple[str, ...]
    domain: str | None
    my_tag: str
    target_name: str
    target_ips: tuple[IPAddress, ...]  # empty: resolve target_name at probe time
    api_name: str
    probe_type: str  # "http" or "tcp"
    probe_ssl: bool
    probe_port: int
    probe_path: str
    probe_timeout: float
    probe_retries: int
    probe_rise: int
    probe_fall: int
    probe_codes: tuple[tuple[int, int], ...]
    probe_match: str
    probe_verify: bool
    probe_ca_file: str | None
    pool_name: str
    pool_zone: str
    name_server: IPAddress
    name_port: int
    name_ttl: int
    tsig: tsig.TsigKey | None
    self_ips: tuple[IPAddress, ...]
    stale_after: float
    name_timeout: float
    mail: MailConfig | None
    spool_dir: str
    interval: float
    settings: Mapping[str, Setting] = field(repr=False, compare=False)
    """Every key's raw value as in effect: from a file, or its default."""
    flap_count: int = 4
    flap_window: float = 600.0
    webhooks: tuple[WebhookConfig, ...] = ()
    secondary_servers: tuple[tuple[str, int | None], ...] = ()  # (address, port or None)
    cert_warn_days: int = 14  # certWarnDays (0: off)
    is_self: bool = False  # the self-check's pseudo-target: this site's own service, at selfIP

    @property
    def probe_url(self) -> str:
        if self.probe_type == "tcp":  # no path: probePath does not apply
            return f"{'tls' if self.probe_ssl else 'tcp'}://{self.api_name}:{self.probe_port}"
        scheme = "https" if self.probe_ssl else "http"
        return f"{scheme}://{self.api_name}:{self.probe_port}/{self.probe_path}"

    def accepts(self, status: int) -> bool:
        return any(low <= status <= high for low, high in self.probe_codes)


@dataclass
class Site:
    """The main file, and the per-target files beside it, read on demand."""

    path: str
    settings: dict[str, Setting]
    system: System = field(default_factory=System)
    _main_checked: bool = field(default=False, repr=False, compare=False)
    read_key_file: bool = True  # False for keygen, which is about to write it
    _targets: dict = field(default_factory=dict, repr=False, compare=False)
    _values: dict = field(default_factory=dict, repr=False, compare=False)
    unknown: list[UnknownKey] | None = None  # a list: collect unknown keys, do not warn
    # target -> the ConfigError of its own file: left out of `targets` (check(each=True))
    broken: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def target_dir(self) -> Path:
        return Path(self.path).parent / "spdu"

    def _site_value(self, key: str) -> Any:
        # Checked once: `targets` alone may list thousands of names.
        if key not in self._values:
            self._values[key] = _resolve(Values(self.settings, None, self.system), key,
                                         self.path)
        return self._values[key]

    @property
    def _known(self) -> frozenset[str]:
        if "@known" not in self._values:
            self._values["@known"] = frozenset(self.targets)
        return self._values["@known"]

    @property
    def targets(self) -> tuple[str, ...]:
        """targets=, and `self` last while the self-check is on (selfCheck=yes,
        selfIP set in the main file, and a peer to fall back on)."""
        if "@targets" not in self._values:  # once: `targets` alone may list thousands
            names = self._site_value("targets")
            if self._site_value("selfCheck"):
                if SELF in names:
                    s = self.settings["targets"]
                    raise ConfigError(
                        f"{s.source}: targets= names {SELF!r}, the name of this site's own"
                        " service while selfCheck=yes",
                        f"rename that target, or set selfCheck=no in {self.path}")
                if names and self._site_value("selfIP"):
                    names = (*names, SELF)
            self._values["@targets"] = names
        names = self._values["@targets"]
        return tuple(n for n in names if n not in self.broken) if self.broken else names

    @property
    def spool_dir(self) -> str:
        return self._site_value("spoolDir")

    @property
    def interval(self) -> float:
        return self._site_value("interval")

    @property
    def fast_interval(self) -> float:
        return min(self._site_value("fastInterval"), self.interval)

    @property
    def down_interval(self) -> float:
        return min(self._site_value("downInterval"), self.interval)

    @property
    def syslog_socket(self) -> str:
        return self._site_value("syslogSocket")

    @property
    def alert_after(self) -> float:
        return self._site_value("alertAfter")

    @property
    def metrics_file(self) -> str:
        return self._site_value("metricsFile")

    def select(self, names: tuple[str, ...] | list[str] = ()) -> list[str]:
        """The targets a command acts on: those named, else every configured one."""
        if not names:
            if not self.targets:
                raise ConfigError(
                    f"no targets configured in {self.path}",
                    'add targets="beta gamma", or name a target on the command line',
                )
            return list(self.targets)
        out = []
        for name in names:
            try:
                validate.target_name(name)
            except ValueError as e:
                raise UsageError(f"target {name!r}: {e}") from None
            if name == SELF and name not in self._known:
                raise UsageError(f"target {SELF!r} is this site's own service, probed only with"
                                 f" selfCheck=yes, selfIP and targets= set in {self.path}")
            if name not in self._known and not (self.target_dir / name).exists():
                known = " ".join(self.targets) or "none"
                raise UsageError(
                    f"unknown target {name!r}: not in targets= of {self.path} (known: {known})"
                    f" and no {self.target_dir / name}",
                )
            out.append(name)
        return list(dict.fromkeys(out))

    def target(self, name: str) -> TargetConfig:
        """One target's configuration, read once per Site (the cron loop makes a
        new Site when a file changes)."""
        if name not in self._targets:
            self._targets[name] = self._read_target(name)
        return self._targets[name]

    def _read_target(self, name: str) -> TargetConfig:
        validate.target_name(name)
        if not self._main_checked:  # a bad value in the main file is an error even where
            for key, s in self.settings.items():  # a target's own file overrides it
                if key in KEYS:
                    check_value(key, s)
            self._main_checked = True
        files = [self.path]
        settings = dict(self.settings)
        own: dict[str, Setting] = {}
        path = self.target_dir / name
        if path.exists() or path.is_symlink():
            check_directory(str(self.target_dir))
            f = read_safe_file(str(path))
            own = _parse_file(f, self.settings, name, self.system, self.unknown)
            for key, s in own.items():
                if key in KEYS and KEYS[key].site_only:
                    continue
                settings[key] = s
            files.append(str(path))
        if name == SELF:
            settings.update(self_settings(settings, self.system))
        return build_target(name, settings, tuple(files), self.path, self.system,
                            self.read_key_file, checked=set(self.settings) - set(own))

    def check(self, each: bool = False) -> list[TargetConfig]:
        """Validate the main file and every configured target. `each` (the cron
        loop): a target whose configuration is refused goes into `broken`, and
        the others go on; unless every target is refused (the main file's fault)."""
        for key, s in self.settings.items():
            if key in KEYS:
                check_value(key, s)
        self.spool_dir, self.interval, self.fast_interval, self.down_interval  # noqa: B018 - validates the site-wide defaults
        if not each:
            cfgs = [self.target(name) for name in self.targets]
            peerwait.check(cfgs)
            return cfgs
        out, first = [], None
        for name in self.targets:
            try:
                out.append(self.target(name))
            except ConfigError as e:
                self.broken[name] = e
                first = first or e
        if first is not None and not out:
            self.broken.clear()
            raise first
        peerwait.check(out)  # site-wide: the whole configuration is refused
        return out


def _resolve(values: Values, key: str, origin: str) -> Any:
    try:
        return values.checked(key)
    except MissingDefault as e:
        raise ConfigError(e.message, f"{e.hint} in {origin}" if e.hint else None) from None


def _complete(name: str, domain_key: str, values: Values, origin: str) -> str:
    if "." in name:
        return name
    return f"{name}.{_resolve(values, domain_key, origin)}"


def build_target(
    name: str,
    settings: Mapping[str, Setting],
    files: tuple[str, ...],
    origin: str,
    system: System,
    read_key_file: bool = True,
    checked: set[str] = frozenset(),
) -> TargetConfig:
    """`checked`: keys whose setting is known valid (the main file's, checked
    once per Site rather than once per target)."""
    values = Values(settings, name, system)
    for key, s in settings.items():  # every value a file sets is checked, used or not
        if key in KEYS and key not in checked:
            check_value(key, s)

    def get(key: str) -> Any:
        return _resolve(values, key, origin)

    pool_name = get("poolName")
    if "." in pool_name:
        pool_zone = pool_name.split(".", 1)[1]
    else:
        pool_zone = _complete(get("poolZone"), "poolDomain", values, origin)
        pool_name = f"{pool_name}.{pool_zone}"

    key = get("tsigKey") or None
    if key is not None:
        key = dataclasses.replace(key, source=settings["tsigKey"].source)
    elif read_key_file and settings.get("tsigKeyFile", Setting("")).value:
        s = settings["tsigKeyFile"]
        f = read_safe_file(s.value, f"TSIG key file (tsigKeyFile, {s.source})",
                           "run spdu keygen: it writes the key and prints the server's part")
        require_private(f, "a TSIG key")
        try:
            key = tsig.parse_file(f.text, s.value)
        except ValueError as e:
            raise ConfigError(f"TSIG key file {s.value} (tsigKeyFile, {s.source}): {e}") from None

    mail = None
    mail_to = get("mailTo")
    if mail_to:
        mail = MailConfig(
            to=mail_to,
            sender=get("mailFrom"),
            relay=get("smtpRelay"),
            port=get("smtpPort"),
            ssl=get("smtpSSL"),
            user=get("smtpUser"),
            password=get("smtpPassword"),
            starttls=get("smtpStartTLS"),
            ca_file=get("smtpCAFile") or None,
            timeout=get("smtpTimeout"),
            tag=get("myTag"),
        )

    webhooks = _webhooks(settings, get)

    try:
        domain = get("domain")
    except ConfigError:
        domain = None  # only needed where a default or a completion uses it

    return TargetConfig(
        target=name,
        files=files,
        domain=domain,
        my_tag=get("myTag"),
        target_name=_complete(get("targetName"), "targetDomain", values, origin),
        target_ips=get("targetIP"),
        api_name=_complete(get("apiName"), "apiDomain", values, origin),
        probe_type=get("probeType"),
        probe_ssl=get("probeSSL"),
        probe_port=get("probePort"),
        probe_path=get("probePath"),
        probe_timeout=get("probeTimeout"),
        probe_retries=get("probeRetries"),
        probe_rise=get("probeRise"),
        probe_fall=get("probeFall"),
        probe_codes=get("probeCodes"),
        probe_match=get("probeMatch"),
        probe_verify=get("probeVerify"),
        probe_ca_file=get("probeCAFile") or None,
        pool_name=pool_name,
        pool_zone=pool_zone,
        name_server=get("nameServer"),
        name_port=get("namePort"),
        name_ttl=get("nameTTL"),
        tsig=key,
        self_ips=get("selfIP"),
        stale_after=get("staleAfter"),
        name_timeout=get("nameTimeout"),
        mail=mail,
        spool_dir=get("spoolDir"),
        interval=get("interval"),
        settings=_effective(values),
        flap_count=get("flapCount"),
        flap_window=get("flapWindow"),
        webhooks=webhooks,
        secondary_servers=get("secondaryServers"),
        cert_warn_days=get("certWarnDays"),
        is_self=name == SELF and get("selfCheck"),
    )


def _webhooks(settings: Mapping[str, Setting],
              get: Callable[[str], Any]) -> tuple[WebhookConfig, ...]:
    urls = get("webhookURL") or ()
    if not urls:
        return ()
    formats = get("webhookFormat")
    if len(formats) not in (1, len(urls)):
        s = settings.get("webhookFormat", Setting(""))
        raise ConfigError(
            f"{s.source}: webhookFormat names {len(formats)} formats for {len(urls)} URLs"
            " in webhookURL",
            "give one format for all, or one per URL in the same order",
        )
    token = ""
    if get("webhookTokenFile"):
        token = read_token(settings["webhookTokenFile"])
    return tuple(
        WebhookConfig(url, formats[0] if len(formats) == 1 else formats[i], token,
                      get("webhookCAFile") or None, get("webhookTimeout"), get("myTag"),
                      i + 1, len(urls))
        for i, url in enumerate(urls)
    )


def read_token(s: Setting) -> str:
    """The bearer token in webhookTokenFile: a file only its owner may read."""
    what = f"webhook token file (webhookTokenFile, {s.source})"
    f = read_safe_file(s.value, what)
    if f.mode & 0o044:
        raise ConfigError(
            f"refusing {what} {s.value}: readable by group or others (mode {f.mode:04o})",
            f"chmod 0600 {s.value}",
        )
    lines = [line.strip() for line in f.text.splitlines() if line.strip()]
    if len(lines) != 1 or not re.fullmatch(r"[\x21-\x7e]{1,4096}", lines[0]):
        raise ConfigError(
            f"{what} {s.value}: not one token (one line of printable ASCII, no spaces;"
            " the token is not shown)"
        )
    return lines[0]


def _effective(values: Values) -> dict[str, Setting]:
    out = {}
    for key in KEYS:
        try:
            out[key] = values.setting(key)
        except MissingDefault:
            pass  # a default that this target never needs and cannot have
    return out


def config_path(explicit: str | None = None, environ: Mapping[str, str] = os.environ) -> str:
    return explicit or environ.get(ENV_VAR) or DEFAULT_PATH


def load(path: str | None = None, system: System | None = None, strict: bool = False) -> Site:
    """Read the main file; per-target files are read when a target is asked for.
    `strict`: unknown keys are collected in Site.unknown instead of warned of."""
    system = system or System()
    path = config_path(path)
    f = read_safe_file(path)
    check_directory(os.path.dirname(os.path.abspath(path)))
    unknown: list[UnknownKey] | None = [] if strict else None
    return Site(path, _parse_file(f, {}, None, system, unknown), system, unknown=unknown)
