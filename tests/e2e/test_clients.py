"""What clients see when a site dies: failover through real recursive resolvers.

The lab of tests/e2e/clientlab.py (a parent delegating pool.domain.tld to
every site's Knot, a client namespace with Unbound, BIND and PowerDNS
Recursor at their Debian defaults, run as their Debian users), spdu at its
defaults on every site. A site's link goes down (its nameserver dies with
it): within spdu's own worst case (spdu_cli.health.failover()) + nameTTL +
1 s no client behind any resolver gets its address any more, and within
spdu's worst case back + 1 s (a probe's SYN sent again) + nameTTL + 1 s
after the link comes back every client gets it again; no client ever gets
an error or no answer meanwhile. The figures over many runs, and PowerDNS
LUA beside spdu, are benchmarks/failover.py --clients's (README, "What
clients see").

Needs root, knot, haproxy, unbound, bind9, pdns-recursor: missing ones FAIL.
"""

from __future__ import annotations

import time

import dns.rcode
import dns.rdatatype
import pytest

from spdu_cli.health import failover
from tests.e2e.clientlab import PARENT_NEGATIVE, PARENT_ZONE, RESOLVERS, USERS, ClientLab
from tests.e2e.netlab import DEFAULTS, POOL, SITES, user_of, v4

VICTIM = "gamma"
HOLD = 5.0  # a TTL without a contrary answer: the change is settled
SYN_RETRY = 1.0  # Linux's initial retransmission timeout


@pytest.fixture(scope="module")
def clientlab(tmp_path_factory):
    with ClientLab(tmp_path_factory.mktemp("clients"), settings=DEFAULTS, lua=False) as lab:
        lab.wait_pool(lab.full(), 30)
        lab.start_clients(per_name=3, poll=0.1)
        yield lab


def worst():
    d = {k: float(v) for k, v in DEFAULTS.items()}
    return failover(d["interval"], d["fastInterval"], d["probeTimeout"], 1,
                    int(d["probeFall"]), int(d["probeRise"]), 5, d["downInterval"])


def test_resolvers_run_as_their_debian_users(clientlab):
    assert {r: clientlab.resolver_user(r) for r in clientlab.resolvers} == USERS
    assert set(clientlab.resolvers) == set(RESOLVERS)
    # and the servers: the parent's Knot as knot (each site's PowerDNS LUA, which only
    # benchmarks/failover.py --clients starts, as pdns: test_pdns_lua.py)
    users = clientlab.server_users()
    assert users == {"parent/knotd": "knot"}, users
    assert {n: user_of(s.knot) for n, s in clientlab.sites.items()} == dict.fromkeys(SITES,
                                                                                    "knot")


def test_link_down_out_and_back_within_failover_plus_ttl(clientlab):
    lab, clients = clientlab, clientlab.clients
    f = worst()
    # Back: a probe sent while the link was down waits for its SYN to be sent again
    # (1 s later on Linux: README, "Failover on a real network"), which
    # health.failover()'s back, an answer as soon as the site answers, leaves out.
    out_bound, back_bound = f.out_hang + f.ttl + 1, f.back + SYN_RETRY + f.ttl + 1
    dead = v4(lab.sites[VICTIM].host)
    every = {v4(s.host) for s in lab.sites.values()}

    clients.wait_all(lambda got: got == every, time.monotonic(), 60, "the full pool", hold=0)
    t0 = time.monotonic()
    lab.sites[VICTIM].set_link(False)
    out = clients.wait_all(lambda got: bool(got) and dead not in got, t0,
                           out_bound + HOLD + 5, f"{VICTIM} out of every answer", HOLD)
    t1 = time.monotonic()
    lab.sites[VICTIM].set_link(True)
    back = clients.wait_all(lambda got: got == every, t1, back_bound + HOLD + 5,
                            f"{VICTIM} back in every answer", HOLD)
    failed = clients.failures(t0)

    late_out = {r: v for (r, _), v in out.items() if v is None or v > out_bound}
    late_back = {r: v for (r, _), v in back.items() if v is None or v > back_bound}
    assert not late_out, (f"out of DNS later than {out_bound:g} s (failover + nameTTL + 1 s):"
                          f" {late_out}; all {out}; last {clients.last()}")
    assert not late_back, (f"back in DNS later than {back_bound:g} s: {late_back}; all {back};"
                           f" last {clients.last()}")
    assert set(out) == {(r, "spdu") for r in RESOLVERS}
    assert not any(failed.values()), f"clients got errors or no answer: {failed}"


