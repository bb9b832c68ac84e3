"""`spdu reconcile` against real authoritative servers: knotd and named.

The spool is written through spdu's own Spool API (it is the interface between
probe and reconcile); the DNS side is always a real server, read back with
queries of our own and, for the dry-run script, driven by the real nsupdate and
knsupdate clients.
"""

from __future__ import annotations

import json
import time

import pytest

from spdu_cli import nameserver, reconcile
from spdu_cli.entry import SpoolEntry
from spdu_cli.health import Health, State
from spdu_cli.plan import Change, Decision, Plan, Pool, PoolKey, TargetView, decide, pools
from spdu_cli.spool import Spool
from tests.dnsservers import BindServer, KnotServer, PowerDNSServer

API = "api.pool.domain.tld."
SELF, BETA, GAMMA = "192.0.2.1", "192.0.2.2", "192.0.2.3"
BETA6 = "2001:db8::2"


SERVERS = {
    # each as a site runs it for spdu: updates signed with the site's key only
    "knot": lambda d, **kw: KnotServer(d, allow_unsigned=False, **kw),
    "bind": BindServer,
    "pdns": PowerDNSServer,
}


def start_primary(name: str, tmpdir, **kw):
    from tests.conftest import _tsig_key

    return SERVERS[name](tmpdir, key=_tsig_key(), **kw)


@pytest.fixture(params=list(SERVERS))
def primary(request, tmp_path):
    """The reconcile matrix: Knot, BIND and PowerDNS, each the site's primary
    for pool.domain.tld, taking updates signed with `primary.key` only."""
    with start_primary(request.param, tmp_path / request.param) as s:
        s.kind = request.param
        yield s


@pytest.fixture
def spool(tmp_path):
    return Spool(str(tmp_path / "spool"))


def set_state(spool: Spool, target: str, state: str, addresses, checked: float | None = None,
              transition: bool = True) -> None:
    """What `spdu probe` leaves behind: a state, the probed addresses, a journal."""
    now = time.time()
    entry = SpoolEntry(target, Health(State(state), now, 0, 0),
                       checked=now if checked is None else checked,
                       addresses=list(addresses), url="http://api.domain.tld:80/status")
    if transition:
        entry.journal.append({"id": 1, "at": "2026-01-01T00:00:00.000Z", "from": "unknown",
                              "to": state, "reason": "test", "notified": False, "dns": []})
        entry.next_id = 2
    spool.ensure_dir()
    spool.write(entry)


def write_conf(confdir, server, spool: Spool, *, self_ip: str | None = SELF, key=None,
               extra: str = "", targets: dict | None = None, mode: int = 0o644) -> None:
    targets = targets or {"beta": BETA, "gamma": GAMMA}
    lines = [
        "domain=domain.tld",
        f"targets='{' '.join(targets)}'",
        f"spoolDir={spool.dir}",
        f"nameServer={server.address}",
        f"namePort={server.port}",
        "nameTTL=5",
        "nameTimeout=1",
    ]
    if self_ip:  # no self server here (tests/test_selfcheck.py has one)
        lines += ["selfCheck=no", f"selfIP='{self_ip}'"]
    if key:
        lines.append(f"tsigKey={key[1]}:{key[0]}:{key[2]}")
        mode = 0o600
    confdir.write("\n".join(lines) + "\n" + extra, mode=mode)
    for name, ip in targets.items():
        confdir.write(f"targetIP='{ip}'\n", target=name)


def bad_key(key, name=None, secret=None):
    """The same key with another name or another secret."""
    import base64
    import os

    return (name or key[0], key[1], secret or base64.b64encode(os.urandom(32)).decode())


def down_beta(confdir, server, spool, **kw):
    """beta down, gamma up: the pool should lose beta and gain gamma."""
    write_conf(confdir, server, spool, **kw)
    set_state(spool, "beta", "down", [BETA])
    set_state(spool, "gamma", "up", [GAMMA])


def key_file(path, text: str) -> str:
    path.write_text(text)
    path.chmod(0o600)
    return f"tsigKeyFile={path}\n"


def pool(server) -> list[str]:
    return server.query("api", "A") + server.query("api", "AAAA")


# -- the decision applied to real servers: Knot, BIND, PowerDNS ------------------------


