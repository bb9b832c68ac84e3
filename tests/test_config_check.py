"""`spdu config check`: an unknown key is exit 78 (a $helper only a warning),
a spool or key file the user named by --as cannot use, a target with nothing
to probe; and --online against a real knotd: the zone's SOA, the TSIG key
(a signed UPDATE that cannot apply), the pool's TTL and the SOA minimum."""

from __future__ import annotations

import base64
import os
import shutil

import pytest

from tests.dnsservers import KnotServer, give_to, open_dir


def conf(confdir, spool, server=None, extra: str = "", ttl: int = 60) -> None:
    lines = ["domain=domain.tld", "targets=beta", "selfIP=192.0.2.1", f"spoolDir={spool}",
             f"nameTTL={ttl}", "nameTimeout=1", "selfCheck=no"]
    if server is not None:
        lines += [f"nameServer={server.address}", f"namePort={server.port}"]
    confdir.write("\n".join(lines) + "\n" + extra)
    confdir.write("targetIP=192.0.2.2\n", target="beta")


def errors(r) -> list[str]:
    return [ln for ln in r.stderr.splitlines() if ln.startswith("spdu: error: ")]


@pytest.fixture
def shared():
    d = open_dir("spdu-check-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_an_unknown_key_is_78_with_the_key_meant(run, confdir, tmp_path):
    conf(confdir, tmp_path / "s", extra="nameServr=192.0.2.53\n")
    r = run("config", "check")
    assert r.exit_code == 78
    assert errors(r) == [(f"spdu: error: {confdir.main}:8: nameServr: unknown key;"
                          " did you mean nameServer?")]
    conf(confdir, tmp_path / "s", extra="frobnicate=1\n")
    r = run("config", "check")
    assert r.exit_code == 78 and "frobnicate: unknown key; remove it" in r.stderr


def test_a_shell_helper_the_original_allowed_stays_a_warning(run, confdir, tmp_path):
    conf(confdir, tmp_path / "s", extra="site=alpha\nmyTag=$site-1\n")
    r = run("config", "check")
    assert r.exit_code == 0, r.stderr
    assert "site: not a spdu key; kept only as $site" in r.stderr and "warning" in r.stderr
    # and every other command (the cron loop's every minute) takes it without a word
    r = run("config", "show")
    assert r.exit_code == 0 and "unknown key" not in r.stderr, r.stderr
    conf(confdir, tmp_path / "s", extra="site=alpha\n")  # not used: a typo, as before
    assert "unknown key site ignored" in run("config", "show").stderr


def test_a_spool_the_user_cannot_write(run, confdir, shared):
    spool = shared / "spool"
    spool.mkdir(mode=0o755)
    conf(confdir, spool)
    assert run("config", "check").exit_code == 0  # root can
    r = run("config", "check", "--as", "knot")
    assert r.exit_code == 78
    assert errors(r) == [(f"spdu: error: {confdir.main}:4: spoolDir={spool}: knot cannot"
                          f" write it; as root: install -d -o knot -m 0750 {spool}")]
    give_to("knot", spool)
    assert run("config", "check", "--as", "knot").exit_code == 0
    r = run("config", "check", "--as", "no-such-user")
    assert r.exit_code == 2 and "--as no-such-user: no such user" in r.stderr


def test_a_spool_every_run_would_refuse_is_found_first(run, confdir, shared):
    """What the spool itself refuses (spool.dir_problem) is config check's
    finding too, not only what the user may not write."""
    spool = shared / "spool"
    spool.mkdir()
    conf(confdir, spool)
    os.chmod(spool, 0o777)
    r = run("config", "check")
    assert r.exit_code == 78
    assert errors(r) == [(f"spdu: error: {confdir.main}:4: spoolDir={spool}: refusing unsafe"
                          f" spool directory {spool}: writable by others (mode 0777);"
                          f" chmod 0750 {spool}")], r.stderr
    os.chmod(spool, 0o750)
    give_to("nobody", spool)  # another user's: a run as root would lock nobody out
    r = run("config", "check")
    assert r.exit_code == 78 and f"spool directory {spool} belongs to nobody" in r.stderr
    assert run("config", "check", "--as", "nobody").exit_code == 0


def test_a_spool_whose_group_may_only_read_it_is_not_writable_for_that_group(run, confdir,
                                                                             shared):
    """root:knot 0750 lets knot in and read, not write: every bit the write
    needs must be there, not one of them."""
    import grp

    spool = shared / "spool"
    spool.mkdir()
    os.chown(spool, 0, grp.getgrnam("knot").gr_gid)
    spool.chmod(0o750)
    conf(confdir, spool)
    r = run("config", "check", "--as", "knot")
    assert r.exit_code == 78
    assert "knot cannot write it" in r.stderr
    spool.chmod(0o770)
    assert run("config", "check", "--as", "knot").exit_code == 0


def test_a_key_file_the_user_cannot_read(run, confdir, shared):
    spool = shared / "spool"
    spool.mkdir()
    give_to("knot", spool)
    key = shared / "spdu.key"
    key.write_text("hmac-sha256:k:" + base64.b64encode(os.urandom(32)).decode() + "\n")
    key.chmod(0o600)
    conf(confdir, spool, extra=f"tsigKeyFile={key}\n")
    r = run("config", "check", "--as", "knot")
    assert r.exit_code == 78
    assert f"tsigKeyFile={key}: knot cannot read it; spdu keygen --spdu-user knot" in r.stderr
    os.chown(key, 0, __import__("grp").getgrnam("knot").gr_gid)
    key.chmod(0o640)
    assert run("config", "check", "--as", "knot").exit_code == 0


def test_a_target_with_no_file_and_no_name(run, confdir, tmp_path):
    confdir.write(f"domain=domain.invalid\ntargets='beta nowhere'\nselfIP=192.0.2.1\n"
                  f"spoolDir={tmp_path}/s\nselfCheck=no\n")
    confdir.write("targetIP=192.0.2.2\n", target="beta")
    r = run("config", "check")
    assert r.exit_code == 0  # offline: the resolver itself may be what fails
    assert (f"targets=nowhere: no {confdir.root}/spdu/nowhere, no targetIP, and cannot"
            " resolve nowhere.domain.invalid") in r.stderr
    r = run("config", "check", "--online")  # the server is not reached: both said
    assert r.exit_code == 78
    assert any("cannot resolve nowhere.domain.invalid" in ln for ln in errors(r))


# -- --online, against a real knotd -----------------------------------------------


def test_online_passes_on_a_zone_that_is_served_and_keeps_ttls_short(run, confdir,
                                                                      knot_signed_only,
                                                                      tmp_path):
    k = knot_signed_only
    name, alg, secret = k.key
    conf(confdir, tmp_path / "s", k, extra=f"tsigKey={alg}:{name}:{secret}\n")
    confdir.main.chmod(0o600)
    r = run("config", "check", "--online")
    assert r.exit_code == 0, r.stderr
    assert errors(r) == []
    assert k.serial() == 1  # the signed UPDATE changed nothing


def test_online_a_key_the_server_does_not_accept(run, confdir, knot_signed_only, tmp_path):
    k = knot_signed_only
    name, alg, _ = k.key
    wrong = base64.b64encode(os.urandom(32)).decode()
    for key, what in ((f"{alg}:{name}:{wrong}", "wrong secret"),
                      (f"{alg}:other-key:{wrong}", "unknown name")):
        conf(confdir, tmp_path / "s", k, extra=f"tsigKey={key}\n")
        confdir.main.chmod(0o600)
        r = run("config", "check", "--online")
        assert r.exit_code == 78, what
        [line] = errors(r)
        assert ": tsigKey: " in line
        assert "does not accept the key" in line or "refuses the key" in line
        assert "install the key on the server" in line and wrong not in r.stderr
    assert k.serial() == 1


def test_online_a_key_outside_the_acl_is_refused(run, confdir, tmp_path):
    """Knot knows the key but its ACL grants it another name: the signed
    UPDATE (for the pool name) is refused, as reconcile's would be."""
    from tests.conftest import _tsig_key

    key = _tsig_key()
    with KnotServer(tmp_path / "k", key=key, allow_unsigned=False) as k:
        name, alg, secret = key
        conf(confdir, tmp_path / "s", k, extra=f"tsigKey={alg}:{name}:{secret}\npoolName=www\n")
        confdir.main.chmod(0o600)
        r = run("config", "check", "--online")
        assert r.exit_code == 78 and "install the key on the server" in r.stderr, r.stderr
        assert k.serial() == 1


def test_online_a_zone_the_server_does_not_serve(run, confdir, knot, tmp_path):
    conf(confdir, tmp_path / "s", knot, extra="poolZone=pool.other.tld\npoolName=api\n")
    r = run("config", "check", "--online")
    assert r.exit_code == 78
    [line] = errors(r)
    assert "poolZone=pool.other.tld on nameServer=127.0.0.1" in line
    assert "does not serve this zone (REFUSED" in line or "NOTAUTH" in line


def test_online_a_server_not_answering_is_69(run, confdir, knot, tmp_path):
    port = knot.port
    knot.stop()
    conf(confdir, tmp_path / "s", None, extra=f"nameServer=127.0.0.1\nnamePort={port}\n")
    r = run("config", "check", "--online")
    assert r.exit_code == 69
    [line] = errors(r)
    assert "nameServer=127.0.0.1: no answer to SOA pool.domain.tld" in line


def test_online_ttls_longer_than_name_ttl(run, confdir, knot, tmp_path):
    conf(confdir, tmp_path / "s", knot, ttl=4)  # the zone: records TTL 60, SOA minimum 5
    r = run("config", "check", "--online")
    assert r.exit_code == 78
    lines = errors(r)
    assert any("zone pool.domain.tld on nameServer=127.0.0.1" in ln and "SOA minimum 5" in ln
               and "longer than nameTTL=4" in ln and "set the SOA's last field to 4" in ln
               for ln in lines), lines
    assert any("api.pool.domain.tld A on nameServer=127.0.0.1" in ln and "TTL 60" in ln
               and "give the RRset TTL 4" in ln for ln in lines), lines
    assert len(lines) == 2


def test_online_an_soa_minimum_equal_to_name_ttl_is_fine(run, confdir, knot, tmp_path):
    conf(confdir, tmp_path / "s", knot, ttl=5)  # the zone's SOA minimum is 5 too
    r = run("config", "check", "--online")
    lines = errors(r)
    assert not any("SOA minimum" in ln for ln in lines), lines
    assert len(lines) == 1 and "TTL 60" in lines[0]  # the RRset's TTL is still longer


# -- the key file that is missing, the directories others can write ----------------


def test_a_missing_key_file_says_to_run_keygen(run, confdir, tmp_path):
    conf(confdir, tmp_path / "s", extra=f"tsigKeyFile={tmp_path}/none.key\n")
    for args in (("config", "check"), ("reconcile", "--dry-run")):
        r = run(*args)
        assert r.exit_code == 78
        assert f"{tmp_path}/none.key does not exist; run spdu keygen" in r.stderr


@pytest.mark.parametrize("which", ["spdu/", "the main file's"])
def test_a_configuration_directory_others_can_write_is_refused(run, confdir, tmp_path, which):
    conf(confdir, tmp_path / "s")
    d = confdir.root / "spdu" if which == "spdu/" else confdir.root
    for mode, who in ((0o777, "group and others"), (0o775, "group"), (0o757, "others")):
        d.chmod(mode)
        r = run("config", "show", "beta")
        assert r.exit_code == 78
        assert r.stderr == (f"spdu: error: refusing configuration directory {d}: mode"
                            f" {mode:04o}, writable by {who}, who could replace the files in"
                            f" it; chmod go-w {d}\n")
    d.chmod(0o755)
    assert run("config", "show", "beta").exit_code == 0


def test_json_error_is_the_first_finding_and_stderr_has_every_one(run, confdir, shared):
    import json

    spool = shared / "spool"
    spool.mkdir(mode=0o755)
    conf(confdir, spool, extra="nameServr=192.0.2.53\nsite=a\nmyTag=$site\n")
    r = run("config", "check", "--json", "--as", "knot")
    assert r.exit_code == 78
    obj = json.loads(r.stdout)
    assert obj["valid"] is False
    assert obj["error"].endswith("nameServr: unknown key; did you mean nameServer?")
    assert [w for w in obj["warnings"] if "site: not a spdu key" in w]
    assert len(errors(r)) == 2 and "knot cannot write it" in errors(r)[1]
