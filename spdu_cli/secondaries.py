"""Is the pool the same on every authoritative server of its zone?

For `spdu status --dns`: the pool zone's servers (its NS set as the primary
serves it, or secondaryServers) are each asked for the zone's SOA serial and
the pool's A/AAAA RRsets, and compared with the primary's. A server behind
the primary has lagged since the first UPDATE spdu sent that it has not
applied (reconcile notes each UPDATE's resulting serial in the spool).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from spdu_cli.errors import ServiceUnavailable

SERIAL_HALF = 2**31
DNS_PORT = 53  # of a secondaryServers entry without @PORT (the NS set's: namePort)


def serial_lt(a: int, b: int) -> bool:
    """RFC 1982 serial number arithmetic: a comes before b."""
    return a != b and ((a < b and b - a < SERIAL_HALF) or (a > b and a - b > SERIAL_HALF))


@dataclass(frozen=True)
class ServerView:
    """One authoritative server of the pool zone, as it answered."""

    address: str
    port: int
    ns: str | None  # the NS name it was found under; None: from secondaryServers
    serial: int | None = None
    addresses: tuple[str, ...] = ()  # its A and AAAA records for the pool name
    error: str | None = None
    signed: bool | None = None  # its answers carry RRSIGs (DNSSEC)
    rrsig_expires: float | None = None  # the earliest of them expires then (epoch)

    @property
    def where(self) -> str:
        return f"{self.address} port {self.port}"


@dataclass(frozen=True)
class ServerStatus:
    view: ServerView
    in_step: bool  # same RRsets as the primary
    behind: bool  # its serial comes before the primary's
    lagging_since: float | None  # the first UPDATE it misses, when spdu sent it

    def lag(self, now: float) -> float | None:
        return None if self.lagging_since is None else max(0.0, now - self.lagging_since)

    def describe(self, now: float) -> str:
        v = self.view
        if v.error:
            return f"error: {v.error}"
        if self.in_step and not self.behind:
            return f"serial {v.serial}, in step"
        lag = self.lag(now)
        if self.behind:
            since = (f"lagging {lag:.0f} s" if lag is not None
                     else "lagging since before spdu's last recorded update")
            return f"serial {v.serial}, behind the primary: {since}"
        return f"serial {v.serial}, not behind but its pool differs"

    def to_json(self, now: float) -> dict[str, Any]:
        from spdu_cli.entry import iso

        v = self.view
        lag = self.lag(now)
        return {
            "server": f"{v.address}:{v.port}",
            "ns": v.ns,
            "serial": v.serial,
            "addresses": list(v.addresses),
            "in_step": self.in_step and not self.behind and v.error is None,
            "behind": self.behind,
            "lag_s": None if lag is None else round(lag, 1),
            "error": v.error,
            "signed": v.signed,
            "rrsig_expires": iso(v.rrsig_expires),
        }


def judge(view: ServerView, primary_serial: int | None, primary: set[str],
          updates: list[tuple[float, int]]) -> ServerStatus:
    """Compare one server with the primary. `updates` are (time sent, serial
    after) of spdu's UPDATEs of this zone, oldest first."""
    if view.error or view.serial is None or primary_serial is None:
        return ServerStatus(view, False, False, None)
    behind = serial_lt(view.serial, primary_serial)
    since = None
    if behind:
        missed = [at for at, serial in updates if serial_lt(view.serial, serial)]
        since = missed[0] if missed else None
    return ServerStatus(view, set(view.addresses) == primary, behind, since)


# -- DNS I/O --------------------------------------------------------------------------


def _ask(address: str, port: int, name: str, rdtype: str, timeout: float, tsig=None,
         dnssec: bool = False):
    import dns.flags
    import dns.message
    import dns.query

    q = dns.message.make_query(name, rdtype, want_dnssec=dnssec)
    q.flags &= ~dns.flags.RD
    if tsig is not None:
        q.use_tsig(tsig)
    r = dns.query.udp(q, address, port=port, timeout=timeout)
    if r.flags & dns.flags.TC:
        r = dns.query.tcp(q, address, port=port, timeout=timeout)
    return r


def _rdatas(answer, name: str, rdtype: str) -> list:
    import dns.name
    import dns.rdataclass
    import dns.rdatatype

    rrset = answer.get_rrset(answer.answer, dns.name.from_text(name), dns.rdataclass.IN,
                             dns.rdatatype.from_text(rdtype))
    return list(rrset) if rrset else []