def test_down_target_removed_and_recorded(run, confdir, primary, spool):
    write_conf(confdir, primary, spool, key=primary.key)
    set_state(spool, "beta", "down", [BETA])
    set_state(spool, "gamma", "unknown", [GAMMA])
    r = run("reconcile", "--json")
    assert r.exit_code == 0, r.stderr
    assert pool(primary) == [SELF]
    assert primary.serial() == primary.serial_after(1)
    # records spdu does not manage are untouched
    assert primary.query("other", "A") == ["192.0.2.99"]
    assert primary.query("other", "TXT") == ['"not managed by spdu"']
    plan = json.loads(r.stdout)
    assert plan["sent"] is True and plan["current"] == {"A": [SELF, BETA], "AAAA": []}
    assert [(c["action"], c["address"], c["target"]) for c in plan["changes"]] == [
        ("delete", BETA, "beta")]
    dns = json.loads((spool.dir / "beta.json").read_text())["journal"][-1]["dns"]
    assert [(d["action"], d["address"], d["rrset"], d["server"]) for d in dns] == [
        ("delete", BETA, "api.pool.domain.tld A", f"127.0.0.1:{primary.port}")]


def test_up_target_added_back_with_name_ttl(run, confdir, primary, spool):
    write_conf(confdir, primary, spool, key=primary.key, extra="nameTTL=7\n")
    set_state(spool, "beta", "up", [BETA])
    set_state(spool, "gamma", "up", [GAMMA])
    r = run("reconcile")
    assert r.exit_code == 0, r.stderr
    assert pool(primary) == [SELF, BETA, GAMMA]
    rr = primary._ask("api", "A").answer[0]
    assert rr.ttl == 7
    assert primary.serial() == primary.serial_after(1)  # one UPDATE for the whole change


def test_an_added_target_gets_its_own_name_ttl(run, confdir, knot, spool):
    write_conf(confdir, knot, spool)  # nameTTL=5 for the site (and selfIP)...
    confdir.write(f"targetIP={GAMMA}\nnameTTL=9\n", target="gamma")  # ...9 for gamma
    set_state(spool, "beta", "up", [BETA])
    set_state(spool, "gamma", "up", [GAMMA])
    r = run("reconcile", "--dry-run")
    assert f"update add {API} 9 IN A {GAMMA}" in r.stdout
    assert run("reconcile").exit_code == 0
    rr = knot._ask("api", "A").answer[0]  # knotd gives the RRset the TTL of the last add
    assert sorted(rr.to_text().split("\n")) == sorted(
        f"{API} 9 IN A {a}" for a in (SELF, BETA, GAMMA))


