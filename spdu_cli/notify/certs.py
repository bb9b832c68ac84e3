"""Certificate notices: a TLS target's certificate that expires within
certWarnDays, mailed and posted once per certificate and channel through the
same notices as the cron loop's own trouble, each channel marked in the spool.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

from spdu_cli.certs import LOGGED, channels, due, key
from spdu_cli.entry import MAX_NOTICED, CertRecord, duration
from spdu_cli.errors import SpduError
from spdu_cli.notify.notices import send_notices, subject

log = logging.getLogger(__name__)


@dataclass
class CertNotice:
    """One target's certificate notice: its words, and which channel took it."""

    target: str
    cert: str  # key()
    notice: str  # the subject, after "WARNING: spdu on TAG: "
    subject: str
    text: str
    sent: dict[str, SpduError | None] = field(default_factory=dict)  # channel -> error

    @property
    def error(self) -> SpduError | None:
        return next((e for e in self.sent.values() if e is not None), None)

    def to_json(self) -> dict[str, Any]:
        return {"notice": "certificate", "target": self.target, "subject": self.subject,
                "sent": {ch: e is None for ch, e in self.sent.items()},
                "error": str(self.error) if self.error else None}


def words(cfg, c: CertRecord, now: float) -> tuple[str, str]:
    """The notice about `c`: its subject (after "WARNING: spdu on TAG: ") and text."""
    from spdu_cli.journal import clock

    left = c.not_after - now
    when = f"expires in {duration(left)}" if left > 0 else f"expired {duration(-left)} ago"
    where = f"{cfg.api_name} at {c.address or 'its address'}, port {cfg.probe_port}"
    unverified = "" if cfg.probe_verify else (
        " (probeVerify=no: an expired one does not mark the target down)")
    text = (f"The certificate that {cfg.target} ({where}) presented to this site's probe"
            f" {when}: its notAfter is {clock(c.not_after)} (certWarnDays="
            f"{cfg.cert_warn_days}). Serial {c.serial or 'unknown'}.\n"
            "Every client that reaches the service there gets this certificate: renew it"
            f" before then{unverified}.\n"
            "This notice is sent once for this certificate; a new one that also expires"
            f" within {cfg.cert_warn_days} days gets its own.")
    return f"the certificate of {cfg.target} {when}", text


def notify(site, cfgs, store, now: float, lock_timeout: float,
           dry_run: bool = False) -> list[CertNotice]:
    """Send the certificate notices that are due, each to the target's channels
    that have not had it (without any: logged only), and mark each channel that
    took it, under the lock, re-reading the entry. A channel that failed gets it
    with the next run; a dry run sends and marks nothing."""
    from spdu_cli.journal import MAIL

    out: list[CertNotice] = []
    for cfg in cfgs:
        entry = store.read(cfg.target)
        todo = due(entry, cfg, now)
        if not todo:
            continue
        head, text = words(cfg, entry.cert, now)
        chans = [(n, c) for n, c in channels(cfg) if n in todo]
        mails = [c for n, c in chans if n == MAIL]
        hooks = [c for n, c in chans if n != MAIL]
        notice = CertNotice(cfg.target, key(entry.cert), head, "", text)
        notice.subject = subject("WARNING", mails, hooks, notice, cfg.my_tag)
        out.append(notice)
        if dry_run:
            continue
        log.warning("%s: %s", cfg.target, head)
        got = send_notices(site, [("WARNING", notice)], (mails, hooks)) if chans else {}
        notice.sent = {n: got[c] for n, c in chans} if chans else {LOGGED: None}
    if not dry_run:
        _mark(store, out, lock_timeout)
    return out


def _mark(store, notices: list[CertNotice], lock_timeout: float) -> None:
    took = [n for n in notices if any(e is None for e in n.sent.values())]
    if not took:
        return
    with store.locked(lock_timeout):
        for n in took:
            entry = store.read(n.target)
            if entry.fresh or entry.cert is None:
                continue  # gone meanwhile: nothing left to remember it by
            pairs = [(n.cert, ch) for ch, e in n.sent.items() if e is None]
            entry.cert = dataclasses.replace(
                entry.cert, noticed=(*entry.cert.noticed, *pairs)[-MAX_NOTICED:])
            store.write(entry)
