"""Make the pool RRset on this site's own DNS server match the spool.

For each pool: read its A and AAAA RRsets straight from the authoritative
server, build a Plan (the minimal diff, as data), then render it (nsupdate
script, JSON) or send it as one RFC 2136 UPDATE whose prerequisites pin the
RRsets to what was read, so a concurrent writer is never overwritten blindly.
The decision itself (`decide`) is a pure function.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from spdu_cli.config import TargetConfig
from spdu_cli.errors import ConfigError, ServiceUnavailable, SpduError, TemporaryFailure
from spdu_cli.health import State
from spdu_cli.spool import Spool, SpoolEntry, iso, staleness
from spdu_cli.tsig import TsigKey

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3  # re-read and retry when a prerequisite fails (a concurrent writer)
SERIALS_KEPT = 16  # per pool, the serials of the last UPDATEs (for status --dns)
RDTYPES = ("A", "AAAA")


def _rdtype(address: str) -> str:
    return "AAAA" if ipaddress.ip_address(address).version == 6 else "A"


def _canon(address: str) -> str:
    return str(ipaddress.ip_address(address))


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
    target: str | None  # None: this site's own address (selfIP)

    @property
    def rdtype(self) -> str:
        return _rdtype(self.address)


@dataclass(frozen=True)
class Decision:
    changes: tuple[Change, ...]
    left_as_is: tuple[tuple[str, str], ...]  # (target, why): DNS is not judged for it
    blocked: str | None  # set when the change is withheld (it would empty the pool)

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
) -> Decision:
    """The minimal change that makes the pool agree with the targets' states.

    Up targets' probed addresses must be present, down targets' absent, and
    so are those of a target in maintenance (probed or configured, whatever
    its state; a maintenance past its end is over even before it is cleared);
    unknown or stale targets (a probe time in the future is stale too) are
    left as they are; selfIP is always present;
    an address spdu does not manage is never touched; and a change that would
    leave the pool without any address is withheld.
    """
    current = {_canon(a) for a in current}
    present: dict[str, tuple[int, str | None]] = {}
    absent: dict[str, str] = {}
    left = []
    for t in targets:
        for a in t.retired:  # no longer this target's, whatever its state
            absent.setdefault(_canon(a), t.target)
        if t.maint_until is not None and now < t.maint_until:
            for a in sorted({_canon(a) for a in t.addresses + t.configured}):
                absent.setdefault(a, t.target)
            continue
        if t.state is State.UNKNOWN:
            left.append((t.target, "state unknown; its records are left as they are"))
            continue
        stale = staleness(t.checked, now, t.stale_after)
        if stale:
            left.append((t.target, f"last probed {stale} (staleAfter={t.stale_after:g});"
                                   " its records are left as they are"))
            continue
        probed = {_canon(a) for a in t.addresses}
        if t.configured and {_canon(a) for a in t.configured} != probed:
            left.append((t.target, "targetIP changed since the last probe; waiting for a"
                                   " probe of the new addresses"))
            continue
        for a in sorted(probed):
            if t.state is State.UP:
                present.setdefault(a, (t.ttl, t.target))
            else:
                absent.setdefault(a, t.target)
    for a in self_ips:
        present[_canon(a)] = (self_ttl, None)
    changes = [
        Change("add", a, ttl, who) for a, (ttl, who) in sorted(present.items()) if a not in current
    ]
    changes += [
        Change("delete", a, 0, who)
        for a, who in sorted(absent.items())
        if a in current and a not in present  # up (or selfIP) wins over down
    ]
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
        )
    return Decision(tuple(changes), tuple(left), None)


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


def zone_script(plans: list[Plan]) -> str:
    """One nsupdate/knsupdate block for plans of one zone on one server: what
    one UPDATE carries (no key: pass -k or -y)."""
    first = plans[0].pool
    lines = [f"; {', '.join(p.pool.name for p in plans)} on {first.where}"]
    if plans[0].signed_with:
        lines.append(f"; sign with the key {plans[0].signed_with}: nsupdate -k KEYFILE")
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
    for c in cfgs:
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
            "signed_with": self.signed_with,
            "current": self.current,
            "in_sync": self.in_sync,
            "changes": [
                {"action": c.action, "type": c.rdtype, "address": c.address,
                 "ttl": c.ttl if c.action == "add" else None, "target": c.target}
                for c in self.changes
            ],
            "notes": list(self.decision.notes),
            "left_alone": self.decision.left,
            "blocked": self.decision.blocked,
            "sent": self.sent,
            "attempts": self.attempts,
            "error": str(self.error) if self.error else None,
        }


# -- DNS I/O -----------------------------------------------------------------------------


class _PrerequisiteFailed(Exception):
    pass


class _UnsignedAnswer(ConfigError):
    """A signed message got an answer without TSIG: the key is not accepted,
    or (Knot, PowerDNS) the server does not serve the zone at all."""


def _keyring(key: TsigKey | None):
    if key is None:
        return None
    import dns.tsig

    return dns.tsig.Key(key.name + ".", key.secret, key.algorithm + ".")


def _udp(pool: Pool, message):
    """dns.query.udp's exchange, without importing dns.query (and ssl, QUIC,
    zone transfers...) into every cron loop, which reads DNS this way only:
    one query, the answer from the server's own address and port to it (others
    are ignored), TSIG verified by from_wire; dns.exception.Timeout at the end."""
    import socket

    import dns.exception
    import dns.message

    server = (str(ipaddress.ip_address(pool.key.server)), pool.key.port)
    family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
    deadline = time.monotonic() + pool.timeout
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.sendto(message.to_wire(), server)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise dns.exception.Timeout(timeout=pool.timeout)
            sock.settimeout(left)
            try:
                wire, source = sock.recvfrom(65535)
            except TimeoutError:
                raise dns.exception.Timeout(timeout=pool.timeout) from None
            if (str(ipaddress.ip_address(source[0])), source[1]) != server:
                continue  # not from the server: not an answer
            answer = dns.message.from_wire(wire, keyring=message.keyring,
                                           request_mac=message.mac)
            if message.is_response(answer):
                return answer
            # another query's answer (a late one): wait on for ours


def _exchange(pool: Pool, message, what: str, tcp: bool = True):
    """Send one message and return the answer; every failure becomes one message."""
    import dns.exception
    import dns.flags
    import dns.message
    import dns.tsig

    server = pool.key.where
    try:
        if not tcp:
            answer = _udp(pool, message)
            if not answer.flags & dns.flags.TC:
                return answer
            # truncated: ask again over TCP
        import dns.query

        return dns.query.tcp(message, pool.key.server, timeout=pool.timeout, port=pool.key.port)
    except dns.exception.Timeout:
        raise ServiceUnavailable(
            f"DNS server {server} did not answer {what} within {pool.timeout:g} s",
            "is it running and listening there? (nameServer, namePort, nameTimeout)",
        ) from None
    except ConnectionRefusedError:
        raise ServiceUnavailable(
            f"DNS server {server} refused the connection for {what}",
            "is it running and listening there? (nameServer, namePort)",
        ) from None
    except dns.tsig.PeerBadKey:
        raise ConfigError(
            f"DNS server {server} rejected the TSIG key {pool.tsig.name} (BADKEY) for {what}",
            "the server does not know this key, or (Knot) its ACL does not let this key"
            f" update {pool.key.name} A/AAAA; install the key and the ACL on the server,"
            " or fix tsigKey/tsigKeyFile",
        ) from None
    except dns.tsig.PeerBadSignature:
        raise ConfigError(
            f"DNS server {server} rejected the signature of {what} with key {pool.tsig.name}"
            " (BADSIG)",
            "the secret differs between spdu and the server; install the same key on both",
        ) from None
    except (dns.tsig.PeerBadTime, dns.tsig.BadTime):
        raise ServiceUnavailable(
            f"DNS server {server} rejected {what}: the clocks differ too much (BADTIME)",
            "synchronise this host's clock and the server's (NTP)",
        ) from None
    except (dns.tsig.BadSignature, dns.message.UnknownTSIGKey):
        raise ConfigError(
            f"the answer of DNS server {server} to {what} carries a signature that does not"
            f" verify with key {pool.tsig.name if pool.tsig else '(none)'}",
            "check the key on both sides",
        ) from None
    except dns.exception.FormError as e:
        if "requires a TSIG" in str(e):
            raise _unsigned_answer(pool, what) from None
        raise ServiceUnavailable(f"DNS server {server} sent a malformed answer to {what}: {e}") from None
    except OSError as e:
        raise ServiceUnavailable(f"cannot reach DNS server {server} for {what}: {e.strerror or e}") from None
    except dns.exception.DNSException as e:
        raise ServiceUnavailable(f"DNS server {server} failed {what}: {e}") from None


def _unsigned_answer(pool: Pool, what: str) -> ConfigError:
    """A signed message got an unsigned answer: the server does not know the key,
    or (Knot: REFUSED, unsigned) does not serve the zone at all. An unsigned
    query for the zone's SOA tells which; the message says only what is known."""
    import dns.exception
    import dns.flags
    import dns.message
    import dns.query
    import dns.rcode
    import dns.rdatatype

    where, zone, key = pool.key.where, pool.key.zone, pool.tsig.name
    try:
        q = dns.message.make_query(zone + ".", "SOA")
        q.flags &= ~dns.flags.RD
        a = dns.query.udp(q, pool.key.server, timeout=pool.timeout, port=pool.key.port)
    except (dns.exception.DNSException, OSError):
        return ConfigError(
            f"DNS server {where} answered {what} without a signature",
            f"either it does not serve zone {zone} or it does not know the key {key}:"
            " check poolZone and nameServer, and install the key there",
        )
    soa = any(r.rdtype == dns.rdatatype.SOA for r in a.answer)
    if a.rcode() == dns.rcode.NOERROR and a.flags & dns.flags.AA and soa:
        return ConfigError(
            f"DNS server {where} serves zone {zone} but answered {what} without a"
            f" signature: it does not know the key {key}",
            "install the key on the server with the same secret, or fix tsigKey/tsigKeyFile"
            " (PowerDNS answers a wrong secret the same way; its log says which)",
        )
    got = dns.rcode.to_text(a.rcode()) + ("" if a.flags & dns.flags.AA else " without AA")
    return ConfigError(
        f"DNS server {where} does not serve zone {zone}: it answered {what} unsigned,"
        f" and {got} to a query for the zone's SOA",
        "check nameServer, namePort, poolName and poolZone, or add the zone to the server",
    )


