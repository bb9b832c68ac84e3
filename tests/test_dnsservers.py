"""Smoke tests for the real DNS server fixtures (knotd, named, pdns_server)."""

from __future__ import annotations

import dns.exception
import pytest

from tests.dnsservers import KnotServer, PowerDNSServer, ServerError

API = "api.pool.domain.tld."
OTHER = "other.pool.domain.tld."


def failed_with(r, rcode: str) -> bool:
    """The update client failed and reported ``rcode``."""
    return r.returncode != 0 and rcode in (r.stdout + r.stderr)


# How each server denies an update its ACL/update-policy does not allow: named
# says REFUSED. Knot 3.2 says NOTAUTH; to a signed update outside the ACL it
# answers NOTAUTH with TSIG error BADKEY, which knsupdate prints as "status:
# BADKEY" and nsupdate as "NOTAUTH(BADKEY)".
def knot_denied(r) -> bool:
    return failed_with(r, "NOTAUTH") or failed_with(r, "BADKEY")


def bind_refused(r) -> bool:
    return failed_with(r, "REFUSED")


# --- knot: unsigned updates allowed -------------------------------------------

def test_knot_serves_initial_records(knot):
    assert knot.address == "127.0.0.1" and knot.port > 0
    assert knot.zone == "pool.domain.tld"
    assert knot.query("api", "A") == ["192.0.2.1", "192.0.2.2"]
    assert knot.query(OTHER, "A") == ["192.0.2.99"]
    assert knot.query("other", "TXT") == ['"not managed by spdu"']
    assert knot.query("nonexistent", "A") == []
    assert knot.serial() == 1
    assert knot.key[0] == "spdu-test" and knot.key[1] == "hmac-sha256"


@pytest.mark.parametrize("tool", ["nsupdate", "knsupdate"])
def test_knot_unsigned_update(knot, tool):
    r = knot.nsupdate(f"update add {API} 60 A 192.0.2.3", tool=tool)
    assert r.returncode == 0, r.stdout + r.stderr
    assert knot.query("api", "A") == ["192.0.2.1", "192.0.2.2", "192.0.2.3"]
    assert knot.serial() == 2
    r = knot.nsupdate(f"update delete {API} A 192.0.2.1", tool=tool)
    assert r.returncode == 0, r.stdout + r.stderr
    assert knot.query("api", "A") == ["192.0.2.2", "192.0.2.3"]
    assert knot.serial() == 3


# --- knot: signed updates only, api A/AAAA only ---------------------------------

@pytest.mark.parametrize("tool", ["nsupdate", "knsupdate"])
def test_knot_signed_only(knot_signed_only, tool):
    k = knot_signed_only
    assert knot_denied(k.nsupdate(f"update add {API} 60 A 192.0.2.3", tool=tool))
    assert k.serial() == 1

    r = k.nsupdate(f"update add {API} 60 A 192.0.2.3", key=k.key, tool=tool)
    assert r.returncode == 0, r.stdout + r.stderr
    assert k.query("api", "A") == ["192.0.2.1", "192.0.2.2", "192.0.2.3"]
    r = k.nsupdate(f"update add {API} 60 AAAA 2001:db8::1", key=k.key, tool=tool)
    assert r.returncode == 0, r.stdout + r.stderr
    assert k.query("api", "AAAA") == ["2001:db8::1"]
    assert k.serial() == 3

    assert knot_denied(k.nsupdate(f"update add {OTHER} 60 A 192.0.2.3", key=k.key, tool=tool))
    assert knot_denied(k.nsupdate(f'update add {API} 60 TXT "x"', key=k.key, tool=tool))
    assert k.query("other", "A") == ["192.0.2.99"]
    assert k.query("api", "TXT") == []
    assert k.serial() == 3


def test_knot_acl_denial_looks_like_badkey_to_dnspython(knot_signed_only):
    """What spdu's own client (dnspython) sees: a signed update that Knot's ACL
    denies fails like an unknown key (PeerBadKey), not with REFUSED."""
    import dns.query
    import dns.tsig
    import dns.tsigkeyring
    import dns.update

    k = knot_signed_only
    name, alg, secret = k.key
    ring = dns.tsigkeyring.from_text({name: (alg, secret)})
    u = dns.update.UpdateMessage(k.zone + ".", keyring=ring, keyalgorithm=alg)
    u.add("other", 60, "A", "192.0.2.5")
    with pytest.raises(dns.tsig.PeerBadKey):
        dns.query.udp(u, k.address, port=k.port, timeout=2)
    u = dns.update.UpdateMessage(k.zone + ".", keyring=ring, keyalgorithm=alg)
    u.add("api", 60, "A", "192.0.2.5")
    assert dns.query.udp(u, k.address, port=k.port, timeout=2).rcode() == 0
    assert "192.0.2.5" in k.query("api", "A")


