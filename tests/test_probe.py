"""Probes against real HTTP(S) servers on loopback addresses: every way a
status endpoint can answer, fail, hang or misbehave, and the hard deadline."""

import datetime
import ssl
import time

import pytest
import trustme

from spdu_cli.probe.engine import probe
from spdu_cli.probe.names import resolve
from spdu_cli.probe.spec import ProbeSpec
from tests.conftest import free_port

API = "api.domain.tld"


def spec(port, addresses=("127.0.0.1",), **kw) -> ProbeSpec:
    base = dict(
        target="beta", host=API, addresses=tuple(addresses), resolve_name="beta.domain.tld",
        port=port, path="status", tls=False, verify=True, cafile=None, timeout=1.0, retries=1,
        codes=((200, 299),), match="",
    )
    base.update(kw)
    return ProbeSpec(**base)


def one(s: ProbeSpec):
    t = time.monotonic()
    [r] = probe([s])
    return r, time.monotonic() - t


def test_up(http_server):
    srv = http_server("127.0.0.2")
    srv.expect_host = f"{API}:{srv.port}"
    r, _ = one(spec(srv.port, ["127.0.0.2"]))
    assert (r.ok, r.status, r.error, r.address) == (True, 200, None, "127.0.0.2")
    assert r.latency_ms is not None and 0 < r.latency_ms < 1000
    # The request carries the public name (with the port, which is not 80).
    assert srv.hosts == [f"{API}:{srv.port}"]


def test_host_header_is_checked_by_the_server(http_server):
    srv = http_server("127.0.0.2", expect_host=f"{API}:0")
    r, _ = one(spec(srv.port, ["127.0.0.2"]))
    assert (r.ok, r.error) == (False, "HTTP 421")
    assert srv.hosts == [f"{API}:{srv.port}"]


def test_connection_refused():
    r, elapsed = one(spec(free_port("127.0.0.3"), ["127.0.0.3"]))
    assert (r.ok, r.error) == (False, "connection refused")
    assert elapsed < 0.5


@pytest.mark.parametrize("behaviour", ["hang", "hang-accept"])
def test_server_that_accepts_and_never_answers(http_server, behaviour):
    srv = http_server("127.0.0.4")
    srv.behaviour = behaviour
    r, elapsed = one(spec(srv.port, ["127.0.0.4"], timeout=0.5))
    assert r.ok is False
    assert r.error == "timed out after 0.5 s waiting for the response"
    assert 0.45 < elapsed < 0.9


def test_trickled_headers_cannot_stretch_the_deadline(http_server):
    srv = http_server("127.0.0.5")
    srv.behaviour = "trickle-headers"  # one byte every 0.2 s: ~9 s in all
    r, elapsed = one(spec(srv.port, ["127.0.0.5"], timeout=1.0))
    assert r.ok is False and r.error.startswith("timed out after 1 s")
    assert elapsed < 1.4


def test_trickled_body_with_a_match_times_out(http_server):
    srv = http_server("127.0.0.5")
    srv.behaviour = "trickle-body"
    r, elapsed = one(spec(srv.port, ["127.0.0.5"], timeout=1.0, match="ok"))
    assert (r.ok, r.status) == (False, 200)
    assert r.error == "timed out after 1 s reading the body"
    assert elapsed < 1.4


def test_body_is_not_read_without_a_match(http_server):
    srv = http_server("127.0.0.5")
    srv.behaviour = "trickle-body"
    r, elapsed = one(spec(srv.port, ["127.0.0.5"], timeout=1.0))
    assert r.ok is True and elapsed < 0.5


def test_http_500_and_accepted_codes(http_server):
    srv = http_server()
    srv.behaviour = "500"
    r, _ = one(spec(srv.port))
    assert (r.ok, r.status, r.error) == (False, 500, "HTTP 500")
    assert r.latency_ms is not None and r.latency_ms > 0  # it answered: how fast is known
    r, _ = one(spec(srv.port, codes=((200, 299), (500, 500))))
    assert (r.ok, r.status) == (True, 500)


def test_redirect_is_not_followed(http_server):
    srv = http_server()
    srv.behaviour = "redirect"
    r, _ = one(spec(srv.port))
    assert r.ok is False and r.status == 302
    assert r.error == "HTTP 302 redirect to http://elsewhere.example/status (not followed)"
    assert srv.requests == 1
    r, _ = one(spec(srv.port, codes=((302, 302),)))
    assert r.ok is True and srv.requests == 2


