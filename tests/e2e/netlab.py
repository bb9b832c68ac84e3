"""A multi-site lab on Linux network namespaces, for the end-to-end tests
(tests/e2e) and the failover benchmarks (benchmarks/failover.py).

Layout (SUFFIX is random, so two labs can run at once):

    spdu-hub-SUFFIX     a bridge br0; one veth per node plugged into it
    spdu-alpha-SUFFIX   eth0 192.0.2.1/24 2001:db8::1/64: knotd, haproxy, spdu cron
    spdu-beta-SUFFIX    eth0 192.0.2.2/24 2001:db8::2/64: the same
    spdu-gamma-SUFFIX   eth0 192.0.2.3/24 2001:db8::3/64: the same
    spdu-mail-SUFFIX    eth0 192.0.2.25/24 2001:db8::25/64: the SMTP sink

The documentation addresses exist only inside the namespaces: the root
namespace has no interface, address or route in them (the veths are created
inside the hub namespace and their peers directly inside each node's), so
nothing is routed out. Each site is the original's setup: Knot DNS,
authoritative for pool.domain.tld, answering api.pool.domain.tld, accepting
updates only with that site's own TSIG key (made by `spdu keygen`, scoped to
the pool name's A/AAAA), run as Debian's unit runs it (the knot user, with
CAP_NET_BIND_SERVICE: setpriv, as systemd's User= and AmbientCapabilities=),
reading the key file as keygen left it; HAProxy answering /status; and spdu's cron loop with
its own configuration and spool, restarted every minute as cron would. The
test process asks each site's DNS with `ip netns exec NS kdig @127.0.0.1`.

Everything is torn down by `Lab.stop()` (processes, then namespaces, which
takes their veths and the bridge with them), also registered with atexit.
"""

from __future__ import annotations

import atexit
import email
import email.policy
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from tests.dnsservers import as_user, give_to, uid_of

ROOT = Path(__file__).resolve().parents[2]
ZONE = "pool.domain.tld"
POOL = f"api.{ZONE}"
SITES = ("alpha", "beta", "gamma")
HOSTS = {"alpha": 1, "beta": 2, "gamma": 3, "mail": 25}
MAIL_TO = "ops@domain.tld"
SELF = "self"  # the self-check's target: each site's own HAProxy, at its own addresses

#: Settings that keep each scenario to seconds (the defaults are benchmarked).
FAST = {
    "interval": "1",
    "fastInterval": "0.5",
    "probeTimeout": "1",
    "probeFall": "2",
    "probeRise": "2",
    "flapCount": "0",
}
#: spdu's own defaults, spelled out (spdu_cli/config.py KEYS).
DEFAULTS = {
    "interval": "2",
    "fastInterval": "0.25",
    "downInterval": "0.5",
    "probeTimeout": "1.5",
    "probeFall": "2",
    "probeRise": "2",
    "flapCount": "0",
}

REQUIRED = ("ip", "knotd", "kdig", "haproxy")


class LabError(RuntimeError):
    pass


def v4(host: int) -> str:
    return f"192.0.2.{host}"


def v6(host: int) -> str:
    return f"2001:db8::{host}"


def user_of(proc: Proc) -> str:
    """The user a server's process runs as: the process itself, or the one child
    it forked (unbound -d), whatever wraps it (ip netns exec, setpriv) exec'ing it."""
    pid = proc.pid
    for child in run(["pgrep", "-P", str(pid)], check=False).stdout.split() or []:
        pid = int(child)
    return pwd.getpwuid(uid_of(pid)).pw_name


def which(name: str) -> str:
    path = shutil.which(name) or next(
        (p for d in ("/usr/sbin", "/sbin", "/usr/local/sbin")
         if os.access(p := os.path.join(d, name), os.X_OK)), None)
    if path is None:
        raise LabError(f"{name!r} not found (PATH and /usr/sbin): the e2e lab needs iproute2,"
                       " knot, knot-dnsutils and haproxy installed")
    return path


