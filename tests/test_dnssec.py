"""Signed pool zones: every change spdu makes is answered signed and valid.

Knot (dnssec-signing), BIND (dnssec-policy, inline signing) and PowerDNS
(pdnsutil secure-zone) sign the pool zone online, each run as its Debian
user; Unbound, with the zone's key-signing key as its trust anchor, is the
client: after each change, the first after a key rollover too, it answers
NOERROR with the AD bit, never SERVFAIL. spdu checks the same on its own
(reconcile validates what its UPDATE caused): a change served with signatures
that do not validate, or that expire within twice the RRset's TTL, is one
error (69) and one notice, and a notice again once it is over.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dns.flags
import dns.rcode
import dns.rdatatype
import pytest

from tests.conftest import _tsig_key
from tests.dnsservers import (
    ZONE,
    BindServer,
    KnotServer,
    PowerDNSServer,
    require_binary,
    zone_text,
)
from tests.resolvers import UnboundResolver, trust_anchor
from tests.test_reconcile import BETA, GAMMA, SELF, pool, set_state, write_conf

ROOT = Path(__file__).resolve().parents[1]

SIGNED = {  # each as a site runs it for spdu: updates signed with the site's key only
    "knot": lambda d, **kw: KnotServer(d, allow_unsigned=False, user="knot", **kw),
    "bind": lambda d, **kw: BindServer(d, user="bind", **kw),
    "pdns": lambda d, **kw: PowerDNSServer(d, user="pdns", **kw),
}


@pytest.fixture
def spool(shared):
    from spdu_cli.spool import Spool

    return Spool(str(shared / "spool"))


@pytest.fixture(params=list(SIGNED))
def signed(request, shared):
    """The site's primary, signing pool.domain.tld online."""
    with SIGNED[request.param](shared / request.param, key=_tsig_key(), signed=True) as s:
        s.wait_signed()
        yield s


def resolver_for(server, shared) -> UnboundResolver:
    return UnboundResolver(shared / "unbound", (server.address, server.port), trust_anchor(server))


def client_sees(resolver: UnboundResolver, want: list[str]) -> None:
    """What a client behind the validating resolver gets now: the pool's
    addresses, validated (AD), and its empty AAAA RRset, proven empty (AD)."""
    resolver.flush("api")
    a = resolver.resolve("api", "A")
    assert a.rcode() == dns.rcode.NOERROR, f"{dns.rcode.to_text(a.rcode())}:\n{resolver.log()}"
    assert a.flags & dns.flags.AD, a
    got = sorted(rd.address for rrset in a.answer if rrset.rdtype == dns.rdatatype.A
                 for rd in rrset)
    assert got == sorted(want)
    aaaa = resolver.resolve("api", "AAAA")
    assert aaaa.rcode() == dns.rcode.NOERROR, resolver.log()
    assert aaaa.flags & dns.flags.AD, aaaa


def reconciled(run) -> dict:
    r = run("reconcile", "--json")
    assert r.exit_code == 0, r.stderr
    plan = json.loads(r.stdout)
    assert plan["sent"] is True
    assert plan["dnssec"]["signed"] is True and plan["dnssec"]["checked"] is True
    assert plan["dnssec"]["problem"] is None
    return plan


def signers(server, name: str = "api") -> set[int]:
    """The key tags of the RRSIGs over `name` A on the server."""
    import dns.message
    import dns.query

    q = dns.message.make_query(server.fqdn(name), "A", want_dnssec=True)
    r = dns.query.tcp(q, server.address, port=server.port, timeout=2)
    return {sig.key_tag for rrset in r.answer if rrset.rdtype == dns.rdatatype.RRSIG
            for sig in rrset}


def test_every_change_validates_also_after_a_key_rollover(signed, shared, confdir, run, spool):
    write_conf(confdir, signed, spool, key=signed.key)
    with resolver_for(signed, shared) as resolver:
        client_sees(resolver, [SELF, BETA])  # the resolver has the zone's keys cached
        set_state(spool, "beta", "down", [BETA])
        set_state(spool, "gamma", "up", [GAMMA])
        reconciled(run)
        client_sees(resolver, [SELF, GAMMA])
        set_state(spool, "beta", "up", [BETA])
        reconciled(run)
        client_sees(resolver, [SELF, BETA, GAMMA])

        new = signed.roll_zsk()  # the server's own command: knotc, rndc, pdnsutil
        set_state(spool, "gamma", "down", [GAMMA])
        reconciled(run)  # the first change after the rollover
        assert new in signers(signed)
        client_sees(resolver, [SELF, BETA])


