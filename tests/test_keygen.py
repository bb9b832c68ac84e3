"""`spdu keygen`: the key files it writes, and its snippets installed in a real
knotd and a real named: with the key, reconcile changes the pool; the same key
can touch nothing else; without it nothing changes. For PowerDNS, the printed
commands are run as printed against a real pdns_server."""

from __future__ import annotations

import re
import stat

import pytest

from tests.dnsservers import BindServer, KnotServer, PowerDNSServer
from tests.test_reconcile import BETA, GAMMA, SELF, down_beta, pool

API = "api.pool.domain.tld."


@pytest.fixture
def keygen(run, confdir, tmp_path):
    """Run `spdu keygen` for a site whose pool is api.pool.domain.tld."""

    def make(*args: str):
        confdir.write(f"domain=domain.tld\nmyTag=alpha\ntargets=beta\nspoolDir={tmp_path}/s\n")
        confdir.write(f"targetIP={BETA}\n", target="beta")
        return run("keygen", "--key-file", str(tmp_path / "keys" / "spdu.key"), *args)

    return make


def secret_of(path) -> str:
    return re.search(r'secret:? "?([A-Za-z0-9+/=]+)"?', path.read_text()).group(1)


def test_key_files_are_private_and_the_secret_is_never_printed(keygen, tmp_path):
    r = keygen()
    assert r.exit_code == 0, r.stderr
    keys = tmp_path / "keys"
    files = sorted(p.name for p in keys.iterdir())
    assert files == ["spdu-alpha.bind.key", "spdu-alpha.knot.key", "spdu.key", "spdu.knsupdate"]
    for p in keys.iterdir():  # 0600, or 0640 with a group of the server's user alone
        assert stat.S_IMODE(p.stat().st_mode) in (0o600, 0o640)
        assert not p.stat().st_mode & 0o004
    secret = secret_of(keys / "spdu.key")
    assert (keys / "spdu.knsupdate").read_text() == f"hmac-sha256:spdu-alpha:{secret}\n"
    assert len(__import__("base64").b64decode(secret)) == 32
    assert secret_of(keys / "spdu-alpha.knot.key") == secret
    assert secret not in r.stdout + r.stderr
    assert "tsigKeyFile=" in r.stderr  # tells the user what to add
    assert "grant \"spdu-alpha\" name api.pool.domain.tld. A AAAA;" in r.stdout
    assert "update-owner-name: [api.pool.domain.tld.]" in r.stdout


def test_refuses_to_overwrite_without_force(keygen, tmp_path):
    assert keygen().exit_code == 0
    first = secret_of(tmp_path / "keys" / "spdu.key")
    r = keygen()
    assert r.exit_code == 2 and "refusing to overwrite" in r.stderr and "--force" in r.stderr
    assert secret_of(tmp_path / "keys" / "spdu.key") == first
    r = keygen("--force", "--name", "spdu-alpha-2")
    assert r.exit_code == 0, r.stderr
    assert secret_of(tmp_path / "keys" / "spdu.key") != first


def test_one_server_only_and_a_bad_name(keygen, tmp_path):
    r = keygen("--server", "knot")
    assert r.exit_code == 0 and "update-policy" not in r.stdout and "acl:" in r.stdout
    assert not (tmp_path / "keys" / "spdu-alpha.bind.key").exists()
    r = keygen("--force", "--name", "bad name!")
    assert r.exit_code == 2 and "--name" in r.stderr


def _knot_with_snippet(tmp_path, snippet: str) -> KnotServer:
    return KnotServer(tmp_path / "knot", allow_unsigned=False, extra_conf=snippet,
                      zone_acls=["spdu-alpha"], other_zones=["elsewhere.example"])


def _bind_with_snippet(tmp_path, snippet: str) -> BindServer:
    include = next(line for line in snippet.splitlines() if line.startswith("include"))
    policy = re.search(r"update-policy \{.*?\n    \};", snippet, re.DOTALL).group(0)
    return BindServer(tmp_path / "bind", extra_conf=include + "\n", policy=policy,
                      other_zones=["elsewhere.example"])


