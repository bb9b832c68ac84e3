"""Shared fixtures: config files in tmp_path, and the CLI run as users run it."""

from __future__ import annotations

import os
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from spdu_cli.cli import cli


@dataclass
class ConfDir:
    """A configuration directory laid out as /usr/local/etc: spdu.conf + spdu/TARGET."""

    root: Path

    @property
    def main(self) -> Path:
        return self.root / "spdu.conf"

    def write(self, text: str, target: str | None = None, mode: int = 0o644) -> Path:
        path = self.main if target is None else self.root / "spdu" / target
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))
        os.chmod(path, mode)
        return path


@pytest.fixture
def confdir(tmp_path: Path) -> ConfDir:
    d = tmp_path / "etc"
    d.mkdir()
    return ConfDir(d)


@dataclass
class Result:
    exit_code: int
    stdout: str
    stderr: str


@pytest.fixture
def run(confdir: ConfDir, monkeypatch):
    """Run `spdu --config CONFDIR/spdu.conf ARGS...` and capture its streams."""
    monkeypatch.delenv("SPDU_CONFIG", raising=False)

    def invoke(*args: str, config: bool = True, env: dict | None = None) -> Result:
        argv = (["--config", str(confdir.main)] if config else []) + list(args)
        r = CliRunner().invoke(cli, argv, env=env, catch_exceptions=False)
        return Result(r.exit_code, r.stdout, r.stderr)

    return invoke


@pytest.fixture
def http_server():
    """Start StatusServer(host, ...) instances; all are stopped after the test."""
    from tests.httpd import StatusServer

    servers = []

    def start(host: str = "127.0.0.1", **kw) -> StatusServer:
        s = StatusServer(host, **kw)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()


def free_port(host: str = "127.0.0.1") -> int:
    """A port on which nothing listens (connections to it are refused)."""
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# --- real DNS servers (tests/dnsservers.py): knotd and named on loopback ports ---


@pytest.fixture
def shared():
    """A directory every user may search (pytest's tmp_path is not): for the
    servers and spdu run as their Debian users (knot, bind, pdns, unbound)."""
    import shutil

    from tests.dnsservers import open_dir

    assert os.geteuid() == 0, "these tests start servers as other users: run them as root"
    d = open_dir("spdu-users-")
    yield d
    shutil.rmtree(d, ignore_errors=True)

TSIG_KEY_NAME = "spdu-test"
TSIG_ALGORITHM = "hmac-sha256"


def _tsig_key() -> tuple[str, str, str]:
    """(name, algorithm, base64 secret) with a fresh random secret."""
    import base64

    return (TSIG_KEY_NAME, TSIG_ALGORITHM, base64.b64encode(os.urandom(32)).decode())


@pytest.fixture
def knot(tmp_path: Path):
    """knotd for pool.domain.tld: unsigned updates from 127.0.0.1 allowed, plus
    the TSIG key `knot.key` (api.pool.domain.tld A/AAAA only). A missing knotd
    fails the test (no skip)."""
    from tests.dnsservers import KnotServer

    with KnotServer(tmp_path / "knot", key=_tsig_key(), allow_unsigned=True) as s:
        yield s


@pytest.fixture
def knot_signed_only(tmp_path: Path):
    """knotd accepting only updates signed with `knot_signed_only.key`, only for
    api.pool.domain.tld types A/AAAA."""
    from tests.dnsservers import KnotServer

    with KnotServer(tmp_path / "knot-signed", key=_tsig_key(), allow_unsigned=False) as s:
        yield s


@pytest.fixture
def bind(tmp_path: Path):
    """named for pool.domain.tld: updates only with `bind.key`, only for
    api.pool.domain.tld types A/AAAA."""
    from tests.dnsservers import BindServer

    with BindServer(tmp_path / "bind", key=_tsig_key()) as s:
        yield s


@pytest.fixture
def pdns(tmp_path: Path):
    """pdns_server (gsqlite3) for pool.domain.tld: updates only signed with
    `pdns.key` (TSIG-ALLOW-DNSUPDATE) and from 127.0.0.0/8; PowerDNS lets the
    key change anything in the zone."""
    from tests.dnsservers import PowerDNSServer

    with PowerDNSServer(tmp_path / "pdns", key=_tsig_key()) as s:
        yield s


# --- real SMTP relays (tests/smtpd.py): aiosmtpd on loopback ports ---


@pytest.fixture(scope="session")
def smtp_ca():
    """A trustme CA and a certificate for 127.0.0.1 and localhost."""
    import trustme

    ca = trustme.CA()
    return ca, ca.issue_cert("127.0.0.1", "localhost")


@pytest.fixture
def smtp_relay(smtp_ca):
    """Start SmtpRelay(tls=..., password=..., port=...) instances on 127.0.0.1
    (a free port unless given); all are stopped after the test."""
    from tests.smtpd import SmtpRelay

    relays = []

    def start(port: int | None = None, **kw) -> SmtpRelay:
        relay = SmtpRelay(port or free_port(), cert=smtp_ca[1], **kw)
        relays.append(relay)
        return relay

    yield start
    for r in relays:
        r.stop()


# --- real webhook receivers (tests/webhookd.py): HTTP and HTTPS on loopback ---


@pytest.fixture
def webhook_receiver(smtp_ca):
    """Start WebhookReceiver(host, https=...) instances (HTTPS with a trustme
    certificate for 127.0.0.1); all are stopped after the test."""
    import ssl

    from tests.webhookd import WebhookReceiver

    receivers = []

    def start(host: str = "127.0.0.1", https: bool = False) -> WebhookReceiver:
        tls = None
        if https:
            tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            smtp_ca[1].configure_cert(tls)
        r = WebhookReceiver(host, tls)
        receivers.append(r)
        return r

    yield start
    for r in receivers:
        r.stop()