def test_knot_wrong_key_is_rejected(knot_signed_only):
    k = knot_signed_only
    name, alg, _ = k.key
    r = k.nsupdate(f"update add {API} 60 A 192.0.2.3",
                   key=(name, alg, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="))
    assert r.returncode != 0
    assert k.query("api", "A") == ["192.0.2.1", "192.0.2.2"]


# --- bind ---------------------------------------------------------------------

def test_bind(bind):
    assert bind.query("api", "A") == ["192.0.2.1", "192.0.2.2"]
    assert bind.serial() == 1

    r = bind.nsupdate(f"update add {API} 60 A 192.0.2.3", key=bind.key)
    assert r.returncode == 0, r.stdout + r.stderr
    assert bind.query("api", "A") == ["192.0.2.1", "192.0.2.2", "192.0.2.3"]
    assert bind.serial() == 2

    assert bind_refused(bind.nsupdate(f"update add {API} 60 A 192.0.2.4"))
    assert bind_refused(bind.nsupdate(f"update add {OTHER} 60 A 192.0.2.4", key=bind.key))
    assert bind_refused(bind.nsupdate(f'update add {API} 60 TXT "x"', key=bind.key))
    assert bind.query("api", "A") == ["192.0.2.1", "192.0.2.2", "192.0.2.3"]
    assert bind.query("other", "A") == ["192.0.2.99"]
    assert bind.serial() == 2


def test_bind_knsupdate(bind):
    r = bind.nsupdate(f"update add {API} 60 A 192.0.2.5", key=bind.key, tool="knsupdate")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "192.0.2.5" in bind.query("api", "A")


# --- PowerDNS: TSIG-ALLOW-DNSUPDATE, or by source address -------------------------

@pytest.mark.parametrize("tool", ["nsupdate", "knsupdate"])
def test_pdns_signed_only(pdns, tool):
    assert pdns.query("api", "A") == ["192.0.2.1", "192.0.2.2"] and pdns.serial() == 1
    assert bind_refused(pdns.nsupdate(f"update add {API} 60 A 192.0.2.3", tool=tool))
    assert pdns.serial() == 1
    r = pdns.nsupdate(f"update add {API} 60 A 192.0.2.3", key=pdns.key, tool=tool)
    assert r.returncode == 0, r.stdout + r.stderr
    assert pdns.query("api", "A") == ["192.0.2.1", "192.0.2.2", "192.0.2.3"]
    # SOA-EDIT-DNSUPDATE=DEFAULT: serial 1 jumps to today's YYYYMMDD01
    assert pdns.serial() == pdns.serial_after(1) > 2000000000
    r = pdns.nsupdate(f"update delete {API} A 192.0.2.1", key=pdns.key, tool=tool)
    assert r.returncode == 0 and pdns.serial() == pdns.serial_after(2)


def test_pdns_key_is_not_scoped_to_a_name_or_type(pdns):
    """The difference spdu documents: TSIG-ALLOW-DNSUPDATE lets the key change
    every record of the zone, other names, other types, even the NS set."""
    for line in (f"update add {OTHER} 60 A 192.0.2.3", f'update add {API} 60 TXT "x"',
                 "update add pool.domain.tld. 60 NS ns2.example."):
        r = pdns.nsupdate(line, key=pdns.key)
        assert r.returncode == 0, r.stdout + r.stderr
    assert pdns.query("other", "A") == ["192.0.2.3", "192.0.2.99"]
    assert pdns.query("@", "NS") == ["ns1.pool.domain.tld.", "ns2.example."]


def test_pdns_wrong_or_unknown_key_is_refused_unsigned(pdns):
    import dns.exception
    import dns.query
    import dns.tsig
    import dns.update

    name, alg, secret = pdns.key
    for key in (dns.tsig.Key(name, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", alg),
                dns.tsig.Key("not-the-key", secret, alg)):
        u = dns.update.UpdateMessage(pdns.zone + ".")
        u.add("api", 60, "A", "192.0.2.5")
        u.use_tsig(key)
        # PowerDNS answers without a TSIG record at all: not BADKEY/BADSIG
        with pytest.raises(dns.exception.FormError, match="requires a TSIG"):
            dns.query.tcp(u, pdns.address, port=pdns.port, timeout=2)
    assert pdns.query("api", "A") == ["192.0.2.1", "192.0.2.2"] and pdns.serial() == 1


def test_pdns_unsigned_by_source_address(tmp_path):
    with PowerDNSServer(tmp_path / "p") as p:
        r = p.nsupdate(f"update add {API} 60 AAAA 2001:db8::1")
        assert r.returncode == 0, r.stdout + r.stderr
        assert p.query("api", "AAAA") == ["2001:db8::1"]
    with PowerDNSServer(tmp_path / "q", metadata=[("ALLOW-DNSUPDATE-FROM", "192.0.2.0/24")],
                        extra_conf="allow-dnsupdate-from=\n") as q:
        assert bind_refused(q.nsupdate(f"update add {API} 60 A 192.0.2.3"))


def test_pdns_restart_keeps_the_updated_zone(pdns):
    assert pdns.nsupdate(f"update add {API} 60 A 192.0.2.3", key=pdns.key).returncode == 0
    pdns.stop()
    pdns.start()
    assert "192.0.2.3" in pdns.query("api", "A")


# --- the classes themselves ---------------------------------------------------

def test_context_manager_stops_and_custom_records(tmp_path):
    with KnotServer(tmp_path / "k", records=[("www", "AAAA", "2001:db8::5")],
                    start=False) as k:
        assert k.running
        assert k.query("www", "AAAA") == ["2001:db8::5"]
        assert k.query("api", "A") == []
        assert "Knot DNS" in k.log()
    assert not k.running
    with pytest.raises((dns.exception.Timeout, OSError)):
        k.query("www", "AAAA", timeout=0.2)  # nothing answers any more


def test_startup_failure_reports_log(tmp_path):
    k = KnotServer(tmp_path / "k", start=False)
    k.records = (("bad", "A", "not-an-address"),)
    k.start_timeout = 1.0
    with pytest.raises(ServerError, match=r"(?s)did not answer SOA.*zone file"):
        k.start(attempts=1)
    assert not k.running