@pytest.mark.parametrize("server", ["knot", "bind"])
def test_generated_snippet_scopes_the_key_to_the_pool(keygen, run, confdir, tmp_path, server):
    r = keygen("--server", server)
    assert r.exit_code == 0, r.stderr
    start = _knot_with_snippet if server == "knot" else _bind_with_snippet
    keyfile = tmp_path / "keys" / "spdu.key"
    key = ("spdu-alpha", "hmac-sha256", secret_of(keyfile))
    with start(tmp_path, r.stdout) as dns:
        from spdu_cli.spool import Spool

        spool = Spool(str(tmp_path / "spool"))
        # without the key: nothing changes
        down_beta(confdir, dns, spool)
        assert run("reconcile").exit_code == 78
        assert pool(dns) == [SELF, BETA] and dns.serial() == 1
        # with the generated key file: reconcile changes the pool
        down_beta(confdir, dns, spool, extra=f"tsigKeyFile={keyfile}\n")
        r = run("reconcile")
        assert r.exit_code == 0, r.stderr
        assert pool(dns) == [SELF, GAMMA] and dns.serial() == 2
        # the same key cannot add another name, a TXT record, or touch another zone
        other = dns.nsupdate(f"update add www.pool.domain.tld. 5 A {BETA}", key=key)
        txt = dns.nsupdate(f'update add {API} 5 TXT "x"', key=key)
        zone = dns.nsupdate("zone elsewhere.example.\n"
                            f"update add api.elsewhere.example. 5 A {BETA}",
                            key=key)
        for denied in (other, txt, zone):
            assert denied.returncode != 0
            assert re.search(r"REFUSED|NOTAUTH|BADKEY", denied.stdout + denied.stderr)
        assert dns.query("www", "A") == [] and dns.query("api", "TXT") == []
        assert dns.query("api.elsewhere.example.", "A") == ["192.0.2.1", "192.0.2.2"]
        assert dns.serial() == 2
        # a pool name outside the grant is reported clearly by reconcile itself
        down_beta(confdir, dns, spool, extra=f"tsigKeyFile={keyfile}\npoolName=www\n")
        r = run("reconcile")
        assert r.exit_code == 78
        assert re.search(r"REFUSED|BADKEY", r.stderr) and "www.pool.domain.tld" in r.stderr


def test_default_name_from_a_tag_with_spaces(run, confdir, tmp_path):
    confdir.write(f"domain=domain.tld\nmyTag='Alpha Site'\ntargets=beta\nspoolDir={tmp_path}/s\n")
    r = run("keygen", "--key-file", str(tmp_path / "k" / "spdu.key"))
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "k" / "spdu-alpha-site.knot.key").exists()


def test_keygen_writes_the_configured_tsig_key_file_that_does_not_exist_yet(run, confdir,
                                                                            tmp_path):
    keyfile = tmp_path / "k" / "spdu.tsig.key"
    confdir.write(f"domain=domain.tld\ntargets=beta\nspoolDir={tmp_path}/s\n"
                  f"tsigKeyFile={keyfile}\n")
    assert run("config", "check").exit_code == 78  # missing: every other command says so
    r = run("keygen")
    assert r.exit_code == 0, r.stderr
    assert keyfile.exists() and "now set tsigKeyFile" not in r.stderr
    assert run("config", "check").exit_code == 0


def test_the_tsig_key_file_hint_is_an_absolute_path(run, confdir, tmp_path, monkeypatch):
    confdir.write(f"domain=domain.tld\ntargets=beta\nspoolDir={tmp_path}/s\n")
    monkeypatch.chdir(tmp_path)
    r = run("keygen", "--key-file", "rel/spdu.key")
    assert r.exit_code == 0, r.stderr
    assert f"tsigKeyFile={tmp_path}/rel/spdu.key" in r.stderr