def read_current(pool: Pool) -> dict[str, list[str]]:
    """The pool's A and AAAA RRsets, from the authoritative server itself."""
    import dns.flags
    import dns.message
    import dns.name
    import dns.rcode
    import dns.rdataclass
    import dns.rdatatype

    out: dict[str, list[str]] = {}
    for rdtype in RDTYPES:
        q = dns.message.make_query(pool.key.name + ".", rdtype)
        q.flags &= ~dns.flags.RD  # never recursion: the zone's own data
        if pool.tsig:
            q.use_tsig(_keyring(pool.tsig))
        what = f"the query for {pool.key.name} {rdtype}"
        try:
            answer = _exchange(pool, q, what, tcp=False)
        except _UnsignedAnswer:
            # Ask again unsigned to tell "this key is not accepted" from "this
            # server does not serve the zone" (refused unsigned either way).
            plain = dns.message.make_query(pool.key.name + ".", rdtype)
            plain.flags &= ~dns.flags.RD
            answer = _exchange(pool, plain, what, tcp=False)
            if answer.rcode() in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN) and (
                    answer.flags & dns.flags.AA):
                raise
        rcode = answer.rcode()
        if rcode == dns.rcode.REFUSED or (
            rcode in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN) and not answer.flags & dns.flags.AA
        ):
            raise ConfigError(
                f"DNS server {pool.key.where} is not authoritative for {pool.key.name}"
                f" ({dns.rcode.to_text(rcode)} without AA)",
                f"does it serve the zone {pool.key.zone}? (nameServer, poolName, poolZone)",
            )
        if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            raise ServiceUnavailable(
                f"DNS server {pool.key.where} answered {dns.rcode.to_text(rcode)} to {what}"
            )
        rrset = answer.get_rrset(
            answer.answer, dns.name.from_text(pool.key.name + "."), dns.rdataclass.IN,
            dns.rdatatype.from_text(rdtype),
        )
        out[rdtype] = sorted((_canon(r.address) for r in rrset), key=ipaddress.ip_address) if rrset else []
    return out