def test_negative_answers_are_cached_for_the_lesser_of_soa_minimum_and_ttl(clientlab):
    """What spdu.conf(5) says of the SOA minimum: a NODATA or NXDOMAIN answer
    reaches clients, and stays in each resolver's cache, for the lesser of the
    zone's SOA minimum and the SOA's TTL (the pool zone here: 5 and 5;
    domain.tld: 60 and 3600)."""
    cases = [(POOL, "TXT", dns.rcode.NOERROR, 5),  # the pool name has no TXT: NODATA
             (f"ns.parent.{PARENT_ZONE}", "TXT", dns.rcode.NOERROR, PARENT_NEGATIVE),
             (f"nothere.{PARENT_ZONE}", "A", dns.rcode.NXDOMAIN, PARENT_NEGATIVE)]
    wrong = []
    for r in clientlab.resolvers:
        for name, rdtype, rcode, cap in cases:
            ttls = []
            for _ in range(2):
                got = clientlab.ask(r, name, rdtype)
                soa = [rrset for rrset in got.authority if rrset.rdtype == dns.rdatatype.SOA]
                if got.rcode() != rcode or got.answer or not soa:
                    wrong.append(f"{r} {name} {rdtype}: {got}")
                    break
                ttls.append(soa[0].ttl)
                time.sleep(1.1)
            if ttls and not (0 < ttls[-1] < ttls[0] <= cap):
                wrong.append(f"{r} {name} {rdtype}: SOA TTLs {ttls}, not counting down"
                             f" from {cap} at most (a cached negative answer)")
    assert not wrong, "\n".join(wrong)


def test_refused_out_of_every_answer_with_the_self_check(clientlab):
    """A site whose HAProxy refuses connections while its DNS server lives: its
    survivors drop it, and with the self-check (selfCheck=yes, the default) its
    own server drops it too, so no resolver hands it on: out of every client's
    answers within spdu's worst case + nameTTL + 1 s (README, "What clients
    see"; with selfCheck=no its own server keeps it, selfIP)."""
    lab, clients = clientlab, clientlab.clients
    f = worst()
    bound = f.out_refused + f.ttl + 1
    site = lab.sites[VICTIM]
    dead = v4(site.host)
    every = {v4(s.host) for s in lab.sites.values()}
    clients.wait_all(lambda got: got == every, time.monotonic(), 60, "the full pool", hold=0)
    t0 = time.monotonic()
    site.stop_haproxy()
    try:
        out = clients.wait_all(lambda got: bool(got) and dead not in got, t0,
                               bound + HOLD + 5, f"{VICTIM} out of every answer", HOLD)
        assert VICTIM not in site.answers_sites(), "its own server still answers it"
        late = {r: v for (r, _), v in out.items() if v is None or v > bound}
        assert not late, (f"out of DNS later than {bound:g} s (failover + nameTTL + 1 s):"
                          f" {late}; all {out}; last {clients.last()}")
        assert not any(clients.failures(t0).values()), clients.failures(t0)
    finally:
        lab.restore()


def test_a_missing_resolver_fails_the_lab(monkeypatch):
    """A resolver that is not installed is an error naming its package, never a skip."""
    import tests.e2e.clientlab as clientlab_module
    from tests.e2e.netlab import LabError

    def which(name):
        raise LabError(f"{name!r} not found")

    monkeypatch.setattr(clientlab_module, "which", which)
    with pytest.raises(LabError, match=r"'named' not found: .*bind9"):
        clientlab_module.check_client_requirements(("bind",), lua=False)
    with pytest.raises(LabError, match="pdns_server not found"):
        clientlab_module.check_client_requirements((), lua=True)