def test_pdns_commands_applied_as_printed_let_spdu_update_the_pool(keygen, run, confdir,
                                                                   tmp_path):

    from spdu_cli.spool import Spool

    with PowerDNSServer(tmp_path / "pdns") as dns:  # no key yet: unsigned from 127/8
        r = keygen("--server", "pdns", "--pdns-database", str(dns.database))
        assert r.exit_code == 0, r.stderr
        keys = tmp_path / "keys"
        assert sorted(p.name for p in keys.iterdir()) == [
            "spdu-alpha.pdns.sql", "spdu.key", "spdu.knsupdate"]
        sql = keys / "spdu-alpha.pdns.sql"
        assert stat.S_IMODE(sql.stat().st_mode) in (0o600, 0o640)
        secret = secret_of(keys / "spdu.key")
        assert secret in sql.read_text() and secret not in r.stdout + r.stderr
        assert "cannot limit a key to a name or a type" in r.stdout
        assert "EVERY record of pool.domain.tld" in r.stdout and "zone of its own" in r.stdout
        commands = [ln for ln in r.stdout.splitlines() if ln and not ln.startswith("#")]
        assert commands == [
            f"sqlite3 {dns.database} < {sql}",
            "pdnsutil set-meta pool.domain.tld TSIG-ALLOW-DNSUPDATE spdu-alpha"]
        assert all(secret not in c for c in commands)  # never on a command line
        # run them as printed; pdnsutil reaches this server's configuration
        done = dns.run_printed(r.stdout, tmp_path / "bin")
        assert done.returncode == 0, done.stdout + done.stderr
        assert secret not in done.stdout + done.stderr

        spool = Spool(str(tmp_path / "spool"))
        down_beta(confdir, dns, spool)  # unsigned: refused now that the zone names a key
        r = run("reconcile")
        assert r.exit_code == 78 and "REFUSED" in r.stderr
        assert pool(dns) == [SELF, BETA] and dns.serial() == 1
        down_beta(confdir, dns, spool, extra=f"tsigKeyFile={keys / 'spdu.key'}\n")
        r = run("reconcile")
        assert r.exit_code == 0, r.stderr
        assert pool(dns) == [SELF, GAMMA] and dns.serial() == dns.serial_after(1)
        # what the output warned of: the key is not limited to the pool name
        key = ("spdu-alpha", "hmac-sha256", secret)
        assert dns.nsupdate(f"update add www.pool.domain.tld. 5 A {BETA}", key=key).returncode == 0


def test_all_servers_at_once(keygen, tmp_path):
    r = keygen("--server", "all")
    assert r.exit_code == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "keys").iterdir()) == [
        "spdu-alpha.bind.key", "spdu-alpha.knot.key", "spdu-alpha.pdns.sql", "spdu.key",
        "spdu.knsupdate"]
    assert "update-policy" in r.stdout and "acl:" in r.stdout and "pdnsutil set-meta" in r.stdout
    assert "sqlite3 /var/lib/powerdns/pdns.sqlite3 < " in r.stdout


@pytest.mark.parametrize("tool", ["nsupdate", "knsupdate"])
def test_dry_run_piped_into_the_client_with_the_key_file_keygen_wrote(keygen, run, confdir,
                                                                      tmp_path, tool):
    """spdu.conf(5): `reconcile --dry-run | nsupdate -k spdu.key` and
    `| knsupdate -k spdu.knsupdate` send what reconcile would."""
    from spdu_cli.spool import Spool

    r = keygen("--server", "knot")
    assert r.exit_code == 0, r.stderr
    keys = tmp_path / "keys"
    keyfile = keys / ("spdu.key" if tool == "nsupdate" else "spdu.knsupdate")
    with _knot_with_snippet(tmp_path, r.stdout) as dns:
        down_beta(confdir, dns, Spool(str(tmp_path / "spool")),
                  extra=f"tsigKeyFile={keys / 'spdu.key'}\n")
        r = run("reconcile", "--dry-run")
        assert r.exit_code == 0, r.stderr
        assert "knsupdate -k" in r.stdout and secret_of(keys / "spdu.key") not in r.stdout
        # the other form is refused by this client: why keygen writes both
        other = keys / ("spdu.knsupdate" if tool == "nsupdate" else "spdu.key")
        assert dns.nsupdate(r.stdout, tool=tool, keyfile=other).returncode != 0
        assert dns.serial() == 1
        done = dns.nsupdate(r.stdout, tool=tool, keyfile=keyfile)
        assert done.returncode == 0, done.stdout + done.stderr
        assert pool(dns) == [SELF, GAMMA] and dns.serial() == 2


def test_the_knot_snippet_makes_the_key_the_zones_only_update_acl(run, confdir, tmp_path):
    """An address-only ACL kept beside the key would still let an unsigned
    update from 127.0.0.1 in: the snippet says to replace it, and where the acl
    goes (before zone:, which names it)."""
    confdir.write("domain=domain.tld\nmyTag=alpha\ntargets=beta\n")
    r = run("keygen", "--server", "knot", "--key-file", str(tmp_path / "k" / "spdu.key"),
            "--server-dir", str(tmp_path / "srv"))
    assert r.exit_code == 0, r.stderr
    assert "#       acl: [spdu-alpha]" in r.stdout and "..." not in r.stdout
    assert "before knot.conf's zone: section" in r.stdout
    assert "unsigned update" in r.stdout