def send(items: list[tuple[Pool, Plan]]) -> None:
    """One UPDATE for the pools of one zone on one server, pinned to what was read."""
    import dns.rcode
    import dns.rdataset
    import dns.update

    pool = items[0][0]
    u = dns.update.UpdateMessage(pool.key.zone + ".")
    for p, plan in items:
        name = p.key.name + "."
        for rdtype in RDTYPES:
            addrs = plan.current.get(rdtype, [])
            if addrs:
                u.present(name, dns.rdataset.from_text("IN", rdtype, 0, *addrs))
            else:
                u.absent(name, rdtype)
    for p, plan in items:
        name = p.key.name + "."
        for c in plan.changes:
            if c.action == "add":
                u.add(name, c.ttl, c.rdtype, c.address)
            else:
                u.delete(name, c.rdtype, c.address)
    if pool.tsig:
        u.use_tsig(_keyring(pool.tsig))
    names = ", ".join(p.key.name for p, _ in items)
    answer = _exchange(pool, u, f"the update of {names} in zone {pool.key.zone}")
    rcode = answer.rcode()
    if rcode == dns.rcode.NOERROR:
        return
    text = dns.rcode.to_text(rcode)
    where = f"DNS server {pool.key.where}"
    if rcode in (dns.rcode.YXRRSET, dns.rcode.NXRRSET, dns.rcode.YXDOMAIN, dns.rcode.NXDOMAIN):
        raise _PrerequisiteFailed(text)
    if rcode == dns.rcode.REFUSED:
        who = f"the key {pool.tsig.name}" if pool.tsig else "unsigned updates from this host"
        # BIND: update-policy/allow-update; PowerDNS: dnsupdate=no, the source
        # address outside allow-dnsupdate-from and ALLOW-DNSUPDATE-FROM, or an
        # unsigned (or differently signed) update to a zone whose
        # TSIG-ALLOW-DNSUPDATE names a key.
        raise ConfigError(
            f"{where} REFUSED the update of {names}",
            f"its ACL or update-policy does not allow {who} to change {names} A/AAAA"
            f" in zone {pool.key.zone} (PowerDNS: dnsupdate=yes, allow-dnsupdate-from and"
            " the zone's TSIG-ALLOW-DNSUPDATE and ALLOW-DNSUPDATE-FROM metadata)",
        )
    if rcode in (dns.rcode.NOTAUTH, dns.rcode.NOTZONE):
        raise ConfigError(
            f"{where} answered {text} to the update of zone {pool.key.zone}",
            "it is not the primary of that zone, or the key is not accepted there"
            " (nameServer, poolZone, tsigKey)",
        )
    if rcode == dns.rcode.SERVFAIL:
        raise ServiceUnavailable(f"{where} answered SERVFAIL to the update of {pool.key.zone}",
                                 "see the server's log")
    raise ServiceUnavailable(f"{where} answered {text} to the update of {pool.key.zone}")


