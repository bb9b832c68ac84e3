"""`spdu keygen` leaves each key file readable by exactly the user that needs
it: knotd, named and pdns_server started as their Debian users (knot, bind,
pdns) from exactly what keygen printed accept an UPDATE signed with the key,
and spdu run as its cron user (`--spdu-user knot`) reads its own key file."""

from __future__ import annotations

import grp
import os
import pwd
import re
import stat
import subprocess
import sys
import sysconfig
from pathlib import Path

from tests.conftest import ConfDir
from tests.dnsservers import (
    BindServer,
    KnotServer,
    PowerDNSServer,
    as_user,
    give_to,
    require_binary,
)
from tests.test_reconcile import BETA, GAMMA, SELF, down_beta, pool

API = "api.pool.domain.tld."
ROOT = Path(__file__).resolve().parents[1]


def spdu_as(user: str, *args: str) -> subprocess.CompletedProcess:
    """`spdu ARGS` run as `user`: the system python with this tree and the
    venv's packages (root's own python is under /root, which others cannot
    search)."""
    python = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
    assert os.access(python, os.X_OK), f"{python} (Debian's python3) runs spdu as {user}"
    env = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "LANG": "C.UTF-8", "HOME": "/",
           "PYTHONPATH": f"{ROOT}:{sysconfig.get_paths()['purelib']}"}
    return subprocess.run(as_user(user, [python, "-m", "spdu_cli", *args]), env=env, cwd="/",
                          capture_output=True, text=True, timeout=60)


