"""The verdict on a signed pool's answers (spdu_cli.signatures), over answers
built and signed here with dnspython: pure logic, no server. What real
servers serve is in tests/test_dnssec.py."""

from __future__ import annotations

import time

import dns.dnssec
import dns.message
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from spdu_cli.signatures import problem, seen

ZONE = "pool.domain.tld"
NAME = f"api.{ZONE}"
APEX = dns.name.from_text(ZONE + ".")
NOW = time.time()


def key(flags: int = 257):
    private = ec.generate_private_key(ec.SECP256R1())
    return private, dns.dnssec.make_dnskey(private.public_key(), "ECDSAP256SHA256", flags)


KSK, OTHER = key(), key()


def signed(rrset, signer=KSK, lifetime: float = 3600):
    sig = dns.dnssec.sign(rrset, signer[0], APEX, signer[1], inception=NOW - 60,
                          expiration=NOW + lifetime)
    return dns.rrset.from_rdata(rrset.name, rrset.ttl, sig)


def rrset(owner: str, rdtype: str, *texts: str, ttl: int = 5):
    return dns.rrset.from_text(owner + ".", ttl, "IN", rdtype, *texts)


def answer(rdtype: str, answer=(), authority=()):
    q = dns.message.make_query(NAME + ".", rdtype, want_dnssec=True)
    r = dns.message.make_response(q)
    r.answer += list(answer)
    r.authority += list(authority)
    return r


def dnskey(*keys, signer=KSK):
    keyset = dns.rrset.from_rdata(APEX, 2, *(k[1] for k in keys))
    return answer("DNSKEY", [keyset, signed(keyset, signer)])


def pool_a(*sigs_from, lifetime=3600, tamper=False):
    a = rrset(NAME, "A", "192.0.2.1", "192.0.2.2")
    sigs = [signed(a, s, lifetime) for s in sigs_from]
    if tamper:
        a = rrset(NAME, "A", "192.0.2.1", "192.0.2.3")
    return answer("A", [a, *sigs])


SOA = rrset(ZONE, "SOA", f"ns1.{ZONE}. hostmaster.{ZONE}. 1 60 30 600 5")


def empty_aaaa(denial):
    """NODATA for the pool's AAAA: the SOA and `denial` (NSEC or NSEC3), signed."""
    return answer("AAAA", authority=[SOA, signed(SOA), denial, signed(denial)])


def nsec(owner: str, types: str):
    return rrset(owner, "NSEC", f"ns1.{ZONE}. {types}")


def nsec3(owner_name: str, types: str):
    h = dns.dnssec.nsec3_hash(owner_name, b"", 0, 1).lower()
    return rrset(f"{h}.{ZONE}", "NSEC3", f"1 0 0 - {h[:-1]}0 {types}")


def verdict(a, aaaa, keys=None):
    return problem(ZONE, NAME, ["A", "AAAA"], {"A": a, "AAAA": aaaa},
                   keys or dnskey(KSK), NOW)


GOOD_AAAA = empty_aaaa(nsec(NAME, "A RRSIG NSEC"))


def test_good_answers_pass():
    assert verdict(pool_a(KSK), GOOD_AAAA) is None


def test_a_changed_rrset_under_an_old_signature_does_not_validate():
    why = verdict(pool_a(KSK, tamper=True), GOOD_AAAA)
    assert why == (f"the signatures of {NAME} A do not validate: the RRSIG of key"
                   f" {dns.dnssec.key_id(KSK[1])}: verify failure")


def test_an_rrset_without_rrsig_is_named():
    assert verdict(pool_a(), GOOD_AAAA) == (
        f"the signatures of {NAME} A are missing: the RRset comes without an RRSIG")


def test_a_signature_by_a_key_not_in_the_dnskey_rrset():
    assert verdict(pool_a(OTHER), GOOD_AAAA) == (
        f"the signatures of {NAME} A do not validate: the RRSIG of key"
        f" {dns.dnssec.key_id(OTHER[1])}: no such key in the DNSKEY RRset")


def test_one_good_signature_is_enough_as_in_a_rollover():
    assert verdict(pool_a(OTHER, KSK), GOOD_AAAA) is None