def test_endless_body_is_capped(http_server):
    srv = http_server()
    srv.behaviour = "endless"
    r, elapsed = one(spec(srv.port, match="never there", timeout=2.0))
    assert r.ok is False
    assert r.error == "the first 8192 bytes of the body does not contain 'never there'"
    assert elapsed < 1.0
    r, _ = one(spec(srv.port))
    assert r.ok is True


def test_endless_headers_are_capped(http_server):
    srv = http_server()
    srv.behaviour = "endless-headers"
    r, elapsed = one(spec(srv.port, timeout=2.0))
    assert (r.ok, r.error) == (False, "response headers larger than 16384 bytes")
    assert elapsed < 1.0


def test_body_match(http_server):
    srv = http_server()
    r, _ = one(spec(srv.port, match="status: ok"))
    assert r.ok is True
    r, _ = one(spec(srv.port, match="status: degraded"))
    assert (r.ok, r.error) == (False, "the body does not contain 'status: degraded'")


def test_chunked_body_match_spans_chunks(http_server):
    srv = http_server()
    srv.behaviour = "chunked"
    r, _ = one(spec(srv.port, match="status: ok"))
    assert r.ok is True, r.error


@pytest.mark.parametrize(
    "behaviour, error",
    [("garbage", r"not an HTTP response (it begins 'SSH-2.0-OpenSSH_9.2\r\n\r\n')"),
     ("close", "connection closed before a response")],
)
def test_garbage_answers(http_server, behaviour, error):
    srv = http_server()
    srv.behaviour = behaviour
    r, _ = one(spec(srv.port))
    assert (r.ok, r.error) == (False, error)


def test_ipv6_target(http_server):
    srv = http_server("::1")
    r, _ = one(spec(srv.port, ["::1"]))
    assert (r.ok, r.address) == (True, "::1")
    assert srv.hosts == [f"{API}:{srv.port}"]


def test_every_address_must_answer(http_server):
    srv = http_server("127.0.0.6")
    r, _ = one(spec(srv.port, ["127.0.0.6", "127.0.0.7"]))
    assert r.ok is False
    assert r.error == "connection refused (127.0.0.7)"
    assert r.addresses == ("127.0.0.6", "127.0.0.7")


def test_retries(http_server):
    srv = http_server()
    srv.queue = ["503", "503"]
    r, _ = one(spec(srv.port, retries=2))
    assert (r.ok, r.error) == (False, "HTTP 503")
    assert srv.requests == 2
    srv.queue = ["503"]
    r, _ = one(spec(srv.port, retries=3))
    assert r.ok is True and srv.requests == 4


def test_fifty_targets_half_hanging_take_one_timeout(http_server):
    good = http_server("127.0.0.8")
    bad = http_server("127.0.0.9")
    bad.behaviour = "hang"
    specs = [
        spec(good.port if i % 2 else bad.port, ["127.0.0.8" if i % 2 else "127.0.0.9"],
             target=f"t{i}", timeout=1.0)
        for i in range(50)
    ]
    t = time.monotonic()
    results = probe(specs)
    elapsed = time.monotonic() - t
    assert [r.ok for r in results] == [bool(i % 2) for i in range(50)]
    assert elapsed < 1.6, f"50 targets took {elapsed:.2f} s"


def test_resolution():
    got = resolve(["localhost", "no-such-host.invalid"], 3.0)
    assert "127.0.0.1" in got["localhost"]
    assert isinstance(got["no-such-host.invalid"], str)
    assert got["no-such-host.invalid"].startswith("cannot resolve no-such-host.invalid")


def test_unresolvable_target_is_inconclusive():
    r, _ = one(spec(80, addresses=(), resolve_name="no-such-host.invalid"))
    assert r.ok is None and r.error.startswith("cannot resolve no-such-host.invalid")


def test_target_name_is_resolved_when_no_address_is_configured(http_server):
    srv = http_server("127.0.0.1")
    r, _ = one(spec(srv.port, addresses=(), resolve_name="localhost"))
    assert "127.0.0.1" in r.addresses
    assert r.ok is (r.addresses == ("127.0.0.1",)) or r.error.endswith("(::1)")