def test_status_shows_each_server_signed_or_not_and_the_earliest_expiry(shared, confdir, run,
                                                                       spool):
    """The primary signs; a second server of the zone serves it unsigned."""
    import time

    key = _tsig_key()
    knot = dict(key=key, allow_unsigned=False, user="knot")
    with KnotServer(shared / "knot", signed=True, **knot) as k, \
            KnotServer(shared / "plain", **knot) as plain:
        k.wait_signed()
        write_conf(confdir, k, spool, key=key,
                   extra=f"secondaryServers='127.0.0.1@{k.port} 127.0.0.1@{plain.port}'\n")
        set_state(spool, "beta", "up", [BETA])
        set_state(spool, "gamma", "down", [GAMMA])
        r = run("status", "--dns", "--json")
        assert r.exit_code == 0, r.stderr
        servers = {s["server"]: s for s in json.loads(r.stdout.splitlines()[0])["dns"]["servers"]}
        mine, other = servers[f"127.0.0.1:{k.port}"], servers[f"127.0.0.1:{plain.port}"]
        assert mine["signed"] is True and other["signed"] is False
        assert other["rrsig_expires"] is None
        from spdu_cli.entry import epoch

        # Knot's policy here: signatures valid for 10 minutes
        assert time.time() < epoch(mine["rrsig_expires"]) <= time.time() + 600
        r = run("status", "--dns")
        assert r.exit_code == 0, r.stderr
        lines = r.stdout.splitlines()
        line = next(ln for ln in lines if f"127.0.0.1:{k.port}" in ln)
        from spdu_cli.render import stamp

        expiry = stamp(epoch(mine["rrsig_expires"]))
        assert line.endswith(f", signed, earliest RRSIG expiry {expiry}")
        assert any(f"127.0.0.1:{plain.port}" in ln and ln.endswith(", unsigned") for ln in lines)


def spdu_importing(confdir, *args: str) -> subprocess.CompletedProcess:
    """`spdu ARGS` in a Python of its own, telling each module it imports (-X importtime)."""
    return subprocess.run([sys.executable, "-X", "importtime", "-c",
                           "from spdu_cli.cli import main; main()", "--config",
                           str(confdir.main), *args],
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True,
                          text=True, timeout=60)


def imported(stderr: str) -> set[str]:
    return {ln.rsplit("|", 1)[1].strip() for ln in stderr.splitlines()
            if ln.startswith("import time:") and "|" in ln}


def test_an_unsigned_zone_loads_nothing_of_dnssec(shared, confdir, spool):
    """The same change to the same zone, unsigned and signed: only the signed
    zone's reconcile imports dns.dnssec and cryptography."""
    set_state(spool, "beta", "down", [BETA])
    set_state(spool, "gamma", "up", [GAMMA])
    for signed in (False, True):
        with KnotServer(shared / f"knot-{signed}", user="knot", signed=signed) as k:
            if signed:
                k.wait_signed()
            write_conf(confdir, k, spool)
            r = spdu_importing(confdir, "reconcile")
            assert r.returncode == 0, r.stderr
            assert pool(k) == [SELF, GAMMA]
            mods = imported(r.stderr)
            assert ("dns.dnssec" in mods) is signed and ("cryptography" in mods) is signed


