"""The certificate clients will see: each TLS probe records when the peer's
certificate expires (the first of the target's addresses'); one that expires
within certWarnDays is mailed once per certificate, shown by status and
exported in the metrics file. Real HTTPS servers (tests/httpd.py) with
trustme certificates, a real SMTP relay (aiosmtpd) and webhook receiver; and
peers whose certificates carry garbage or absurd dates."""

from __future__ import annotations

import datetime
import json
import re
import ssl
import time

import pytest
import trustme
from cryptography import x509
from hypothesis import given, settings
from hypothesis import strategies as st

from spdu_cli.probe.cert import validity
from tests.conftest import free_port
from tests.test_json import documented, fields

API = "api.domain.tld"
DAY = 86400


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


def in_days(days: float) -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None) + datetime.timedelta(days=days)


def context(leaf) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    leaf.configure_cert(ctx)
    return ctx


def not_after(leaf) -> float:
    cert = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())
    return cert.not_valid_after_utc.timestamp()


class Setup:
    """spdu.conf for target beta (HTTPS on 127.0.0.x, the CA trusted) with mail
    to a real relay, and the commands run against it."""

    def __init__(self, run, confdir, tmp_path, ca, relay=None, **keys):
        self.run, self.confdir, self.tmp = run, confdir, tmp_path
        cafile = tmp_path / "ca.pem"
        ca.cert_pem.write_to_path(str(cafile))
        self.keys = {
            "domain": "domain.tld", "myTag": "alpha", "targets": "beta",
            "spoolDir": str(tmp_path / "spool"), "probeSSL": "yes",
            "probeCAFile": str(cafile), "probeTimeout": "1", "probeRise": "1",
            "syslogSocket": "none", "metricsFile": str(tmp_path / "spdu.prom"),
            "mailTo": "ops@domain.tld", "smtpRelay": "127.0.0.1", "smtpSSL": "no",
            "smtpStartTLS": "no", "smtpTimeout": "2",
            "smtpPort": str(relay.port if relay else free_port()), **keys}
        self.write()

    def write(self, **keys):
        self.keys.update(keys)
        self.confdir.write("".join(f"{k}={v}\n" for k, v in self.keys.items()), mode=0o600)

    def cmd(self, *args, status=0):
        r = self.run(*args)
        assert r.exit_code == status, (args, r.exit_code, r.stdout, r.stderr)
        return r

    def spool(self):
        return json.loads((self.tmp / "spool" / "beta.json").read_text())["cert"]

    def status(self):
        (obj,) = map(json.loads, self.cmd("status", "--json").stdout.splitlines())
        return obj["cert"]

    def metrics(self) -> dict[str, float]:
        text = (self.tmp / "spdu.prom").read_text()
        return {m.group(1): float(m.group(2)) for m in re.finditer(
            r'^(spdu_ssl_\w+)\{target="beta"\} (\S+)$', text, re.MULTILINE)}


def notices(relay) -> list[str]:
    return [m.message["Subject"] for m in relay.received
            if "certificate" in m.message["Subject"]]


# -- recorded, shown, exported, mailed once ---------------------------------------------


