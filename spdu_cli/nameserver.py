"""This site's own authoritative server, as reconcile talks to it: the pool's
A and AAAA RRsets read straight from it (never a cache), and one RFC 2136
UPDATE per zone whose prerequisites pin the RRsets to what was read; every
answer checked (rcode, TSIG) and every exchange under nameTimeout.
"""

from __future__ import annotations

import ipaddress
import logging
import time

from spdu_cli.entry import canon
from spdu_cli.errors import ConfigError, ServiceUnavailable
from spdu_cli.plan import RDTYPES, Plan, Pool
from spdu_cli.tsig import TsigKey

log = logging.getLogger(__name__)


# -- exchanges -----------------------------------------------------------------------------


class PrerequisiteFailed(Exception):
    pass


class _UnsignedAnswer(ConfigError):
    """A signed message got an answer without TSIG: the key is not accepted,
    or (Knot, PowerDNS) the server does not serve the zone at all."""


def keyring(key: TsigKey | None):
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
    wrong = None  # an answer with our id that is not one to our question
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.sendto(message.to_wire(), server)
        while True:
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    raise TimeoutError
                sock.settimeout(left)
                wire, source = sock.recvfrom(65535)
            except TimeoutError:
                if wrong is not None:
                    raise dns.exception.FormError(wrong) from None
                raise dns.exception.Timeout(timeout=pool.timeout) from None
            if (str(ipaddress.ip_address(source[0])), source[1]) != server:
                continue  # not from the server: not an answer
            answer = dns.message.from_wire(wire, keyring=message.keyring,
                                           request_mac=message.mac)
            if message.is_response(answer):
                return answer
            # another query's answer (a late one): wait on for ours
            if answer.id == message.id:
                wrong = "it does not answer the question asked"


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

        answer = dns.query.tcp(message, pool.key.server, timeout=pool.timeout,
                               port=pool.key.port)
        if answer.flags & dns.flags.TC:
            raise malformed(pool, what, "truncated (TC) over TCP, where nothing may be cut")
        return answer
    except dns.exception.Timeout:
        raise ServiceUnavailable(
            f"DNS server {server} did not answer {what} within {pool.timeout:g} s",
            "is it running and listening there? (nameServer, namePort, nameTimeout)",
        ) from None
    except EOFError:  # over TCP: the connection closed before the answer came
        raise ServiceUnavailable(
            f"DNS server {server} closed the connection without answering {what}",
            "see the server's log; an UPDATE may have been applied all the same: the next"
            " run reads the pool again",
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
        if type(e).__name__ == "BadResponse":  # dns.query's is_response: id, opcode, question
            raise malformed(pool, what, "it does not answer the question asked") from None
        raise malformed(pool, what, str(e)) from None
    except OSError as e:
        raise ServiceUnavailable(
            f"cannot reach DNS server {server} for {what}: {e.strerror or e}") from None
    except dns.exception.DNSException as e:
        raise ServiceUnavailable(f"DNS server {server} failed {what}: {e}") from None


class MalformedAnswer(ServiceUnavailable):
    """An answer that cannot be taken for what was asked (69): never read as
    the RRset, so it is not blamed on a concurrent writer."""


def malformed(pool: Pool, what: str, why: str) -> MalformedAnswer:
    return MalformedAnswer(f"DNS server {pool.key.where} sent a malformed answer to {what}: {why}",
                           "is something between spdu and the server (a proxy, a middlebox)"
                           " changing the answers? (nameServer, namePort)")


_RRSIG = 46


def _strict(pool: Pool, query, answer, what: str) -> None:
    """Only the name and type asked (and its RRSIGs) may be in the answer
    section (no CNAME, no other name's records): anything else is not this RRset."""
    q = query.question[0]
    if not query.is_response(answer):  # the question echoed (and id, opcode)
        raise malformed(pool, what, "it does not answer the question asked")
    for rrset in answer.answer:
        rdtype = rrset.covers if rrset.rdtype == _RRSIG else rrset.rdtype  # its signatures
        if (rrset.name, rrset.rdclass, rdtype) != (q.name, q.rdclass, q.rdtype):
            import dns.rdatatype

            raise malformed(pool, what, f"its answer section holds {rrset.name.to_text(True)}"
                            f" {dns.rdatatype.to_text(rrset.rdtype)}, not only"
                            f" {q.name.to_text(True)} {dns.rdatatype.to_text(q.rdtype)}")


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


def read_current(pool: Pool, answers: dict | None = None) -> dict[str, list[str]]:
    """The pool's A and AAAA RRsets, from the authoritative server itself.
    Asked with the DNSSEC OK bit: a signed zone's answers carry their RRSIGs
    (and NSEC records); `answers`, when given, gets each rdtype's answer."""
    import dns.flags
    import dns.message
    import dns.name
    import dns.rcode
    import dns.rdataclass
    import dns.rdatatype

    out: dict[str, list[str]] = {}
    for rdtype in RDTYPES:
        q = dns.message.make_query(pool.key.name + ".", rdtype, want_dnssec=True)
        q.flags &= ~dns.flags.RD  # never recursion: the zone's own data
        if pool.tsig:
            q.use_tsig(keyring(pool.tsig))
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
        _strict(pool, q, answer, what)
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
        out[rdtype] = sorted((canon(r.address) for r in rrset),
                             key=ipaddress.ip_address) if rrset else []
        if answers is not None:
            answers[rdtype] = answer
    return out


def read_dnskey(pool: Pool):
    """The answer of the pool zone's server to a query for the zone's DNSKEY
    RRset, with its RRSIGs: what a signed pool's signatures are checked with."""
    import dns.flags
    import dns.message
    import dns.rcode

    q = dns.message.make_query(pool.key.zone + ".", "DNSKEY", want_dnssec=True)
    q.flags &= ~dns.flags.RD
    if pool.tsig:
        q.use_tsig(keyring(pool.tsig))
    what = f"the query for {pool.key.zone} DNSKEY"
    answer = _exchange(pool, q, what, tcp=False)
    if not q.is_response(answer):
        raise malformed(pool, what, "it does not answer the question asked")
    if answer.rcode() != dns.rcode.NOERROR or not answer.flags & dns.flags.AA:
        raise ServiceUnavailable(
            f"DNS server {pool.key.where} answered {dns.rcode.to_text(answer.rcode())}"
            f"{'' if answer.flags & dns.flags.AA else ' without AA'} to {what}")
    return answer


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
    u.use_edns(0)  # so that the server may say why it refuses (RFC 8914 extended errors)
    if pool.tsig:
        u.use_tsig(keyring(pool.tsig))
    names = ", ".join(p.key.name for p, _ in items)
    answer = _exchange(pool, u, f"the update of {names} in zone {pool.key.zone}")
    rcode = answer.rcode()
    if rcode == dns.rcode.NOERROR:
        return
    text = dns.rcode.to_text(rcode)
    where = f"DNS server {pool.key.where}"
    if rcode in (dns.rcode.YXRRSET, dns.rcode.NXRRSET, dns.rcode.YXDOMAIN, dns.rcode.NXDOMAIN):
        raise PrerequisiteFailed(text)
    if rcode == dns.rcode.REFUSED and any(e.code == 14 for e in answer.extended_errors()):
        # EDE 14, Not Ready: Knot says so of a zone whose updates are frozen
        raise ServiceUnavailable(
            f"{where} REFUSED the update of {names}: zone {pool.key.zone} is not ready for"
            " updates (extended error Not Ready: frozen?)",
            f"Knot: `knotc zone-status {pool.key.zone}` shows it, `knotc zone-thaw"
            f" {pool.key.zone}` lets updates in again; the change is sent once it can be")
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