def test_without_cryptography_a_signed_zone_is_changed_and_said_unchecked(shared, confdir, spool):
    with KnotServer(shared / "knot", user="knot", signed=True) as k:
        k.wait_signed()
        write_conf(confdir, k, spool)
        set_state(spool, "beta", "down", [BETA])
        set_state(spool, "gamma", "up", [GAMMA])
        r = subprocess.run([sys.executable, "-c", ("import sys; sys.modules['cryptography'] ="
                            " None; from spdu_cli.cli import main; main()"), "--config",
                            str(confdir.main), "reconcile"],
                           env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert pool(k) == [SELF, GAMMA]
        assert "is signed (DNSSEC), but spdu cannot check its signatures" in r.stderr
        assert "pip install 'spdu[dnssec]'" in r.stderr


# -- signatures that do not validate, or expire too soon -----------------------------------


def signed_offline(directory: Path, records) -> str:
    """The zone signed by dnssec-signzone with keys of its own in
    directory/keys (made once): a zone file with its RRSIGs, NSECs and DNSKEYs."""
    keys = directory / "keys"
    if not keys.exists():
        keys.mkdir(parents=True)
        for flags in (["-f", "KSK"], []):
            subprocess.run([require_binary("dnssec-keygen"), "-q", "-K", str(keys), "-a",
                            "ECDSAP256SHA256", *flags, ZONE], check=True, capture_output=True)
    plain = directory / "plain.zone"
    plain.write_text(zone_text(ZONE, records, 5))
    subprocess.run([require_binary("dnssec-signzone"), "-q", "-S", "-K", str(keys), "-d",
                    str(directory), "-o", ZONE, "-f", str(directory / "signed.zone"),
                    str(plain)], check=True, capture_output=True)
    return (directory / "signed.zone").read_text()


def test_a_change_the_server_does_not_sign_is_one_error_and_one_notice(
        shared, confdir, run, spool, smtp_relay, webhook_receiver):
    """A zone signed offline, served by Knot without online signing: the
    UPDATE goes in unsigned and the pool's old RRSIG no longer fits it, so
    validating resolvers answer SERVFAIL. spdu says so at once (69, the mail
    and the webhook), once; signed again, the notice that it is over."""
    import time

    records = [("api", "A", SELF), ("api", "A", BETA)]
    knot_dir = shared / "knot"
    knot_dir.mkdir()
    (knot_dir / f"{ZONE}.zone").write_text(signed_offline(shared, records))
    relay, rx = smtp_relay(), webhook_receiver()
    notices = (f"mailTo=ops@domain.tld\nsmtpRelay=127.0.0.1\nsmtpPort={relay.port}\n"
               f"smtpSSL=no\nmyTag=alpha\nwebhookURL={rx.url}\nwebhookFormat=json\n")
    with KnotServer(knot_dir, user="knot") as k, resolver_for(k, shared) as resolver:
        write_conf(confdir, k, spool, extra=notices, mode=0o600)  # nameTimeout=1
        client_sees(resolver, [SELF, BETA])
        set_state(spool, "beta", "down", [BETA])
        set_state(spool, "gamma", "up", [GAMMA])
        t0 = time.monotonic()
        r = run("reconcile")
        took = time.monotonic() - t0
        assert r.exit_code == 69
        assert 0.5 < took < 2.5  # read again and again for nameTimeout, no longer
        assert pool(k) == [SELF, GAMMA]  # the change is made, and recorded for beta's mail
        dns_done = json.loads((spool.dir / "beta.json").read_text())["journal"][-1]["dns"]
        assert [d["action"] for d in dns_done] == ["delete"]
        errors = [ln for ln in r.stderr.splitlines() if "do not validate" in ln]
        assert len(errors) == 1, r.stderr
        assert (f"DNS server 127.0.0.1 port {k.port} signs zone {ZONE}, and after the update"
                f" of api.{ZONE}: the signatures of api.{ZONE} A do not validate:") in errors[0]
        resolver.flush("api")  # the resolver agrees: what does not validate is SERVFAIL
        assert resolver.resolve("api", "A").rcode() == dns.rcode.SERVFAIL

        subjects = [m.message["Subject"] for m in relay.received]
        assert subjects == [(f"WARNING: spdu on alpha: bad DNSSEC signatures in api.{ZONE} on"
                            f" 127.0.0.1 port {k.port}")]
        assert "do not validate" in relay.received[0].message.get_content()
        assert [n.json()["summary"] for n in rx.received] == subjects

        r = run("reconcile")  # nothing to change; the problem stands: said, not mailed again
        assert r.exit_code == 0, r.stderr
        assert "(still)" in r.stderr and len(relay.received) == len(rx.received) == 1
        r = run("reconcile")  # the same process (as the cron loop): said once, not every run
        assert r.exit_code == 0 and "(still)" not in r.stderr
        from spdu_cli import reconcile

        for line in [ln for ln in reconcile._said if ln.endswith("(still)")]:
            reconcile._said[line] -= reconcile.REMIND  # 10 minutes later
        assert "(still)" in run("reconcile").stderr
        r = run("status", "--dns")
        assert f"api.{ZONE}: bad DNSSEC signatures since " in r.stdout

        k.stop()  # signed again, as the pool is now, with the same keys
        shutil.rmtree(knot_dir / "db")
        (knot_dir / f"{ZONE}.zone").write_text(signed_offline(shared, [("api", "A", SELF),
                                                                    ("api", "A", GAMMA)]))
        k.want_port = k.port
        k.start()
        r = run("reconcile")
        assert r.exit_code == 0, r.stderr
        over = [subjects[0], subjects[0].replace("WARNING", "NOTICE")]
        assert [m.message["Subject"] for m in relay.received] == over
        assert [n.json()["summary"] for n in rx.received] == over
        assert "bad DNSSEC" not in run("status", "--dns").stdout
        client_sees(resolver, [SELF, GAMMA])


def test_a_notice_no_channel_took_by_hand_is_said_again_by_the_next_run(
        shared, confdir, run, spool, smtp_relay):
    """`spdu reconcile` by hand has no loop to try a notice again: when its
    WARNING goes out through no channel (the relay is down), the problem is not
    recorded as said, and the next run, once the relay is back, mails it."""
    from tests.conftest import free_port

    records = [("api", "A", SELF), ("api", "A", BETA)]
    knot_dir = shared / "knot"
    knot_dir.mkdir()
    (knot_dir / f"{ZONE}.zone").write_text(signed_offline(shared, records))
    port = free_port()  # nothing listens there yet
    mail = (f"mailTo=ops@domain.tld\nsmtpRelay=127.0.0.1\nsmtpPort={port}\nsmtpSSL=no\n"
            "myTag=alpha\n")
    with KnotServer(knot_dir, user="knot") as k:
        write_conf(confdir, k, spool, extra=mail, mode=0o600)
        set_state(spool, "beta", "down", [BETA])
        set_state(spool, "gamma", "up", [GAMMA])
        r = run("reconcile")
        assert r.exit_code == 69
        assert "could not be mailed" in r.stderr, r.stderr
        assert "went out through no channel; the next run says it again" in r.stderr, r.stderr
        [rec] = json.loads((spool.dir / ".reconcile.json").read_text())["pools"].values()
        assert rec["dnssec_problem"]["unsaid"] is True  # recorded: checked again, not said
        relay = smtp_relay(port=port)
        r = run("reconcile")  # nothing to change; the problem stands, and is new again
        subjects = [m.message["Subject"] for m in relay.received]
        assert subjects == [(f"WARNING: spdu on alpha: bad DNSSEC signatures in api.{ZONE} on"
                             f" 127.0.0.1 port {k.port}")], r.stderr
        assert "no channel" not in r.stderr
        run("reconcile")  # said: not again
        assert len(relay.received) == 1


def test_signatures_that_expire_within_twice_the_ttl_are_an_error(shared, confdir, run, spool):
    """Knot's signatures here live 10 minutes; a pool TTL of 10 minutes lets
    a resolver keep the RRset cached after its signature expired."""
    key = _tsig_key()
    with KnotServer(shared / "knot", key=key, allow_unsigned=False, user="knot",
                    signed=True) as k, resolver_for(k, shared) as resolver:
        k.wait_signed()
        write_conf(confdir, k, spool, key=key, extra="nameTTL=600\n")
        set_state(spool, "beta", "down", [BETA])
        set_state(spool, "gamma", "up", [GAMMA])
        r = run("reconcile")
        assert r.exit_code == 69
        assert pool(k) == [SELF, GAMMA]
        assert (f"the signatures of api.{ZONE} A expire at") in r.stderr
        assert "within twice the RRset's TTL (2 x 600 s)" in r.stderr
        client_sees(resolver, [SELF, GAMMA])  # valid now: the error comes before clients fail


def test_a_removal_that_breaks_powerdns_nsec_chain_is_caught(shared, confdir, run, spool):
    """PowerDNS with a stored NSEC chain (not narrow NSEC3): an UPDATE that
    only removes an address clears the ordername of the pool's other records,
    and the proof that the pool has no AAAA records is gone: SERVFAIL for
    AAAA at every validating resolver. spdu checks A and AAAA after each
    change, and says how to repair it; once repaired, the next run says so."""
    key = _tsig_key()
    with PowerDNSServer(shared / "pdns", key=key, user="pdns", signed=True, narrow=False) as p, \
            resolver_for(p, shared) as resolver:
        write_conf(confdir, p, spool, key=key)
        set_state(spool, "beta", "down", [BETA])
        set_state(spool, "gamma", "unknown", [GAMMA])
        r = run("reconcile")
        assert r.exit_code == 69
        assert pool(p) == [SELF]
        assert (f"it answers that api.{ZONE} has no AAAA records with no proof of absence"
                in r.stderr)
        assert (f"`pdnsutil rectify-zone {ZONE}` and `pdns_control purge {ZONE}$` repair it"
                in r.stderr)
        resolver.flush("api")
        assert resolver.resolve("api", "AAAA").rcode() == dns.rcode.SERVFAIL

        p.pdnsutil("rectify-zone", ZONE)  # as the message says
        subprocess.run([require_binary("pdns_control"), f"--config-dir={p.dir}", "purge",
                        f"{ZONE}$"], check=True, capture_output=True, timeout=10)
        r = run("reconcile")
        assert r.exit_code == 0, r.stderr
        assert "(still)" not in r.stderr
        assert "dnssec_problem" not in json.loads((spool.dir / ".reconcile.json").read_text(
            ))["pools"][f"api.{ZONE} 127.0.0.1:{p.port}"]
        client_sees(resolver, [SELF])


def test_the_cron_loop_sends_the_notice_once_with_its_own(shared, spool, smtp_relay,
                                                         http_server):
    """In `spdu cron` the notice goes out with the loop's own trouble notices
    (trouble.py, tried again when no channel took it): once, however many
    ticks read the pool after the change."""
    import time

    beta, gamma = "127.0.0.21", "127.0.0.22"
    servers = {"beta": http_server(beta), "gamma": http_server(gamma)}
    servers["beta"].behaviour = "503"
    knot_dir = shared / "knot"
    knot_dir.mkdir()
    (knot_dir / f"{ZONE}.zone").write_text(signed_offline(shared, [("api", "A", SELF),
                                                                   ("api", "A", beta)]))
    relay = smtp_relay()
    etc = shared / "etc"
    (etc / "spdu").mkdir(parents=True)
    with KnotServer(knot_dir, user="knot") as k:
        conf = etc / "spdu.conf"
        conf.write_text(
            f"domain=domain.tld\ntargets='beta gamma'\nspoolDir={spool.dir}\nselfIP={SELF}\n"
            "selfCheck=no\n"
            f"nameServer=127.0.0.1\nnamePort={k.port}\nnameTimeout=1\nnameTTL=5\n"
            "interval=0.4\nfastInterval=0.1\nprobeTimeout=0.5\nprobeFall=1\nprobeRise=1\n"
            f"syslogSocket=none\nmailTo=ops@domain.tld\nsmtpRelay=127.0.0.1\n"
            f"smtpPort={relay.port}\nsmtpSSL=no\nmyTag=alpha\n")
        for name, srv in servers.items():
            (etc / "spdu" / name).write_text(f"targetIP={srv.host}\nprobePort={srv.port}\n")
        r = subprocess.run([sys.executable, "-c", "from spdu_cli.cli import main; main()",
                            "--config", str(conf), "cron", "--for", "4"],
                           env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True,
                           text=True, timeout=60)
        assert pool(k) == sorted([SELF, gamma]), r.stderr
        deadline = time.monotonic() + 5
        notices = []
        while time.monotonic() < deadline and not notices:
            notices = [m for m in relay.received if "DNSSEC" in m.message["Subject"]]
            time.sleep(0.05)
        warning = (f"WARNING: spdu on alpha: bad DNSSEC signatures in api.{ZONE} on"
                   f" 127.0.0.1 port {k.port}")
        assert [m.message["Subject"] for m in notices] == [warning], r.stderr
        # one error per UPDATE that left bad signatures (gamma may come up a tick
        # after beta went down), one mail for them all
        updates = json.loads((spool.dir / ".reconcile.json").read_text())["pools"][
            f"api.{ZONE} 127.0.0.1:{k.port}"]["updates"]
        errors = [ln for ln in r.stderr.splitlines() if ln.startswith("spdu: error: DNS server")]
        assert 1 <= len(errors) == updates and all("do not validate" in e for e in errors)