def test_a_certificate_that_expires_soon_is_recorded_shown_exported_and_mailed_once(
        run, confdir, tmp_path, ca, http_server, smtp_relay):
    relay = smtp_relay()
    soon = ca.issue_cert(API, not_after=in_days(5))
    srv = http_server("127.0.0.10", tls=context(soon))
    s = Setup(run, confdir, tmp_path, ca, relay, targetIP=srv.host, probePort=srv.port)
    s.cmd("probe")
    rec = s.spool()
    assert rec["not_after"] is not None and rec["address"] == "127.0.0.10"
    assert abs(datetime.datetime.fromisoformat(rec["not_after"]).timestamp()
               - not_after(soon)) < 1
    shown = s.status()
    assert shown["expiring"] is True and shown["noticed"] is False
    assert abs(shown["expires_in_s"] - 5 * DAY) < 120
    line = s.cmd("status").stdout
    assert re.search(r"cert expires \S+ \S+Z \(in 4 d 23 h\), within certWarnDays 14", line)
    m = s.metrics()
    assert m["spdu_ssl_earliest_cert_expiry"] == pytest.approx(not_after(soon), abs=1)
    assert m["spdu_ssl_cert_seconds_to_expiry"] == pytest.approx(5 * DAY, abs=120)

    s.cmd("notify")
    (subject,) = notices(relay)
    assert re.fullmatch(r"WARNING: spdu on alpha: the certificate of beta expires in 4 d 2\d h",
                        subject)
    (mail,) = [m for m in relay.received if m.message["Subject"] == subject]
    body = mail.message.get_content()
    assert f"{API} at 127.0.0.10, port {srv.port}" in body
    assert x509.load_pem_x509_certificate(soon.cert_chain_pems[0].bytes()).serial_number == int(
        re.search(r"Serial ([0-9A-F]+)\.", body).group(1), 16)
    assert s.status()["noticed"] is True

    for _ in range(2):  # the next probes and mail runs: nothing more
        s.cmd("probe")
        s.cmd("notify")
    assert len(notices(relay)) == 1

    srv.tls = context(ca.issue_cert(API, not_after=in_days(6)))  # renewed, badly: soon too
    s.cmd("probe")
    s.cmd("notify")
    assert len(notices(relay)) == 2 and "expires in 5 d 2" in notices(relay)[1]
    s.cmd("notify")
    assert len(notices(relay)) == 2

    srv.tls = context(ca.issue_cert(API, not_after=in_days(300)))  # renewed for good
    s.cmd("probe")
    s.cmd("notify")
    assert len(notices(relay)) == 2
    assert s.status()["expiring"] is False
    assert "within certWarnDays" not in s.cmd("status").stdout
    assert s.metrics()["spdu_ssl_cert_seconds_to_expiry"] == pytest.approx(300 * DAY, abs=120)


def test_a_certificate_far_from_expiry_says_nothing(run, confdir, tmp_path, ca, http_server,
                                                    smtp_relay):
    relay = smtp_relay()
    srv = http_server("127.0.0.10", tls=context(ca.issue_cert(API, not_after=in_days(60))))
    s = Setup(run, confdir, tmp_path, ca, relay, targetIP=srv.host, probePort=srv.port)
    s.cmd("probe")
    s.cmd("notify")
    assert notices(relay) == [] and len(relay.received) == 1  # beta is up: that one alone
    assert s.status()["expiring"] is False
    assert re.search(r"cert expires \S+ \S+Z \(in 59 d 23 h\)$", s.cmd("status").stdout,
                     re.MULTILINE)
    # certWarnDays=0: no notice even within 14 days, the expiry still shown
    srv.tls = context(ca.issue_cert(API, not_after=in_days(3)))
    s.write(certWarnDays="0")
    s.cmd("probe")
    s.cmd("notify")
    assert notices(relay) == [] and abs(s.status()["expires_in_s"] - 3 * DAY) < 120


def test_with_several_addresses_the_first_to_expire(run, confdir, tmp_path, ca, http_server,
                                                    smtp_relay):
    relay = smtp_relay()
    far = http_server("127.0.0.10", tls=context(ca.issue_cert(API, not_after=in_days(40))))
    http_server("127.0.0.11", tls=context(ca.issue_cert(API, not_after=in_days(9))),
               port=far.port)
    s = Setup(run, confdir, tmp_path, ca, relay, targetIP="'127.0.0.10 127.0.0.11'",
              probePort=far.port)
    s.cmd("probe")
    shown = s.status()
    assert shown["address"] == "127.0.0.11" and abs(shown["expires_in_s"] - 9 * DAY) < 120
    assert s.metrics()["spdu_ssl_cert_seconds_to_expiry"] == pytest.approx(9 * DAY, abs=120)
    s.cmd("notify")
    assert len(notices(relay)) == 1


def test_a_tcp_probe_over_tls_records_it_too(run, confdir, tmp_path, ca, http_server):
    srv = http_server("127.0.0.10", tls=context(ca.issue_cert(API, not_after=in_days(20))))
    s = Setup(run, confdir, tmp_path, ca, None, targetIP=srv.host, probePort=srv.port,
              probeType="tcp", mailTo="''")
    s.cmd("probe")
    assert abs(s.status()["expires_in_s"] - 20 * DAY) < 120
    s.write(probeSSL="no")  # no longer TLS: none is shown, and the next probe forgets it
    assert s.status() is None
    s.cmd("probe")
    assert s.spool() is None and s.metrics() == {}


# -- channels: each on its own, once ------------------------------------------------------


