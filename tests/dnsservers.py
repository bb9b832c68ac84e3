"""Real authoritative DNS servers (Knot DNS, BIND named, PowerDNS) for the tests.

Each server runs as a subprocess on a free loopback port, serving one zone
(``pool.domain.tld`` by default) from files in a caller-supplied temporary
directory, and accepts dynamic updates according to its ACL / update-policy:

* ``KnotServer``: unsigned updates from 127.0.0.1 (``allow_unsigned``) and/or,
  when ``key`` is given, TSIG-signed updates restricted to owner ``api.ZONE``
  and types A/AAAA.
* ``BindServer``: TSIG-signed updates with ``key`` only, restricted to owner
  ``api.ZONE`` and types A/AAAA (``update-policy ... name``).
* ``PowerDNSServer``: pdns_server with the gsqlite3 backend (the schema
  Debian's pdns-backend-sqlite3 ships, the zone loaded with ``pdnsutil
  load-zone``) and ``dnsupdate=yes``: with ``key``, updates signed with it
  only (``TSIG-ALLOW-DNSUPDATE``), for anything in the zone (PowerDNS cannot
  scope a key to a name or type); without, unsigned updates from 127.0.0.0/8.

* ``PdnsLuaServer``: PowerDNS Authoritative (bind backend) answering the pool
  name from a LUA ``ifurlup`` record: PowerDNS's own health checks, the system
  benchmarks/failover.py measures spdu against (``write_pdns_lua`` writes the
  same configuration for the namespaced lab). No updates.

Each takes ``user=``: started as that user from the first instruction (as
Debian's units start them: ``User=knot``, ``User=pdns``; named as ``bind``),
through setpriv, with its own directory given to that user. The directory's
parents must be searchable by it (pytest's tmp_path is not: see
``open_dir``).

All offer ``query``, ``serial``, ``nsupdate`` (through the real ``nsupdate`` or
``knsupdate`` client), ``log`` and ``stop``, and work as context managers.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype

ZONE = "pool.domain.tld"

#: Initial records, relative to the zone: (owner, type, rdata).
DEFAULT_RECORDS: tuple[tuple[str, str, str], ...] = (
    ("api", "A", "192.0.2.1"),
    ("api", "A", "192.0.2.2"),
    ("other", "A", "192.0.2.99"),
    ("other", "TXT", '"not managed by spdu"'),
)

SIGNED_TTL = 5  # s: the zone TTL (and max TTL in the signing policy) of a signed zone
START_TIMEOUT = 10.0  # seconds to wait for a server to answer its SOA
STOP_TIMEOUT = 5.0

Key = tuple[str, str, str]  # (name, algorithm, base64 secret)


class ServerError(RuntimeError):
    pass


def require_binary(name: str) -> str:
    """Absolute path of a required program; a clear error when it is missing."""
    path = shutil.which(name) or next(
        (p for d in ("/usr/sbin", "/sbin", "/usr/local/sbin")
         if os.access(p := os.path.join(d, name), os.X_OK)), None)
    if path is None:
        raise ServerError(
            f"{name!r} not found (PATH and /usr/sbin): the DNS server tests need "
            f"Knot DNS (knot, knot-dnsutils), BIND (bind9, bind9-dnsutils) and PowerDNS "
            f"(pdns-server, pdns-backend-bind, pdns-backend-sqlite3) installed: run .ci/setup")
    return path


def as_user(user: str, argv: list[str], low_ports: bool = False) -> list[str]:
    """``argv`` run as ``user`` with its own groups and nothing of root's;
    ``low_ports``: allowed to bind port 53 too, as a Debian unit with User= and
    AmbientCapabilities=CAP_NET_BIND_SERVICE is (Knot's, PowerDNS's)."""
    caps = ["--inh-caps=+net_bind_service", "--ambient-caps=+net_bind_service"]
    return [require_binary("setpriv"), f"--reuid={user}", f"--regid={user}", "--init-groups",
            *(caps if low_ports else []), "--", *argv]


def uid_of(pid: int) -> int:
    """The real uid of process ``pid`` (/proc/PID/status)."""
    with open(f"/proc/{pid}/status") as f:
        return int(next(ln for ln in f if ln.startswith("Uid:")).split()[1])


def give_to(user: str, *paths) -> None:
    """Make each directory tree belong to ``user`` (and its primary group)."""
    import pwd

    pw = pwd.getpwnam(user)
    for top in paths:
        for root, dirs, files in os.walk(top):
            for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
                os.lchown(name, pw.pw_uid, pw.pw_gid)


def open_dir(prefix: str = "spdu-test-") -> Path:
    """A fresh directory under /tmp that every user may search (mode 0755),
    for servers and spdu run as another user; the caller removes it."""
    d = Path(tempfile.mkdtemp(prefix=prefix))
    d.chmod(0o755)
    return d


def free_port(address: str = "127.0.0.1") -> int:
    """A port currently free for both UDP and TCP on ``address`` (then released)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    for _ in range(50):
        with socket.socket(family, socket.SOCK_STREAM) as t:
            t.bind((address, 0))
            port = t.getsockname()[1]
            with socket.socket(family, socket.SOCK_DGRAM) as u:
                try:
                    u.bind((address, port))
                except OSError:
                    continue
                return port
    raise ServerError(f"no free UDP+TCP port on {address}")