def read_server(address: str, port: int, ns: str | None, zone: str, pool_name: str,
                timeout: float) -> ServerView:
    """The zone's serial, the pool's addresses and whether and how long its
    answers are signed on one server (asked with the DNSSEC OK bit: the SOA,
    the DNSKEY RRset, the pool's A and AAAA); any failure is noted in the
    view, never raised: one server must not hide the others."""
    import dns.exception
    import dns.flags
    import dns.rcode

    from spdu_cli.signatures import seen

    try:
        soa = _ask(address, port, zone + ".", "SOA", timeout, dnssec=True)
        if soa.rcode() != dns.rcode.NOERROR or not soa.flags & dns.flags.AA:
            return ServerView(address, port, ns, error=(
                f"not authoritative for {zone} ({dns.rcode.to_text(soa.rcode())}"
                f"{'' if soa.flags & dns.flags.AA else ' without AA'})"))
        serials = _rdatas(soa, zone + ".", "SOA")
        if not serials:
            return ServerView(address, port, ns, error=f"no SOA for {zone}")
        found, answers = [], {"SOA": soa}
        for rdtype in ("A", "AAAA"):
            answers[rdtype] = _ask(address, port, pool_name + ".", rdtype, timeout, dnssec=True)
            found += [str(ipaddress.ip_address(r.address))
                      for r in _rdatas(answers[rdtype], pool_name + ".", rdtype)]
        signed = seen(answers)
        if signed.signed:
            answers["DNSKEY"] = _ask(address, port, zone + ".", "DNSKEY", timeout, dnssec=True)
            signed = seen(answers)
        return ServerView(address, port, ns, serials[0].serial,
                          tuple(sorted(set(found), key=ipaddress.ip_address)),
                          signed=signed.signed, rrsig_expires=signed.expires)
    except dns.exception.Timeout:
        return ServerView(address, port, ns, error=f"no answer within {timeout:g} s")
    except (OSError, dns.exception.DNSException) as e:
        return ServerView(address, port, ns, error=str(e) or type(e).__name__)


def serial_of(server: str, port: int, zone: str, timeout: float, tsig=None) -> int | None:
    """The zone's SOA serial on a server; None when it cannot be read."""
    import dns.exception

    try:
        soa = _rdatas(_ask(server, port, zone + ".", "SOA", timeout, tsig), zone + ".", "SOA")
    except (OSError, dns.exception.DNSException):
        return None
    return soa[0].serial if soa else None


def ns_servers(server: str, port: int, zone: str, timeout: float) -> list[tuple[str, str]]:
    """(NS name, address) of the zone's NS set as `server` serves it: each
    name's A/AAAA from that server when it has them (in-zone names), else
    from this host's resolver."""
    import dns.exception

    try:
        names = [r.target.to_text() for r in
                 _rdatas(_ask(server, port, zone + ".", "NS", timeout), zone + ".", "NS")]
    except (OSError, dns.exception.DNSException) as e:
        why = str(e).rstrip(".") or type(e).__name__
        raise ServiceUnavailable(
            f"cannot read the NS set of {zone} from {server} port {port}: {why}",
            "set secondaryServers to list the servers to check") from None
    found: dict[str, list[str]] = {}
    for name in sorted(set(names)):
        addrs = []
        for rdtype in ("A", "AAAA"):
            try:
                addrs += [r.address for r in
                          _rdatas(_ask(server, port, name, rdtype, timeout), name, rdtype)]
            except (OSError, dns.exception.DNSException):
                pass
        found[name] = addrs
    outside = [n for n, a in found.items() if not a]  # out-of-zone names
    if outside:  # this host's resolver, all at once, none waited for past the timeout
        from spdu_cli.probe.names import resolve

        looked = resolve([n.rstrip(".") for n in outside], timeout)
        for name in outside:
            got = looked[name.rstrip(".")]
            found[name] = sorted(got) if isinstance(got, tuple) else []
    out = []
    for name, addrs in found.items():
        out += [(name, a) for a in addrs] if addrs else [(name, "")]
    return out


def check(pool_name: str, zone: str, server: str, port: int, timeout: float,
          configured: tuple[tuple[str, int | None], ...], primary: set[str],
          updates: list[tuple[float, int]], tsig=None) -> tuple[int | None, list[ServerStatus]]:
    """The primary's serial, and each authoritative server compared with it."""
    primary_serial = serial_of(server, port, zone, timeout, tsig)
    if configured:
        found = [(None, addr, p or DNS_PORT) for addr, p in configured]
    else:
        found = [(ns, addr, port) for ns, addr in ns_servers(server, port, zone, timeout)]
    out = []
    for ns, addr, p in found:
        if not addr:
            view = ServerView("?", p, ns, error=f"{ns} has no address")
        else:
            view = read_server(addr, p, ns, zone, pool_name, timeout)
        out.append(judge(view, primary_serial, primary, updates))
    return primary_serial, out