def test_a_relay_that_is_down_gets_it_later_and_the_webhook_only_once(
        run, confdir, tmp_path, ca, http_server, smtp_relay, webhook_receiver):
    hook = webhook_receiver()
    port = free_port()
    srv = http_server("127.0.0.10", tls=context(ca.issue_cert(API, not_after=in_days(2))))
    s = Setup(run, confdir, tmp_path, ca, None, targetIP=srv.host, probePort=srv.port,
              smtpPort=port, webhookURL=f"http://127.0.0.1:{hook.port}/hook")
    s.cmd("probe")
    r = s.cmd("notify", "--json", status=69)  # the relay is down: the transition's mail too
    (obj,) = [o for o in map(json.loads, r.stdout.splitlines()) if o.get("notice")]
    assert obj["sent"] == {"mail": False, **{k: True for k in obj["sent"] if k != "mail"}}
    assert len(obj["sent"]) == 2 and "refused the connection" in obj["error"]
    names = documented()["notify, notice"]
    assert fields(obj, names) == names
    posted = [p for p in hook.received if "certificate" in json.dumps(p.json())]
    assert len(posted) == 1 and posted[0].json()["level"] == "warning"
    relay = smtp_relay(port=port)
    s.cmd("notify")
    assert len(notices(relay)) == 1
    s.cmd("notify")
    assert len(notices(relay)) == 1
    assert len([p for p in hook.received if "certificate" in json.dumps(p.json())]) == 1


def test_without_any_channel_it_is_logged_once(run, confdir, tmp_path, ca, http_server):
    srv = http_server("127.0.0.10", tls=context(ca.issue_cert(API, not_after=in_days(1))))
    s = Setup(run, confdir, tmp_path, ca, None, targetIP=srv.host, probePort=srv.port,
              mailTo="''")
    s.cmd("probe")
    r = s.cmd("notify", "--dry-run")
    assert "Subject: WARNING: spdu on alpha: the certificate of beta expires in 23 h 5" in r.stdout
    r = s.cmd("notify")
    assert "warning: beta: the certificate of beta expires in 23 h 5" in r.stderr
    assert s.spool()["noticed"][0][1] == "log"
    assert "certificate" not in s.cmd("notify").stderr


def test_the_cron_loop_mails_it_once_with_no_transition_pending(
        run, confdir, tmp_path, ca, http_server, smtp_relay):
    relay = smtp_relay()
    srv = http_server("127.0.0.10", tls=context(ca.issue_cert(API, not_after=in_days(4))))
    # no DNS server (reconcile fails at once, 69): the mail run goes on regardless
    s = Setup(run, confdir, tmp_path, ca, relay, targetIP=srv.host, probePort=srv.port,
              interval="0.2", namePort=free_port(), nameTimeout="0.2", certWarnDays="0")
    s.cmd("probe")
    s.cmd("notify")  # beta is up: mailed; nothing pending from here on
    s.write(certWarnDays="14")
    s.cmd("cron", "--for", "2", status=69)
    assert len(notices(relay)) == 1 and len(relay.received) == 2


# -- hostile peers: a garbage or absurd date never crashes or stalls a probe -------------