def zone_text(zone: str, records, ttl: int = 60) -> str:
    """A zone file: SOA (serial 1, minimum 5), NS, then ``records``, all with ``ttl``."""
    lines = [
        f"$ORIGIN {zone}.",
        f"$TTL {ttl}",
        f"@ IN SOA ns1.{zone}. hostmaster.{zone}. 1 60 30 600 5",
        f"@ IN NS ns1.{zone}.",
        "ns1 IN A 127.0.0.1",
    ]
    lines += [f"{owner} IN {rdtype} {rdata}" for owner, rdtype, rdata in records]
    return "\n".join(lines) + "\n"


def _source(address: str) -> str:
    """Where a peer's messages come from: any loopback address for a loopback peer."""
    return "127.0.0.0/8" if address.startswith("127.") else address


class _DNSServer:
    """Process handling, queries and updates common to both servers."""

    program = ""  # e.g. "knotd"
    logname = "server.log"
    #: For a server whose control socket lives in ``_rundir``: that path must stay
    #: short (sun_path is 107 bytes, pytest's tmp_path can be long), so it is a
    #: directory of its own outside tmpdir, made by start() and removed by stop().
    rundir_prefix = ""

    def __init__(self, tmpdir, address: str, zone: str, records, key: Key | None):
        self.dir = Path(tmpdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.address = address
        self.zone = zone.rstrip(".")
        self.records = tuple(DEFAULT_RECORDS if records is None else records)
        self.key = key
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.startup_seconds = 0.0
        self._logpath = self.dir / self.logname
        self.start_timeout = START_TIMEOUT
        self._rundir = ""
        self.want_port = 0
        self.user = ""  # run as this user (setpriv); "" keeps the caller's
        self.signed = False  # the zone signed online (DNSSEC) by the server itself

    @property
    def zone_ttl(self) -> int:
        """The TTL of the zone file's records: a signed zone's are as short as
        SIGNED_TTL, so that each step of a key rollover takes seconds."""
        return SIGNED_TTL if self.signed else 60

    # -- lifecycle --------------------------------------------------------

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _write_config(self) -> None:
        raise NotImplementedError

    def start(self, attempts: int = 3):
        require_binary(self.program)
        t0 = time.monotonic()
        last = ""
        for _ in range(attempts):
            if self.rundir_prefix and not os.path.isdir(self._rundir):  # stop() removes it
                self._rundir = tempfile.mkdtemp(prefix=self.rundir_prefix)
            # want_port: a port chosen beforehand (a primary must know where
            # to send NOTIFY before its secondaries start)
            self.port = self.want_port or free_port(self.address)
            self._write_config()
            argv = self._command()
            if self.user:
                open(self._logpath, "ab").close()
                give_to(self.user, self.dir, *([self._rundir] if self._rundir else []))
                argv = as_user(self.user, argv)
            with open(self._logpath, "ab") as out:
                self.proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=out,
                    stderr=subprocess.STDOUT, cwd=self.dir, start_new_session=True)
            try:
                self._wait_ready()
            except ServerError as e:
                last = str(e)
                self.stop()
                continue  # e.g. port taken in the meantime: try another one
            self.startup_seconds = time.monotonic() - t0
            return self
        raise ServerError(last)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        err: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(
                    f"{self.program} exited with status {self.proc.returncode} on "
                    f"{self.address}@{self.port}; log:\n{self.log()}")
            try:
                r = self._ask(self.zone, "SOA", timeout=0.2)
                if r.rcode() == dns.rcode.NOERROR and r.answer:
                    return
                err = ServerError(f"SOA answer {dns.rcode.to_text(r.rcode())}")
            except (dns.exception.DNSException, OSError) as e:
                err = e
            time.sleep(0.02)
        raise ServerError(
            f"{self.program} did not answer SOA {self.zone} on {self.address}@{self.port} "
            f"within {self.start_timeout:g}s ({err!r}); log:\n{self.log()}")

    def stop(self) -> None:
        p, self.proc = self.proc, None
        if p is not None and p.poll() is None:
            p.terminate()
            try:
                p.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(STOP_TIMEOUT)
        if getattr(self, "_rundir", ""):  # a later start() makes a new one
            shutil.rmtree(self._rundir, ignore_errors=True)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self):
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __del__(self):  # last resort; fixtures and `with` stop explicitly
        try:
            self.stop()
        except Exception:  # noqa: BLE001, S110 - at interpreter exit: nothing left to tell
            pass

    def log(self) -> str:
        try:
            return self._logpath.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # -- queries ----------------------------------------------------------

    def fqdn(self, name: str) -> str:
        """``name`` as an absolute name: '@' is the zone, relative names are in it."""
        if name in ("", "@"):
            return self.zone + "."
        if name.endswith("."):
            return name
        if name == self.zone or name.endswith("." + self.zone):
            return name + "."
        return f"{name}.{self.zone}."

    def _ask(self, name: str, rdtype, timeout: float = 2.0) -> dns.message.Message:
        q = dns.message.make_query(self.fqdn(name), rdtype)
        q.flags &= ~dns.flags.RD
        r = dns.query.udp(q, self.address, port=self.port, timeout=timeout)
        if r.flags & dns.flags.TC:
            r = dns.query.tcp(q, self.address, port=self.port, timeout=timeout)
        return r

    def query(self, name: str, rdtype="A", timeout: float = 2.0) -> list[str]:
        """Sorted rdata texts of ``name``/``rdtype`` (relative names are in the
        zone); [] for NXDOMAIN/NODATA. Other rcodes raise ServerError."""
        r = self._ask(name, rdtype, timeout=timeout)
        rc = r.rcode()
        if rc not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            raise ServerError(f"query {name} {rdtype}: {dns.rcode.to_text(rc)}")
        qname = dns.name.from_text(self.fqdn(name))
        t = dns.rdatatype.from_text(rdtype) if isinstance(rdtype, str) else rdtype
        return sorted(rd.to_text() for rrset in r.answer
                      if rrset.name == qname and rrset.rdtype == t for rd in rrset)

    # -- signed zones (signed=True) --------------------------------------

    def signing_keys(self) -> set[int]:
        """Key tags of the RRSIGs over the zone's SOA: the keys signing it now."""
        q = dns.message.make_query(self.fqdn("@"), "SOA", want_dnssec=True)
        q.flags &= ~dns.flags.RD
        r = dns.query.tcp(q, self.address, port=self.port, timeout=2)
        return {sig.key_tag for rrset in r.answer if rrset.rdtype == dns.rdatatype.RRSIG
                for sig in rrset}

    def wait_signed(self, timeout: float = 10.0) -> set[int]:
        """Until the zone is served signed; the keys signing it."""
        deadline = time.monotonic() + timeout
        while not (keys := self.signing_keys()):
            if time.monotonic() > deadline:
                raise ServerError(f"{self.zone} not signed within {timeout:g} s; log:\n"
                                  + self.log()[-3000:])
            time.sleep(0.05)
        return keys

    def roll_zsk(self, timeout: float = 20.0) -> int:
        """Roll the zone-signing key as an operator would, with this server's
        own command; returns once the new key signs the zone: its key tag."""
        old = self.wait_signed()
        self._start_zsk_rollover(old)
        deadline = time.monotonic() + timeout
        while not (new := self.signing_keys() - old):
            if time.monotonic() > deadline:
                raise ServerError(f"no new ZSK signs {self.zone} within {timeout:g} s; log:\n"
                                  + self.log()[-3000:])
            time.sleep(0.1)
        return min(new)

    def _start_zsk_rollover(self, signing: set[int]) -> None:
        raise NotImplementedError

    def serial_after(self, updates: int, initial: int = 1) -> int:
        """The SOA serial after ``updates`` UPDATEs (Knot and BIND add one each)."""
        return initial + updates

    def serial(self) -> int:
        soa = self.query("@", "SOA")
        if len(soa) != 1:
            raise ServerError(f"SOA of {self.zone}: {soa!r}")
        return int(soa[0].split()[2])

    # -- updates ----------------------------------------------------------

    def nsupdate(self, script: str, key: Key | None = None, tool: str = "nsupdate",
                 timeout: float = 5.0, keyfile=None) -> subprocess.CompletedProcess:
        """Run ``script`` through the real ``nsupdate`` or ``knsupdate``.

        Owner names in ``update`` lines must be absolute (``api.ZONE.``): plain
        nsupdate has no origin and reads ``api`` as ``api.`` (-> NOTZONE).
        ``server ADDRESS PORT`` and ``zone ZONE`` lines are prepended unless the
        script has its own, and ``send`` is appended unless present. With
        ``key=(name, alg, secret)`` the update is TSIG-signed (``-y``); with
        ``keyfile=PATH``, with the key in that file (``-k``). Returns
        the CompletedProcess (text mode); non-zero ``returncode`` on failure.
        Denied updates: named answers REFUSED; Knot 3.2 answers NOTAUTH
        (unsigned) or NOTAUTH with TSIG error BADKEY (signed, outside the ACL).
        """
        if tool not in ("nsupdate", "knsupdate"):
            raise ValueError(f"tool must be nsupdate or knsupdate, not {tool!r}")
        lines = [ln.strip() for ln in script.strip().splitlines()]
        words = {ln.split()[0] for ln in lines if ln}
        head = []
        if "server" not in words:
            head.append(f"server {self.address} {self.port}")
        if "zone" not in words:
            head.append(f"zone {self.zone}.")
        if "send" not in words:
            lines.append("send")
        text = "\n".join(head + lines) + "\n"
        t = str(max(1, int(timeout)))
        argv = [require_binary(tool), "-t", t]
        if tool == "nsupdate":
            argv += ["-u", "1"]  # UDP retry interval
        if key is not None:
            name, alg, secret = key
            argv += ["-y", f"{alg}:{name}:{secret}"]
        if keyfile is not None:
            argv += ["-k", str(keyfile)]
        return subprocess.run(argv, input=text, capture_output=True, text=True,
                              timeout=timeout * 4 + 5)


