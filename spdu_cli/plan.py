"""What reconcile would do, as data: the pure decision (`decide`) of which
addresses join or leave a pool, the pools themselves (one RRset name per zone
and server), and each pool's Plan, rendered as an nsupdate script or JSON.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from spdu_cli.config import TargetConfig
from spdu_cli.entry import canon, standing
from spdu_cli.errors import ConfigError, SpduError
from spdu_cli.health import State
from spdu_cli.selfcheck import KEPT, SELF, judge
from spdu_cli.tsig import TsigKey

if TYPE_CHECKING:
    from spdu_cli.signatures import Signatures

RDTYPES = ("A", "AAAA")


def rdtype_of(address: str) -> str:
    return "AAAA" if ipaddress.ip_address(address).version == 6 else "A"


# -- the pure decision -------------------------------------------------------------


@dataclass(frozen=True)
class TargetView:
    """What reconcile knows of one target: its spool entry, seen through its config."""

    target: str
    state: State
    addresses: tuple[str, ...]  # the addresses the last probe checked
    checked: float | None  # last conclusive probe
    configured: tuple[str, ...]  # targetIP, when set
    ttl: int
    stale_after: float
    maint_until: float | None = None  # in maintenance (`spdu maint`) until then
    retired: tuple[str, ...] = ()  # its addresses before they changed: to be removed


@dataclass(frozen=True)
class Change:
    action: str  # "add" or "delete"
    address: str
    ttl: int
    target: str | None  # None: this site's own address (selfIP), or one pruned
    pruned: bool = False  # an address of no target, removed on request (--prune)

    @property
    def rdtype(self) -> str:
        return rdtype_of(self.address)


@dataclass(frozen=True)
class Decision:
    changes: tuple[Change, ...]
    left_as_is: tuple[tuple[str, str], ...]  # (target, why): DNS is not judged for it
    blocked: str | None  # set when the change is withheld (it would empty the pool)
    unmanaged: tuple[str, ...] = ()  # in the pool, but neither selfIP nor any target's

    @property
    def left(self) -> dict[str, str]:
        return dict(self.left_as_is)

    @property
    def notes(self) -> tuple[str, ...]:
        return tuple(f"{target}: {why}" for target, why in self.left_as_is)


def decide(
    current: Iterable[str],
    targets: Iterable[TargetView],
    self_ips: Iterable[str],
    self_ttl: int,
    now: float,
    prune: bool = False,
    self_view: TargetView | None = None,
    held: Mapping[str, str] | None = None,
) -> Decision:
    """The minimal change that makes the pool agree with the targets' states.

    Up targets' probed addresses must be present, down targets' absent, and
    so are those of a target in maintenance (probed or configured, whatever
    its state; a maintenance past its end is over even before it is cleared);
    unknown or stale targets (a probe time in the future is stale too) are
    left as they are; selfIP is present, unless `self_view` (the self-check)
    is down or in maintenance while another target of the pool is up as this
    site sees it (not one only `held`): then it is absent (selfcheck.judge);
    an address spdu does not manage is never touched (it is named in
    `unmanaged`, and removed only with `prune`); and a change that would
    leave the pool without any address is withheld. `held`: down targets
    kept in the pool (the quorum, spdu_cli/quorum.py) -> why; it never
    removes anything.
    """
    current = {canon(a) for a in current}
    targets = list(targets)
    unmanaged = unmanaged_of(current, targets, self_ips)
    present: dict[str, tuple[int, str | None]] = {}
    absent: dict[str, str] = {}
    up = False  # a target this site itself sees up (fresh, not in maintenance): not one held
    left = []
    for t in targets:
        for a in t.retired:  # no longer this target's, whatever its state
            absent.setdefault(canon(a), t.target)
        kind, stale = standing(t, now)  # (selfcheck.judge reads self by the same rule)
        if kind == "maint":
            for a in sorted({canon(a) for a in t.addresses + t.configured}):
                absent.setdefault(a, t.target)
            continue
        if kind == "unknown":
            # (after `reconcile --probe` too: a probe that gave no verdict says why)
            left.append((t.target, ("state unknown; its records are left as they are"
                                    f" (`spdu probe {t.target}` says why it has no verdict)")))
            continue
        if kind == "stale":
            left.append((t.target, (f"last probed {stale} (staleAfter={t.stale_after:g});"
                                    " its records are left as they are (`spdu reconcile"
                                    " --probe` probes it first)")))
            continue
        if kind == "changed":
            left.append((t.target, ("targetIP changed since the last probe; waiting for a"
                                    " probe of the new addresses")))
            continue
        probed = {canon(a) for a in t.addresses}
        if held and t.state is State.DOWN and t.target in held:
            left.append((t.target, held[t.target]))
        up = up or (t.state is State.UP and bool(probed))
        for a in sorted(probed):
            if t.state is State.UP or (held and t.target in held):
                present.setdefault(a, (t.ttl, t.target))
            else:
                absent.setdefault(a, t.target)
    self_state, why = judge(self_view, now)
    # down, and a peer is up as seen from here: one only held (the quorum) does not count,
    # for a view can keep an address in, never remove one (this site's own selfIP included)
    leaves = self_state is State.DOWN and up
    if why or (self_state is State.DOWN and not leaves):
        left.append((SELF, why or KEPT))
    for a in self_ips:
        if leaves:
            absent[canon(a)] = SELF  # (an up target's address that selfIP names stays)
        else:
            present[canon(a)] = (self_ttl, SELF if self_state is State.UP else None)
    changes = [
        Change("add", a, ttl, who) for a, (ttl, who) in sorted(present.items()) if a not in current
    ]
    changes += [
        Change("delete", a, 0, who)
        for a, who in sorted(absent.items())
        if a in current and a not in present  # up (or selfIP) wins over down
    ]
    if prune:
        changes += [Change("delete", a, 0, None, pruned=True) for a in unmanaged]
    after = (current - {c.address for c in changes if c.action == "delete"}) | {
        c.address for c in changes if c.action == "add"
    }
    if changes and not after:
        gone = " ".join(c.address for c in changes)
        return Decision(
            (),
            tuple(left),
            f"removing {gone} would leave the pool with no address at all; nothing is sent"
            " (set selfIP so that this site always stays in its own pool)",
            unmanaged,
        )
    return Decision(tuple(changes), tuple(left), None, unmanaged)


def unmanaged_of(current: set[str], targets: list[TargetView],
                 self_ips: Iterable[str]) -> tuple[str, ...]:
    """The pool's addresses that are neither selfIP nor any target's (probed,
    targetIP or retired): a target removed from targets=, or added by hand.
    Nothing while a target's addresses are not known yet (never probed, no
    targetIP): its address cannot be told from another."""
    owned = {canon(a) for a in self_ips}
    for t in targets:
        if not (t.addresses or t.configured):
            return ()
        owned |= {canon(a) for a in t.addresses + t.configured + t.retired}
    ip = ipaddress.ip_address
    return tuple(sorted(current - owned, key=lambda a: (ip(a).version, ip(a))))


# -- pools and plans -----------------------------------------------------------------


@dataclass(frozen=True)
class PoolKey:
    name: str
    zone: str
    server: str
    port: int

    @property
    def where(self) -> str:
        return f"{self.server} port {self.port}"


@dataclass
class Pool:
    key: PoolKey
    tsig: TsigKey | None
    timeout: float
    self_ips: tuple[str, ...]
    self_ttl: int
    targets: list[TargetConfig] = field(default_factory=list)
    self_check: TargetConfig | None = None  # the pseudo-target `self`, selfCheck=yes


def zone_script(plans: list[Plan]) -> str:
    """One nsupdate/knsupdate block for plans of one zone on one server: what
    one UPDATE carries (no key: pass -k or -y)."""
    first = plans[0].pool
    lines = [f"; {', '.join(p.pool.name for p in plans)} on {first.where}"]
    if plans[0].signed_with:
        lines.append(f"; sign with the key {plans[0].signed_with}: nsupdate -k KEYFILE,"
                     " or knsupdate -k the one-line form (keygen's .knsupdate twin)")
    lines += [f"server {first.server} {first.port}", f"zone {first.zone}."]
    for p in plans:
        lines += p.prereq_lines()
    for p in plans:
        lines += p.update_lines()
    lines.append("send")
    return "\n".join(lines) + "\n"


def zones(all_pools: list[Pool]) -> list[list[Pool]]:
    """Pools whose changes go in one UPDATE: one zone, one server, one key."""
    out: dict[tuple, list[Pool]] = {}
    for pool in all_pools:
        k = pool.key
        out.setdefault((k.zone, k.server, k.port, pool.tsig and pool.tsig.name), []).append(pool)
    return list(out.values())


def pools(cfgs: Iterable[TargetConfig]) -> list[Pool]:
    """Group targets by the RRset they belong to (poolName and nameServer may
    differ per target)."""
    out: dict[PoolKey, Pool] = {}
    cfgs = list(cfgs)
    own = next((c for c in cfgs if c.is_self), None)
    for c in cfgs:
        if c.is_self:
            continue
        key = PoolKey(c.pool_name, c.pool_zone, str(c.name_server), c.name_port)
        if key not in out:
            out[key] = Pool(key, c.tsig, c.name_timeout, (), c.name_ttl)
        pool = out[key]
        if (pool.tsig and pool.tsig.name) != (c.tsig and c.tsig.name):
            raise ConfigError(
                f"targets {pool.targets[0].target} and {c.target} update {c.pool_name} on "
                f"{key.where} with different TSIG keys",
                "use one key per pool and server",
            )
        pool.self_ips = tuple(dict.fromkeys(pool.self_ips + tuple(str(i) for i in c.self_ips)))
        pool.targets.append(c)
        pool.self_check = own if pool.self_ips else None
    return list(out.values())


@dataclass
class Plan:
    """One pool's diff, as data: rendered as a script, as JSON, or sent."""

    pool: PoolKey
    signed_with: str | None
    current: dict[str, list[str]]  # rdtype -> addresses, as read from the server
    decision: Decision
    sent: bool = False
    attempts: int = 0
    error: SpduError | None = None
    serial_after: int | None = None  # the zone's serial once sent, when it could be read
    tsig: dict | None = None  # TsigKey.to_json() of the key it is signed with
    dnssec: Signatures | None = None  # what the answers read show of DNSSEC

    @property
    def changes(self) -> tuple[Change, ...]:
        return self.decision.changes

    def after(self) -> set[str] | None:
        """The pool's addresses once this plan is done; None when not known (an
        error, or changes that were not sent)."""
        if self.error is not None or (self.changes and not self.sent):
            return None
        now = set(self.current.get("A", []) + self.current.get("AAAA", []))
        now -= {c.address for c in self.changes if c.action == "delete"}
        return now | {c.address for c in self.changes if c.action == "add"}

    @property
    def in_sync(self) -> bool:
        """DNS was read and already agrees (not: the read failed)."""
        return self.error is None and not self.changes and not self.decision.blocked

    def prereq_lines(self) -> list[str]:
        name = self.pool.name + "."
        lines = []
        for rdtype in RDTYPES:
            addrs = self.current.get(rdtype, [])
            if addrs:
                lines += [f"prereq yxrrset {name} IN {rdtype} {a}" for a in addrs]
            else:
                lines.append(f"prereq nxrrset {name} IN {rdtype}")
        return lines

    def update_lines(self) -> list[str]:
        name = self.pool.name + "."
        return [
            f"update add {name} {c.ttl} IN {c.rdtype} {c.address}" if c.action == "add"
            else f"update delete {name} IN {c.rdtype} {c.address}"
            for c in self.changes
        ]

    def script(self) -> str:
        """The nsupdate/knsupdate script this plan sends (no key: pass -k or -y)."""
        return zone_script([self])

    def to_json(self) -> dict[str, Any]:
        return {
            "pool": self.pool.name,
            "zone": self.pool.zone,
            "server": self.pool.server,
            "port": self.pool.port,
            "tsig": self.tsig,
            "signed_with": self.signed_with,  # deprecated, as `tsig` in words: removed next release
            "current": self.current,
            "in_sync": self.in_sync,
            "changes": [
                {"action": c.action, "type": c.rdtype, "address": c.address,
                 "ttl": c.ttl if c.action == "add" else None, "target": c.target,
                 "pruned": c.pruned}
                for c in self.changes
            ],
            "unmanaged": list(self.decision.unmanaged),
            "notes": list(self.decision.notes),
            "left_alone": self.decision.left,
            "blocked": self.decision.blocked,
            "sent": self.sent,
            "attempts": self.attempts,
            "error": str(self.error) if self.error else None,
            "dnssec": self.dnssec.to_json() if self.dnssec else None,
        }