def check_requirements() -> None:
    """Raise LabError naming what is missing: root, programs, aiosmtpd, spdu."""
    if os.geteuid() != 0:
        raise LabError("the e2e lab needs root (ip netns); CI runs as root")
    for prog in REQUIRED:
        which(prog)
    try:
        import aiosmtpd  # noqa: F401
    except ImportError as e:
        raise LabError(f"aiosmtpd is needed for the lab's SMTP sink: {e}") from None
    spdu_command()


def spdu_command() -> list[str]:
    exe = Path(sys.executable).parent / "spdu"
    if exe.exists():
        return [str(exe)]
    try:
        import spdu_cli  # noqa: F401
    except ImportError:
        raise LabError(f"spdu is not installed beside {sys.executable}") from None
    return [sys.executable, "-m", "spdu_cli"]


def run(argv: list[str], check: bool = True, timeout: float = 20, **kw):
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise LabError(f"{' '.join(argv)} exited {p.returncode}: {p.stderr.strip()}"
                       f" {p.stdout.strip()}")
    return p


class Proc:
    """A long-running process in its own session (so its group can be killed)."""

    def __init__(self, name: str, argv: list[str], log: Path, cwd: Path | None = None):
        self.name = name
        self.log = log
        with open(log, "ab") as out:
            self.p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                      stderr=subprocess.STDOUT, cwd=cwd,
                                      start_new_session=True)
        self.pid = self.p.pid

    @property
    def alive(self) -> bool:
        return self.p.poll() is None

    def signal(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, timeout: float = 5.0) -> None:
        if self.p.poll() is not None:
            return
        self.signal(signal.SIGCONT)  # a stopped process cannot act on SIGTERM
        self.signal(signal.SIGTERM)
        try:
            self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.p.wait(timeout)


@dataclass
class Notice:
    """One section of a received mail: one transition, or a flap summary."""

    target: str
    changes: list[tuple[str, str]]  # (old, new); old is "?" when the mail does not say
    flap: bool = False


@dataclass
class Mail:
    observer: str  # the site that sent it (its myTag)
    subject: str
    message_id: str
    notices: list[Notice] = field(default_factory=list)
    path: str = ""

    def transitions(self, target: str | None = None) -> list[tuple[str, str]]:
        """(target, new state) of every transition it carries."""
        return [(n.target, new) for n in self.notices for _, new in n.changes
                if target is None or n.target == target]


_SEP = "\n\n" + "-" * 72 + "\n\n"
_HEAD = re.compile(r"^(\S+) \([^)]*\) is (DOWN|up|flapping), as seen from (.+?)[.:]")
_FLAP_LINE = re.compile(r"^\s+\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\s+(\S+) -> (\S+?):")


def _state(word: str) -> str:
    return "down" if word == "DOWN" else word


def parse_mail(raw: bytes, path: str = "") -> Mail:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    name = msg["From"].addresses[0].display_name if msg["From"] else ""
    observer = name.removeprefix("Robot SPDU on ")
    text = msg.get_content().replace("\r\n", "\n")
    out = Mail(observer, str(msg["Subject"]), str(msg["Message-ID"]), path=path)
    for section in text.split("-- \n")[0].split(_SEP):
        lines = section.strip("\n").splitlines()
        if not lines:
            continue
        head = _HEAD.match(lines[0])
        if not head:
            continue  # a digest's list of headlines
        target, word = head.group(1), head.group(2)
        if word == "flapping":
            changes = [(_state(a), _state(b)) for a, b in
                       (x.groups() for x in map(_FLAP_LINE.match, lines[1:]) if x)]
            out.notices.append(Notice(target, changes, flap=True))
        else:
            old = "unknown" if any("state before was unknown" in ln for ln in lines) else "?"
            out.notices.append(Notice(target, [(old, _state(word))]))
    return out


