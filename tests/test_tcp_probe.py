"""TCP probes (probeType=tcp, issue 15): connect, optionally TLS with the public
name as SNI, optionally a banner that must contain probeMatch. Against real
servers on 127.0.3.x: aiosmtpd (plain and implicit TLS), listeners that say
nothing, hang, trickle or flood; the same deadline, caps and hysteresis as
HTTP probes."""

from __future__ import annotations

import json
import socket
import ssl
import time

import pytest
import trustme

import spdu_cli.probe.step as probe_step
from spdu_cli import config
from spdu_cli.health import State
from spdu_cli.probe.engine import probe
from spdu_cli.probe.rounds import certain
from spdu_cli.probe.spec import MAX_BODY, ProbeSpec
from spdu_cli.spool import Spool
from tests.conftest import free_port
from tests.rawserver import RawServer
from tests.smtpd import SilentRelay, SmtpRelay

API = "api.domain.tld"
TIMEOUT = 1.0
SLACK = 0.3  # what a decided probe may take beyond its deadline


def spec(port: int, host: str = "127.0.3.1", **kw) -> ProbeSpec:
    base = dict(
        target="mx", host=API, addresses=(host,), resolve_name="mx.domain.tld", port=port,
        path="status", tls=False, verify=True, cafile=None, timeout=TIMEOUT, retries=1,
        codes=((200, 299),), match="", kind="tcp",
    )
    base.update(kw)
    return ProbeSpec(**base)


def one(s: ProbeSpec):
    t = time.monotonic()
    [r] = probe([s])
    took = time.monotonic() - t
    assert took < s.timeout + SLACK, took
    return r, took


@pytest.fixture
def servers():
    """Start servers (anything with stop()); all are stopped after the test."""
    started = []

    def keep(server):
        started.append(server)
        return server

    yield keep
    for s in started:
        s.stop()


def raw(servers, host: str, *steps) -> RawServer:
    """A listener that accepts and plays `steps` without waiting for a request."""
    return servers(RawServer(host, lambda: iter(steps), read_request=False))


# -- plain TCP ------------------------------------------------------------------------


def test_smtp_banner_matches(servers):
    relay = servers(SmtpRelay(free_port("127.0.3.1"), host="127.0.3.1"))
    r, _ = one(spec(relay.port, match="220"))
    assert (r.ok, r.status, r.error, r.address) == (True, None, None, "127.0.3.1")
    assert r.latency_ms is not None and r.summary == "connected"
    assert probe_step._reason(r) == f"connected in {r.latency_ms:g} ms"


def test_smtp_banner_without_the_match(servers):
    relay = servers(SmtpRelay(free_port("127.0.3.1"), host="127.0.3.1"))
    r, took = one(spec(relay.port, match="ESMTP Postfix"))
    # aiosmtpd's greeting ends in its own name; the relay keeps the line open, so
    # only the deadline ends the read
    assert r.ok is False
    assert r.error == "timed out after 1 s reading the banner"
    assert took >= TIMEOUT


@pytest.mark.parametrize("host", ["127.0.3.2", "::1"])
def test_a_silent_listener_is_up_once_connected(servers, host):
    srv = raw(servers, host, "until-closed")
    r, took = one(spec(srv.port, host))
    assert (r.ok, r.error, r.address) == (True, None, host)
    assert took < 0.5


def test_a_silent_listener_with_probe_match_times_out_at_the_deadline(servers):
    srv = raw(servers, "127.0.3.2", "until-closed")
    r, took = one(spec(srv.port, "127.0.3.2", match="220"))
    assert (r.ok, r.error) == (False, "timed out after 1 s waiting for the banner")
    assert took >= TIMEOUT


def test_a_listener_that_never_accepts(servers):
    # the kernel completes the handshake from its backlog: connected, but no banner
    relay = servers(SilentRelay("127.0.3.3"))
    r, _ = one(spec(relay.port, "127.0.3.3"))
    assert r.ok is True
    r, took = one(spec(relay.port, "127.0.3.3", match="220"))
    assert (r.ok, r.error) == (False, "timed out after 1 s waiting for the banner")
    assert took >= TIMEOUT