def _tlv(tag: int, body: bytes) -> bytes:
    n = len(body)
    size = bytes([n]) if n < 128 else bytes([0x80 | ((n.bit_length() + 7) // 8)]) + n.to_bytes(
        (n.bit_length() + 7) // 8, "big")
    return bytes([tag]) + size + body


def _elements(der: bytes) -> list[tuple[int, bytes]]:
    out, i = [], 0
    while i < len(der):
        tag, n = der[i], der[i + 1]
        i += 2
        if n & 0x80:
            k = n & 0x7F
            n = int.from_bytes(der[i:i + k], "big")
            i += k
        out.append((tag, der[i:i + n]))
        i += n
    return out


def with_not_after(leaf, tag: int, text: bytes) -> bytes:
    """The leaf's DER with its notAfter replaced (its signature no longer matches)."""
    der = ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())
    [(_, cert)] = _elements(der)
    tbs, *rest = _elements(cert)
    fields_ = _elements(tbs[1])
    at = 4 if fields_[0][0] == 0xA0 else 3  # [version], serial, signature, issuer, validity
    before = _elements(fields_[at][1])[0]
    fields_[at] = (0x30, _tlv(*before) + _tlv(tag, text))
    tbs = (0x30, b"".join(_tlv(*f) for f in fields_))
    return _tlv(0x30, b"".join(_tlv(*e) for e in [tbs, *rest]))


def hostile_context(ca, tmp_path, tag, text) -> ssl.SSLContext:
    leaf = ca.issue_cert(API)
    (tmp_path / "hostile.pem").write_text(ssl.DER_cert_to_PEM_cert(with_not_after(leaf, tag,
                                                                                  text)))
    leaf.private_key_pem.write_to_path(str(tmp_path / "hostile.key"))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "hostile.pem", tmp_path / "hostile.key")
    return ctx


UTC_TIME, GENERALIZED = 0x17, 0x18


@pytest.mark.parametrize(("tag", "text", "left"), [
    (UTC_TIME, b"3001010000xxZ", None),  # not digits
    (UTC_TIME, b"991399999999Z", None),  # month 13
    (UTC_TIME, b"\x00" * 13, None),
    (UTC_TIME, b"300101000000+0100", None),  # an offset: not DER
    (GENERALIZED, b"00000101000000Z", None),  # year 0
    (GENERALIZED, b"9" * 2000 + b"Z", None),  # 2 KB of digits
    (GENERALIZED, b"20300101000000.5Z", None),  # fractions: not DER
    (GENERALIZED, b"99991231235959Z", "far"),  # RFC 5280's "no well-defined expiry"
    (UTC_TIME, b"500101000000Z", "expired"),  # 1950
])
def test_a_garbage_or_absurd_date_never_crashes_or_stalls_the_probe(
        run, confdir, tmp_path, ca, http_server, smtp_relay, tag, text, left):
    relay = smtp_relay()
    srv = http_server("127.0.0.10", tls=hostile_context(ca, tmp_path, tag, text))
    s = Setup(run, confdir, tmp_path, ca, relay, targetIP=srv.host, probePort=srv.port,
              probeVerify="no")
    began = time.monotonic()
    r = s.cmd("probe", "--json")
    assert time.monotonic() - began < 1.0 and json.loads(r.stdout)["ok"] is True
    shown = s.status()
    s.cmd("notify")
    if left is None:
        assert shown["not_after"] is None and shown["expires_in_s"] is None
        assert "cert notAfter unreadable" in s.cmd("status").stdout
        assert s.metrics() == {}
        assert notices(relay) == []
    elif left == "far":
        assert shown["not_after"] == "9999-12-31T23:59:59.000Z" and not shown["expiring"]
        assert notices(relay) == []
    else:
        assert shown["expires_in_s"] < -70 * 365 * DAY and shown["expiring"]
        (subject,) = notices(relay)
        assert "the certificate of beta expired" in subject
        (mail,) = [m for m in relay.received if m.message["Subject"] == subject]
        assert "probeVerify=no" in mail.message.get_content()


def test_the_der_reader_agrees_with_openssl(ca, tmp_path):
    """validity() on a real certificate: the date and serial ssl shows."""
    leaf = ca.issue_cert(API, not_after=in_days(33))
    pem = leaf.cert_chain_pems[0].bytes().decode()
    (tmp_path / "c.pem").write_text(pem)
    decoded = ssl._ssl._test_decode_cert(str(tmp_path / "c.pem"))
    got = validity(ssl.PEM_cert_to_DER_cert(pem))
    assert got == (float(ssl.cert_time_to_seconds(decoded["notAfter"])),
                   decoded["serialNumber"])


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_the_der_reader_on_damaged_certificates_only_says_no(data):
    der = bytearray(_SAMPLE)
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(der) - 1))
        der[i] = data.draw(st.integers(0, 255))
    der = bytes(der[:data.draw(st.integers(0, len(der)))])
    try:
        not_after, serial = validity(der)
    except ValueError:
        return
    assert not_after is None or isinstance(not_after, float)
    assert re.fullmatch(r"[0-9A-F]{0,64}", serial)


_SAMPLE = ssl.PEM_cert_to_DER_cert(
    trustme.CA().issue_cert(API).cert_chain_pems[0].bytes().decode())


def test_status_json_names_what_the_page_lists(run, confdir, tmp_path, ca, http_server):
    srv = http_server("127.0.0.10", tls=context(ca.issue_cert(API, not_after=in_days(5))))
    s = Setup(run, confdir, tmp_path, ca, None, targetIP=srv.host, probePort=srv.port)
    s.cmd("probe")
    (obj,) = map(json.loads, s.cmd("status", "--json").stdout.splitlines())
    names = documented()["status"]
    assert {n for n in fields(obj, names) if n.startswith("cert")} == {
        n for n in names if n.startswith("cert")}