def notices(mails: list[Mail]) -> dict[str, Counter]:
    """observer -> Counter of (target, new state), one per transition mailed."""
    out: dict[str, Counter] = {}
    for m in mails:
        out.setdefault(m.observer, Counter()).update(m.transitions())
    return out


class Site:
    def __init__(self, lab: Lab, name: str):
        self.lab = lab
        self.name = name
        self.host = HOSTS[name]
        self.ns = f"spdu-{name}-{lab.suffix}"
        self.dir = lab.dir / name
        self.addresses = [v4(self.host)] + ([v6(self.host)] if lab.ipv6 else [])
        self.knot: Proc | None = None
        self.haproxy: Proc | None = None
        self.loop: Proc | None = None
        self.paused = False
        self.link_up = True
        self.settings = dict(lab.settings)
        self.conf = self.dir / "etc" / "spdu.conf"
        self.spool = self.dir / "spool"
        self.keyfile = self.conf.parent / "spdu.tsig.key"

    def __repr__(self) -> str:
        return f"Site({self.name})"

    def exec(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *argv]

    @property
    def knot_dir(self) -> Path:
        """knotd's configuration, zone and journal, and keygen's key file for it:
        under the lab's run directory, which every user may pass (pytest's own
        temporary directories are root's only)."""
        d = self.lab.rundir / self.name / "knot"
        d.mkdir(parents=True, exist_ok=True)
        return d

    @property
    def peers(self) -> list[Site]:
        return [s for s in self.lab.sites.values() if s is not self]

    # -- configuration -----------------------------------------------------------------

    def write_config(self, **overrides: str) -> None:
        """Write spdu.conf and spdu/PEER (the loop reads them again when they change)."""
        self.settings.update(overrides)
        etc = self.conf.parent
        (etc / "spdu").mkdir(parents=True, exist_ok=True)
        lines = [
            "# written by tests/e2e/netlab.py",
            "domain=domain.tld",
            f"myTag={self.name}",
            f"targets='{' '.join(p.name for p in self.peers)}'",
            f"spoolDir={self.spool}",
            f"selfIP='{' '.join(self.addresses)}'",
            "nameServer=127.0.0.1",
            f"mailTo={MAIL_TO}",
            "mailFrom=spdu@domain.tld",
            f"smtpRelay={v4(HOSTS['mail'])}",
            "smtpSSL=no",
            "smtpPort=25",
            "smtpStartTLS=no",
            "smtpTimeout=5",
            "syslogSocket=none",
        ]
        if self.keyfile.exists():  # keygen refuses a tsigKeyFile that does not exist yet
            lines.append(f"tsigKeyFile={self.keyfile}")
        lines += [f"{k}={v}" for k, v in self.settings.items()]
        tmp = self.conf.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        os.chmod(tmp, 0o644)
        os.rename(tmp, self.conf)
        for p in self.peers:
            path = etc / "spdu" / p.name
            # targetDNS: the peer's own knotd, whose pool is its view (spdu_cli/peers.py)
            path.write_text(f"targetIP='{' '.join(p.addresses)}'\ntargetDNS={p.addresses[0]}\n")
            os.chmod(path, 0o644)

    RELOADED = "configuration changed: read again"
    LOOP_DONE = "cron loop done:"

    def _log_count(self, text: str) -> int:
        try:
            return (self.dir / "spdu.log").read_text(errors="replace").count(text)
        except FileNotFoundError:
            return 0

    def reconfigure(self, timeout: float = 10.0, **overrides: str) -> None:
        """Change settings and wait until the running loop has read them (it says so
        in its log; or it ended, and the next run reads the file from the start)."""
        reloads, runs = self._log_count(self.RELOADED), self._log_count(self.LOOP_DONE)
        self.write_config(**overrides)
        if self.loop is not None:
            self.lab.wait(lambda: self._log_count(self.RELOADED) > reloads
                          or self._log_count(self.LOOP_DONE) > runs,
                          timeout, f"{self.name}'s loop to read its configuration again")

    def keygen(self) -> str:
        """`spdu keygen --server knot`: the key files, and the snippet for knot.conf."""
        r = run([*spdu_command(), "-c", str(self.conf), "keygen", "--server", "knot",
                 "--key-file", str(self.keyfile), "--server-dir", str(self.knot_dir)])
        self.write_config()  # now with tsigKeyFile
        return r.stdout

    # -- servers -----------------------------------------------------------------------

    def start_knot(self) -> None:
        kdir = self.knot_dir
        (kdir / "db").mkdir(parents=True, exist_ok=True)  # the journal of updates
        snippet = self.keygen()
        keyname = re.search(r"^\s+key: (\S+)$", snippet, re.MULTILINE).group(1)
        own = [(a, "AAAA" if ":" in a else "A") for a in self.addresses]
        zonefile = kdir / f"{ZONE}.zone"
        zonefile.write_text("\n".join([
            f"$ORIGIN {ZONE}.",
            "$TTL 5",
            f"@ IN SOA ns.{self.name}.domain.tld. hostmaster.domain.tld. 1 60 30 600 5",
            *[f"@ IN NS ns.{s}.domain.tld." for s in SITES],
            *[f"api IN {t} {a}" for a, t in own],
        ]) + "\n")
        listen = ", ".join(["127.0.0.1@53", *[f"{a}@53" for a in self.addresses]])
        (kdir / "knot.conf").write_text(
            "server:\n"
            f"  rundir: {self.lab.rundir / self.name}\n"
            f"  listen: [{listen}]\n"
            "  udp-workers: 1\n  tcp-workers: 1\n  background-workers: 1\n"
            "log:\n  - target: stderr\n    any: info\n"
            f"database:\n  storage: {kdir / 'db'}\n"
            + snippet
            + "template:\n  - id: default\n"
            f"    storage: {kdir}\n"
            "    zonefile-sync: -1\n    zonefile-load: whole\n    journal-content: changes\n"
            "zone:\n"
            f"  - domain: {ZONE}\n    file: {zonefile}\n    acl: [{keyname}]\n")
        # its journal and control socket; the key file stays as keygen left it (root:knot)
        give_to("knot", kdir / "db")
        os.chown(self.lab.rundir / self.name, pwd.getpwnam("knot").pw_uid, -1)
        self.knot = Proc(f"{self.name}/knotd",
                         self.exec(as_user("knot", [which("knotd"), "-c",
                                                    str(kdir / "knot.conf")], low_ports=True)),
                         self.dir / "knotd.log")
        deadline = time.monotonic() + 15
        while True:
            r = run(self.exec(["kdig", "@127.0.0.1", "+short", "+time=1", "+retry=0",
                               ZONE, "SOA"]), check=False)
            if r.returncode == 0 and r.stdout.strip():
                return
            if not self.knot.alive or time.monotonic() > deadline:
                raise LabError(f"{self.name}: knotd did not answer SOA {ZONE}:\n"
                               f"{self.knot.log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.05)

    def start_haproxy(self) -> None:
        cfg = self.dir / "haproxy.cfg"
        binds = "\n".join(f"  bind {'[' + a + ']' if ':' in a else a}:80"
                          for a in self.addresses)
        cfg.write_text(
            "global\n  maxconn 256\n"
            "defaults\n  mode http\n  timeout connect 2s\n  timeout client 10s\n"
            "  timeout server 10s\n  timeout http-request 5s\n"
            "frontend api\n" + binds + "\n"
            # only for apiName, as a site's own probe (selfCheck) and its peers' ask
            '  http-request return status 200 content-type text/plain string "ok"'
            " if { path /status } { req.hdr(host) -i api.domain.tld }\n"
            "  http-request deny deny_status 404\n")
        if self.haproxy is not None:
            self.haproxy.stop()
        self.haproxy = Proc(f"{self.name}/haproxy",
                            self.exec([which("haproxy"), "-db", "-f", str(cfg)]),
                            self.dir / "haproxy.log")
        self.paused = False
        deadline = time.monotonic() + 10
        while not self.serving():
            if not self.haproxy.alive or time.monotonic() > deadline:
                raise LabError(f"{self.name}: haproxy does not serve /status:\n"
                               f"{self.haproxy.log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.02)

    def serving(self) -> bool:
        """Whether every address accepts connections on port 80 (from inside)."""
        code = ("import socket,sys\n"
                "for a in sys.argv[1:]:\n"
                "    socket.create_connection((a, 80), 0.5).close()\n")
        return run(self.exec([sys.executable, "-c", code, *self.addresses]),
                   check=False).returncode == 0

    def stop_haproxy(self) -> None:
        """HAProxy stops: connections to port 80 are refused."""
        if self.haproxy is not None:
            self.haproxy.stop()
            self.haproxy = None
        self.paused = False

    def pause_haproxy(self) -> None:
        """SIGSTOP: the kernel still accepts connections, nothing ever answers."""
        self.haproxy.signal(signal.SIGSTOP)
        self.paused = True

    def resume_haproxy(self) -> None:
        self.haproxy.signal(signal.SIGCONT)
        self.paused = False

    def set_link(self, up: bool) -> None:
        run(["ip", "-n", self.ns, "link", "set", "eth0", "up" if up else "down"])
        self.link_up = up

    def start_loop(self) -> None:
        """spdu's cron loop as cron runs it (`cron --follow`, what spdu-cron runs): a
        copy in the background at every whole loop_seconds of the wall clock (cron's
        minutes); the first one loops, and each later one finds it running and hands
        its minute over, so one loop runs on."""
        spdu = " ".join(f"'{a}'" for a in spdu_command())
        seconds = f"{self.lab.loop_seconds:.0f}"
        script = (f"while :; do {spdu} -v -c '{self.conf}' cron --follow --for {seconds} &"
                  f" sleep $(( {seconds} - $(date +%s) % {seconds} )); done")
        self.loop = Proc(f"{self.name}/spdu", self.exec(["sh", "-c", script]),
                         self.dir / "spdu.log", cwd=self.dir)

    # -- what it answers ---------------------------------------------------------------

    def answers(self, timeout: float = 1.0) -> set[str]:
        """The addresses this site's DNS answers for the pool name (A and AAAA)."""
        r = run(self.exec(["kdig", "@127.0.0.1", "+short", f"+time={max(1, int(timeout))}",
                           "+retry=0", "+norecurse", POOL, "A", POOL, "AAAA"]),
                check=False, timeout=timeout + 5)
        if r.returncode != 0:
            raise LabError(f"{self.name}: kdig exited {r.returncode}: {r.stderr.strip()}")
        return {ln.strip() for ln in r.stdout.splitlines() if ln.strip()}

    def answers_sites(self) -> set[str]:
        """The sites this DNS answers with (a site counts when any of its addresses is in)."""
        got = self.answers()
        return {s.name for s in self.lab.sites.values() if got & set(s.addresses)}

    def pending(self) -> dict[str, int]:
        """Transitions in this site's spool not yet mailed, per target (`self`: the
        self-check's, this site's own service)."""
        from spdu_cli.spool import Spool

        store = Spool(str(self.spool))
        out = {}
        for name in [p.name for p in self.peers] + [SELF]:
            n = len(store.read(name).pending())
            if n:
                out[name] = n
        return out

    def log(self, lines: int = 60) -> str:
        out = []
        for name in ("spdu.log", "knotd.log", "haproxy.log"):
            path = self.dir / name
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {self.name} {name} (last {len(tail)} lines)\n" + "\n".join(tail))
        return "\n".join(out)


class Lab:
    """Three sites and a mail sink on a bridge, each in its own namespace."""

    def __init__(self, workdir: Path | str | None = None, settings: dict | None = None,
                 ipv6: bool = True, loop_seconds: float = 60.0, keep: bool = False):
        check_requirements()
        self.suffix = secrets.token_hex(3)
        self._remove_dir = workdir is None and not keep  # a temporary directory of our own
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="spdu-lab-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        # knotd's control socket path must stay short (sun_path is 107 bytes)
        self.rundir = Path(tempfile.mkdtemp(prefix="spdu-lab-run-"))
        os.chmod(self.rundir, 0o711)  # the servers' users pass, and list nothing
        self.settings = dict(FAST if settings is None else settings)
        self.ipv6 = ipv6
        self.loop_seconds = loop_seconds
        self.hub = f"spdu-hub-{self.suffix}"
        self.mail_ns = f"spdu-mail-{self.suffix}"
        self.sites = {name: Site(self, name) for name in SITES}
        self.namespaces: list[str] = []
        self.mail_dir = self.dir / "mail"
        self.sink: Proc | None = None
        self._stopped = False
        atexit.register(self.stop)

    # -- lifecycle ---------------------------------------------------------------------

    def _netns(self, name: str) -> None:
        run(["ip", "netns", "add", name])
        self.namespaces.append(name)
        run(["ip", "-n", name, "link", "set", "lo", "up"])
        if self.ipv6:
            # no duplicate address detection (addresses usable at once), and keep
            # IPv6 addresses when a link goes down, as IPv4 does (Linux flushes them)
            run(["ip", "netns", "exec", name, "sysctl", "-qw",
                 "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0",
                 "net.ipv6.conf.all.keep_addr_on_down=1",
                 "net.ipv6.conf.default.keep_addr_on_down=1"])

    def _node(self, ns: str, host: int, port: str) -> None:
        """A veth from the hub's bridge to eth0 in `ns`, with the node's addresses."""
        run(["ip", "-n", self.hub, "link", "add", port, "type", "veth",
             "peer", "name", "eth0", "netns", ns])
        run(["ip", "-n", self.hub, "link", "set", port, "master", "br0", "up"])
        run(["ip", "-n", ns, "addr", "add", f"{v4(host)}/24", "dev", "eth0"])
        if self.ipv6:
            run(["ip", "-n", ns, "addr", "add", f"{v6(host)}/64", "dev", "eth0", "nodad"])
        run(["ip", "-n", ns, "link", "set", "eth0", "up"])

    def start(self, loops: bool = True) -> Lab:
        try:
            self._netns(self.hub)
            run(["ip", "-n", self.hub, "link", "add", "br0", "type", "bridge",
                 "forward_delay", "0", "mcast_snooping", "0"])
            run(["ip", "-n", self.hub, "link", "set", "br0", "up"])
            self._netns(self.mail_ns)
            self._node(self.mail_ns, HOSTS["mail"], "v-mail")
            for site in self.sites.values():
                self._netns(site.ns)
                self._node(site.ns, site.host, f"v-{site.name}")
            self.mail_dir.mkdir(parents=True, exist_ok=True)
            self.sink = Proc("mail/sink", ["ip", "netns", "exec", self.mail_ns, sys.executable,
                                           str(Path(__file__).with_name("mailsink.py")),
                                           v4(HOSTS["mail"]), "25", str(self.mail_dir)],
                             self.dir / "mailsink.log")
            self.wait(lambda: (self.mail_dir / ".ready").exists(), 15, "the SMTP sink to listen",
                      check=lambda: self.sink.alive)
            for site in self.sites.values():
                site.dir.mkdir(parents=True, exist_ok=True)
                site.write_config()
                site.start_knot()
                site.start_haproxy()
            if loops:
                for site in self.sites.values():
                    site.start_loop()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        procs = [s.loop for s in self.sites.values()] + [s.haproxy for s in self.sites.values()]
        procs += [s.knot for s in self.sites.values()] + [self.sink]
        for p in procs:
            if p is not None:
                try:
                    p.stop()
                except Exception:  # noqa: BLE001, S110 - stop the rest whatever one does
                    pass
        for ns in reversed(self.namespaces):
            r = run(["ip", "netns", "pids", ns], check=False)
            for pid in r.stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            run(["ip", "netns", "del", ns], check=False)
        self.namespaces.clear()
        shutil.rmtree(self.rundir, ignore_errors=True)
        if self._remove_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
        atexit.unregister(self.stop)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- waiting and looking -----------------------------------------------------------

    def wait(self, cond, timeout: float, what: str, poll: float = 0.05, check=None) -> float:
        """Wait until cond() is true; return the seconds it took; LabError on timeout."""
        t0 = time.monotonic()
        while True:
            if cond():
                return time.monotonic() - t0
            if check is not None and not check():
                raise LabError(f"gave up waiting for {what}: a process died")
            if time.monotonic() - t0 > timeout:
                raise LabError(f"timed out after {timeout:g} s waiting for {what}")
            time.sleep(poll)

    def pool(self) -> dict[str, set[str]]:
        """What each site's DNS answers, as site names."""
        return {name: s.answers_sites() for name, s in self.sites.items()}

    def wait_pool(self, expected: dict[str, set[str]], timeout: float, poll: float = 0.05) -> float:
        """Wait until every site named in `expected` answers exactly those sites."""
        last: dict[str, set[str]] = {}

        def ok() -> bool:
            for name, want in expected.items():
                last[name] = self.sites[name].answers_sites()
                if last[name] != want:
                    return False
            return True

        try:
            return self.wait(ok, timeout, f"the pool to become {_fmt(expected)}", poll)
        except LabError as e:
            raise LabError(f"{e}; last seen {_fmt(last)}\n{self.logs()}") from None

    def full(self) -> dict[str, set[str]]:
        return {name: set(SITES) for name in SITES}

    def mails(self, since: int = 0) -> list[Mail]:
        """Mails the sink received, oldest first; `since`: skip the first N."""
        files = sorted(p for p in self.mail_dir.glob("*.eml"))
        return [parse_mail(p.read_bytes(), str(p)) for p in files[since:]]

    def mail_count(self) -> int:
        return len(list(self.mail_dir.glob("*.eml")))

    def pending(self) -> dict[str, dict[str, int]]:
        out = {}
        for name, s in self.sites.items():
            p = s.pending()
            if p:
                out[name] = p
        return out

    def logs(self, lines: int = 40) -> str:
        return "\n".join(s.log(lines) for s in self.sites.values())

    def restore(self, timeout: float = 30.0) -> None:
        """Back to the healthy state: every HAProxy serving, every link up, the
        configuration as started, every site in every pool, no mail pending."""
        for s in self.sites.values():
            if not s.link_up:
                s.set_link(True)
            if s.paused:
                s.resume_haproxy()
            if s.haproxy is None or not s.haproxy.alive:
                s.start_haproxy()
            if s.settings != self.settings:
                s.settings = dict(self.settings)
                s.reconfigure()
            if s.loop is not None and not s.loop.alive:
                raise LabError(f"{s.name}: the spdu loop died\n{s.log()}")
        self.wait_pool(self.full(), timeout)
        try:
            self.wait(lambda: not self.pending(), timeout, "every transition to be mailed",
                      poll=0.2)
        except LabError as e:
            raise LabError(f"{e}: {self.pending()}\n{self.logs()}") from None


def _fmt(pool: dict[str, set[str]]) -> str:
    return "; ".join(f"{k}: {' '.join(sorted(v)) or '-'}" for k, v in sorted(pool.items()))