def test_a_listener_with_a_full_backlog_times_out_connecting():
    listener = socket.socket()
    listener.bind(("127.0.3.4", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):  # more than the backlog holds: later SYNs are dropped
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.3.4", port))
            fillers.append(s)
        time.sleep(0.1)
        r, took = one(spec(port, "127.0.3.4"))
    finally:
        for s in fillers + [listener]:
            s.close()
    assert (r.ok, r.error) == (False, "timed out after 1 s connecting")
    assert took >= TIMEOUT


def test_a_refused_port():
    r, took = one(spec(free_port("127.0.3.5"), "127.0.3.5"))
    assert (r.ok, r.error, r.latency_ms) == (False, "connection refused", None)
    assert certain(r)  # confirmed at once, as for HTTP
    assert took < 0.5


def test_a_wrong_banner_is_named(servers):
    srv = raw(servers, "127.0.3.6", b"554 5.3.2 not today\r\n")
    r, _ = one(spec(srv.port, "127.0.3.6", match="220"))
    assert (r.ok, r.status) == (False, None)
    assert r.error == "the banner does not contain '220' (it begins '554 5.3.2 not today\\r\\n')"


def test_closed_before_a_banner(servers):
    srv = raw(servers, "127.0.3.6")  # accepts and closes
    r, _ = one(spec(srv.port, "127.0.3.6", match="220"))
    assert (r.ok, r.error) == (False, "connection closed before a banner")


def test_a_banner_split_across_reads_still_matches(servers):
    srv = raw(servers, "127.0.3.6", b"2", 0.05, b"20 mx ready\r\n", "until-closed")
    r, _ = one(spec(srv.port, "127.0.3.6", match="220 mx"))
    assert r.ok is True, r.error


def test_a_trickled_banner_cannot_stretch_the_deadline(servers):
    trickle = [step for ch in b"220 a very slow relay\r\n" for step in (bytes([ch]), 0.1)]
    srv = raw(servers, "127.0.3.7", *trickle)  # ~2.3 s in all
    r, took = one(spec(srv.port, "127.0.3.7", match="relay"))
    assert (r.ok, r.error) == (False, "timed out after 1 s reading the banner")
    assert took >= TIMEOUT


def test_an_endless_banner_is_capped(servers):
    def endless():
        while True:
            yield b"x" * 1000

    srv = servers(RawServer("127.0.3.8", endless, read_request=False))
    r, took = one(spec(srv.port, "127.0.3.8", match="220"))
    assert r.ok is False
    assert r.error == (f"the first {MAX_BODY} bytes of the banner does not contain '220'"
                       f" (it begins '{'x' * 37}...')")
    assert took < 0.5


def test_retries_apply(servers):
    srv = raw(servers, "127.0.3.6")  # accepts and closes, every time
    r, _ = one(spec(srv.port, "127.0.3.6", match="220", retries=3))
    assert r.ok is False
    assert len(srv._conns) == 3


# -- TCP over TLS ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture
def cafile(ca, tmp_path):
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


class TlsListener(RawServer):
    """Accepts, completes a TLS handshake with `cert` (recording the SNI sent),
    sends `banner`, and keeps the connection until the client closes it."""

    def __init__(self, host: str, cert, banner: bytes = b""):
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(self.ctx)
        self.sni: list[str | None] = []
        self.ctx.sni_callback = lambda sock, name, ctx: self.sni.append(name)
        self.banner = banner
        super().__init__(host, lambda: (), read_request=False)

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(3)
        try:
            with self.ctx.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(self.banner)
                tls.recv(1)
        except OSError:
            pass  # the client refused the certificate, or hung up: its verdict says which
        finally:
            conn.close()


def test_tls_handshake_with_the_api_name_as_sni(servers, ca, cafile):
    srv = servers(TlsListener("127.0.3.10", ca.issue_cert(API)))
    r, _ = one(spec(srv.port, "127.0.3.10", tls=True, cafile=cafile))
    assert (r.ok, r.error) == (True, None)
    assert srv.sni == [API]


def test_tls_banner_is_read_after_the_handshake(servers, ca, cafile):
    srv = servers(TlsListener("127.0.3.10", ca.issue_cert(API), b"* OK IMAP4rev1 ready\r\n"))
    r, _ = one(spec(srv.port, "127.0.3.10", tls=True, cafile=cafile, match="* OK"))
    assert (r.ok, r.error) == (True, None)
    r, _ = one(spec(srv.port, "127.0.3.10", tls=True, cafile=cafile, match="220"))
    assert (r.ok, r.error) == (False, "timed out after 1 s reading the banner")


def test_smtps_relay_with_its_certificate(servers, ca, cafile):
    relay = servers(SmtpRelay(free_port("127.0.3.11"), host="127.0.3.11", tls="implicit",
                              cert=ca.issue_cert(API)))
    r, _ = one(spec(relay.port, "127.0.3.11", tls=True, cafile=cafile, match="220"))
    assert (r.ok, r.error) == (True, None)


def test_tls_certificate_for_another_name_is_down(servers, ca, cafile):
    srv = servers(TlsListener("127.0.3.10", ca.issue_cert("other.domain.tld")))
    r, took = one(spec(srv.port, "127.0.3.10", tls=True, cafile=cafile))
    assert r.ok is False and r.error.startswith("certificate does not match the name"), r.error
    assert took < 0.5


def test_tls_untrusted_issuer_is_down(servers, ca):
    srv = servers(TlsListener("127.0.3.10", ca.issue_cert(API)))
    r, _ = one(spec(srv.port, "127.0.3.10", tls=True))
    assert (r.ok, r.error) == (False, "certificate not trusted (unknown issuer)")


def test_tls_to_a_listener_that_does_not_speak_it(servers, cafile):
    srv = raw(servers, "127.0.3.12", "until-closed")
    r, took = one(spec(srv.port, "127.0.3.12", tls=True, cafile=cafile))
    assert (r.ok, r.error) == (False, "timed out after 1 s in the TLS handshake")
    assert took >= TIMEOUT


# -- hysteresis, spool and the CLI ------------------------------------------------------


class Service(RawServer):
    """A banner service whose behaviour can be switched: "ok" greets, "hang" does
    not; `queue` holds modes for the next connections, one each."""

    def __init__(self, host: str):
        self.mode = "ok"
        self.queue: list[str] = []
        super().__init__(host, self._script, read_request=False)

    def _script(self):
        mode = self.queue.pop(0) if self.queue else self.mode
        if mode == "ok":
            yield b"220 mx.domain.tld ESMTP\r\n"
        yield "until-closed"


@pytest.fixture
def tcp_site(confdir, tmp_path, servers):
    """One tcp target `mx` on a Service at 127.0.3.20 -> (site loader, service)."""

    def make(extra: str = ""):
        svc = servers(Service("127.0.3.20"))
        confdir.write(f"domain=domain.tld\ntargets=mx\nspoolDir={tmp_path}/spool\n"
                      "selfCheck=no\nselfIP=192.0.2.1\nsyslogSocket=none\nprobeTimeout=1\ninterval=2\n"
                      f"{extra}")
        confdir.write(f"targetIP=127.0.3.20\nprobeType=tcp\nprobePort={svc.port}\n"
                      "probeMatch=220\n", target="mx")
        return (lambda: config.load(str(confdir.main))), svc

    return make


def confirmed(site):
    t0 = time.monotonic()
    reports = probe_step.run(site, confirm=True)
    return reports, time.monotonic() - t0


def test_a_tcp_target_that_stops_listening_goes_down_in_one_run(tcp_site):
    load, svc = tcp_site("fastInterval=1\n")
    site = load()
    [rep], _ = confirmed(site)
    assert rep.health.state is State.UP
    svc.stop()  # nothing listens: refused
    [rep], took = confirmed(site)
    assert rep.health.state is State.DOWN and rep.probes == 2
    assert rep.transition is not None
    assert took < 0.5  # a certain failure is confirmed at once, not fastInterval later
    entry = Spool(site.spool_dir).read("mx")
    assert entry.url == f"tcp://{API}:{svc.port}"
    assert entry.journal[-1]["reason"] == "connection refused"


def test_a_tcp_target_that_stops_greeting_goes_down_in_one_probe_timeout(tcp_site):
    load, svc = tcp_site()
    site = load()
    [rep], _ = confirmed(site)
    assert rep.health.state is State.UP
    assert rep.result.summary == "connected"
    svc.mode = "hang"
    [rep], took = confirmed(site)
    assert rep.health.state is State.DOWN and rep.probes == 2
    assert 1.0 <= took < 1.0 + 0.25 + SLACK, took  # the confirming probe overlapped
    assert rep.result.error == "timed out after 1 s waiting for the banner"


def test_one_failed_tcp_probe_changes_nothing(tcp_site):
    load, svc = tcp_site()
    site = load()
    confirmed(site)
    svc.queue = ["hang"]
    [rep], _ = confirmed(site)
    # the probe overlapping the hung one answered: abandoned, unjudged, as for HTTP
    assert rep.health.state is State.UP and rep.transition is None and rep.health.bad == 0
    assert rep.probes == 1


def test_probe_json_and_config_show_for_a_tcp_target(run, confdir, tmp_path, servers):
    relay = servers(SmtpRelay(free_port("127.0.3.21"), host="127.0.3.21"))
    web = raw(servers, "127.0.3.22", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    confdir.write(f"domain=domain.tld\ntargets='mx web'\nspoolDir={tmp_path}/spool\n"
                  "syslogSocket=none\nprobeTimeout=1\n")
    confdir.write(f"targetIP=127.0.3.21\nprobeType=tcp\nprobePort={relay.port}\n"
                  "probeMatch=220\nprobeRise=1\nprobeFall=1\n", target="mx")
    confdir.write(f"targetIP=127.0.3.22\nprobePort={web.port}\nprobeRise=1\n", target="web")
    r = run("probe", "--json")
    assert r.exit_code == 0, r.stderr
    mx, webr = [json.loads(line) for line in r.stdout.splitlines()]
    assert (mx["target"], mx["state"], mx["ok"], mx["status"], mx["error"]) == (
        "mx", "up", True, None, None)
    assert mx["transition"]["reason"].startswith("connected in ")
    assert (webr["target"], webr["ok"], webr["status"]) == ("web", True, 200)

    shown = run("config", "show", "mx")
    assert shown.exit_code == 0, shown.stderr
    assert (f"#   probe: TCP connect to port {relay.port}, banner must contain '220'"
            " (probeType=tcp: probePath and probeCodes do not apply) at 127.0.3.21") in shown.stdout
    shown = json.loads(run("config", "show", "--json", "mx").stdout)
    assert (shown["probe_type"], shown["probe_url"], shown["host_header"]) == (
        "tcp", f"tcp://{API}:{relay.port}", None)

    status = run("status", "mx")
    assert status.exit_code == 0 and "connected" in status.stdout and "HTTP" not in status.stdout

    relay.stop()
    r = run("probe", "--json", "mx")
    assert r.exit_code == 1
    assert json.loads(r.stdout)["error"] == "connection refused"


def test_a_bad_probe_type_is_a_config_error(run, confdir, tmp_path):
    confdir.write(f"domain=domain.tld\ntargets=mx\nspoolDir={tmp_path}/spool\nprobeType=smtp\n")
    r = run("probe")
    assert r.exit_code == 78
    assert "probeType" in r.stderr and "'smtp' is not one of http, tcp" in r.stderr
    assert r.stderr.count("\n") == 1