#: Knot's policy for signed=True: a KSK and a ZSK (ECDSA P-256), signatures
#: valid 10 minutes, and key rollover steps that take seconds, not hours
#: (DNSKEY TTL 2 s), so a test can roll a key. The propagation delay of 2 s
#: covers resolvers' whole-second clocks: Unbound keeps a DNSKEY RRset of TTL
#: 2 s for up to 3 s, and with none, a new ZSK that signs 2 s after it was
#: published is "unknown" to it for a moment (SERVFAIL).
KNOT_POLICY = (
    "policy:\n  - id: spdu-test\n    algorithm: ecdsap256sha256\n"
    f"    dnskey-ttl: 2\n    zone-max-ttl: {SIGNED_TTL}\n    propagation-delay: 2\n"
    "    rrsig-lifetime: 600\n    rrsig-refresh: 120\n    rrsig-pre-refresh: 0\n"
    "    zsk-lifetime: 0\n    ksk-lifetime: 0\n")


class KnotServer(_DNSServer):
    """knotd serving ``zone`` on ``address`` and a free port.

    ACLs: with ``allow_unsigned`` (default) unsigned updates from ``address``
    are allowed for anything in the zone; with ``key=(name, alg, secret)`` a
    signed update is allowed only for owner ``api.ZONE`` and types A/AAAA.
    """

    program = "knotd"
    logname = "knotd.log"
    rundir_prefix = "knot-"

    def __init__(self, tmpdir, address: str = "127.0.0.1", zone: str = ZONE,
                 records=None, key: Key | None = None, allow_unsigned: bool = True,
                 start: bool = True, extra_conf: str = "", zone_acls=(),
                 other_zones=(), notify=(), primary: tuple[str, int] | None = None,
                 user: str = "", signed: bool = False, dnssec_policy: str = KNOT_POLICY):
        super().__init__(tmpdir, address, zone, records, key)
        self.user = user
        self.signed = signed  # DNSSEC online signing with `dnssec_policy` (id spdu-test)
        self.dnssec_policy = dnssec_policy
        self.allow_unsigned = allow_unsigned
        self.notify = tuple(notify)  # (address, port) of secondaries: NOTIFY + transfers
        self.primary = primary  # (address, port): a secondary of that primary (AXFR/IXFR)
        self.extra_conf = extra_conf  # top-level config text (e.g. include: + acl:)
        self.zone_acls = tuple(zone_acls)  # more ACL ids for the zone
        self.other_zones = tuple(other_zones)  # more zones, with no ACL (no updates)
        self.conf = self.dir / "knot.conf"
        if start:
            self.start()

    def _write_config(self) -> None:
        (self.dir / "db").mkdir(exist_ok=True)
        zonefile = self.dir / f"{self.zone}.zone"
        if not zonefile.exists() and self.primary is None:
            zonefile.write_text(zone_text(self.zone, self.records, self.zone_ttl))
        acls, acl_ids, keys, remotes, zone_more = [], [], [], [], ""
        for i, (addr, port) in enumerate(self.notify):
            remotes.append(f"  - id: secondary{i}\n    address: {addr}@{port}\n")
            # from any loopback source: the kernel picks 127.0.0.1 whatever we listen on
            acls.append(f"  - id: transfer{i}\n    address: {_source(addr)}\n"
                        "    action: transfer\n")
            acl_ids.append(f"transfer{i}")
        if self.notify:
            names = ", ".join(f"secondary{i}" for i in range(len(self.notify)))
            zone_more += f"    notify: [{names}]\n"
        if self.primary is not None:
            addr, port = self.primary
            remotes.append(f"  - id: primary\n    address: {addr}@{port}\n")
            acls.append(f"  - id: from_primary\n    address: {_source(addr)}\n"
                        "    action: notify\n")
            acl_ids.append("from_primary")
            zone_more += "    master: primary\n"
        if self.allow_unsigned:
            acls.append(f"  - id: unsigned\n    address: {self.address}\n"
                        f"    action: update\n")
            acl_ids.append("unsigned")
        if self.key is not None:
            name, alg, secret = self.key
            keys.append(f"key:\n  - id: {name}\n    algorithm: {alg}\n"
                        f"    secret: {secret}\n")
            acls.append(f"  - id: signed\n    key: {name}\n    action: update\n"
                        f"    update-owner: name\n    update-owner-match: equal\n"
                        f"    update-owner-name: [api]\n    update-type: [A, AAAA]\n")
            acl_ids.append("signed")
        acl_ids += self.zone_acls
        if self.signed:
            zone_more += "    dnssec-signing: on\n    dnssec-policy: spdu-test\n"
        others = ""
        for other in self.other_zones:
            path = self.dir / f"{other}.zone"
            path.write_text(zone_text(other, self.records))
            others += f"  - domain: {other}\n    file: {path}\n"
        self.conf.write_text(
            self.extra_conf
            + "server:\n"
            f"  rundir: {self._rundir}\n"
            f"  listen: {self.address}@{self.port}\n"
            "  udp-workers: 1\n  tcp-workers: 1\n  background-workers: 1\n"
            "log:\n  - target: stderr\n    any: info\n"
            "database:\n"
            f"  storage: {self.dir / 'db'}\n"
            + "".join(keys)
            + ("remote:\n" + "".join(remotes) if remotes else "")
            + ("acl:\n" + "".join(acls) if acls else "")
            + (self.dnssec_policy if self.signed else "")
            + "template:\n  - id: default\n"
            f"    storage: {self.dir}\n"
            "    zonefile-sync: -1\n"
            "    zonefile-load: whole\n"
            "    journal-content: changes\n"
            "zone:\n"
            f"  - domain: {self.zone}\n"
            f"    file: {zonefile}\n"
            + (f"    acl: [{', '.join(acl_ids)}]\n" if acl_ids else "")
            + zone_more
            + others)

    def _command(self) -> list[str]:
        return [require_binary("knotd"), "-c", str(self.conf)]

    def _start_zsk_rollover(self, signing: set[int]) -> None:
        r = self.knotc("zone-key-rollover", self.zone, "zsk")
        if r.returncode != 0:
            raise ServerError(f"knotc zone-key-rollover: {r.stdout}{r.stderr}")

    def knotc(self, *args: str) -> subprocess.CompletedProcess:
        """Run knotc against this server (e.g. zone-freeze ZONE: no transfers)."""
        return subprocess.run([require_binary("knotc"), "-c", str(self.conf), *args],
                              capture_output=True, text=True, timeout=10,
                              stdin=subprocess.DEVNULL)