# -- the `spdu reconcile` step -----------------------------------------------------------


def _view(c: TargetConfig, entry: SpoolEntry) -> TargetView:
    return TargetView(
        c.target,
        entry.health.state,
        tuple(entry.addresses),
        entry.checked,
        tuple(str(ip) for ip in c.target_ips),
        c.name_ttl,
        c.stale_after,
        entry.maint.until if entry.maint else None,
        tuple(entry.retired),
    )


def _views(pool: Pool, entries: dict[str, SpoolEntry]) -> list[TargetView]:
    return [_view(c, entries[c.target]) for c in pool.targets]


def standing(site, entries: dict[str, SpoolEntry], now: float) -> tuple:
    """All that decide() makes of the configured targets' spool entries at
    `now`, as one comparable value (probe times only as fresh or stale, a
    maintenance as on or over). While it stays equal, pools that DNS agreed
    with still agree, unless someone else changed DNS: the cron loop then
    reads DNS less often (cycle.DRIFT_CHECK)."""
    out = []
    for name in site.targets:
        c = site.target(name)
        v = _view(c, entries[name])
        # decide() takes addresses as sets: a name that resolves in turns is no change
        out.append((replace(v, addresses=tuple(sorted(v.addresses)), checked=None,
                            configured=tuple(sorted(v.configured)), maint_until=None,
                            retired=tuple(sorted(v.retired))),
                    staleness(v.checked, now, v.stale_after) is None,
                    v.maint_until is not None and now < v.maint_until))
    return tuple(out)