# -- HTTPS ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


def tls_server(http_server, ca, *names, **cert_kw):
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names, **cert_kw).configure_cert(ctx)
    return http_server("127.0.0.10", tls=ctx)


@pytest.fixture
def cafile(ca, tmp_path):
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def test_https_valid_certificate_and_sni(http_server, ca, cafile):
    srv = tls_server(http_server, ca, API)
    r, _ = one(spec(srv.port, ["127.0.0.10"], tls=True, cafile=cafile))
    assert (r.ok, r.status) == (True, 200), r.error
    assert srv.sni == [API]
    assert srv.hosts == [f"{API}:{srv.port}"]


def test_https_certificate_for_another_name(http_server, ca, cafile):
    srv = tls_server(http_server, ca, "other.domain.tld")
    r, _ = one(spec(srv.port, ["127.0.0.10"], tls=True, cafile=cafile))
    assert r.ok is False and r.error.startswith("certificate does not match the name")


def test_https_expired_certificate(http_server, ca, cafile):
    past = datetime.datetime(2020, 1, 1)
    srv = tls_server(http_server, ca, API, not_before=past - datetime.timedelta(days=1),
                     not_after=past)
    r, _ = one(spec(srv.port, ["127.0.0.10"], tls=True, cafile=cafile))
    assert (r.ok, r.error) == (False, "certificate expired")


def test_https_untrusted_issuer(http_server, ca):
    srv = tls_server(http_server, ca, API)
    r, _ = one(spec(srv.port, ["127.0.0.10"], tls=True, cafile=None))
    assert (r.ok, r.error) == (False, "certificate not trusted (unknown issuer)")


def test_https_without_verification(http_server, ca):
    srv = tls_server(http_server, ca, "other.domain.tld")
    r, _ = one(spec(srv.port, ["127.0.0.10"], tls=True, verify=False))
    assert r.ok is True


def test_https_to_a_plain_http_server(http_server, cafile):
    srv = http_server()
    r, _ = one(spec(srv.port, tls=True, cafile=cafile))
    assert (r.ok, r.error) == (False, "timed out after 1 s in the TLS handshake")


def _https_site(confdir, tmp_path, srv, cafile_line):
    confdir.write(f"domain=domain.tld\ntargets=beta\nspoolDir={tmp_path}/spool\nprobeSSL=yes\n"
                  f"targetIP=127.0.0.10\nprobePort={srv.port}\nprobeTimeout=1\n{cafile_line}")


def test_https_through_the_cli_with_a_configured_ca_file(run, confdir, tmp_path, http_server,
                                                         ca, cafile):
    srv = tls_server(http_server, ca, API)
    _https_site(confdir, tmp_path, srv, f"probeCAFile={cafile}\n")
    r = run("probe", "--json")
    assert r.exit_code == 0, r.stderr
    assert srv.sni == [API]


@pytest.mark.parametrize("content", [None, "not a certificate\n"])
def test_a_missing_or_bad_ca_file_is_a_config_error(run, confdir, tmp_path, http_server, ca,
                                                    content):
    srv = tls_server(http_server, ca, API)
    bad = tmp_path / "ca-bad.pem"
    if content is not None:
        bad.write_text(content)
    _https_site(confdir, tmp_path, srv, f"probeCAFile={bad}\n")
    r = run("probe")
    assert r.exit_code == 78, r.stderr
    assert f"probeCAFile {bad}: cannot load CA certificates" in r.stderr
    assert r.stderr.count("\n") == 1


# -- reasons in an operator's words (issue 23) ---------------------------------------

LIBRARY_WORDS = ("_ssl.c", "[SSL", "EOF occurred", "WRONG_VERSION", "ALERT_")


@pytest.mark.parametrize("version", ["TLSv1_3", "TLSv1_2"])
def test_a_server_that_wants_a_client_certificate_says_so(http_server, ca, cafile, version):
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(API).configure_cert(ctx)
    ca.configure_trust(ctx)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.maximum_version = getattr(ssl.TLSVersion, version)
    srv = http_server("127.0.0.10", tls=ctx)
    r, _ = one(spec(srv.port, ["127.0.0.10"], tls=True, cafile=cafile))
    assert r.ok is False
    assert "client certificate" in r.error, r.error
    assert not any(w in r.error for w in LIBRARY_WORDS), r.error
