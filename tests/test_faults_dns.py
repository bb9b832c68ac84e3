"""The fault matrix of issue 27, DNS: a proxy in front of the real knotd
(tests/dnsproxy.py) that says NOERROR and applies nothing, sets TC over TCP,
or answers with another name's records; and addresses spdu no longer manages.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from tests import test_faults as faults
from tests.dnsproxy import DnsProxy
from tests.test_faults import BETA, BIN, GAMMA, SELF, one_line_error

world, knot, site = faults.world, faults.knot, faults.site  # the fixtures of the first matrix


@pytest.fixture
def proxy(site):
    p = DnsProxy(site.knot.port)
    site.write(f"namePort={p.port}\n")
    yield p
    p.stop()


def probed(site) -> None:
    r = site.run("probe")
    assert r.returncode == 0, r.stderr


def test_a_server_that_says_noerror_and_applies_nothing_is_69(site, proxy):
    probed(site)
    proxy.lie = "noupdate"
    r = site.run("reconcile")
    assert r.returncode == 69, r.stderr
    line = one_line_error(r.stderr)
    assert f"DNS server 127.0.0.1 port {proxy.port} answered NOERROR" in line
    assert "did not apply it" in line and f"{BETA} is not in api.pool.domain.tld A" in line
    assert proxy.updates == 1 and site.pool() == [SELF]
    assert site.entry("beta")["journal"][-1]["dns"] == []  # no "added" for the mail
    proxy.lie = "forward"
    assert site.run("reconcile").returncode == 0
    assert site.pool() == sorted([SELF, BETA, GAMMA])


def test_a_delete_the_server_did_not_apply_is_69_too(site, proxy):
    probed(site)
    assert site.run("reconcile").returncode == 0
    assert site.pool() == sorted([SELF, BETA, GAMMA])
    site.servers["beta"].behaviour = "503"
    for _ in range(3):  # probeFall
        site.run("probe")
    assert site.entry("beta")["state"] == "down"
    proxy.lie = "noupdate"
    r = site.run("reconcile")
    assert r.returncode == 69, r.stderr
    line = one_line_error(r.stderr)
    assert "did not apply it" in line and f"{BETA} is still in api.pool.domain.tld A" in line
    assert BETA in site.pool()


def test_the_cron_loop_says_a_lying_server_once(site, proxy):
    proxy.lie = "noupdate"
    p = subprocess.run([str(BIN / "spdu-cron"), "-c", str(site.conf), "--for", "3"],
                       capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=30)
    said = [x for x in p.stderr.splitlines() if "did not apply it" in x]
    assert proxy.updates >= 2, p.stderr  # it was tried on several ticks...
    assert len(said) == 1, p.stderr  # ...and said once
    assert p.returncode == 69, p.stderr


def test_the_dns_list_of_a_transition_is_bounded(site):
    from spdu_cli.reconcile import DNS_KEPT

    probed(site)
    entry = site.entry("beta")
    entry["journal"][-1]["dns"] = [{"at": "2026-01-01T00:00:00.000Z", "action": "add",
                                    "address": BETA, "rrset": "api.domain.tld A",
                                    "server": "x"}] * 40  # an older spdu's
    (site.spool / "beta.json").write_text(__import__("json").dumps(entry))
    assert site.run("reconcile").returncode == 0
    dns = site.entry("beta")["journal"][-1]["dns"]
    assert len(dns) == DNS_KEPT and dns[-1]["server"] != "x"


def test_a_lying_server_is_said_again_every_10_minutes():
    import logging

    from spdu_cli import reconcile

    e = reconcile.NotApplied("DNS server x answered NOERROR ... but did not apply it")
    assert reconcile.REMIND == 600
    assert [reconcile._level(e), reconcile._level(e)] == [logging.ERROR, logging.DEBUG]
    other = reconcile.NotApplied("DNS server x answered NOERROR ... but did not apply it:"
                                 " another change")  # the same server and pool: said once
    assert reconcile._level(other) == logging.DEBUG
    reconcile._said["DNS server x answered NOERROR ..."] -= reconcile.REMIND
    assert reconcile._level(e) == logging.ERROR
    assert reconcile._level(reconcile.ServiceUnavailable("down")) == logging.ERROR


@pytest.mark.parametrize(("lie", "why"), [
    ("tc", "truncated (TC) over TCP"),
    ("foreign", ("its answer section holds other.api.pool.domain.tld A, not only"
                 " api.pool.domain.tld A")),
    ("question", "it does not answer the question asked"),
    ("othertype", ("its answer section holds api.pool.domain.tld AAAA, not only"
                   " api.pool.domain.tld A")),
])
def test_a_malformed_answer_is_named_not_blamed_on_another_writer(site, proxy, lie, why):
    probed(site)
    proxy.lie = lie
    r = site.run("reconcile")
    assert r.returncode == 69, r.stderr
    line = one_line_error(r.stderr)
    assert f"DNS server 127.0.0.1 port {proxy.port} sent a malformed answer" in line
    assert why in line and "another writer" not in r.stderr
    assert proxy.updates == 0 and site.pool() == [SELF]


def test_a_removed_targets_address_is_named_and_removed_only_on_request(site):
    probed(site)
    assert site.run("reconcile").returncode == 0
    assert site.pool() == sorted([SELF, BETA, GAMMA])
    del site.servers["gamma"]  # gamma leaves targets=, and then its peer dies
    site.write()
    warning = (f"api.pool.domain.tld on 127.0.0.1 port {site.knot.port} holds {GAMMA}, which is"
               " neither selfIP nor the address of a target in targets=: spdu leaves it there")
    for args in (("reconcile",), ("status", "--dns")):
        r = site.run(*args)
        assert r.returncode == 0, r.stderr
        assert f"spdu: warning: {warning}" in r.stderr, r.stderr
        assert "`spdu reconcile --prune` removes it" in r.stderr
    assert site.pool() == sorted([SELF, BETA, GAMMA])
    status = json.loads(site.run("status", "--dns", "--json").stdout.splitlines()[0])
    assert status["dns"]["unmanaged"] == [GAMMA]
    r = site.run("reconcile", "--prune", "--json")
    assert r.returncode == 0, r.stderr
    [plan] = [json.loads(x) for x in r.stdout.splitlines()]
    assert plan["changes"] == [{"action": "delete", "type": "A", "address": GAMMA, "ttl": None,
                                "target": None, "pruned": True}]
    assert site.pool() == sorted([SELF, BETA]) and "warning" not in r.stderr


def test_prune_dry_run_shows_the_delete_and_sends_nothing(site):
    probed(site)
    assert site.run("reconcile").returncode == 0
    del site.servers["gamma"]
    site.write()
    r = site.run("reconcile", "--prune", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert f"update delete api.pool.domain.tld. IN A {GAMMA}" in r.stdout, r.stdout
    assert site.pool() == sorted([SELF, BETA, GAMMA])
