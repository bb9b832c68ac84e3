"""`spdu status`: what the spool says of each target, and, when asked, whether
the pool in DNS agrees (reconcile's read and decision, sending nothing).

Reads the spool without the lock and writes nothing: a maintenance past its
end is shown as over, as the next probe will record it.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

from spdu_cli import certs, maint
from spdu_cli.entry import (
    CertRecord,
    Maintenance,
    ResultRecord,
    SpoolEntry,
    iso,
    lasted,
    result_reason,
)
from spdu_cli.spool import Spool


@dataclass(frozen=True)
class PoolStatus:
    """The pool a target belongs to, as read from its DNS server."""

    pool: str
    server: str
    in_sync: bool
    changes: tuple[tuple[str, str, str | None], ...]  # (action, address, target or None: selfIP)
    blocked: str | None
    error: str | None
    exit_status: int = 0
    left: dict = field(default_factory=dict)  # target -> why its records are left as is
    serial: int | None = None  # the zone's serial on the primary
    servers: tuple = ()  # secondaries.ServerStatus of each authoritative server
    servers_error: str | None = None  # their list could not be had
    now: float = 0.0
    unmanaged: tuple[str, ...] = ()  # neither selfIP nor any target's (reconcile --prune)
    dnssec: dict | None = None  # signatures.Signatures.to_json() of the primary's answers
    dnssec_problem: dict | None = None  # {text, since}: found by reconcile, still standing

    @classmethod
    def from_plan(cls, plan) -> PoolStatus:
        return cls(
            plan.pool.name, f"{plan.pool.server}:{plan.pool.port}", plan.in_sync,
            tuple((c.action, c.address, c.target) for c in plan.changes),
            plan.decision.blocked, str(plan.error) if plan.error else None,
            int(plan.error.exit_status) if plan.error else 0, plan.decision.left,
            unmanaged=plan.decision.unmanaged,
            dnssec=plan.dnssec.to_json() if plan.dnssec else None,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "pool": self.pool,
            "server": self.server,
            "in_sync": self.in_sync,
            "changes": [{"action": a, "address": addr, "target": t}
                        for a, addr, t in self.changes],
            "blocked": self.blocked,
            "error": self.error,
            "left_alone": self.left,
            "unmanaged": list(self.unmanaged),
            "serial": self.serial,
            "servers": [v.to_json(self.now) for v in self.servers],
            "servers_error": self.servers_error,
            "dnssec": self.dnssec,
            "dnssec_problem": self.dnssec_problem,
        }


@dataclass(frozen=True)
class TargetStatus:
    target: str
    state: str  # probed: up, down, unknown
    since: float | None
    last: ResultRecord | None  # the latest probe
    pending: int  # transitions not yet mailed
    maint: Maintenance | None  # only while in effect
    dns: PoolStatus | None = None  # with --dns, when the target's pool was read
    seconds: float | None = None  # in its state until now (steady across clock steps)
    cert: CertRecord | None = None  # TLS targets: the certificate last seen
    cert_warn_days: int = 0  # certWarnDays: within it, `cert` is expiring
    now: float = 0.0

    @property
    def reason(self) -> str | None:
        r = self.last
        if r is None:
            return None
        return result_reason(r.ok, r.status, r.error)

    def to_json(self) -> dict[str, Any]:
        r = self.last
        return {
            "target": self.target,
            "state": self.state,
            "since": iso(self.since),
            "maint": self.maint.to_json() if self.maint else None,
            "last_probe": iso(r.at) if r else None,
            "ok": r.ok if r else None,
            "latency_ms": r.latency_ms if r else None,
            "reason": self.reason,
            "pending": self.pending,
            "cert": certs.to_json(self.cert, self.cert_warn_days, self.now),
            "dns": self.dns.to_json() if self.dns else None,
        }

    @property
    def expiring(self) -> bool:
        return certs.expiring(self.cert, self.cert_warn_days, self.now)


def of_entry(entry: SpoolEntry, now: float, cfg=None) -> TargetStatus:
    entry = copy.deepcopy(entry)
    maint.expire(entry, now)  # in memory only: what the next probe will record
    h = entry.health
    tls = cfg is None or cfg.probe_ssl  # a target no longer probed over TLS: none shown
    return TargetStatus(
        entry.target, h.state.value, h.since, entry.results[-1] if entry.results else None,
        len(entry.pending()), entry.maint, seconds=in_state(entry, now),
        cert=entry.cert if tls else None,
        cert_warn_days=cfg.cert_warn_days if cfg is not None else 0, now=now,
    )


def in_state(entry: SpoolEntry, now: float) -> float | None:
    """How long the target has been in its state: from the transition that
    began it, on the monotonic clock its journal entry recorded when there is
    one (a forward step of the wall clock since is not time spent)."""
    since = entry.health.since
    if since is None:
        return None
    at = iso(since)
    stamp = next((e.get("clock") for e in reversed(entry.journal) if e.get("at") == at), None)
    return lasted(since, stamp, now)


def collect(site, names=(), dns: bool = False, now: float | None = None) -> list[TargetStatus]:
    """Each target's status from the spool; with `dns`, its pool's too."""
    now = time.time() if now is None else now
    targets = site.select(names)
    # a target file every other command refuses is refused here too
    cfgs = {t: site.target(t) for t in targets}
    store = Spool(site.spool_dir)
    out = [of_entry(store.read(t), now, cfgs[t]) for t in targets]
    if not dns:
        return out
    from spdu_cli import reconcile
    from spdu_cli.plan import PoolKey

    by_key = {}
    for c in cfgs.values():
        by_key.setdefault(PoolKey(c.pool_name, c.pool_zone, str(c.name_server),
                                            c.name_port), c)
    history = store.read_reconcile()
    plans = {p.pool: with_servers(PoolStatus.from_plan(p), p, by_key.get(p.pool), history, now)
             for p in reconcile.run(site, dry_run=True)}
    keys = {t: PoolKey(c.pool_name, c.pool_zone, str(c.name_server), c.name_port)
            for t, c in cfgs.items()}
    return [dataclasses.replace(s, dns=plans.get(keys[s.target])) for s in out]


def _updates(record: dict | None) -> list[tuple[float, int]]:
    """(time, serial) of the pool's last UPDATEs from the spool; what is damaged is skipped."""
    from spdu_cli.entry import epoch

    out = []
    for item in (record or {}).get("serials") or []:
        try:
            at, serial = item
            if isinstance(serial, int) and not isinstance(serial, bool) and 0 <= serial < 2**32:
                out.append((epoch(at), serial))
        except (TypeError, ValueError):
            continue
    return out


def with_servers(ps: PoolStatus, plan, cfg, history: dict, now: float) -> PoolStatus:
    """Add each authoritative server of the pool's zone, compared with the primary."""
    from spdu_cli import reconcile, secondaries
    from spdu_cli.errors import SpduError
    from spdu_cli.nameserver import keyring

    if plan.error is not None or cfg is None:
        return ps
    k = plan.pool
    problem = (history.get(reconcile.pool_id(k)) or {}).get("dnssec_problem")
    if isinstance(problem, dict):
        ps = dataclasses.replace(ps, dnssec_problem={"text": str(problem.get("text")),
                                                     "since": problem.get("since")})
    primary = set(plan.current.get("A", []) + plan.current.get("AAAA", []))
    try:
        serial, servers = secondaries.check(
            k.name, k.zone, k.server, k.port, cfg.name_timeout, cfg.secondary_servers,
            primary, _updates(history.get(reconcile.pool_id(k))),
            keyring(cfg.tsig))
    except SpduError as e:
        return dataclasses.replace(ps, servers_error=str(e), now=now)
    return dataclasses.replace(ps, serial=serial, servers=tuple(servers), now=now)