def _plan(pool: Pool, entries: dict[str, SpoolEntry], attempt: int) -> Plan:
    """Read the pool's RRsets and decide."""
    current = read_current(pool)
    decision = decide(
        current["A"] + current["AAAA"], _views(pool, entries), pool.self_ips,
        pool.self_ttl, time.time(),
    )
    for note in decision.notes:
        log.debug("%s: %s", pool.key.name, note)
    if decision.blocked:
        log.error("%s on %s: %s", pool.key.name, pool.key.where, decision.blocked)
    signed = pool.tsig.describe() if pool.tsig else None
    return Plan(pool.key, signed, current, decision, attempts=attempt)


def reconcile_zone(group: list[Pool], entries: dict[str, SpoolEntry],
                   dry_run: bool) -> list[Plan]:
    """Read and decide each pool of one zone, then (unless dry-run) send all
    their changes as one UPDATE, re-reading when a concurrent writer changed
    the RRsets in between."""
    for attempt in range(1, MAX_ATTEMPTS + 1):
        plans = [_plan(pool, entries, attempt) for pool in group]
        items = [(pool, plan) for pool, plan in zip(group, plans) if plan.changes]
        if dry_run or not items:
            return plans
        try:
            send(items)
        except _PrerequisiteFailed as e:
            names = ", ".join(p.key.name for p, _ in items)
            log.warning("%s on %s changed while spdu was updating it (%s); reading it again",
                        names, group[0].key.where, e)
            continue
        # The serial the UPDATE made: status --dns tells from it since when a
        # secondary that has not caught up has lagged.
        from spdu_cli.secondaries import serial_of

        k = group[0].key
        serial = serial_of(k.server, k.port, k.zone, group[0].timeout, _keyring(group[0].tsig))
        for pool, plan in items:
            plan.sent = True
            plan.serial_after = serial
            for c in plan.changes:
                log.info("%s: %s %s %s on %s", c.target or "selfIP", c.action, pool.key.name,
                         c.address, pool.key.where)
        return plans
    names = ", ".join(p.key.name for p in group)
    raise TemporaryFailure(
        f"{names} on {group[0].key.where} kept changing under spdu ({MAX_ATTEMPTS} tries)",
        "another writer is updating the same RRset; try again",
    )