#: BIND's dnssec-policy for signed=True: as KNOT_POLICY, a KSK and a ZSK
#: (ECDSA P-256) with rollover steps of seconds (the same 2 s of propagation
#: delay) and signatures valid for an hour.
BIND_POLICY = (
    'dnssec-policy "spdu-test" {\n'
    "  keys { ksk lifetime unlimited algorithm ecdsap256sha256;\n"
    "         zsk lifetime unlimited algorithm ecdsap256sha256; };\n"
    f"  dnskey-ttl 2; max-zone-ttl {SIGNED_TTL}; publish-safety 0; retire-safety 0;\n"
    "  zone-propagation-delay 2; signatures-validity 1h; signatures-validity-dnskey 1h;\n"
    "  signatures-refresh 10m; signatures-jitter 1m;\n"
    "};\n")


class BindServer(_DNSServer):
    """named serving ``zone`` on 127.0.0.1 and a free port; updates only with
    ``key=(name, alg, secret)``, only for owner ``api.ZONE`` types A/AAAA."""

    program = "named"
    logname = "named.log"

    def __init__(self, tmpdir, zone: str = ZONE, records=None, key: Key | None = None,
                 address: str = "127.0.0.1", start: bool = True, extra_conf: str = "",
                 policy: str | None = None, other_zones=(),
                 primary: tuple[str, int] | None = None, user: str = "",
                 signed: bool = False, dnssec_policy: str = BIND_POLICY):
        super().__init__(tmpdir, address, zone, records, key)
        self.user = user
        self.primary = primary  # (address, port): a secondary of that primary
        self.signed = signed  # inline signing with `dnssec_policy` (named spdu-test)
        self.dnssec_policy = dnssec_policy
        self.rndc_port = 0  # signed: rndc's control channel (rndc())
        self.conf = self.dir / "named.conf"
        self.extra_conf = extra_conf  # top-level statements (e.g. include "...";)
        self.policy = policy  # the zone's update-policy/allow-update, replacing the default
        self.other_zones = tuple(other_zones)  # more zones, with no updates allowed
        if start:
            self.start()

    def _write_config(self) -> None:
        zonefile = self.dir / f"{self.zone}.zone"
        if not zonefile.exists() and self.primary is None:
            zonefile.write_text(zone_text(self.zone, self.records, self.zone_ttl))
        keystmt, policy = "", "allow-update { none; };"
        if self.key is not None:
            name, alg, secret = self.key
            keystmt = f'key "{name}" {{ algorithm {alg}; secret "{secret}"; }};\n'
            policy = (f'update-policy {{ grant "{name}" name api.{self.zone}. A AAAA; }};')
        policy = self.policy if self.policy is not None else policy
        others = ""
        for other in self.other_zones:
            path = self.dir / f"{other}.zone"
            path.write_text(zone_text(other, self.records))
            others += f'zone "{other}" {{ type primary; file "{path}"; }};\n'
        d = self.dir
        controls, signing = "controls { };\n", ""
        if self.signed:
            controls = self._rndc_controls()
            (d / "keys").mkdir(exist_ok=True)
            signing = (f'  dnssec-policy "spdu-test";\n  inline-signing yes;\n'
                       f'  key-directory "{d / "keys"}";\n')
        self.conf.write_text(
            "options {\n"
            f'  directory "{d}";\n'
            f'  pid-file "{d}/named.pid";\n'
            f'  session-keyfile "{d}/session.key";\n'
            f'  managed-keys-directory "{d}";\n'
            f"  listen-on port {self.port} {{ {self.address}; }};\n"
            "  listen-on-v6 { none; };\n"
            "  recursion no;\n"
            "  allow-query { any; };\n"
            "  dnssec-validation no;\n"
            "  notify no;\n"
            "};\n"
            + controls
            + (self.dnssec_policy if self.signed else "")
            + keystmt
            + self.extra_conf
            + others
            + f'zone "{self.zone}" {{\n'
            + ("  type primary;\n" if self.primary is None else
               f"  type secondary;\n  primaries {{ {self.primary[0]} port {self.primary[1]}; }};\n")
            + f'  file "{zonefile}";\n'
            + (f"  {policy}\n" if self.primary is None else "")
            + signing
            + "};\n")

    def _rndc_controls(self) -> str:
        """A control channel on a free port with a key of its own, and the
        rndc.conf that reaches it (rndc())."""
        import base64

        self.rndc_port = free_port(self.address)
        secret = base64.b64encode(os.urandom(32)).decode()
        key = f'key "rndc-key" {{ algorithm hmac-sha256; secret "{secret}"; }};\n'
        (self.dir / "rndc.conf").write_text(
            key + f'options {{ default-key "rndc-key"; default-server {self.address};'
            f" default-port {self.rndc_port}; }};\n")
        return (key + f"controls {{ inet {self.address} port {self.rndc_port}"
                f' allow {{ {self.address}; }} keys {{ "rndc-key"; }}; }};\n')

    def _start_zsk_rollover(self, signing: set[int]) -> None:
        # Not before every key and signature is known to caches (omnipresent; the
        # DS stays rumoured, no parent here): named drops a key still being
        # introduced at once instead of rolling it.
        deadline = time.monotonic() + 30
        while re.search(r"(dnskey|rrsig):\s+rumoured",
                        status := self.rndc("dnssec", "-status", self.zone).stdout):
            if time.monotonic() > deadline:
                raise ServerError(f"the keys of {self.zone} are not settled: {status}")
            time.sleep(0.2)
        zsk = re.findall(r"key: (\d+) \(\S+\), ZSK", status)
        r = self.rndc("dnssec", "-rollover", "-key", zsk[0], self.zone)
        if r.returncode != 0:
            raise ServerError(f"rndc dnssec -rollover: {r.stdout}{r.stderr}")

    def rndc(self, *args: str) -> subprocess.CompletedProcess:
        """Run rndc against this server (signed=True only: its control channel)."""
        return subprocess.run([require_binary("rndc"), "-c", str(self.dir / "rndc.conf"),
                               *args], capture_output=True, text=True, timeout=10,
                              stdin=subprocess.DEVNULL)

    def _command(self) -> list[str]:
        # as its user from the start (not -u USER, which reads the configuration
        # as root first): an include the user cannot read fails as it would on a host
        user = [] if self.user else ["-u", "root"]
        return [require_binary("named"), "-g", "-n", "1", "-c", str(self.conf), *user]


