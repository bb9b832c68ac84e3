"""The certificate clients will see: what each TLS probe found, kept in the
target's spool entry (of its addresses' certificates, the first to expire),
and when one that expires within certWarnDays is due for its notice, once per
certificate and channel (notify.certs sends it).
"""

from __future__ import annotations

from typing import Any

from spdu_cli.entry import CertRecord, SpoolEntry, iso
from spdu_cli.errors import SpduError

DAY = 86400.0
LOGGED = "log"  # the channel of a target with neither mailTo nor webhookURL


def key(c: CertRecord) -> str:
    """One certificate, as its notices are remembered: its notAfter and serial."""
    return f"{iso(c.not_after)} {c.serial}"


def record(entry: SpoolEntry, cfg, r) -> None:
    """Keep the certificate of probe result `r` in `entry`. A probe without a
    handshake (it failed before, or the name did not resolve) keeps the one
    seen last; a target that is no longer probed over TLS has none."""
    if not cfg.probe_ssl:
        entry.cert = None
        return
    c = r.cert
    if c is None:
        return
    old = entry.cert
    entry.cert = CertRecord(c.not_after, c.serial, c.address, r.at, old.noticed if old else ())


def expiring(c: CertRecord | None, days: int, now: float) -> bool:
    """Whether `c` expires within `days` (0: never said), or has expired."""
    return (c is not None and c.not_after is not None and days > 0
            and c.not_after - now < days * DAY)


def channels(cfg) -> list[tuple[str, Any]]:
    """(name in the spool, configuration) of each channel of the target."""
    from spdu_cli.journal import MAIL

    mail = [(MAIL, cfg.mail)] if cfg.mail is not None and cfg.mail.to else []
    return mail + [(w.channel, w) for w in cfg.webhooks]


def due(entry: SpoolEntry, cfg, now: float) -> list[str]:
    """The channels that have yet to get the notice of the entry's certificate
    (none unless it expires within certWarnDays)."""
    c = entry.cert
    if not cfg.probe_ssl or not expiring(c, cfg.cert_warn_days, now):
        return []
    took = {ch for k, ch in c.noticed if k == key(c)}
    return [n for n in ([name for name, _ in channels(cfg)] or [LOGGED]) if n not in took]


def any_due(site, entries: dict[str, SpoolEntry], now: float) -> bool:
    """Whether a notify run has a certificate notice to send (the cron loop asks)."""
    for target, entry in entries.items():
        if entry.cert is None:
            continue
        try:
            if due(entry, site.target(target), now):
                return True
        except SpduError:
            continue  # a target file refused: the loop says so
    return False


def to_json(c: CertRecord | None, days: int, now: float) -> dict[str, Any] | None:
    """status --json: the certificate last seen, or None."""
    if c is None:
        return None
    return {"not_after": iso(c.not_after), "expires_in_s": None if c.not_after is None
            else round(c.not_after - now), "serial": c.serial, "address": c.address,
            "seen": iso(c.seen), "expiring": expiring(c, days, now),
            "noticed": any(k == key(c) for k, _ in c.noticed)}