def record(store: Spool, plan: Plan, now: float) -> None:
    """Note each change in the target's latest transition, for the mail."""
    by_target: dict[str, list[Change]] = {}
    for c in plan.changes:
        if c.target:
            by_target.setdefault(c.target, []).append(c)
    for target, changes in by_target.items():
        entry = store.read(target)
        if entry.fresh or not entry.journal:
            continue
        latest = entry.journal[-1]
        wanted = {"add": ("up",), "delete": ("down", "maint")}[changes[0].action]
        if latest.get("to") not in wanted:  # it moved on since: not this transition's doing
            continue
        latest.setdefault("dns", []).extend(
            {
                "at": iso(now),
                "action": c.action,
                "address": c.address,
                "rrset": f"{plan.pool.name} {c.rdtype}",
                "server": f"{plan.pool.server}:{plan.pool.port}",
            }
            for c in changes
        )
        store.write(entry)


def run(site, dry_run: bool = False, lock_timeout: float = 5.0) -> list[Plan]:
    """Reconcile every pool of the configured targets. A failing pool does not
    stop the others: its Plan carries the error."""
    cfgs = [site.target(n) for n in site.select(())]
    store = Spool(site.spool_dir)
    store.check_dir(writing=not dry_run)  # the rule of every command, before anything is sent
    entries, unreadable = {}, []
    for c in cfgs:
        try:
            entries[c.target] = store.read(c.target)
        except TemporaryFailure as e:  # that target is unknown; the others go on
            log.error("%s; %s is left as it is", e, c.target)
            entries[c.target], unreadable = SpoolEntry(c.target), unreadable + [e]
    plans = []
    done: dict[str, set[str]] = {}  # target -> the addresses its pool holds now
    for group in zones(pools(cfgs)):
        try:
            got = reconcile_zone(group, entries, dry_run)
        except SpduError as e:
            log.error("%s", e)
            got = [Plan(pool.key, None, {}, Decision((), (), None), error=e) for pool in group]
        for pool, plan in zip(group, got):
            plans.append(plan)
            after = plan.after()
            if after is not None:
                done.update({c.target: after for c in pool.targets})
    if dry_run:
        if unreadable:
            raise unreadable[0]
        return plans
    now = time.time()
    try:
        with store.locked(lock_timeout):
            for p in plans:
                if p.sent:
                    record(store, p, now)
            forget_retired(store, {t: a for t, a in done.items() if entries[t].retired})
            note_runs(store, plans, now)
    except SpduError as e:
        if any(p.sent for p in plans):
            raise
        log.warning("%s (the reconcile record in the spool is not updated)", e)
    if unreadable:
        raise unreadable[0]
    return plans


def forget_retired(store: Spool, pool_now: dict[str, set[str]]) -> None:
    """Drop from each target's `retired` the addresses its pool no longer holds."""
    for target, after in pool_now.items():
        entry = store.read(target)
        still = [a for a in entry.retired if _canon(a) in after]
        if still != entry.retired and not entry.fresh:
            entry.retired = still
            store.write(entry)


def pool_id(key: PoolKey) -> str:
    return f"{key.name} {key.server}:{key.port}"


def note_runs(store: Spool, plans: list[Plan], now: float) -> None:
    """Keep, per pool, the time of the last successful run, how many UPDATEs
    were sent, and when the last ones made which serial (spoolDir/.reconcile.json),
    for the metrics and status --dns."""
    pools = store.read_reconcile()
    before = json.dumps(pools, sort_keys=True)
    for p in plans:
        rec = pools.setdefault(pool_id(p.pool), {
            "pool": p.pool.name, "server": f"{p.pool.server}:{p.pool.port}",
            "last_success": None, "updates": 0,
        })
        if p.error is None:
            rec["last_success"] = iso(now)
        rec["updates"] = int(rec.get("updates", 0)) + p.sent
        if p.sent and p.serial_after is not None:
            rec["serials"] = (list(rec.get("serials") or []) + [[iso(now), p.serial_after]])[
                -SERIALS_KEPT:]
    if json.dumps(pools, sort_keys=True) != before:  # nothing new: no write, no fsync
        store.write_reconcile(pools)