# -- PowerDNS with a LUA ifurlup record ---------------------------------------------

def pdns_lua_record(url: str, addresses, rdtype: str = "A") -> str:
    """The rdata of a LUA record answering ``rdtype`` with every address of
    ``addresses`` whose ``url`` answers 200: PowerDNS connects to each address
    and sends the URL's host in Host (and SNI). ``selector='all'``: all that are
    up, not one of them; PowerDNS's own interval and timeout (5 s, 2 s)."""
    for value in (url, *addresses):
        if any(c in value for c in "'\"\\ "):
            raise ValueError(f"{value!r} cannot go into a LUA record as it is")
    listed = ", ".join(f"'{a}'" for a in addresses)
    return f"{rdtype} \"ifurlup('{url}', {{{{{listed}}}}}, {{selector='all'}})\""


def write_pdns_lua(directory, address: str, port: int, url: str, addresses,
                   zone: str = ZONE, ns: str = "ns1", ttl: int = 5,
                   socket_dir: str | None = None, settings: dict | None = None) -> Path:
    """Write pdns.conf, named.conf and the zone for ``pdns_server --config-dir``:
    ``zone`` with ``api.ZONE`` as a LUA ifurlup record over ``addresses`` (TTL
    ``ttl``), served on ``address``:``port``. Every health-check setting is
    PowerDNS's default unless ``settings`` says otherwise. Returns the directory."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    zonefile = d / f"{zone}.zone"
    zonefile.write_text("\n".join([
        f"$ORIGIN {zone}.",
        f"$TTL {ttl}",
        f"@ IN SOA {ns}.{zone}. hostmaster.{zone}. 1 60 30 600 {ttl}",
        f"@ IN NS {ns}.{zone}.",
        f"api IN LUA {pdns_lua_record(url, addresses)}",
    ]) + "\n")
    (d / "named.conf").write_text(
        f'options {{ directory "{d}"; }};\n'
        f'zone "{zone}" {{ type master; file "{zonefile}"; }};\n')
    conf = {
        "launch": "bind",
        "bind-config": str(d / "named.conf"),
        "local-address": f"[{address}]:{port}" if ":" in address else f"{address}:{port}",
        "enable-lua-records": "yes",
        "socket-dir": socket_dir or str(d),  # the control socket (sun_path: keep it short)
        "guardian": "no",
        "daemon": "no",
        "write-pid": "no",
        "disable-syslog": "yes",
        "loglevel": "6",  # logs each "LUA record monitoring declaring ... UP/DOWN"
        "security-poll-suffix": "",  # no DNS query of its own to the outside at start
        **(settings or {}),
    }
    (d / "pdns.conf").write_text("".join(f"{k}={v}\n" for k, v in conf.items()))
    return d


class PdnsLuaServer(_DNSServer):
    """pdns_server answering ``api.ZONE`` A from a LUA ifurlup record over
    ``addresses`` (checked at ``url``), on ``address`` and a free port.

    ``settings`` overrides pdns.conf keys (e.g. ``lua-health-checks-interval``);
    PowerDNS treats every address as down until its first check, so the first
    answers fall back to all (or a random one) of them."""

    program = "pdns_server"
    logname = "pdns.log"
    rundir_prefix = "pdns-"

    def __init__(self, tmpdir, url: str, addresses, address: str = "127.0.0.1",
                 zone: str = ZONE, settings: dict | None = None, start: bool = True,
                 user: str = ""):
        super().__init__(tmpdir, address, zone, (), None)
        self.user = user
        self.url = url
        self.addresses = tuple(addresses)
        self.settings = dict(settings or {})
        if start:
            self.start()

    def _write_config(self) -> None:
        write_pdns_lua(self.dir, self.address, self.port, self.url, self.addresses,
                       zone=self.zone, socket_dir=self._rundir, settings=self.settings)

    def _command(self) -> list[str]:
        return [require_binary("pdns_server"), f"--config-dir={self.dir}"]


PDNS_SCHEMA = "/usr/share/pdns-backend-sqlite3/schema/schema.sqlite3.sql"


#: pdns.conf for signed=True: secure-zone makes a KSK and a ZSK (ECDSA P-256),
#: and a key added or activated with pdnsutil is served within a second (the
#: key cache's default is 30 s), so that a test can roll a key.
PDNS_SIGNED = ("gsqlite3-dnssec=yes\n"
               "default-ksk-algorithm=ecdsa256\ndefault-zsk-algorithm=ecdsa256\n"
               "dnssec-key-cache-ttl=1\n")


class PowerDNSServer(_DNSServer):
    """pdns_server (gsqlite3) serving ``zone`` on ``address`` and a free port.

    With ``key=(name, alg, secret)`` the zone's TSIG-ALLOW-DNSUPDATE metadata
    names it: updates must be signed with it (and still come from 127.0.0.0/8,
    allow-dnsupdate-from's default). Without a key, unsigned updates from
    127.0.0.0/8 are allowed. ``pdnsutil(*args)`` runs pdnsutil against this
    server's configuration; ``metadata`` is set before the server starts.
    The caches stay at their defaults: PowerDNS purges what an UPDATE changes.
    """

    program = "pdns_server"
    logname = "pdns.log"
    rundir_prefix = "pdns-"

    def __init__(self, tmpdir, address: str = "127.0.0.1", zone: str = ZONE, records=None,
                 key: Key | None = None, start: bool = True, metadata=(), extra_conf: str = "",
                 user: str = "", signed: bool = False, narrow: bool = True):
        super().__init__(tmpdir, address, zone, records, key)
        self.user = user
        self.signed = signed  # pdnsutil secure-zone (a KSK and a ZSK) and rectify-zone
        # signed: NSEC3 in narrow mode (proofs made on the fly), as spdu.conf(5) advises:
        # with a stored NSEC or NSEC3 chain, PowerDNS 4.7 drops a name from it when an
        # UPDATE only removes records (their ordername is cleared) until rectify-zone
        self.narrow = narrow
        self.database = self.dir / "pdns.sqlite3"
        self.metadata = tuple(metadata)  # (kind, value...) set on the zone
        self.extra_conf = extra_conf
        if start:
            self.start()

    def pdnsutil(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run([require_binary("pdnsutil"), f"--config-dir={self.dir}", *args],
                           capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
        if check and r.returncode != 0:
            raise ServerError(f"pdnsutil {' '.join(args[:2])}: {r.stdout}{r.stderr}")
        return r

    def _start_zsk_rollover(self, signing: set[int]) -> None:
        # pre-publication (RFC 6781): the new key published, not signing, for
        # longer than the DNSKEY TTL (the SOA minimum) and the key cache; then
        # it signs in place of the old one
        keys = self.pdnsutil("list-keys", self.zone).stdout
        old = [line.split()[6] for line in keys.splitlines()
               if " ZSK " in f" {line} " and " Act " in f" {line} "]
        added = self.pdnsutil("add-zone-key", self.zone, "zsk", "inactive", "published",
                              "ecdsa256").stdout
        new = re.findall(r"\d+", added)[-1]
        time.sleep(SIGNED_TTL + 1.5)
        self.pdnsutil("activate-zone-key", self.zone, new)
        for key_id in old:
            self.pdnsutil("deactivate-zone-key", self.zone, key_id)

    def run_printed(self, commands: str, bindir: Path) -> subprocess.CompletedProcess:
        """Shell `commands` (keygen's, as printed) run as they are, their
        pdnsutil reaching this server's configuration (a wrapper in `bindir`)."""
        bindir.mkdir()
        (bindir / "pdnsutil").write_text(
            f'#!/bin/sh\nexec {require_binary("pdnsutil")} --config-dir={self.dir} "$@"\n')
        (bindir / "pdnsutil").chmod(0o755)
        env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}")
        return subprocess.run(["sh", "-e"], input=commands, text=True, capture_output=True,
                              env=env, timeout=30)

    def _write_config(self) -> None:
        self.conf = self.dir / "pdns.conf"
        self.conf.write_text(
            "launch=gsqlite3\n"
            f"gsqlite3-database={self.database}\n"
            f"local-address={self.address}\n"
            f"local-port={self.port}\n"
            f"socket-dir={self._rundir}\n"
            "dnsupdate=yes\n"
            "allow-dnsupdate-from=127.0.0.0/8\n"
            "daemon=no\nguardian=no\nwrite-pid=no\n"
            "security-poll-suffix=\n"
            "receiver-threads=1\ndistributor-threads=1\n"
            "loglevel=6\n"
            + (PDNS_SIGNED if self.signed else "")
            + self.extra_conf)
        if self.database.exists():
            return  # a restart keeps the zone as updates left it
        import sqlite3

        db = sqlite3.connect(self.database)
        try:
            db.executescript(Path(PDNS_SCHEMA).read_text())
            db.commit()
        finally:
            db.close()
        zonefile = self.dir / f"{self.zone}.zone"
        zonefile.write_text(zone_text(self.zone, self.records, self.zone_ttl))
        self.pdnsutil("load-zone", self.zone, str(zonefile))
        if self.key is not None:
            name, alg, secret = self.key
            self.pdnsutil("import-tsig-key", name, alg, secret)
            self.pdnsutil("set-meta", self.zone, "TSIG-ALLOW-DNSUPDATE", name)
        for kind, *values in self.metadata:
            self.pdnsutil("set-meta", self.zone, kind, *values)
        if self.signed:
            self.pdnsutil("secure-zone", self.zone)
            if self.narrow:
                self.pdnsutil("set-nsec3", self.zone, "1 0 0 -", "narrow")
            self.pdnsutil("rectify-zone", self.zone)

    def _command(self) -> list[str]:
        return [require_binary("pdns_server"), f"--config-dir={self.dir}"]

    def serial_after(self, updates: int, initial: int = 1) -> int:
        """The SOA serial after ``updates`` UPDATEs: PowerDNS's default
        SOA-EDIT-DNSUPDATE (DEFAULT) jumps to YYYYMMDD01 (local date) when the
        serial is below it, then adds one per UPDATE."""
        if updates == 0:
            return initial
        today = int(time.strftime("%Y%m%d")) * 100 + 1
        first = today if initial < today else initial + 1
        return first + updates - 1
