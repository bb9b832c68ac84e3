"""The fault matrix of issue 13, each fault reproduced against the real thing:
a full tmpfs mounted here, a spool of another user (spdu run as `nobody`), a
clock stepped with libfaketime, FIFOs and symbolic links in the spool, a real
knotd, a real SMTP relay and a real syslog socket. Each must end in the exit
status spdu(1) documents, lose nothing, and name the file or server at fault.
The suite runs as root (CI does): mounting and changing user need it.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from spdu_cli.entry import SpoolEntry
from spdu_cli.health import Health, State
from spdu_cli.spool import Spool
from tests.smtpd import SilentRelay

SELF, BETA, GAMMA, DELTA = "192.0.2.1", "127.0.0.21", "127.0.0.22", "127.0.0.23"
BIN = Path(sys.executable).parent
FAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"  # Debian's faketime
# spdu as another user: everything it may import is loaded while still root, since
# this Python may live where that user cannot read (a pyenv under /root).
AS_USER = """
import base64, datetime, errno, fcntl, hashlib, hmac, io, ipaddress, json, logging.handlers
import difflib, pwd, random, resource, select, selectors, smtplib, socket, ssl, struct
import tempfile, zlib, h11
import email.message, email.utils, encodings.idna
import dns.exception, dns.flags, dns.message, dns.name, dns.query, dns.rcode
import dns.rdataclass, dns.rdataset, dns.rdatatype, dns.tsig, dns.update
import dns.rdtypes.IN.A, dns.rdtypes.IN.AAAA, dns.rdtypes.ANY.SOA
import rich.box, rich.console, rich.table
import spdu_cli.cli, spdu_cli.cycle, spdu_cli.probe.step, spdu_cli.probe.kept
import spdu_cli.reconcile, spdu_cli.notify.step
import spdu_cli.status, spdu_cli.history, spdu_cli.maint, spdu_cli.metrics
import os, sys
u = pwd.getpwnam(sys.argv[1])
os.setgroups([]); os.setgid(u.pw_gid); os.setuid(u.pw_uid)
sys.argv = sys.argv[2:]
spdu_cli.cli.cron_main() if sys.argv[0] == "spdu-cron" else spdu_cli.cli.main()
"""


class Site:
    """A site in a directory every user may traverse: spdu.conf, spdu/TARGET, a spool."""

    def __init__(self, root: Path, knot, servers: dict, spool: Path):
        self.root, self.knot, self.servers, self.spool = root, knot, servers, spool
        self.conf = root / "spdu.conf"
        self.write()

    def write(self, extra: str = "", spool: Path | None = None) -> None:
        self.conf.write_text(
            f"domain=domain.tld\ntargets='{' '.join(self.servers)}'\n"
            f"spoolDir={spool or self.spool}\nselfCheck=no\nselfIP={SELF}\nnameServer=127.0.0.1\n"
            f"namePort={self.knot.port}\nnameTimeout=2\ninterval=0.4\nfastInterval=0.1\n"
            f"probeTimeout=0.5\nprobeFall=1\nprobeRise=1\nsyslogSocket=none\n{extra}")
        os.chmod(self.conf, 0o644)
        (self.root / "spdu").mkdir(mode=0o755, exist_ok=True)
        for name, srv in self.servers.items():
            f = self.root / "spdu" / name
            f.write_text(f"targetIP={srv.host}\nprobePort={srv.port}\n")
            os.chmod(f, 0o644)

    def run(self, *args: str, user: str | None = None, env: dict | None = None,
            prog: str = "spdu", timeout: float = 30) -> subprocess.CompletedProcess:
        """spdu as a real process, as cron runs it (as `user` when given)."""
        argv = [prog, "-c", str(self.conf), *args]
        cmd = ([sys.executable, "-c", AS_USER, user, *argv] if user
               else [str(BIN / prog), *argv[1:]])
        return subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              timeout=timeout, cwd="/", env={**os.environ, **(env or {})})

    def entry(self, target: str) -> dict:
        return json.loads((self.spool / f"{target}.json").read_text())

    def put(self, target: str, state: str, addresses, checked: float | None = None,
            **fields) -> None:
        """What `spdu probe` leaves behind, with `fields` written over it as is."""
        now = time.time()
        e = SpoolEntry(target, Health(State(state), now, 0, 0),
                       checked=now if checked is None else checked, addresses=list(addresses))
        e.journal.append({"id": 1, "at": "2026-01-01T00:00:00.000Z", "from": "unknown",
                          "to": state, "reason": "test", "notified": False, "dns": []})
        e.next_id = 2
        store = Spool(str(self.spool))
        store.ensure_dir()
        d = {**e.to_json(), **fields}
        (self.spool / f"{target}.json").write_text(json.dumps(d))

    def pool(self) -> list[str]:
        return sorted(self.knot.query("api", "A"))


@pytest.fixture
def world():
    """A directory `nobody` may traverse (pytest's tmp_path is root's only)."""
    d = Path(tempfile.mkdtemp(prefix="spdu-faults-"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def knot(tmp_path):
    """knotd whose pool holds selfIP only; unsigned updates from 127.0.0.1 and the
    key `knot.key` allowed."""
    from tests.conftest import _tsig_key
    from tests.dnsservers import KnotServer

    with KnotServer(tmp_path / "knot", key=_tsig_key(), records=[("api", "A", SELF)]) as s:
        yield s


@pytest.fixture
def site(world, http_server, knot):
    servers = {"beta": http_server(BETA), "gamma": http_server(GAMMA)}
    return Site(world, knot, servers, world / "spool")


class FullDisk:
    """A small tmpfs mounted for the test, filled up on demand."""

    def __init__(self, path: Path):
        self.path = path
        self.filler = path / "filler"

    def fill(self) -> None:
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError as e:
            assert e.errno == 28, e  # ENOSPC: full
        finally:
            os.close(fd)
        assert shutil.disk_usage(self.path).free == 0

    def free(self) -> None:
        self.filler.unlink()


@pytest.fixture
def full_disk(world):
    mnt = world / "small"
    mnt.mkdir(mode=0o755)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0755", "spdu-test", str(mnt)],
                   check=True)
    try:
        yield FullDisk(mnt)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def one_line_error(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("spdu: error:")]
    assert errors, stderr
    return errors[-1]


# -- 1. disk full --------------------------------------------------------------------------


@pytest.mark.parametrize("lock", ["missing", "present"])
def test_disk_full_cron_loop_exits_75_and_says_free_space(site, full_disk, lock):
    spool = full_disk.path / "spool"
    site.write(spool=spool)
    site.spool = spool
    if lock == "present":
        assert site.run("cron", "--for", "1").returncode == 0
    full_disk.fill()
    r = site.run("cron", "--for", "1")
    assert r.returncode == 75, r.stderr
    assert "internal error" not in r.stderr
    assert "No space left on device" in r.stderr and f"free space on the filesystem of {spool}" \
        in r.stderr
    assert site.run("probe").returncode == 75


def test_disk_full_notify_sends_nothing_and_keeps_the_mail(site, full_disk, smtp_relay):
    relay = smtp_relay()
    site.spool = full_disk.path / "spool"
    site.write(f"mailTo=ops@domain.tld\nsmtpRelay=127.0.0.1\nsmtpPort={relay.port}\n"
               "smtpSSL=no\nsmtpStartTLS=no\n", spool=site.spool)
    site.put("beta", "down", [BETA])
    full_disk.fill()
    for _ in range(2):  # every run: nothing sent (else each would send it again), 75
        r = site.run("notify")
        assert r.returncode == 75, r.stderr
        assert "no mail is sent until that is recorded" in r.stderr
        assert relay.received == []
    full_disk.free()
    assert site.run("notify").returncode == 0
    assert site.run("notify").returncode == 0
    assert len(relay.received) == 1  # once, when it could be recorded
    assert site.entry("beta")["journal"][0]["notified"] is True


# -- 2. the spool of another user; a link at the lock --------------------------------------


def test_cron_as_another_user_on_roots_spool_is_75_with_a_hint(site):
    assert site.run("probe").returncode == 0  # as root: the spool is root's, mode 0750
    r = site.run("--for", "1", user="nobody", prog="spdu-cron")
    assert r.returncode == 75, r.stderr
    assert "internal error" not in r.stderr
    assert f"{site.spool}/.cron.lock" in r.stderr and "Permission denied" in r.stderr
    assert f"chown -R nobody {site.spool}" in r.stderr


def test_a_link_at_the_cron_lock_is_75_and_never_followed(site, world):
    site.spool.mkdir(mode=0o750)
    target = world / "elsewhere"
    (site.spool / ".cron.lock").symlink_to(target)
    r = site.run("cron", "--for", "1")
    assert r.returncode == 75, r.stderr
    assert "is a symbolic link, which spdu never follows: remove it" in r.stderr
    assert not target.exists()


# -- 3. an unreadable spool is an error, not health -----------------------------------------


@pytest.mark.parametrize("args", [("status",), ("history", "beta"), ("notify", "--dry-run")])
def test_unreadable_spool_is_75_not_never_probed(site, args):
    site.write("mailTo=ops@domain.tld\n")
    site.put("beta", "down", [BETA])  # a pending transition nobody may read
    r = site.run(*args, user="nobody")
    assert r.returncode == 75, (r.stdout, r.stderr)
    assert "never probed" not in r.stdout and "no transitions" not in r.stdout
    line = one_line_error(r.stderr)
    assert f"{site.spool}/beta.json" in line and "Permission denied" in line


# -- 4. one bad address in one spool file --------------------------------------------------


@pytest.mark.parametrize("field", ["addresses", "retired"])
def test_a_bad_address_makes_only_that_target_unknown(world, http_server, knot, field):
    servers = {n: http_server(h) for n, h in (("beta", BETA), ("gamma", GAMMA),
                                              ("delta", DELTA))}
    s = Site(world, knot, servers, world / "spool")
    knot.nsupdate(f"server 127.0.0.1 {knot.port}\nzone pool.domain.tld.\n"
                  f"update add api.pool.domain.tld. 5 A {GAMMA}\nsend\n")
    bad = ["not-an-ip"] if field == "addresses" else ["999.1.1.1"]
    if field == "addresses":
        s.put("beta", "up", bad)
    else:
        s.put("beta", "up", [BETA], retired=bad)
    s.put("gamma", "down", [GAMMA])
    s.put("delta", "up", [DELTA])
    r = s.run("reconcile")
    assert r.returncode == 0, r.stderr
    assert s.pool() == sorted([SELF, DELTA])  # gamma out, delta in: the rest proceeded
    assert f"{s.spool}/beta.json is corrupt" in r.stderr and "not an IP address" in r.stderr


# -- 5. a clock stepped back ---------------------------------------------------------------


def test_a_probe_time_in_the_future_is_stale(site):
    assert os.path.exists(FAKETIME), "Debian package faketime is missing (see .ci/setup)"
    ahead = {"LD_PRELOAD": FAKETIME, "FAKETIME": "+1h", "FAKETIME_DONT_RESET": "1"}
    r = site.run("probe", env=ahead)  # the clock an hour ahead: both up, checked then
    assert r.returncode == 0, r.stderr
    assert site.entry("beta")["checked"] > time.strftime("%Y-%m-%dT%H:%M", time.gmtime(
        time.time() + 3000))
    site.servers["beta"].behaviour = "503"  # beta dies; the clock is set right
    before = site.pool()
    r = site.run("reconcile", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "in the future (was the clock stepped back?)" in r.stdout
    assert "update add" not in r.stdout
    assert site.run("reconcile").returncode == 0
    assert site.pool() == before == [SELF]  # no dead site added from the future's data


# -- 6. special files in the spool ---------------------------------------------------------


def test_a_fifo_in_the_spool_blocks_nothing(site):
    site.put("gamma", "up", [GAMMA])
    os.mkfifo(site.spool / ".reconcile.json")
    os.mkfifo(site.spool / "beta.json")
    r = site.run("reconcile", timeout=15)
    assert r.returncode == 0, r.stderr
    assert site.pool() == sorted([SELF, GAMMA])
    assert "beta.json is not a regular file" in r.stderr
    assert "unknown" in site.run("status", "beta", timeout=15).stdout
    (site.spool / ".lock").unlink()
    os.mkfifo(site.spool / ".lock")
    r = site.run("probe", timeout=15)
    assert r.returncode == 75 and f"{site.spool}/.lock" in r.stderr
    assert "only spdu's own regular files belong there" in r.stderr


def test_a_link_in_the_spool_is_never_read(site, world):
    secret = world / "shadow"
    record = {"version": 1, "pools": {"x": {"pool": "leaked", "updates": 4242}}}
    secret.write_text(json.dumps(record))
    site.put("gamma", "up", [GAMMA])
    (site.spool / ".reconcile.json").symlink_to(secret)
    (site.spool / "beta.json").symlink_to(secret)
    r = site.run("reconcile")
    assert r.returncode == 0, r.stderr
    assert json.loads(secret.read_text()) == record  # neither read into nor written through
    assert "leaked" not in (site.spool / ".reconcile.json").read_text()
    assert "beta.json is a symbolic link" in r.stderr


# -- 7. a symlinked spoolDir ---------------------------------------------------------------


@pytest.mark.parametrize("args", [("reconcile",), ("status",), ("probe",), ("notify",)])
def test_a_linked_spool_dir_is_78_before_anything_is_sent(site, world, args):
    site.put("gamma", "up", [GAMMA])  # a change is due: gamma is not in the pool
    link = world / "spool-link"
    link.symlink_to(site.spool)
    site.write(spool=link)
    serial = site.knot.serial()
    r = site.run(*args)
    assert r.returncode == 78, r.stderr
    assert f"spoolDir {link} is a symbolic link" in one_line_error(r.stderr)
    assert site.knot.serial() == serial and site.pool() == [SELF]


# -- 8. REFUSED, unsigned: say what is known -----------------------------------------------


def test_an_unserved_zone_with_a_key_is_said_so(site):
    name, alg, secret = site.knot.key
    site.write(f"poolName=api.nosuch.tld\ntsigKey={alg}:{name}:{secret}\n")
    os.chmod(site.conf, 0o600)
    r = site.run("reconcile")
    assert r.returncode == 78, r.stderr
    line = one_line_error(r.stderr)
    assert "does not serve zone nosuch.tld" in line and "does not accept the key" not in line
    assert secret not in r.stderr


# -- 9. Message-ID of a transition sent again ----------------------------------------------


def test_a_transition_sent_again_keeps_its_message_id(site, smtp_relay):
    lock = {}

    def hold_spool_lock():  # the relay accepts, and then the spool cannot be written
        fd = os.open(site.spool / ".lock", os.O_RDWR)
        fcntl.flock(fd, fcntl.LOCK_EX)
        lock["fd"] = fd

    relay = smtp_relay(on_data=hold_spool_lock)
    site.write(f"mailTo=ops@domain.tld\nsmtpRelay=127.0.0.1\nsmtpPort={relay.port}\n"
               "smtpSSL=no\nsmtpStartTLS=no\nflapCount=0\n")
    site.put("beta", "down", [BETA])
    r = site.run("notify", "--lock-timeout", "0.5")
    assert r.returncode == 75, r.stderr  # mailed, not marked
    first = relay.received[0].message["Message-ID"]
    relay.on_data = None
    os.close(lock.pop("fd"))
    site.servers["beta"].behaviour = "ok"
    assert site.run("probe", "beta").returncode == 0  # a newer transition: beta is up
    assert site.run("notify").returncode == 0
    again = [m.message for m in relay.received[1:]]
    assert len(again) == 2  # the repeat alone, and the news in a mail of its own
    repeat = next(m for m in again if "DOWN" in m["Subject"])
    news = next(m for m in again if "DOWN" not in m["Subject"])
    assert repeat["Message-ID"] == first != news["Message-ID"]
    assert all(e["notified"] for e in site.entry("beta")["journal"])


def test_a_mail_the_relay_never_took_joins_the_next_digest(site, smtp_relay):
    from tests.conftest import free_port

    port = free_port()
    site.write(f"mailTo=ops@domain.tld\nsmtpRelay=127.0.0.1\nsmtpPort={port}\n"
               "smtpSSL=no\nsmtpStartTLS=no\nflapCount=0\n")
    site.put("beta", "down", [BETA])
    r = site.run("notify")
    assert r.returncode == 69 and f"127.0.0.1:{port} refused the connection" in r.stderr
    assert site.entry("beta")["journal"][0]["mail_id"] is None  # surely not sent
    site.put("gamma", "down", [GAMMA])
    relay = smtp_relay(port=port)
    assert site.run("notify").returncode == 0
    [mail] = relay.received  # one digest, as before the note of Message-IDs
    assert mail.message["Subject"].startswith("WARNING: 2 changes")


# -- 12. a transition is logged when it happens --------------------------------------------


def test_a_transition_is_logged_before_any_mail(site, world):
    log_path = world / "log.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(log_path))
    sock.settimeout(0.1)
    silent = SilentRelay()
    try:
        site.write(f"syslogSocket={log_path}\nmailTo=ops@domain.tld\nsmtpRelay=127.0.0.1\n"
                   f"smtpPort={silent.port}\nsmtpSSL=no\nsmtpTimeout=10\n")
        assert site.run("probe").returncode == 0
        p = subprocess.Popen([str(BIN / "spdu-cron"), "-c", str(site.conf), "--for", "4"],
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        time.sleep(1.0)
        site.servers["beta"].behaviour = "503"
        t0 = time.monotonic()
        lines = []
        while time.monotonic() - t0 < 8 and not any("beta is DOWN" in x for x in lines):
            try:
                lines.append(sock.recv(4096).decode())
            except TimeoutError:
                pass
        took = time.monotonic() - t0
        p.communicate(timeout=20)
    finally:
        silent.stop()
        sock.close()
    assert any("beta is DOWN" in x for x in lines), lines
    assert took < 2.5, f"logged after {took:.1f} s: it waited for the mail"
    down = [e for e in site.entry("beta")["journal"] if e["to"] == "down"]
    assert down[-1]["logged"] is True and down[-1]["notified"] is False  # the mail is pending


# -- 10. many targets ----------------------------------------------------------------------


def test_the_main_files_values_are_checked_once_for_all_targets(confdir, monkeypatch):
    import dataclasses

    from spdu_cli import config, settings, validate

    names = [f"t{i}" for i in range(300)]
    confdir.write(f"domain=domain.tld\ntargets='{' '.join(names)}'\nselfCheck=no\nselfIP={SELF}\n")
    calls = []
    real = validate.target_list
    monkeypatch.setitem(settings.KEYS, "targets", dataclasses.replace(
        settings.KEYS["targets"], check=lambda v: calls.append(1) or real(v)))
    settings._checked.cache_clear()
    site = config.load(str(confdir.main), system=config.System("alpha.domain.tld"))
    assert len(site.check()) == 300
    assert len(calls) == 1  # not once per target: that made 10,000 targets quadratic


# -- 11 and 13: what every command agrees on; newcomer papercuts ---------------------------


def test_status_refuses_a_target_file_every_command_refuses(site):
    (site.root / "spdu" / "beta").write_text("targetIP=$(id)\n")
    for args in (("status",), ("status", "beta"), ("history", "beta"), ("probe", "beta")):
        r = site.run(*args)
        assert r.returncode == 78 and "command substitution" in r.stderr, (args, r.stderr)


def test_spdu_cron_takes_its_options_as_its_help_shows_them(site):
    # (--no-follow but once: a following loop waits 5 s past its minute for the next copy)
    for args in (("--no-follow", "--for", "1"), ("cron", "--no-follow", "--for", "1"),
                 ("-v", "--no-follow", "--for", "1"), ("--", "--for", "1")):
        r = site.run(*args, prog="spdu-cron")  # (site.run puts -c FILE first)
        assert r.returncode == 0, (args, r.stderr)
        assert ("cron loop done" in r.stderr) is (args[0] == "-v"), (args, r.stderr)
    site.write("interval=5\n")
    r = site.run("-v", "cron", "--for", "1")
    assert "1 tick, 1 probe run, 1 reconcile, " in r.stderr, r.stderr


def test_click_usage_errors_are_one_spdu_line(site):
    r = site.run("config", "show", "--nope")
    assert r.returncode == 2
    [line] = r.stderr.splitlines()
    assert line.startswith("spdu: error: No such option") and "--nope" in line
    assert line.endswith("; see spdu config show --help")


def test_notify_dry_run_says_why_nothing_is_mailed(site):
    site.put("beta", "down", [BETA])
    r = site.run("notify", "--dry-run")
    assert r.returncode == 0
    assert "beta: unknown -> down" in r.stdout and "mailTo is empty" in r.stdout


def test_unsupported_expansion_is_shown_whole(site):
    site.conf.write_text(site.conf.read_text() + "probeTimeout=${nosuch:-3}\n")
    r = site.run("config", "check")
    assert r.returncode == 78 and "${nosuch:-3}" in r.stderr
    assert "((" not in r.stderr and "))" not in r.stderr


def test_status_table_keeps_one_line_per_target_at_80_columns():
    from spdu_cli import render

    rows = [["beta", "down", "2 h 13 min", "12.3 ms", ("connection refused by 127.0.0.21"
             " port 80 after 3 tries"), "1", "1 h 59 min left: kernel upgrade and more"]]
    out = render.table(render.STATUS_HEADERS, rows * 2, width=80)
    lines = [x for x in out.splitlines() if x.strip()]
    assert len(lines) == 4 and all(len(render_strip(x)) <= 80 for x in lines)
    assert "beta" in render_strip(lines[2]) and "12.3 ms" in render_strip(lines[2])


def render_strip(line: str) -> str:
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", line)
