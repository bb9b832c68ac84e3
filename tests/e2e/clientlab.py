"""What clients see: the namespaced lab (tests/e2e/netlab.py) with a parent
zone, a second pool served by PowerDNS LUA, and real recursive resolvers.

On top of netlab's three sites and mail sink, on the same bridge:

    spdu-parent-SUFFIX  eth0 192.0.2.53 2001:db8::53: knotd, authoritative for
                        the lab's root zone "." and for domain.tld
    spdu-client-SUFFIX  eth0 192.0.2.99 2001:db8::99: Unbound on 127.0.0.11,
                        BIND (named) on 127.0.0.12, PowerDNS Recursor on
                        127.0.0.13, all on port 53; and the clients
                        (tests/e2e/dnsclients.py)
    each site           a second address 192.0.2.1N 2001:db8::1N (N: 1, 2, 3)
                        where pdns_server (bind backend, enable-lua-records)
                        answers lua.domain.tld on port 53

The parent's domain.tld delegates pool.domain.tld to every site's Knot
(`pool NS ns.alpha.domain.tld.` ..., their addresses in domain.tld) and
lua.domain.tld to every site's PowerDNS (`ns-lua.alpha.domain.tld.` ...), and
holds `api CNAME api.pool` and `api-lua CNAME api.lua`: a client asks
api.domain.tld for spdu's pool and api-lua.domain.tld for PowerDNS's, through
the same resolvers, on the same failures. PowerDNS's api.lua.domain.tld is a
LUA ifurlup record over the sites' addresses, at PowerDNS's defaults, checking
the same /status as spdu; in link-down the dead site's PowerDNS dies with it,
as its Knot does.

The resolvers recurse from the root, as they do out of the box: the lab's
root zone is served by the parent, and each resolver's root hints (Unbound's
root-hints, BIND's hint zone ".", the Recursor's hint-file) name the parent
instead of the real root servers. Everything else is the packaged default,
except where it must point at the lab: the addresses they listen on, their
working directories, logs to stderr, no control channel for BIND, the
Recursor's dont-query without the documentation ranges (192.0.2.0/24 and
2001:db8::/32, the lab's addresses, are in its default), and no trust
anchor: the lab's root is not signed, and the real root's key (Debian's
Unbound auto-trust-anchor-file, BIND's dnssec-validation auto, the Recursor's
built-in root key) would make every answer bogus. Their validators stay on
(Unbound's module-config, BIND's dnssec-validation yes, the Recursor's dnssec
default with its root key cleared, clearTA), with nothing to validate.
The parent's Knot runs as the knot user and each PowerDNS LUA as pdns, as
Debian's units run them (setpriv, below). Each resolver runs as Debian
starts it: `unbound -d -p` as root, dropping to the unbound user itself;
`named -f -u bind`; the Recursor as the pdns user with CAP_NET_BIND_SERVICE
(setpriv, as systemd's User= and AmbientCapabilities= do), `--daemon=no
--write-pid=no --disable-syslog`.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import dns.message

from tests.dnsservers import as_user, give_to, pdns_lua_record, write_pdns_lua
from tests.e2e.netlab import SITES, Lab, LabError, Proc, run, user_of, v4, v6, which

PARENT, CLIENT = 53, 99  # host numbers of the parent's server and the client namespace
LUA_HOST = 10  # a site's PowerDNS is at host + LUA_HOST
PARENT_ZONE = "domain.tld"
LUA_ZONE = f"lua.{PARENT_ZONE}"
#: What the clients ask: spdu's pool name through the parent's CNAME, and PowerDNS's.
NAMES = {"spdu": f"api.{PARENT_ZONE}", "pdns": f"api-lua.{PARENT_ZONE}"}
RESOLVERS = {"unbound": "127.0.0.11", "bind": "127.0.0.12", "recursor": "127.0.0.13"}
PARENT_TTL = 3600  # the parent's records (delegations, glue, CNAMEs)
#: domain.tld's SOA minimum: below its TTL, so that which one negative caching uses shows
PARENT_NEGATIVE = 60
STATUS_URL = "http://api.domain.tld/status"  # what spdu probes too (probePath=status)
#: The Debian user each resolver runs as.
USERS = {"unbound": "unbound", "bind": "bind", "recursor": "pdns"}
PROGRAMS = {"unbound": "unbound", "bind": "named", "recursor": "pdns_recursor"}


def check_client_requirements(resolvers, lua: bool) -> None:
    """LabError naming what is missing (the tests fail on it, never skip)."""
    for r in resolvers:
        if r not in RESOLVERS:
            raise LabError(f"unknown resolver {r!r} (one of {', '.join(RESOLVERS)})")
        try:
            which(PROGRAMS[r])
        except LabError:
            raise LabError(f"{PROGRAMS[r]!r} not found: the client lab needs the Debian packages"
                           " unbound, bind9 and pdns-recursor (.ci/setup installs them)") from None
        try:
            pwd.getpwnam(USERS[r])
        except KeyError:
            raise LabError(f"user {USERS[r]!r} missing: is {PROGRAMS[r]}'s package"
                           " installed?") from None
    if lua:
        try:
            which("pdns_server")
        except LabError:
            raise LabError("pdns_server not found: install pdns-server and pdns-backend-bind"
                           " (.ci/setup does)") from None


def lua_address(host: int, six: bool = False) -> str:
    return v6(host + LUA_HOST) if six else v4(host + LUA_HOST)


class ClientLab(Lab):
    """netlab's Lab, plus the parent, PowerDNS on every site (``lua``), the
    client namespace and its resolvers (``resolvers``: names of RESOLVERS)."""

    def __init__(self, *args, resolvers=tuple(RESOLVERS), lua: bool = True, **kw):
        check_client_requirements(resolvers, lua)
        super().__init__(*args, **kw)
        self.resolvers = tuple(resolvers)
        self.lua = lua
        self.parent_ns = f"spdu-parent-{self.suffix}"
        self.client_ns = f"spdu-client-{self.suffix}"
        # the resolvers' files, readable by their users (the lab's own dir is 0700)
        self.rdir = Path(tempfile.mkdtemp(prefix="spdu-clients-"))
        os.chmod(self.rdir, 0o755)
        self.extra: list[Proc] = []
        self.servers: dict[str, Proc] = {}  # resolver -> its process
        self.clients: Clients | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, loops: bool = True) -> ClientLab:
        super().start(loops)
        try:
            self._netns(self.parent_ns)
            self._node(self.parent_ns, PARENT, "v-parent")
            self._netns(self.client_ns)
            self._node(self.client_ns, CLIENT, "v-client")
            for a in (RESOLVERS[r] for r in self.resolvers):  # BIND listens on these only
                run(["ip", "-n", self.client_ns, "addr", "add", f"{a}/32", "dev", "lo"])
            self._start_parent()
            if self.lua:
                for site in self.sites.values():
                    self._start_lua(site)
            for r in self.resolvers:
                getattr(self, f"_start_{r}")()
            for r in self.resolvers:
                self._wait_resolver(r)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self._stopped:
            return
        if self.clients is not None:
            self.clients.stop()
        for p in [*self.servers.values(), *self.extra]:
            try:
                p.stop()
            except Exception:  # noqa: BLE001, S110 - stop the rest whatever one does
                pass
        super().stop()
        shutil.rmtree(self.rdir, ignore_errors=True)

    def cexec(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.client_ns, *argv]

    def _proc(self, name: str, ns: str, argv: list[str], log: Path) -> Proc:
        p = Proc(name, ["ip", "netns", "exec", ns, *argv], log)
        self.extra.append(p)
        return p

    # -- the parent --------------------------------------------------------------------

    def _addresses(self, host: int) -> list[tuple[str, str]]:
        out = [("A", v4(host))]
        if self.ipv6:
            out.append(("AAAA", v6(host)))
        return out

    def parent_records(self) -> list[str]:
        """domain.tld's records below its apex: delegations, their servers, the CNAMEs."""
        lines = [f"ns.parent {t} {a}" for t, a in self._addresses(PARENT)]
        for s in self.sites.values():
            lines.append(f"pool NS ns.{s.name}")
            lines += [f"ns.{s.name} {t} {a}" for t, a in self._addresses(s.host)]
            if self.lua:
                lines.append(f"lua NS ns-lua.{s.name}")
                lines += [f"ns-lua.{s.name} {t} {a}"
                          for t, a in self._addresses(s.host + LUA_HOST)]
        lines.append("api CNAME api.pool")
        if self.lua:
            lines.append("api-lua CNAME api.lua")
        return lines

    def _start_parent(self) -> None:
        d = self.rundir / "parent-knot"  # (a directory the knot user may pass)
        (d / "db").mkdir(parents=True, exist_ok=True)
        run_dir = self.rundir / "parent"
        run_dir.mkdir(parents=True, exist_ok=True)
        give_to("knot", d / "db", run_dir)
        glue = [f"ns.parent.{PARENT_ZONE}. {t} {a}" for t, a in self._addresses(PARENT)]
        (d / "root.zone").write_text("\n".join([
            "$ORIGIN .", f"$TTL {PARENT_TTL}",
            f". SOA ns.parent.{PARENT_ZONE}. hostmaster.{PARENT_ZONE}. 1 3600 900 604800 3600",
            f". NS ns.parent.{PARENT_ZONE}.",
            f"{PARENT_ZONE}. NS ns.parent.{PARENT_ZONE}.", *glue]) + "\n")
        (d / "parent.zone").write_text("\n".join([
            f"$ORIGIN {PARENT_ZONE}.", f"$TTL {PARENT_TTL}",
            f"@ SOA ns.parent hostmaster 1 3600 900 604800 {PARENT_NEGATIVE}",
            "@ NS ns.parent", *self.parent_records()]) + "\n")
        listen = ", ".join(f"{a}@53" for _, a in self._addresses(PARENT))
        (d / "knot.conf").write_text(
            f"server:\n  rundir: {run_dir}\n  listen: [{listen}]\n"
            "log:\n  - target: stderr\n    any: info\n"
            f"database:\n  storage: {d / 'db'}\n"
            f"template:\n  - id: default\n    storage: {d}\n    zonefile-sync: -1\n"
            "zone:\n"
            f"  - domain: .\n    file: {d / 'root.zone'}\n"
            f"  - domain: {PARENT_ZONE}\n    file: {d / 'parent.zone'}\n")
        p = self._proc("parent/knotd", self.parent_ns,
                       as_user("knot", [which("knotd"), "-c", str(d / "knot.conf")],
                               low_ports=True),
                       self.dir / "parent-knotd.log")
        self._wait_soa(p, self.parent_ns, v4(PARENT), 53, PARENT_ZONE)

    def _wait_soa(self, p: Proc, ns: str, address: str, port: int, zone: str) -> None:
        deadline = time.monotonic() + 15
        while True:
            r = run(["ip", "netns", "exec", ns, "kdig", f"@{address}", "-p", str(port),
                     "+short", "+time=1", "+retry=0", zone, "SOA"], check=False)
            if r.returncode == 0 and r.stdout.strip():
                return
            if not p.alive or time.monotonic() > deadline:
                raise LabError(f"{p.name} did not answer SOA {zone} on {address}@{port}:\n"
                               f"{p.log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.05)

    # -- PowerDNS LUA on every site ----------------------------------------------------

    def _start_lua(self, site) -> None:
        addresses = [lua_address(site.host)] + ([lua_address(site.host, True)]
                                                 if self.ipv6 else [])
        for a in addresses:
            plen = 64 if ":" in a else 24
            run(["ip", "-n", site.ns, "addr", "add", f"{a}/{plen}", "dev", "eth0",
                 *(["nodad"] if ":" in a else [])])
        socket_dir = self.rundir / f"{site.name}-lua"  # short: the control socket's path
        socket_dir.mkdir(parents=True, exist_ok=True)
        give_to("pdns", socket_dir)
        backends = [v4(self.sites[s].host) for s in SITES]
        conf = write_pdns_lua(self.rundir / f"{site.name}-lua-conf", addresses[0], 53,
                              STATUS_URL, backends,
                              zone=LUA_ZONE, socket_dir=str(socket_dir),
                              settings={"local-address": ", ".join(addresses)})
        # the zone's own NS RRset is the parent's delegation (a resolver may prefer it)
        (conf / f"{LUA_ZONE}.zone").write_text("\n".join([
            f"$ORIGIN {LUA_ZONE}.", "$TTL 5",
            f"@ IN SOA ns-lua.{site.name}.{PARENT_ZONE}. hostmaster.{PARENT_ZONE}. 1 60 30 600 5",
            *[f"@ IN NS ns-lua.{s}.{PARENT_ZONE}." for s in SITES],
            f"api IN LUA {pdns_lua_record(STATUS_URL, backends)}"]) + "\n")
        p = self._proc(f"{site.name}/pdns-lua", site.ns,
                       as_user("pdns", [which("pdns_server"), f"--config-dir={conf}"],
                               low_ports=True),
                       site.dir / "pdns-lua.log")
        self._wait_soa(p, site.ns, addresses[0], 53, LUA_ZONE)

    # -- the resolvers -----------------------------------------------------------------

    def _root_hints(self) -> Path:
        path = self.rdir / "root.hints"
        if not path.exists():
            path.write_text(f".  3600000  NS  ns.parent.{PARENT_ZONE}.\n" + "".join(
                f"ns.parent.{PARENT_ZONE}.  3600000  {t}  {a}\n"
                for t, a in self._addresses(PARENT)))
            os.chmod(path, 0o644)
        return path

    def _own_dir(self, resolver: str) -> Path:
        d = self.rdir / resolver
        d.mkdir(exist_ok=True)
        u = pwd.getpwnam(USERS[resolver])
        os.chown(d, u.pw_uid, u.pw_gid)
        os.chmod(d, 0o755)
        return d

    def _start_unbound(self) -> None:
        d = self._own_dir("unbound")
        conf = d / "unbound.conf"
        conf.write_text(
            "server:\n"
            f"  interface: {RESOLVERS['unbound']}\n"
            f'  directory: "{d}"\n  chroot: ""\n  username: "unbound"\n'
            '  use-syslog: no\n  logfile: ""\n'
            f'  root-hints: "{self._root_hints()}"\n'
            + ("" if self.ipv6 else "  do-ip6: no\n"))
        os.chmod(conf, 0o644)
        self.servers["unbound"] = self._proc(
            "client/unbound", self.client_ns, [which("unbound"), "-d", "-p", "-c", str(conf)],
            self.rdir / "unbound.log")

    def _start_bind(self) -> None:
        d = self._own_dir("bind")
        conf = d / "named.conf"
        conf.write_text(
            "options {\n"
            f'  directory "{d}";\n'
            f'  pid-file "{d}/named.pid";\n  session-keyfile "{d}/session.key";\n'
            "  dnssec-validation yes;\n"
            f"  listen-on {{ {RESOLVERS['bind']}; }};\n  listen-on-v6 {{ none; }};\n"
            "};\n"
            "controls { };\n"
            "logging { channel out { stderr; severity info; print-time yes; };"
            " category default { out; }; category lame-servers { null; }; };\n"
            f'zone "." {{ type hint; file "{self._root_hints()}"; }};\n')
        os.chmod(conf, 0o644)
        self.servers["bind"] = self._proc(
            "client/named", self.client_ns,
            [which("named"), "-f", "-u", "bind", "-c", str(conf)] + ([] if self.ipv6 else ["-4"]),
            self.rdir / "named.log")

    def _start_recursor(self) -> None:
        d = self._own_dir("recursor")
        (d / "recursor.lua").write_text('clearTA(".")\n')
        conf = d / "recursor.conf"
        conf.write_text(
            f"config-dir={d}\n"
            f"hint-file={self._root_hints()}\n"
            f"local-address={RESOLVERS['recursor']}\n"
            f"lua-config-file={d / 'recursor.lua'}\n"
            f"socket-dir={d}\n"
            "security-poll-suffix=\n"  # as Debian's recursor.conf: no query of its own
            # its default keeps it from asking documentation ranges: the lab's addresses
            "dont-query=127.0.0.0/8, 10.0.0.0/8, 100.64.0.0/10, 169.254.0.0/16,"
            " 192.168.0.0/16, 172.16.0.0/12, ::1/128, fc00::/7, fe80::/10\n"
            + ("" if self.ipv6 else "query-local-address=0.0.0.0\n"))
        for f in (conf, d / "recursor.lua"):
            os.chmod(f, 0o644)
        self.servers["recursor"] = self._proc(
            "client/pdns_recursor", self.client_ns,
            as_user("pdns", [which("pdns_recursor"), f"--config-dir={d}", "--daemon=no",
                             "--write-pid=no", "--disable-syslog", "--log-timestamp=no"],
                    low_ports=True),
            self.rdir / "recursor.log")

    def _wait_resolver(self, r: str) -> None:
        p = self.servers[r]
        deadline = time.monotonic() + 20
        want = NAMES["spdu"]
        while True:
            got = run(self.cexec(["kdig", f"@{RESOLVERS[r]}", "+short", "+time=2", "+retry=0",
                                  want, "A"]), check=False)
            if got.returncode == 0 and any(ln[:1].isdigit() for ln in got.stdout.split()):
                return
            if not p.alive or time.monotonic() > deadline:
                raise LabError(f"{r} ({PROGRAMS[r]}) did not resolve {want}: {got.stdout}\n"
                               f"{p.log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)

    def ask(self, resolver: str, name: str, rdtype: str = "A",
            timeout: float = 3.0) -> dns.message.Message:
        """One client's question through `resolver` (recursion desired), from the
        client namespace."""
        code = ("import sys, dns.message, dns.query\n"
                "q = dns.message.make_query(sys.argv[1], sys.argv[2])\n"
                "r = dns.query.udp(q, sys.argv[3], timeout=float(sys.argv[4]))\n"
                "sys.stdout.write(r.to_wire().hex())\n")
        got = run(self.cexec([sys.executable, "-c", code, name, rdtype, RESOLVERS[resolver],
                              str(timeout)]), timeout=timeout + 10)
        return dns.message.from_wire(bytes.fromhex(got.stdout.strip()))

    def resolver_user(self, r: str) -> str:
        """The user the resolver's process runs as (its threads as one)."""
        return user_of(self.servers[r])

    def server_users(self) -> dict[str, str]:
        """The parent's Knot and every site's PowerDNS LUA: the user each runs as."""
        return {p.name: user_of(p) for p in self.extra if p.name.endswith(("knotd", "pdns-lua"))}

    # -- clients -----------------------------------------------------------------------

    def start_clients(self, per_name: int = 4, poll: float = 0.1,
                      timeout: float = 2.0) -> Clients:
        keys = {k: v for k, v in NAMES.items() if self.lua or k == "spdu"}
        self.clients = Clients(self, per_name, poll, timeout, keys)
        self.clients.wait_all(lambda got: got == {v4(s.host) for s in self.sites.values()},
                              time.monotonic(), 60, "every client's answer to hold every site",
                              hold=0)
        return self.clients


class Clients:
    """The clients' answers as they change, per resolver and name (tests/e2e/dnsclients.py
    in the client namespace)."""

    def __init__(self, lab: ClientLab, per_name: int, poll: float, timeout: float,
                 names: dict[str, str]):
        self.lab = lab
        self.keys = tuple(names)
        self.per_name = per_name
        self.lock = threading.Lock()
        # (resolver, key, client) -> [(monotonic time, answer)]
        self.events: dict[tuple[str, str, int], list[tuple[float, str]]] = {
            (r, k, n): [] for r in lab.resolvers for k in names for n in range(per_name)}
        self.slow: list[tuple[float, str, str, float]] = []  # (time, resolver, key, ms)
        argv = lab.cexec([sys.executable, str(Path(__file__).with_name("dnsclients.py")),
                          str(poll), str(timeout), str(per_name),
                          *[f"{r}={RESOLVERS[r]}:53" for r in lab.resolvers], "--",
                          *[f"{k}={v}" for k, v in names.items()]])
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True,
                                     start_new_session=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            t, r, k, n, got, ms = line.split()
            with self.lock:
                self.events[(r, k, int(n))].append((float(t), got))
                if float(ms) >= 1000:
                    self.slow.append((float(t), r, k, float(ms)))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)

    @staticmethod
    def addresses(got: str) -> set[str]:
        return set() if got[0] in "!?-" else set(got.split(","))

    def failures(self, since: float, until: float | None = None) -> dict[tuple[str, str], int]:
        """(resolver, key) -> answers that were no answer or an error rcode."""
        out = {}
        with self.lock:
            for (r, k, _), history in self.events.items():
                out[(r, k)] = out.get((r, k), 0) + sum(
                    1 for t, got in history
                    if got[0] in "!?" and t >= since and (until is None or t <= until))
        return out

    def settled(self, resolver: str, key: str, want) -> float | None:
        """When every client of (resolver, key) last began to get answers for which
        want(addresses) holds, if every client's latest answer does; else None."""
        times = []
        with self.lock:
            for n in range(self.per_name):
                history = self.events[(resolver, key, n)]
                if not history or not want(self.addresses(history[-1][1])):
                    return None
                times.append(history[-1][0])
        return max(times)

    def since_settled(self, resolver: str, key: str, want, after: float) -> bool:
        """Whether some client got an answer not matching want() after `after`."""
        with self.lock:
            return any(t > after and not want(self.addresses(got))
                       for n in range(self.per_name)
                       for t, got in self.events[(resolver, key, n)])

    def wait_all(self, want, since: float, timeout: float, what: str, hold: float,
                 keys=None) -> dict[tuple[str, str], float | None]:
        """Per (resolver, key): seconds from `since` until every client's answers
        satisfy want(addresses) and have for `hold` seconds; None for those still
        not there after `timeout` seconds (hold=0: a LabError instead)."""
        keys = self.keys if keys is None else keys
        pairs = [(r, k) for r in self.lab.resolvers for k in keys]
        got: dict[tuple[str, str], float | None] = dict.fromkeys(pairs)
        while True:
            now = time.monotonic()
            for pair in pairs:
                if got[pair] is None:
                    t = self.settled(*pair, want)
                    if t is not None and now - t >= hold:
                        got[pair] = max(0.0, t - since)
            if None not in got.values():
                return got
            if self.proc.poll() is not None:
                raise LabError(f"the clients ended ({self.proc.returncode})")
            if now - since > timeout:
                if hold == 0:
                    raise LabError(f"timed out after {timeout:g} s waiting for {what};"
                                   f" last answers {self.last()}")
                return got
            time.sleep(0.05)

    def last(self) -> dict[str, str]:
        with self.lock:
            return {f"{r}/{k}/{n}": h[-1][1] if h else "(none yet)"
                    for (r, k, n), h in self.events.items()}
