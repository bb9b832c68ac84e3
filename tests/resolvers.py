"""A validating resolver for the tests: Unbound, as Debian starts it.

``UnboundResolver`` runs ``unbound -d -p`` (Debian's unit: as root, and
Unbound drops to its ``unbound`` user itself) on a loopback address and a
free port, resolving one zone through a stub to an authoritative server of
tests/dnsservers.py, with that zone's key-signing key as its trust anchor:
what a client behind a validating resolver gets, AD bit and all. Its cache
is emptied of a name with ``flush`` (unbound-control on a socket of its own);
the keys it has cached stay, as they would.
"""

from __future__ import annotations

import subprocess

import dns.flags
import dns.message
import dns.query
import dns.rdatatype

from tests.dnsservers import ZONE, ServerError, _DNSServer, require_binary


def trust_anchor(server, zone: str = ZONE) -> list[str]:
    """The zone's key-signing keys (DNSKEY flags 257) as its server serves
    them, as Unbound's trust-anchor lines."""
    q = dns.message.make_query(zone + ".", "DNSKEY", want_dnssec=True)
    q.flags &= ~dns.flags.RD
    r = dns.query.tcp(q, server.address, port=server.port, timeout=2)
    keys = [f"{zone}. DNSKEY {rd.to_text()}" for rrset in r.answer
            if rrset.rdtype == dns.rdatatype.DNSKEY for rd in rrset if rd.flags == 257]
    if not keys:
        raise ServerError(f"{zone} on {server.address}@{server.port} has no KSK: {r}")
    return keys


class UnboundResolver(_DNSServer):
    """unbound validating ``zone``, which it asks of ``stub`` ((address, port))."""

    program = "unbound"
    logname = "unbound.log"
    rundir_prefix = "unbound-"

    def __init__(self, tmpdir, stub: tuple[str, int], anchors: list[str],
                 address: str = "127.0.0.1", zone: str = ZONE, start: bool = True):
        super().__init__(tmpdir, address, zone, (), None)
        self.stub = stub
        self.anchors = list(anchors)
        self.conf = self.dir / "unbound.conf"
        if start:
            self.start()

    def _write_config(self) -> None:
        anchors = "".join(f'  trust-anchor: "{a}"\n' for a in self.anchors)
        self.conf.write_text(
            "server:\n"
            f"  interface: {self.address}\n  port: {self.port}\n"
            f'  directory: "{self.dir}"\n  chroot: ""\n  username: "unbound"\n'
            '  use-syslog: no\n  logfile: ""\n  verbosity: 1\n'
            "  val-log-level: 2\n  log-servfail: yes\n"  # why an answer failed, in its log
            "  do-ip6: no\n  do-not-query-localhost: no\n"
            "  access-control: 127.0.0.0/8 allow\n"
            '  module-config: "validator iterator"\n'
            + anchors
            + f'stub-zone:\n  name: "{self.zone}"\n  stub-addr: {self.stub[0]}@{self.stub[1]}\n'
            "remote-control:\n  control-enable: yes\n"
            f'  control-interface: "{self._rundir}/unbound.ctl"\n  control-use-cert: no\n')

    def _command(self) -> list[str]:
        return [require_binary("unbound"), "-d", "-p", "-c", str(self.conf)]

    def _ask(self, name: str, rdtype, timeout: float = 2.0) -> dns.message.Message:
        return self.resolve(name, rdtype, timeout)

    def resolve(self, name: str, rdtype="A", timeout: float = 3.0) -> dns.message.Message:
        """The answer a client gets: recursion desired, DNSSEC OK (so AD is set
        when the answer validated)."""
        q = dns.message.make_query(self.fqdn(name), rdtype, want_dnssec=True)
        r = dns.query.udp(q, self.address, port=self.port, timeout=timeout)
        if r.flags & dns.flags.TC:
            r = dns.query.tcp(q, self.address, port=self.port, timeout=timeout)
        return r

    def flush(self, name: str) -> None:
        """Forget ``name``'s records (not the zone's keys): the next answer is
        fetched and validated afresh."""
        r = subprocess.run([require_binary("unbound-control"), "-c", str(self.conf), "flush",
                            self.fqdn(name)], capture_output=True, text=True, timeout=10,
                           stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            raise ServerError(f"unbound-control flush {name}: {r.stdout}{r.stderr}")