@pytest.mark.parametrize("lifetime, bad", [(9, True), (11, False)])
def test_a_signature_must_outlive_twice_the_ttl(lifetime, bad):
    why = verdict(pool_a(KSK, lifetime=lifetime), GOOD_AAAA)  # TTL 5 s
    assert (why is not None) is bad
    if bad:
        assert f"the signatures of {NAME} A expire at " in why
        assert "within twice the RRset's TTL (2 x 5 s)" in why


def test_a_dnskey_rrset_that_is_not_self_signed():
    why = verdict(pool_a(KSK), GOOD_AAAA, keys=dnskey(KSK, signer=OTHER))
    assert why.startswith(f"the signatures of {ZONE} DNSKEY do not validate:")


def test_no_dnskey_rrset_at_all():
    assert verdict(pool_a(KSK), GOOD_AAAA, keys=answer("DNSKEY")) == (
        f"its answers carry RRSIGs, but it serves no DNSKEY RRset for {ZONE}")


def test_a_stale_nsec_that_lists_the_type_said_empty():
    why = verdict(pool_a(KSK), empty_aaaa(nsec(NAME, "A AAAA RRSIG NSEC")))
    assert why == (f"it answers that {NAME} has no AAAA records, but the NSEC record of the"
                   " name lists AAAA (A AAAA RRSIG NSEC): a stale proof of absence")


def test_an_empty_answer_with_no_nsec_of_the_name():
    """What PowerDNS serves once a removal cleared the name's ordername: the apex's NSEC."""
    why = verdict(pool_a(KSK), empty_aaaa(nsec(ZONE, "NS SOA RRSIG NSEC DNSKEY")))
    assert why == (f"it answers that {NAME} has no AAAA records with no proof of absence"
                   " (an NSEC or NSEC3 record of the name)")


def test_nsec3_of_the_name():
    assert verdict(pool_a(KSK), empty_aaaa(nsec3(NAME, "A RRSIG"))) is None
    why = verdict(pool_a(KSK), empty_aaaa(nsec3(NAME, "A AAAA RRSIG")))
    assert why is not None and "the NSEC3 record of the name lists AAAA" in why


def test_the_proof_must_be_signed_too():
    denial = nsec(NAME, "A RRSIG NSEC")
    aaaa = answer("AAAA", authority=[SOA, signed(SOA), denial])
    assert verdict(pool_a(KSK), aaaa) == (
        f"the signatures of {NAME} NSEC are missing: the RRset comes without an RRSIG")


def test_an_answer_that_would_cost_too_many_verifications_is_not_checked():
    """KeyTrap's shape: more signatures to try than MAX_VERIFY; each is refused."""
    a = rrset(NAME, "A", "192.0.2.1")
    sigs = [dns.dnssec.sign(a, KSK[0], APEX, KSK[1], inception=NOW - 60 - i,
                            expiration=NOW + 3600) for i in range(40)]
    why = verdict(answer("A", [a, dns.rrset.from_rdata(a.name, 5, *sigs)]), GOOD_AAAA)
    assert why == (f"the signatures of {NAME} A were not all checked: more than 32 signature"
                   " verifications (40 RRSIGs, 1 DNSKEY), which resolvers refuse too")


def test_nsec3_with_more_iterations_than_resolvers_take():
    h = dns.dnssec.nsec3_hash(NAME, b"", 200, 1).lower()
    denial = rrset(f"{h}.{ZONE}", "NSEC3", f"1 0 200 - {h[:-1]}0 A RRSIG")
    assert verdict(pool_a(KSK), empty_aaaa(denial)) == (
        "its NSEC3 records use 200 iterations: resolvers do not validate NSEC3 with more"
        " than 150 (RFC 9276)")


def test_seen_tells_signed_answers_and_their_earliest_expiry():
    plain = answer("A", [rrset(NAME, "A", "192.0.2.1")])
    assert seen({"A": plain}).signed is False and seen({"A": plain}).expires is None
    got = seen({"A": pool_a(KSK, lifetime=100), "AAAA": GOOD_AAAA})
    assert got.signed is True and got.expires == int(NOW + 100)