def keygen(shared: Path, *args: str) -> tuple[subprocess.CompletedProcess, ConfDir]:
    """Run `spdu keygen` (as root, in a subprocess as an operator would) for
    a site whose pool is api.pool.domain.tld, its key files in shared/keys."""
    conf = ConfDir(shared / "etc")
    conf.write(f"domain=domain.tld\nmyTag=alpha\ntargets=beta\nspoolDir={shared}/s\n")
    r = subprocess.run([sys.executable, "-m", "spdu_cli", "--config", str(conf.main),
                        "keygen", "--key-file", str(shared / "keys" / "spdu.key"), *args],
                       capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 0, r.stderr
    return r, conf


def owner(path: Path) -> str:
    st = path.stat()
    return (f"{pwd.getpwuid(st.st_uid).pw_name}:{grp.getgrgid(st.st_gid).gr_name}"
            f" {stat.S_IMODE(st.st_mode):04o}")


def test_each_file_is_for_its_user_and_stderr_says_so(shared):
    r, _ = keygen(shared, "--server", "all", "--spdu-user", "knot")
    keys = shared / "keys"
    # Debian's knot, bind and pdns groups hold their user alone: root owns the
    # file (the server cannot rewrite its key), the group reads it
    assert owner(keys / "spdu-alpha.knot.key") == "root:knot 0640"
    assert owner(keys / "spdu-alpha.bind.key") == "root:bind 0640"
    assert owner(keys / "spdu-alpha.pdns.sql") == "root:pdns 0640"
    assert owner(keys / "spdu.key") == owner(keys / "spdu.knsupdate") == "root:knot 0640"
    for name, user in (("spdu-alpha.knot.key", "knot"), ("spdu-alpha.bind.key", "bind"),
                       ("spdu.key", "knot")):
        assert f"{keys / name} (root:{user} 0640, for {user})" in r.stderr
    assert "# root:knot 0640, readable by knot." in r.stdout
    assert "// root:bind 0640, readable by bind." in r.stdout
    # the default: whoever runs keygen (root here) reads spdu's own file
    r, _ = keygen(shared, "--force", "--server", "knot")
    assert owner(keys / "spdu.key") == "root:root 0600"


def test_a_user_whose_group_others_share_gets_the_file_alone(shared):
    """Debian's nobody has nogroup for its primary group, which sync and _apt
    share (through their passwd entries, not the group's member list): root:
    nogroup 0640 would let them read the secret, so the file is nobody's, 0600."""
    assert [p.pw_name for p in pwd.getpwall()
            if p.pw_gid == pwd.getpwnam("nobody").pw_gid and p.pw_name != "nobody"]
    keygen(shared, "--server", "knot", "--spdu-user", "nobody")
    assert owner(shared / "keys" / "spdu.key") == "nobody:nogroup 0600"


def test_a_user_that_does_not_exist_is_a_usage_error(shared):
    conf = ConfDir(shared / "etc")
    conf.write("domain=domain.tld\ntargets=beta\n")
    r = subprocess.run([sys.executable, "-m", "spdu_cli", "--config", str(conf.main), "keygen",
                        "--key-file", str(shared / "k"), "--knot-user", "no-such-user"],
                       capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 2 and "--knot-user no-such-user: no such user" in r.stderr
    assert not (shared / "k").exists()


def test_not_root_it_prints_the_commands_root_must_run(shared):
    conf = ConfDir(shared / "etc")
    conf.write(f"domain=domain.tld\nmyTag=alpha\ntargets=beta\nspoolDir={shared}/s\n")
    keys = shared / "keys"
    keys.mkdir()
    give_to("pdns", keys)
    r = spdu_as("pdns", "--config", str(conf.main), "keygen", "--server", "knot",
                "--spdu-user", "knot", "--key-file", str(keys / "spdu.key"))
    assert r.returncode == 0, r.stderr
    assert owner(keys / "spdu-alpha.knot.key") == "pdns:pdns 0600"
    fixes = [ln.strip() for ln in r.stderr.splitlines() if ln.startswith("  chown")]
    assert fixes == [f"chown root:knot {keys / n} && chmod 0640 {keys / n}"
                     for n in ("spdu.key", "spdu.knsupdate", "spdu-alpha.knot.key")]
    assert "not run as root" in r.stderr
    for fix in fixes:  # exactly as printed
        subprocess.run(["sh", "-ec", fix], check=True)
    assert owner(keys / "spdu-alpha.knot.key") == "root:knot 0640"


def _knsupdate_signed(dns, keyfile: Path, address: str, user: str):
    """An UPDATE signed with the key, through `knsupdate -k` run as `user`."""
    script = (f"server {dns.address} {dns.port}\nzone pool.domain.tld.\n"
              f"update add {API} 5 A {address}\nsend\n")
    return subprocess.run(as_user(user, [require_binary("knsupdate"), "-t", "2", "-k",
                                         str(keyfile)]),
                          input=script, capture_output=True, text=True, timeout=30)


def _spdu_reconciles_as(user: str, dns, shared: Path, conf: ConfDir):
    """spdu, run as its cron user, reads its key file and changes the pool."""
    from spdu_cli.spool import Spool

    spool = Spool(str(shared / "spool"))
    down_beta(conf, dns, spool, extra=f"tsigKeyFile={shared / 'keys' / 'spdu.key'}\n")
    give_to(user, spool.dir)
    r = spdu_as(user, "--config", str(conf.main), "reconcile")
    assert r.returncode == 0, r.stderr
    assert BETA not in pool(dns) and {SELF, GAMMA} <= set(pool(dns))


def test_knotd_as_knot_starts_from_the_printed_snippet(shared):
    r, conf = keygen(shared, "--server", "knot", "--spdu-user", "knot")
    keys = shared / "keys"
    with KnotServer(shared / "knot", allow_unsigned=False, extra_conf=r.stdout,
                    zone_acls=["spdu-alpha"], user="knot") as dns:
        assert dns.proc is not None
        check = subprocess.run(as_user("knot", [require_binary("knotc"), "-c", str(dns.conf),
                                                "conf-check"]),
                               capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stdout + check.stderr  # Debian's ExecStartPre
        done = _knsupdate_signed(dns, keys / "spdu.knsupdate", "192.0.2.50", "knot")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "192.0.2.50" in pool(dns)
        _spdu_reconciles_as("knot", dns, shared, conf)


def test_named_as_bind_starts_from_the_printed_snippet(shared):
    r, conf = keygen(shared, "--server", "bind", "--spdu-user", "knot")
    include = next(ln for ln in r.stdout.splitlines() if ln.startswith("include"))
    policy = re.search(r"update-policy \{.*?\n    \};", r.stdout, re.DOTALL).group(0)
    with BindServer(shared / "bind", extra_conf=include + "\n", policy=policy,
                    user="bind") as dns:
        ps = subprocess.run(["ps", "-o", "user=", "-p", str(dns.proc.pid)],
                            capture_output=True, text=True)
        assert ps.stdout.strip() == "bind"
        done = subprocess.run(as_user("knot", [require_binary("nsupdate"), "-t", "2", "-k",
                                               str(shared / "keys" / "spdu.key")]),
                              input=f"server {dns.address} {dns.port}\nzone pool.domain.tld.\n"
                                    f"update add {API} 5 A 192.0.2.50\nsend\n",
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "192.0.2.50" in pool(dns)
        _spdu_reconciles_as("knot", dns, shared, conf)


def test_pdns_server_as_pdns_with_the_printed_commands(shared):
    pdns_dir = shared / "pdns"
    dns = PowerDNSServer(pdns_dir, user="pdns", start=False)
    r, conf = keygen(shared, "--server", "pdns", "--spdu-user", "knot",
                     "--pdns-database", str(dns.database))
    with dns:
        done = dns.run_printed(r.stdout, shared / "bin")  # as root, as an operator runs them
        assert done.returncode == 0, done.stdout + done.stderr
        ps = subprocess.run(["ps", "-o", "user=", "-p", str(dns.proc.pid)],
                            capture_output=True, text=True)
        assert ps.stdout.strip() == "pdns"
        done = _knsupdate_signed(dns, shared / "keys" / "spdu.knsupdate", "192.0.2.50", "knot")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "192.0.2.50" in pool(dns)
        _spdu_reconciles_as("knot", dns, shared, conf)
