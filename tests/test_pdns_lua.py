"""PowerDNS with a LUA ifurlup record, configured as benchmarks/failover.py runs
it beside spdu (tests/dnsservers.py write_pdns_lua): a real pdns_server answers
the pool name with the backends that are up, and drops one that refuses or
hangs. Backends are real HTTP servers on 127.0.14.x sharing one port."""

from __future__ import annotations

import pwd
import socket
import time

import pytest

from tests.dnsservers import PdnsLuaServer, pdns_lua_record, uid_of
from tests.httpd import StatusServer

BACKENDS = ("127.0.14.1", "127.0.14.2", "127.0.14.3")
NAME = "api.domain.tld"


@pytest.fixture
def backends():
    """StatusServers on the first two addresses, one port; nothing on the third."""
    for _ in range(20):
        with socket.socket() as s:
            s.bind((BACKENDS[0], 0))
            port = s.getsockname()[1]
        servers = []
        try:
            for host in BACKENDS[:2]:
                servers.append(StatusServer(host, expect_host=f"{NAME}:{port}", port=port))
        except OSError:  # the port was taken on the second address meanwhile
            for s in servers:
                s.stop()
            continue
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((BACKENDS[2], port), 1).close()
        yield port, servers
        for s in servers:
            s.stop()
        return
    pytest.fail(f"no port free on both {BACKENDS[0]} and {BACKENDS[1]}")


def wait_answer(server: PdnsLuaServer, want: set[str], timeout: float) -> float:
    """Seconds until `api` A is exactly `want`, polled every 50 ms."""
    t0 = time.monotonic()
    got: set[str] = set()
    while time.monotonic() - t0 < timeout:
        got = set(server.query("api", "A"))
        if got == want:
            return time.monotonic() - t0
        time.sleep(0.05)
    raise AssertionError(f"PowerDNS answered {sorted(got)}, not {sorted(want)}, after"
                         f" {timeout:g} s; log:\n{server.log()[-3000:]}")


def test_record_text():
    assert pdns_lua_record("http://api.domain.tld/status", ["192.0.2.1", "192.0.2.2"]) == (
        "A \"ifurlup('http://api.domain.tld/status', {{'192.0.2.1', '192.0.2.2'}},"
        " {selector='all'})\"")
    with pytest.raises(ValueError):
        pdns_lua_record("http://x/'); os.exit() --", ["192.0.2.1"])


def test_defaults_answer_the_backends_that_are_up(shared, backends):
    """PowerDNS's defaults (as benchmarked): the first query starts the checks
    (4.7 may check only the first address at once and the others one interval,
    5 s, later); then the two backends that answer are in, the refused one is
    not, and the checks went to each address with the URL's host in Host."""
    port, servers = backends
    with PdnsLuaServer(shared, f"http://{NAME}:{port}/status", BACKENDS,
                       user="pdns") as pdns:  # as Debian's unit runs it
        assert uid_of(pdns.proc.pid) == pwd.getpwnam("pdns").pw_uid
        pdns.query("api", "A")  # starts the health checks
        wait_answer(pdns, set(BACKENDS[:2]), 9)
        assert all(s.requests >= 1 for s in servers)
        assert {h for s in servers for h in s.hosts} == {f"{NAME}:{port}"}
        assert f"declaring {BACKENDS[2]} DOWN" in pdns.log()
        conf = (shared / "pdns.conf").read_text()
        assert "lua-health-checks-interval" not in conf and "timeout=" not in conf


def test_drops_a_refused_or_hung_backend_and_takes_it_back(shared, backends):
    """With checks every second (the default is 5 s; timeout stays 2 s): a
    backend that refuses is dropped, one that hangs is dropped after the
    timeout, and a repaired one comes back."""
    port, (a, b) = backends
    with PdnsLuaServer(shared, f"http://{NAME}:{port}/status", BACKENDS, user="pdns",
                       settings={"lua-health-checks-interval": "1"}) as pdns:
        pdns.query("api", "A")
        wait_answer(pdns, {a.host, b.host}, 5)
        b.stop()  # connections to it are refused
        assert wait_answer(pdns, {a.host}, 5) < 3
        b = StatusServer(b.host, expect_host=f"{NAME}:{port}", port=port)
        try:
            wait_answer(pdns, {a.host, b.host}, 5)
            a.behaviour = "hang"  # reads the request, never answers
            assert wait_answer(pdns, {b.host}, 8) < 5  # 1 s interval + 2 s timeout
            a.behaviour = "ok"
            wait_answer(pdns, {a.host, b.host}, 8)
        finally:
            b.stop()