def test_in_sync_sends_nothing(run, confdir, primary, spool):
    write_conf(confdir, primary, spool, key=primary.key)
    set_state(spool, "beta", "up", [BETA])
    set_state(spool, "gamma", "down", [GAMMA])
    r = run("reconcile", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["in_sync"] is True and json.loads(r.stdout)["sent"] is False
    assert primary.serial() == 1


def test_unknown_missing_and_stale_targets_are_left_alone(run, confdir, knot, spool):
    write_conf(confdir, knot, spool, extra="staleAfter=10\n",
               targets={"beta": BETA, "gamma": GAMMA, "delta": "192.0.2.4"})
    set_state(spool, "beta", "unknown", [BETA])
    set_state(spool, "gamma", "up", [GAMMA], checked=time.time() - 60)  # stale
    # delta: no spool file at all
    r = run("-vv", "reconcile")
    assert r.exit_code == 0, r.stderr
    assert pool(knot) == [SELF, BETA] and knot.serial() == 1
    assert "beta: state unknown" in r.stderr and "gamma: last probed 60 s ago" in r.stderr
    # what to run next, right after `reconcile --probe` too (its probe gave no verdict)
    assert "(`spdu probe beta` says why it has no verdict)" in r.stderr


def test_corrupt_spool_file_changes_nothing(run, confdir, knot, spool):
    write_conf(confdir, knot, spool)
    spool.ensure_dir()
    (spool.dir / "beta.json").write_text('{"version": 1, "targ')
    set_state(spool, "gamma", "unknown", [GAMMA])
    r = run("reconcile")
    assert r.exit_code == 0
    assert "corrupt" in r.stderr
    assert pool(knot) == [SELF, BETA] and knot.serial() == 1


def test_self_ip_is_added_and_never_removed(run, confdir, primary, spool):
    # selfIP is also what a (misconfigured) down target points at: it stays.
    write_conf(confdir, primary, spool, key=primary.key, self_ip="192.0.2.1 192.0.2.7",
               targets={"beta": SELF})
    set_state(spool, "beta", "down", [SELF])
    r = run("reconcile")
    assert r.exit_code == 0, r.stderr
    assert pool(primary) == [SELF, BETA, "192.0.2.7"]


def test_never_an_empty_pool(run, confdir, primary, spool):
    write_conf(confdir, primary, spool, key=primary.key, self_ip=None,
               targets={"beta": BETA, "self": SELF}, extra="selfCheck=no\n")
    set_state(spool, "beta", "down", [BETA])
    set_state(spool, "self", "down", [SELF])
    r = run("reconcile", "--json")
    assert r.exit_code == 0
    assert "no address at all" in r.stderr and "nothing is sent" in r.stderr
    assert json.loads(r.stdout)["blocked"]
    assert pool(primary) == [SELF, BETA] and primary.serial() == 1


def test_ipv6_targets_are_aaaa_records(run, confdir, primary, spool):
    write_conf(confdir, primary, spool, key=primary.key,
               targets={"beta": f"{BETA} {BETA6}", "gamma": GAMMA})
    set_state(spool, "beta", "up", [BETA, BETA6])
    set_state(spool, "gamma", "down", [GAMMA])
    assert run("reconcile").exit_code == 0
    assert primary.query("api", "AAAA") == [BETA6]
    set_state(spool, "beta", "down", [BETA, BETA6])
    assert run("reconcile").exit_code == 0
    assert primary.query("api", "AAAA") == [] and primary.query("api", "A") == [SELF]


@pytest.mark.parametrize("server", list(SERVERS))
def test_pool_that_does_not_exist_yet_is_created(run, confdir, tmp_path, spool, server):
    with start_primary(server, tmp_path / "empty", records=()) as k:
        write_conf(confdir, k, spool, key=k.key)
        set_state(spool, "beta", "up", [BETA])
        set_state(spool, "gamma", "unknown", [GAMMA])
        r = run("reconcile")
        assert r.exit_code == 0, r.stderr
        assert pool(k) == [SELF, BETA]


# -- races: the prerequisites ------------------------------------------------------------


@pytest.mark.parametrize("added", ["A 192.0.2.50", "AAAA 2001:db8::50"])
def test_concurrent_change_is_detected_by_the_prerequisite(confdir, primary, spool, added):
    from spdu_cli import config

    write_conf(confdir, primary, spool, key=primary.key)
    set_state(spool, "beta", "down", [BETA])
    set_state(spool, "gamma", "up", [GAMMA])
    p = pools([config.load(str(confdir.main)).target(n) for n in ("beta", "gamma")])[0]
    current = nameserver.read_current(p)
    entries = {n: spool.read(n) for n in ("beta", "gamma")}
    d = decide(current["A"] + current["AAAA"], reconcile._views(p, entries),
                         p.self_ips, p.self_ttl, time.time())
    plan = Plan(p.key, None, current, d)
    # another writer adds an address between spdu's read and its write
    assert primary.nsupdate(f"update add {API} 60 {added}", key=primary.key).returncode == 0
    with pytest.raises(nameserver.PrerequisiteFailed):
        reconcile.send([(p, plan)])
    # nothing of spdu's change went in (an RRset that was empty is pinned too)
    assert pool(primary) == [SELF, BETA, added.split()[1]]
    assert primary.serial() == primary.serial_after(1)


def test_reconcile_rereads_and_retries_after_a_race(run, confdir, primary, spool, monkeypatch):
    write_conf(confdir, primary, spool, key=primary.key)
    set_state(spool, "beta", "down", [BETA])
    set_state(spool, "gamma", "up", [GAMMA])
    real_send, raced = reconcile.send, []

    def racing_send(items):
        if not raced:  # a concurrent writer gets in first, once
            raced.append(primary.nsupdate(f"update add {API} 60 A 192.0.2.50",
                                          key=primary.key).returncode)
        return real_send(items)

    monkeypatch.setattr(reconcile, "send", racing_send)
    r = run("reconcile", "--json")
    assert r.exit_code == 0, r.stderr
    assert raced == [0]
    assert json.loads(r.stdout)["attempts"] == 2
    assert "changed while spdu was updating it" in r.stderr
    # the other writer's address survives, spdu's change went in on the re-read
    assert pool(primary) == [SELF, GAMMA, "192.0.2.50"]


@pytest.mark.parametrize("races", [2, 99])
def test_a_concurrent_writer_gets_exactly_three_tries(run, confdir, primary, spool, monkeypatch,
                                                      races):
    """Up to three tries (spdu(1)), not one more or one fewer: a writer that
    races twice loses to the third; one that never stops makes it give up (75)."""
    write_conf(confdir, primary, spool, key=primary.key)
    set_state(spool, "beta", "down", [BETA])
    set_state(spool, "gamma", "unknown", [GAMMA])
    real_send, n = reconcile.send, [0]

    def racing_send(items):
        n[0] += 1
        if n[0] <= races:
            assert primary.nsupdate(f"update add {API} 60 A 192.0.2.{50 + n[0]}",
                                    key=primary.key).returncode == 0
        return real_send(items)

    monkeypatch.setattr(reconcile, "send", racing_send)
    r = run("reconcile", "--json")
    if races == 2:
        assert r.exit_code == 0, r.stderr
        assert json.loads(r.stdout)["attempts"] == 3
        assert pool(primary) == [SELF, "192.0.2.51", "192.0.2.52"]
    else:
        assert r.exit_code == 75
        assert "kept changing" in r.stderr and "(3 tries)" in r.stderr
        assert n[0] == 3
        assert BETA in pool(primary)


# -- dry run: the script is what nsupdate and knsupdate accept ---------------------------


@pytest.mark.parametrize("tool", ["nsupdate", "knsupdate"])
def test_dry_run_script_piped_into_the_real_client(run, confdir, primary, spool, tool):
    write_conf(confdir, primary, spool, key=primary.key,
               targets={"beta": f"{BETA} {BETA6}", "gamma": GAMMA})
    set_state(spool, "beta", "down", [BETA, BETA6])
    set_state(spool, "gamma", "up", [GAMMA])
    r = run("reconcile", "--dry-run")
    assert r.exit_code == 0, r.stderr
    script = r.stdout
    assert f"server 127.0.0.1 {primary.port}" in script and "zone pool.domain.tld." in script
    assert f"prereq yxrrset {API} IN A {SELF}" in script
    assert f"prereq nxrrset {API} IN AAAA" in script
    assert f"update add {API} 5 IN A {GAMMA}" in script
    assert f"update delete {API} IN A {BETA}" in script
    assert script.rstrip().endswith("send")
    assert primary.serial() == 1 and pool(primary) == [SELF, BETA]  # nothing sent
    done = primary.nsupdate(script, key=primary.key, tool=tool)
    assert done.returncode == 0, done.stdout + done.stderr
    assert pool(primary) == [SELF, GAMMA]
    # and what spdu would now do is nothing
    assert json.loads(run("reconcile", "--json").stdout)["in_sync"] is True
    assert primary.serial() == primary.serial_after(1)


def test_dry_run_script_of_a_stale_read_is_refused_by_nsupdate(run, confdir, primary, spool):
    write_conf(confdir, primary, spool, key=primary.key)
    set_state(spool, "beta", "down", [BETA])
    set_state(spool, "gamma", "unknown", [GAMMA])
    script = run("reconcile", "--dry-run").stdout
    assert primary.nsupdate(f"update add {API} 60 A 192.0.2.50", key=primary.key).returncode == 0
    done = primary.nsupdate(script, key=primary.key)
    assert done.returncode != 0 and "NXRRSET" in done.stdout + done.stderr
    assert BETA in pool(primary)


# -- BIND with an update-policy granting one key the pool name's A/AAAA -------------------


def test_bind_with_key_file_in_bind_format(run, confdir, bind, spool, tmp_path):
    name, alg, secret = bind.key
    down_beta(confdir, bind, spool, extra=key_file(
        tmp_path / "tsig.key",
        f'key "{name}" {{\n\talgorithm {alg};\n\tsecret "{secret}";\n}};\n'))
    r = run("reconcile", "--json")
    assert r.exit_code == 0, r.stderr
    assert pool(bind) == [SELF, GAMMA] and bind.serial() == 2
    assert secret not in r.stdout + r.stderr
    assert json.loads(r.stdout)["signed_with"].startswith(f"{name} (hmac-sha256)")
    r = run("reconcile", "--json")
    assert json.loads(r.stdout)["in_sync"] and bind.serial() == 2


def test_bind_dry_run_piped_into_nsupdate_with_the_key(run, confdir, bind, spool):
    down_beta(confdir, bind, spool, key=bind.key)
    r = run("reconcile", "--dry-run")
    assert bind.key[2] not in r.stdout + r.stderr
    done = bind.nsupdate(r.stdout, key=bind.key)
    assert done.returncode == 0, done.stdout + done.stderr
    assert pool(bind) == [SELF, GAMMA]


def test_knot_with_key_file_in_knot_format(run, confdir, knot_signed_only, spool, tmp_path):
    k = knot_signed_only
    name, alg, secret = k.key
    down_beta(confdir, k, spool, extra=key_file(
        tmp_path / "knot.key",
        f"key:\n  - id: {name}\n    algorithm: {alg}\n    secret: {secret}\n"))
    r = run("reconcile")
    assert r.exit_code == 0, r.stderr
    assert pool(k) == [SELF, GAMMA]


# -- errors: one message, the documented exit code, DNS as it was -------------------------


def test_server_unreachable_is_69(run, confdir, primary, spool):
    port = primary.port
    primary.stop()
    down_beta(confdir, primary, spool, key=primary.key, extra="nameTimeout=0.3\n")
    t0 = time.monotonic()
    r = run("reconcile")
    assert r.exit_code == 69
    assert time.monotonic() - t0 < 3
    assert f"DNS server 127.0.0.1 port {port} did not answer" in r.stderr
    assert r.stderr.count("error:") == 1


def test_zone_not_served_by_that_server_is_78(run, confdir, primary, spool):
    down_beta(confdir, primary, spool, key=primary.key,
              extra="poolZone=elsewhere.example\npoolName=api\n")
    r = run("reconcile")
    assert r.exit_code == 78
    # Knot answers the signed query unsigned (REFUSED): spdu then asks the zone's SOA
    # unsigned and says the zone is not there; the others answer without AA
    assert ("is not authoritative for api.elsewhere.example" in r.stderr
            or "does not serve zone elsewhere.example" in r.stderr), r.stderr
    assert "poolZone" in r.stderr


# How each server turns down an update it does not accept (spdu's message, the
# words that must be in it). PowerDNS answers a bad or unknown key without a
# TSIG record at all (its log says which), so spdu cannot tell the two apart.
UNSIGNED = {
    "knot": ["answered NOTAUTH to the update of zone pool.domain.tld", "tsigKey"],
    "bind": ["REFUSED the update of api.pool.domain.tld", "unsigned updates", "update-policy"],
    "pdns": ["REFUSED the update of api.pool.domain.tld", "unsigned updates",
             "TSIG-ALLOW-DNSUPDATE"],
}
UNKNOWN_KEY = {
    "knot": ["BADKEY", "not-the-key"],
    "bind": ["BADKEY", "not-the-key"],
    "pdns": ["without a signature", "not-the-key", "does not know the key"],
}
WRONG_SECRET = {
    "knot": ["BADSIG", "secret differs"],
    "bind": ["BADSIG", "secret differs"],
    "pdns": ["without a signature", "the same secret"],
}


def test_unsigned_update_is_78_with_a_hint(run, confdir, primary, spool):
    down_beta(confdir, primary, spool)
    r = run("reconcile")
    assert r.exit_code == 78, r.stderr
    for words in UNSIGNED[primary.kind]:
        assert words in r.stderr
    assert r.stderr.count("error:") == 1
    assert pool(primary) == [SELF, BETA] and primary.serial() == 1


def test_unknown_key_is_78(run, confdir, primary, spool):
    key = bad_key(primary.key, name="not-the-key")
    down_beta(confdir, primary, spool, key=key)
    r = run("reconcile")
    assert r.exit_code == 78, r.stderr
    for words in UNKNOWN_KEY[primary.kind]:
        assert words in r.stderr
    assert key[2] not in r.stderr
    assert pool(primary) == [SELF, BETA] and primary.serial() == 1


def test_wrong_secret_is_78(run, confdir, primary, spool):
    key = bad_key(primary.key)
    down_beta(confdir, primary, spool, key=key)
    r = run("reconcile")
    assert r.exit_code == 78, r.stderr
    for words in WRONG_SECRET[primary.kind]:
        assert words in r.stderr
    assert key[2] not in r.stderr and primary.key[2] not in r.stderr
    assert pool(primary) == [SELF, BETA] and primary.serial() == 1


def test_clock_skew_is_badtime(run, confdir, bind, spool, monkeypatch):
    import dns.message
    import dns.renderer

    class SkewedClock:
        @staticmethod
        def time():
            return time.time() - 3600  # this host's clock is an hour behind

    down_beta(confdir, bind, spool, key=bind.key)
    for module in (dns.message, dns.renderer):  # where dnspython reads the clock to sign
        monkeypatch.setattr(module, "time", SkewedClock)
    r = run("reconcile")
    assert r.exit_code == 69
    assert "BADTIME" in r.stderr and "clock" in r.stderr
    assert pool(bind) == [SELF, BETA]


def test_key_outside_knot_acl_is_reported(run, confdir, tmp_path, spool):
    # Knot denies a signed update outside the ACL with NOTAUTH + BADKEY
    with KnotServer(tmp_path / "k", key=("spdu-test", "hmac-sha256",
                                         "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI="),
                    allow_unsigned=False) as k:
        down_beta(confdir, k, spool, extra="poolName=www\n", key=k.key)
        r = run("reconcile")
        assert r.exit_code == 78
        assert "BADKEY" in r.stderr and "ACL" in r.stderr
        assert k.serial() == 1


class BrokenZoneBind(BindServer):
    """named whose zone file does not load: it answers SERVFAIL for the zone."""

    def _write_config(self) -> None:
        (self.dir / f"{self.zone}.zone").write_text("this is not a zone file\n")
        super()._write_config()

    def _wait_ready(self) -> None:
        import dns.rcode

        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            try:
                if self._ask(self.zone, "SOA", timeout=0.2).rcode() == dns.rcode.SERVFAIL:
                    return
            except Exception:  # noqa: BLE001 - not up yet, in whatever way: ask again
                time.sleep(0.05)
        raise AssertionError(f"named never answered SERVFAIL; log:\n{self.log()}")


def test_servfail_is_69(run, confdir, tmp_path, spool):
    with BrokenZoneBind(tmp_path / "broken") as b:
        down_beta(confdir, b, spool)
        r = run("reconcile")
        assert r.exit_code == 69, r.stderr
        assert f"DNS server 127.0.0.1 port {b.port} answered SERVFAIL" in r.stderr


def test_one_failing_pool_does_not_stop_another(run, confdir, knot, tmp_path, spool):
    with KnotServer(tmp_path / "second") as other:
        write_conf(confdir, knot, spool)
        confdir.write(f"targetIP={GAMMA}\nnameServer=127.0.0.1\nnamePort={other.port}\n",
                      target="gamma")
        set_state(spool, "beta", "down", [BETA])
        set_state(spool, "gamma", "up", [GAMMA])
        other.stop()
        r = run("reconcile", "--json")
        assert r.exit_code == 69
        assert pool(knot) == [SELF]  # beta's pool was reconciled anyway
        plans = [json.loads(line) for line in r.stdout.splitlines()]
        assert [p["port"] for p in plans] == [knot.port, other.port]
        assert plans[0]["sent"] and plans[1]["error"] and plans[1]["in_sync"] is False


def test_a_change_is_recorded_only_on_the_transition_that_caused_it(spool):
    key = PoolKey("api.pool.domain.tld", "pool.domain.tld", "127.0.0.1", 53)
    plan = Plan(key, None, {}, Decision(
        (Change("delete", BETA, 0, "beta"),), (), None))
    set_state(spool, "beta", "up", [BETA])  # the state moved on: beta is up again
    reconcile.record(spool, plan, time.time())
    assert spool.read("beta").journal[-1]["dns"] == []
    set_state(spool, "beta", "down", [BETA])
    reconcile.record(spool, plan, time.time())
    assert [d["action"] for d in spool.read("beta").journal[-1]["dns"]] == ["delete"]


def test_standing_moves_with_what_decide_acts_on_and_nothing_else():
    """What the cron loop compares to skip a DNS read: the probe times only as
    fresh or stale, addresses as sets, a maintenance as on or over."""
    from types import SimpleNamespace

    from spdu_cli.entry import Maintenance

    now = 1000.0
    cfg = SimpleNamespace(target="beta", target_ips=(), name_ttl=5, stale_after=10.0)
    site = SimpleNamespace(targets=("beta",), target=lambda name: cfg)

    def of(**kw):
        e = SpoolEntry("beta", Health(State.UP, now - 100, 5, 0), checked=now - 1,
                       addresses=[BETA, BETA6])
        for k, v in kw.items():
            setattr(e, k, v)
        return reconcile.standing(site, {"beta": e}, now)

    base = of()
    assert of(checked=now - 3, health=Health(State.UP, now - 100, 9, 0)) == base
    assert of(addresses=[BETA6, BETA]) == base  # the same set, in another order
    assert of(health=Health(State.DOWN, now, 0, 2)) != base
    assert of(checked=now - 11) != base  # stale: left as it is from now on
    assert of(maint=Maintenance(now - 1, now + 60)) != base
    assert of(maint=Maintenance(now - 60, now - 1)) == base  # over: as if none
    assert of(retired=["192.0.2.9"]) != base
    assert of(addresses=[BETA]) != base


def test_a_udp_answer_from_another_port_or_to_another_query_is_not_taken():
    """What the pool is read with: only the server's answer to this query counts
    (a forged one from another port, a late one to an earlier query are passed over)."""
    import socket
    import threading

    import dns.message
    import dns.rrset

    server, other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM), socket.socket(
        socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    other.bind(("127.0.0.1", 0))

    def answer(q, address: str, qid: int):
        r = dns.message.make_response(q)
        r.id = qid
        r.answer.append(dns.rrset.from_text(API, 5, "IN", "A", address))
        return r.to_wire()

    def serve():
        wire, client = server.recvfrom(65535)
        q = dns.message.from_wire(wire)
        other.sendto(answer(q, "192.0.2.66", q.id), client)
        server.sendto(answer(q, "192.0.2.67", (q.id + 1) % 65536), client)
        server.sendto(answer(q, BETA, q.id), client)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        key = PoolKey(API.rstrip("."), "pool.domain.tld", "127.0.0.1",
                                server.getsockname()[1])
        got = nameserver._udp(Pool(key, None, 2.0, (), 5),
                             dns.message.make_query(API, "A"))
        assert [r.address for rrset in got.answer for r in rrset] == [BETA]
    finally:
        t.join(5)
        server.close()
        other.close()


def test_the_reconcile_record_is_rewritten_only_when_it_changes(spool):
    """A pool that failed leaves its record as it was: no write, no fsync."""
    from spdu_cli.errors import ServiceUnavailable

    key = PoolKey("api.pool.domain.tld", "pool.domain.tld", "127.0.0.1", 53)
    ok = Plan(key, None, {"A": [SELF], "AAAA": []}, Decision((), (), None))
    failed = Plan(key, None, {}, Decision((), (), None),
                            error=ServiceUnavailable("DNS server did not answer"))
    spool.ensure_dir()
    path = spool.dir / ".reconcile.json"
    with spool.locked():
        reconcile.note_runs(spool, [ok], 1000.0)
    first = path.stat()
    with spool.locked():
        reconcile.note_runs(spool, [failed], 1001.0)
    assert path.stat().st_ino == first.st_ino  # not replaced
    with spool.locked():
        reconcile.note_runs(spool, [ok], 1002.0)  # a new last_success: written
    assert path.stat().st_ino != first.st_ino
    assert json.loads(path.read_text())["pools"][reconcile.pool_id(key)]["last_success"] == (
        "1970-01-01T00:16:42.000Z")


# -- a target whose addresses change ------------------------------------------------------


def test_retired_addresses_leave_the_pool_whatever_the_state():
    now = 1000.0
    moved = TargetView("beta", State.UNKNOWN, ("192.0.2.31",), now, (), 5, 10,
                       retired=("192.0.2.2",))
    d = decide([SELF, BETA], [moved], [SELF], 5, now)
    assert [(c.action, c.address) for c in d.changes] == [("delete", BETA)]
    # but never an address that selfIP or an up target claims
    other = TargetView("gamma", State.UP, (BETA,), now, (), 5, 10)
    assert decide([SELF, BETA], [moved, other], [SELF], 5, now).changes == ()
    assert decide([SELF, BETA], [moved], [SELF, BETA], 5, now).changes == ()


@pytest.mark.parametrize("listening", [False, True])
def test_a_changed_target_ip_replaces_the_old_address(run, confdir, knot, spool, http_server,
                                                      listening):
    old, new = http_server("127.0.0.12"), http_server("127.0.0.14")
    if not listening:
        new.stop()
    write_conf(confdir, knot, spool, targets={"beta": old.host},
               extra=f"probePort={old.port}\n")
    confdir.write(f"targetIP={old.host}\nprobePort={old.port}\n", target="beta")
    assert run("probe").exit_code == 0 and run("reconcile").exit_code == 0
    assert "127.0.0.12" in pool(knot)
    since = spool.read("beta").health.since
    confdir.write(f"targetIP={new.host}\nprobePort={new.port if listening else old.port}\n",
                  target="beta")
    r = run("probe", "--json")
    state = json.loads(r.stdout)["state"]
    assert "addresses changed" in r.stderr
    assert run("reconcile").exit_code == 0
    if listening:  # still up: the new address replaces the old one, no transition
        assert state == "up" and json.loads(r.stdout)["transition"] is None
        assert spool.read("beta").health.since == since  # up since then, not since the move
        assert "127.0.0.14" in pool(knot) and "127.0.0.12" not in pool(knot)
    else:  # the new address never answered: down at once, never added; the old one goes
        assert state == "down" and json.loads(r.stdout)["transition"]["from"] == "up"
        assert "127.0.0.14" not in pool(knot) and "127.0.0.12" not in pool(knot)
    assert spool.read("beta").retired == []  # done: forgotten
    assert json.loads(run("reconcile", "--json").stdout)["in_sync"] is True


def test_in_sync_names_the_targets_it_could_not_judge(run, confdir, knot, spool):
    write_conf(confdir, knot, spool, extra="staleAfter=10\n")
    set_state(spool, "beta", "up", [BETA], checked=time.time() - 60)  # stale
    set_state(spool, "gamma", "unknown", [GAMMA])
    knot.nsupdate(f"update delete {API} A {BETA}")  # DNS disagrees, but beta is stale
    r = run("reconcile", "--dry-run")
    assert ("nothing to send for the targets it can judge; 2 targets left as they are, DNS"
            " not checked for them") in r.stdout and "in sync" not in r.stdout
    assert r.stdout.count("last probed 60 s ago") == 1  # said once, not twice
    assert "; beta: last probed 60 s ago" in r.stdout and "; gamma: state unknown" in r.stdout
    r = run("reconcile")  # by hand, in a pipe: stdout is empty, but stderr says it
    assert r.exit_code == 0 and r.stdout == ""
    assert "spdu: warning: beta: last probed 60 s ago" in r.stderr
    assert "spdu reconcile --probe" in r.stderr
    assert json.loads(run("reconcile", "--json").stdout)["left_alone"]["beta"].startswith(
        "last probed 60 s ago")
    r = run("status", "--dns")
    assert "left as is: last probed" in r.stdout



def test_two_pool_names_in_one_zone_go_in_one_update(run, confdir, knot, spool):
    write_conf(confdir, knot, spool)
    confdir.write(f"targetIP={GAMMA}\npoolName=www\n", target="gamma")
    set_state(spool, "beta", "down", [BETA])
    set_state(spool, "gamma", "up", [GAMMA])
    script = run("reconcile", "--dry-run").stdout
    assert script.count("send") == 1 and script.count("zone pool.domain.tld.") == 1
    assert f"prereq yxrrset {API} IN A {SELF}" in script
    assert "prereq nxrrset www.pool.domain.tld. IN A" in script
    r = run("reconcile", "--json")
    assert r.exit_code == 0, r.stderr
    assert [p["sent"] for p in map(json.loads, r.stdout.splitlines())] == [True, True]
    assert pool(knot) == [SELF] and knot.query("www", "A") == [SELF, GAMMA]  # selfIP too
    assert knot.serial() == 2  # one UPDATE: the serial moved once


def test_a_referral_is_not_the_zone_data(run, confdir, tmp_path, spool):
    """A server that delegates the pool's zone answers with a referral (NOERROR,
    no AA, no answer): that is not an empty pool. Taken as one, the diff would
    add every up target and write prerequisites for RRsets it never saw."""
    delegation = (("pool", "NS", "ns1.pool.domain.tld."), ("ns1.pool", "A", "127.0.0.1"))
    with KnotServer(tmp_path / "parent", zone="domain.tld", records=delegation) as parent:
        down_beta(confdir, parent, spool)
        for args in (("reconcile", "--dry-run"), ("reconcile",)):
            r = run(*args)
            assert r.exit_code == 78, (args, r.stdout, r.stderr)
            assert "is not authoritative for api.pool.domain.tld (NOERROR without AA)" in r.stderr
            assert "update add" not in r.stdout
        assert parent.serial() == 1


def test_a_server_of_the_parent_zone_only_is_78(run, confdir, tmp_path, spool):
    # It answers for api.pool.domain.tld (NXDOMAIN, authoritative: no delegation)
    # but does not serve the zone pool.domain.tld, so it cannot take the update.
    with KnotServer(tmp_path / "parent", zone="domain.tld") as parent:
        down_beta(confdir, parent, spool)
        r = run("reconcile")
        assert r.exit_code == 78, r.stderr
        assert "answered NOTAUTH to the update of zone pool.domain.tld" in r.stderr
        assert parent.serial() == 1


def test_by_hand_a_stale_target_says_what_to_run_and_probe_puts_it_back(
        run, confdir, knot, spool, http_server):
    """Issue 24: `spdu reconcile` 16 s after `spdu probe` left beta out and only
    said it was stale; now it names `--probe`, which probes it first."""
    srv = http_server("127.0.0.15")
    write_conf(confdir, knot, spool, extra=f"staleAfter=10\nprobePort={srv.port}\n",
               targets={"beta": srv.host})
    set_state(spool, "beta", "up", [srv.host], checked=time.time() - 16)
    r = run("reconcile", "--dry-run")
    assert ("; beta: last probed 16 s ago (staleAfter=10); its records are left as they are"
            " (`spdu reconcile --probe` probes it first)") in r.stdout
    assert srv.host not in pool(knot)
    r = run("reconcile", "--probe")
    assert r.exit_code == 0, r.stderr
    assert srv.host in pool(knot)
    checked = spool.read("beta").checked
    assert time.time() - checked < 5
    r = run("reconcile", "--probe")  # fresh now: not probed again
    assert r.exit_code == 0 and spool.read("beta").checked == checked


def test_maint_clear_probe_lets_the_next_reconcile_put_it_back(
        run, confdir, knot, spool, http_server):
    srv = http_server("127.0.0.16")
    write_conf(confdir, knot, spool, extra=f"staleAfter=10\nprobePort={srv.port}\n",
               targets={"beta": srv.host})
    set_state(spool, "beta", "up", [srv.host], checked=time.time() - 60)
    assert run("maint", "beta", "--for", "1h").exit_code == 0
    assert run("maint", "beta", "--probe").exit_code == 2  # --probe goes with --clear
    r = run("maint", "beta", "--clear", "--probe")
    assert r.exit_code == 0, r.stderr
    assert time.time() - spool.read("beta").checked < 5
    assert run("reconcile").exit_code == 0 and srv.host in pool(knot)
