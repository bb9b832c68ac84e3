"""Do the answers of a signed pool zone validate?

Reconcile reads the pool with the DNSSEC OK bit: RRSIGs in the answers tell
a signed zone from an unsigned one at no cost (`seen`). After an UPDATE to a
signed zone, `problem` validates the new RRsets with the zone's DNSKEY RRset,
as a validating resolver would, and says why clients would get SERVFAIL, or
that a signature expires within twice the TTL of the RRset it covers.
dns.dnssec (and `cryptography`, spdu's `dnssec` extra) is imported only then.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SOA, DNSKEY, RRSIG, NSEC, NSEC3 = 6, 48, 46, 47, 50
MARGIN = 2  # a signature must stay valid this many times the TTL of what it covers
# Answers are hostile too: many keys sharing a key tag times many signatures
# (KeyTrap, CVE-2023-50387) would cost a verification each, and NSEC3 iterations
# a hash each. Past these bounds an answer is a problem, not a CPU sink.
MAX_VERIFY = 32  # signature verifications in one check
MAX_ITERATIONS = 150  # NSEC3 iterations that resolvers still accept (RFC 9276)
# the words in problem()'s phrases that tell its kind (for the hint that goes with it)
DENIAL, EXPIRING = "proof of absence", "expire at"


class CannotValidate(Exception):
    """dnspython cannot validate here: `cryptography` is missing or too old."""


@dataclass
class Signatures:
    """What one pool's answers from its server show of DNSSEC."""

    signed: bool  # RRSIGs came with the answers
    expires: float | None = None  # the earliest RRSIG expiration among them (epoch)
    checked: bool = False  # validated with the zone's DNSKEY RRset (after an UPDATE)
    problem: str | None = None  # why they do not validate, or expire too soon

    def to_json(self) -> dict[str, Any]:
        from spdu_cli.entry import iso

        return {"signed": self.signed, "rrsig_expires": iso(self.expires),
                "checked": self.checked, "problem": self.problem}


def seen(answers) -> Signatures:
    """Signed or not, and the earliest signature expiry, from the answers
    (rdtype -> dns.message.Message) a read with the DO bit got."""
    ends = [sig.expiration for m in answers.values() for rrset in m.answer + m.authority
            if rrset.rdtype == RRSIG for sig in rrset]
    return Signatures(bool(ends), min(ends) if ends else None)


def problem(zone: str, name: str, rdtypes, answers, dnskey, now: float) -> str | None:
    """Why the answers for `name` of each of `rdtypes` (rdtype -> Message) do
    not validate with the zone's DNSKEY RRset (in the answer `dnskey`), as one
    phrase; None when they are good. Raises CannotValidate when dnspython
    cannot validate at all."""
    import dns.name

    try:  # with cryptography blocked or broken, dns.dnssec itself fails to import
        import dns.dnssec
    except ImportError as e:
        raise CannotValidate(str(e)) from None
    apex = dns.name.from_text(zone + ".")
    keys = _find(dnskey.answer, apex, DNSKEY)
    if keys is None:
        return f"its answers carry RRSIGs, but it serves no DNSKEY RRset for {zone}"
    keyring = {apex: keys}
    tags = [dns.dnssec.key_id(k) for k in keys]
    budget = [MAX_VERIFY]
    why = _validate(keys, dnskey.answer, keyring, now, tags, budget)
    if why:
        return f"the signatures of {zone} DNSKEY {why}"
    owner = dns.name.from_text(name + ".")
    for rdtype in rdtypes:
        m = answers[rdtype]
        rrset = _find(m.answer, owner, _code(rdtype))
        if rrset is not None:
            checks = [rrset]
        else:  # empty: the NSEC or NSEC3 record that says so must be signed too
            why = _denied(owner, rdtype, m.authority) if m.rcode() == 0 else None
            if why:
                return why
            checks = [r for r in m.authority if r.rdtype in (SOA, NSEC, NSEC3)]
        section = m.answer if rrset is not None else m.authority
        for r in checks:
            why = _validate(r, section, keyring, now, tags, budget)
            if why:
                return f"the signatures of {r.name.to_text(True)} {_text(r.rdtype)} {why}"
    return None


