"""cron/README.md, "A new site from scratch": Knot, BIND and PowerDNS start
from exactly the snippets shown there (only the directories, the listening
port and the test's own server options differ), answer the pool, accept an
UPDATE of the pool from 127.0.0.1 and refuse one from elsewhere; the
parent's snippet delegates the pool to the pool zone's own NS set and points
api.domain.tld at the pool name.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.update
import pytest

from tests import dnsservers
from tests.dnsservers import BindServer, KnotServer, PowerDNSServer

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "cron" / "README.md"
POOL = "api.pool.domain.tld."
ALLOWED, OTHER = "127.0.0.1", "127.0.0.2"


def snippets() -> dict[str, str]:
    """`<!-- test: NAME -->` then a fenced block: NAME -> the block's text."""
    text = PAGE.read_text()
    found = re.findall(r"<!-- test: (\S+) -->\n```[a-z]*\n(.*?)```", text, re.DOTALL)
    return dict(found)


def shown(name: str, directory: str, where: Path) -> str:
    """A snippet with the Debian directory it names moved to the test's."""
    text = snippets()[name]
    assert directory in text or name == "pool.domain.tld.zone", (name, directory)
    return text.replace(directory, f"{where}/")


def write_pool_zone(where: Path) -> None:
    (where / "pool.domain.tld.zone").write_text(snippets()["pool.domain.tld.zone"])


class DocKnot(KnotServer):
    def _write_config(self) -> None:
        (self.dir / "db").mkdir(exist_ok=True)
        write_pool_zone(self.dir)
        self.conf.write_text(
            "server:\n"
            f"  rundir: {self._rundir}\n"
            f"  listen: {self.address}@{self.port}\n"
            "  udp-workers: 1\n  tcp-workers: 1\n  background-workers: 1\n"
            "log:\n  - target: stderr\n    any: info\n"
            f"database:\n  storage: {self.dir / 'db'}\n"
            f"template:\n  - id: default\n    storage: {self.dir}\n"
            + shown("knot.conf", "/var/lib/knot/", self.dir))


class DocBind(BindServer):
    def _write_config(self) -> None:
        write_pool_zone(self.dir)
        d = self.dir
        self.conf.write_text(
            "options {\n"
            f'  directory "{d}";\n  pid-file "{d}/named.pid";\n'
            f'  session-keyfile "{d}/session.key";\n  managed-keys-directory "{d}";\n'
            f"  listen-on port {self.port} {{ {self.address}; }};\n"
            "  listen-on-v6 { none; };\n  recursion no;\n  dnssec-validation no;\n"
            "  notify no;\n};\ncontrols { };\n"
            + shown("named.conf", "/var/lib/bind/", d))


class DocPdns(PowerDNSServer):
    def _write_config(self) -> None:
        d = self.dir
        self.conf = d / "pdns.conf"
        (d / "pdns.d").mkdir(exist_ok=True)
        (d / "pdns.d" / "spdu.conf").write_text(
            shown("pdns.d/spdu.conf", "/var/lib/powerdns/", d))
        self.conf.write_text(  # Debian's pdns.conf: launch= and include-dir=
            f"launch=\ninclude-dir={d / 'pdns.d'}\n"
            f"local-address={self.address}\nlocal-port={self.port}\n"
            f"socket-dir={self._rundir}\n"
            "daemon=no\nguardian=no\nwrite-pid=no\nsecurity-poll-suffix=\n"
            "receiver-threads=1\ndistributor-threads=1\nloglevel=6\n")
        if (d / "pdns.sqlite3").exists():
            return
        write_pool_zone(d)
        script = shown("pdns.sh", "/var/lib/powerdns/", d).replace(
            "pdnsutil ", f"pdnsutil --config-dir={d} ")
        r = subprocess.run(["sh", "-ec", script], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, f"the page's PowerDNS commands failed:\n{r.stdout}{r.stderr}"


def update(server, source: str, name: str = POOL, rdtype: str = "A",
           address: str = "192.0.2.3") -> int:
    u = dns.update.UpdateMessage("pool.domain.tld.")
    u.add(name, 5, rdtype, address)
    r = dns.query.tcp(u, server.address, port=server.port, timeout=5, source=source)
    return r.rcode()


@pytest.mark.parametrize("kind", [DocKnot, DocBind, DocPdns], ids=["knot", "bind", "pdns"])
def test_each_server_starts_from_the_page_and_takes_updates_from_127_0_0_1(kind, tmp_path):
    with kind(tmp_path) as server:
        assert server.query("api", "A") == ["192.0.2.1", "192.0.2.2"]
        soa = server.query("@", "SOA")[0].split()
        assert soa[-1] == "5"  # negative answers are cached no longer than nameTTL
        assert server.query("@", "NS") == ["ns.alpha.domain.tld.", "ns.beta.domain.tld."]
        refused = update(server, OTHER)
        assert refused in (dns.rcode.REFUSED, dns.rcode.NOTAUTH), dns.rcode.to_text(refused)
        assert server.query("api", "A") == ["192.0.2.1", "192.0.2.2"]
        assert update(server, ALLOWED) == dns.rcode.NOERROR, server.log()[-2000:]
        assert server.query("api", "A") == ["192.0.2.1", "192.0.2.2", "192.0.2.3"]


def test_knots_acl_lets_127_0_0_1_change_only_the_pool_names_a_and_aaaa(tmp_path):
    with DocKnot(tmp_path) as server:
        assert update(server, ALLOWED, name="other.pool.domain.tld.") == dns.rcode.NOTAUTH
        assert update(server, ALLOWED, rdtype="TXT", address='"x"') == dns.rcode.NOTAUTH
        assert update(server, ALLOWED, rdtype="AAAA", address="2001:db8::3") == (
            dns.rcode.NOERROR)


def test_the_parent_delegates_the_pool_and_points_the_service_at_it(tmp_path):
    records = [tuple(line.split(None, 2)) for line in snippets()["parent"].splitlines()
               if line.strip()]
    with KnotServer(tmp_path, zone="domain.tld", records=records) as parent:
        assert parent.query("api", "CNAME") == [POOL]
        q = dns.message.make_query(POOL, "A")
        q.flags = 0
        r = dns.query.udp(q, parent.address, port=parent.port, timeout=2)
        ns = sorted(rd.to_text() for rr in r.authority if rr.rdtype == dns.rdatatype.NS
                    for rd in rr)
        assert r.rcode() == dns.rcode.NOERROR and not r.answer
        pool_ns = sorted(line.split()[-1] for line in
                         snippets()["pool.domain.tld.zone"].splitlines() if " NS " in line)
        assert ns == pool_ns, "the parent must delegate to the pool zone's own NS set"
        glue = {rd.to_text() for rr in r.additional for rd in rr}
        assert glue == {"192.0.2.1", "192.0.2.2"}


def test_the_page_names_the_snippets_the_tests_use():
    assert set(snippets()) == {"pool.domain.tld.zone", "parent", "knot.conf", "named.conf",
                               "pdns.sh", "pdns.d/spdu.conf"}
    assert dnsservers.PDNS_SCHEMA in snippets()["pdns.sh"]