def _code(rdtype: str) -> int:
    import dns.rdatatype

    return dns.rdatatype.from_text(rdtype)


def _text(rdtype: int) -> str:
    import dns.rdatatype

    return dns.rdatatype.to_text(rdtype)


def _find(section, owner, rdtype: int):
    for rrset in section:
        if rrset.name == owner and rrset.rdtype == rdtype:
            return rrset
    return None


def _validate(rrset, section, keyring, now: float, tags: list[int],
              budget: list[int]) -> str | None:
    """None when one of the RRset's signatures in `section` validates and stays
    valid for MARGIN times its TTL; else why not. `tags`: the DNSKEY RRset's
    key tags; `budget`: the verifications left to this check."""
    import dns.dnssec

    sigs = [s for r in section if r.rdtype == RRSIG and r.covers == rrset.rdtype
            and r.name == rrset.name for s in r]
    if not sigs:
        return "are missing: the RRset comes without an RRSIG"
    failed, good = [], []
    for sig in sigs:
        cost = tags.count(sig.key_tag)  # dnspython tries each key with that tag
        if not cost:  # dnspython would say "verify failure"
            failed.append(f"the RRSIG of key {sig.key_tag}: no such key in the DNSKEY RRset")
            continue
        if cost > budget[0]:
            return (f"were not all checked: more than {MAX_VERIFY} signature verifications"
                    f" ({len(sigs)} RRSIGs, {len(tags)} DNSKEY{'s' * (len(tags) != 1)}),"
                    " which resolvers refuse too")
        budget[0] -= cost
        try:
            dns.dnssec.validate_rrsig(rrset, sig, keyring, now=now)
        except ImportError as e:  # dnspython's stand-in when cryptography is missing
            raise CannotValidate(str(e)) from None
        except (dns.dnssec.ValidationFailure, dns.dnssec.UnsupportedAlgorithm) as e:
            failed.append(f"the RRSIG of key {sig.key_tag}: {e}")
        else:
            good.append(sig.expiration)
    if not good:
        more = f"; and {len(failed) - 2} more" if len(failed) > 2 else ""
        return "do not validate: " + "; ".join(failed[:2]) + more
    left = max(good) - now
    if left < MARGIN * rrset.ttl:
        from spdu_cli.entry import duration, iso

        return (f"{EXPIRING} {iso(max(good))}, in {duration(left)}: within twice the"
                f" RRset's TTL ({MARGIN} x {rrset.ttl} s), so resolvers may keep it cached"
                " longer than its signature is valid")
    return None


def _denied(owner, rdtype: str, authority) -> str | None:
    """None when an NSEC or NSEC3 record of `owner` says it has no `rdtype`."""
    import dns.dnssec

    for r in authority:
        for rd in r:
            if r.rdtype == NSEC and r.name == owner:
                types = rd.to_text().split()[1:]
            elif r.rdtype == NSEC3 and rd.iterations > MAX_ITERATIONS:
                return (f"its NSEC3 records use {rd.iterations} iterations: resolvers do not"
                        f" validate NSEC3 with more than {MAX_ITERATIONS} (RFC 9276)")
            elif r.rdtype == NSEC3 and r.name.labels[0].decode().upper() == dns.dnssec.nsec3_hash(
                    owner, rd.salt, rd.iterations, rd.algorithm):
                types = rd.to_text().split()[5:]
            else:
                continue
            if rdtype in types:
                return (f"it answers that {owner.to_text(True)} has no {rdtype} records, but"
                        f" the {_text(r.rdtype)} record of the name lists {rdtype}"
                        f" ({' '.join(types)}): a stale {DENIAL}")
            return None
    return (f"it answers that {owner.to_text(True)} has no {rdtype} records with no {DENIAL}"
            " (an NSEC or NSEC3 record of the name)")
