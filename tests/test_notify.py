"""spdu_cli.notify: the pure decisions (digest, flap, message) over data, and
delivery through real aiosmtpd relays (plain, STARTTLS, implicit TLS, AUTH)."""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import time

import pytest

import spdu_cli.notify.mail as smtp
import spdu_cli.notify.step as notify
import spdu_cli.notify.text as notice
from spdu_cli import config, journal
from spdu_cli.config import MailConfig
from spdu_cli.entry import duration, iso
from spdu_cli.errors import ConfigError, ServiceUnavailable
from spdu_cli.health import Health, State, Transition
from spdu_cli.notify import outbox
from spdu_cli.spool import Spool
from tests.conftest import free_port

NOW = 1_750_000_000.0
MAIL = MailConfig(("ops@domain.tld",), "robot@domain.tld", "127.0.0.1", 25, False,
                  "robot@domain.tld", "", tag="alpha")


def change(id, at, old, new, reason="", dns=(), **kw):
    return journal.StateChange(id, iso(at), at, old, new, reason, tuple(dns), **kw)


def view(*changes, target="beta", mail=MAIL, flap_count=4, flap_window=600.0):
    return journal.JournalView(target, f"{target}.domain.tld", ("5.6.7.8",),
                             "http://api.domain.tld:80/status", mail, flap_count, flap_window,
                             tuple(changes))


REMOVED = journal.DnsAction(NOW + 2, "delete", "5.6.7.8", "api.pool.domain.tld A",
                           "127.0.0.1:53")


# -- pure: which transitions go in which mail -----------------------------------------


def test_duration():
    assert [duration(s) for s in (0, 45, 60, 3725, 90061)] == [
        "0 s", "45 s", "1 min", "1 h 2 min", "1 d 1 h"]


# The original's words (reference/original-spdu.md: subject `WARNING: Server <tag>
# is DOWN.` or `NOTICE: Server <tag> is up.`, From `"Robot SPDU on <myTag>"`):
# migrated mail filters match on them, so one change alone keeps them exactly.
ORIGINAL = [
    ("up", "down", "WARNING: Server beta is DOWN."),
    ("unknown", "down", "WARNING: Server beta is DOWN."),
    ("down", "up", "NOTICE: Server beta is up."),
    ("unknown", "up", "NOTICE: Server beta is up."),
]


@pytest.mark.parametrize(("old", "new", "want"), ORIGINAL)
def test_one_change_alone_has_the_original_subject_and_from(old, new, want):
    (mail,) = outbox.plan([view(change(1, NOW - 30, old, new, "HTTP 503"))], NOW).mails
    msg = smtp.compose(mail, NOW)
    assert msg["Subject"] == want
    assert msg["From"].addresses[0].display_name == "Robot SPDU on alpha"
    assert msg["From"].addresses[0].addr_spec == "robot@domain.tld"


def test_digests_and_maintenance_keep_their_own_subjects():
    v = view(change(1, NOW - 30, "up", "down"), change(2, NOW - 20, "down", "up"))
    (mail,) = outbox.plan([v], NOW).mails
    assert notice.subject(mail) == "NOTICE: 2 changes: beta is up"
    (mail,) = outbox.plan([view(change(1, NOW - 30, "up", "maint", until=NOW + 60))], NOW).mails
    assert notice.subject(mail).startswith("NOTICE: beta is in maintenance until ")


def test_one_pending_transition_is_one_mail_and_notified_ones_are_skipped():
    v = view(change(1, NOW - 900, "unknown", "up", notified=True),
             change(2, NOW - 300, "up", "down", "connection refused"))
    p = outbox.plan([v], NOW)
    assert len(p.mails) == 1 and [c.id for _, c in p.mails[0].changes] == [2]
    assert notice.subject(p.mails[0]) == "WARNING: Server beta is DOWN."
    assert outbox.plan([view(change(1, NOW, "unknown", "up", notified=True))], NOW).mails == []


def test_several_pending_go_out_as_one_digest_per_mail_configuration():
    other = MailConfig(("noc@other.tld",), "robot@domain.tld", "127.0.0.1", 25, False, "", "",
                       tag="alpha")
    views = [
        view(change(1, NOW - 60, "up", "down", "HTTP 503"), change(2, NOW - 30, "down", "up")),
        view(change(7, NOW - 50, "up", "down", "timed out"), target="gamma"),
        view(change(3, NOW - 40, "up", "down"), target="delta", mail=other),
    ]
    p = outbox.plan(views, NOW)
    assert [len(m.changes) for m in p.mails] == [3, 1]
    digest = p.mails[0]
    assert [(t, c.id) for t, c in digest.changes] == [("beta", 1), ("gamma", 7), ("beta", 2)]
    assert notice.subject(digest) == "WARNING: 3 changes: gamma is DOWN, beta is up"
    text = notice.body(digest)
    assert text.startswith("3 changes seen from alpha since the last mail:\n  - beta is DOWN\n")
    assert text.count("-" * 72) == 3
    assert notice.subject(p.mails[1]) == "WARNING: Server delta is DOWN."


def test_without_mail_to_transitions_are_marked_silently():
    p = outbox.plan([view(change(1, NOW, "up", "down"), mail=None)], NOW)
    assert p.mails == [] and [(v.target, c.id) for v, c in p.silent] == [("beta", 1)]


def flaps(n, start, step=20.0, notified=0):
    states = ["up", "down"]
    return [change(i + 1, start + i * step, states[i % 2], states[(i + 1) % 2], f"flap {i + 1}",
                   notified=i < notified) for i in range(n)]


def test_flapping_target_gets_one_summary_per_window():
    # 4 changes within the window: one mail each (the first three went already).
    p = outbox.plan([view(*flaps(4, NOW - 100, notified=3))], NOW)
    assert [n.flapping for n in p.mails[0].notices] == [0]
    # The 5th within the window: a summary instead.
    p = outbox.plan([view(*flaps(5, NOW - 100, notified=4))], NOW)
    (n,) = p.mails[0].notices
    assert n.flapping == 5 and n.next_summary == NOW + 600
    assert notice.subject(p.mails[0]) == "WARNING: beta is flapping (5 changes in 10 min), now DOWN"
    # Once a summary went out, later flaps are held until the window has passed...
    sent = [change(c.id, c.at, c.old, c.new, c.reason, notified=True, notified_at=NOW,
                   flap=c.id == 5) for c in flaps(5, NOW - 100)]
    more = [change(6, NOW + 10, "up", "down", "flap 6"), change(7, NOW + 30, "down", "up")]
    p = outbox.plan([view(*sent, *more)], NOW + 60)
    assert p.mails == [] and p.held[0].until == NOW + 600 and len(p.held[0].changes) == 2
    # ...then they go out as one summary (due at the window's end, not a moment
    # later), even though the flapping has calmed down.
    assert outbox.plan([view(*sent, *more)], NOW + 600).held == []
    p = outbox.plan([view(*sent, *more)], NOW + 601)
    (n,) = p.mails[0].notices
    assert n.flapping and [c.id for c in n.changes] == [6, 7]
    text = notice.body(p.mails[0])
    assert "is flapping, as seen from alpha" in text and "DOWN -> up" in text
    # flapCount=0: no summaries.
    p = outbox.plan([view(*flaps(8, NOW - 100), flap_count=0)], NOW)
    assert len(p.mails[0].notices) == 8


def test_changes_held_after_a_summary_go_out_as_one_summary_even_when_calm():
    # A summary went out at NOW - 900 for five flaps; two changes came while the
    # summary window was still running (so were held), and by themselves they are
    # too few to count as flapping. Due now: one summary, not one mail each.
    sent = [change(c.id, c.at, c.old, c.new, c.reason, notified=True, notified_at=NOW - 900,
                   flap=True) for c in flaps(5, NOW - 1000)]
    held = [change(6, NOW - 320, "down", "up", "back"), change(7, NOW - 310, "up", "down", "gone")]
    p = outbox.plan([view(*sent, *held)], NOW)
    (mail,) = p.mails
    (n,) = mail.notices
    assert n.flapping and [c.id for c in n.changes] == [6, 7]
    assert "flapping" in notice.subject(mail)


def test_slow_changes_are_not_flapping():
    p = outbox.plan([view(*flaps(8, NOW - 8 * 700, step=700))], NOW)
    assert [n.flapping for n in p.mails[0].notices] == [0] * 8


# -- pure: the message -------------------------------------------------------------


def test_down_mail_headers_and_text():
    v = view(change(1, NOW - 3900, "down", "up", "HTTP 200 in 3 ms", notified=True),
             change(2, NOW, "up", "down", "connection refused", dns=[REMOVED]))
    mail = outbox.plan([v], NOW).mails[0]
    msg = smtp.compose(mail, NOW + 5)
    assert msg["Subject"] == "WARNING: Server beta is DOWN."
    assert 'From: "Robot SPDU on alpha" <robot@domain.tld>\n' in msg.as_string()
    assert msg["From"].addresses[0].display_name == "Robot SPDU on alpha"
    assert msg["To"] == "ops@domain.tld"
    assert msg["Date"].datetime.timestamp() == NOW + 5
    assert msg["Message-ID"].startswith("<spdu.") and msg["Message-ID"].endswith("@domain.tld>")
    assert msg["Message-ID"] == smtp.compose(mail, NOW + 60)["Message-ID"]  # same on retry
    text = msg.get_content()
    assert "beta (beta.domain.tld, 5.6.7.8) is DOWN, as seen from alpha." in text
    assert "It stopped answering http://api.domain.tld:80/status at" in text
    assert "Last failure: connection refused" in text
    assert "It had been up for 1 h 5 min (since" in text
    assert "DNS: removed 5.6.7.8 from api.pool.domain.tld A on 127.0.0.1:53 at" in text


def test_up_mail_names_the_last_failure_and_unchanged_dns():
    v = view(change(4, NOW - 125, "up", "down", "HTTP 503", notified=True),
             change(5, NOW, "down", "up", "HTTP 200 in 2.5 ms"))
    msg = smtp.compose(outbox.plan([v], NOW).mails[0], NOW)
    assert msg["Subject"] == "NOTICE: Server beta is up."
    text = msg.get_content()
    assert "It answers http://api.domain.tld:80/status since" in text
    assert "HTTP 200 in 2.5 ms" in text and "It had been DOWN for 2 min 5 s" in text
    assert "Last failure: HTTP 503" in text
    assert "DNS has not been changed yet" in text


def test_log_line():
    v = view(change(1, NOW - 60, "down", "up", notified=True),
             change(2, NOW, "up", "down", "HTTP 500"))
    assert journal.log_line(v, v.journal[1]) == (
        "beta is DOWN: http://api.domain.tld:80/status at 5.6.7.8: HTTP 500 (was up for 1 min)")


# -- against real relays -------------------------------------------------------------


class Site:
    """spdu.conf in tmp_path with beta and gamma, a spool, and mail settings."""

    def __init__(self, confdir, tmp_path):
        self.confdir = confdir
        self.spool = tmp_path / "spool"
        self.keys = {"domain": "domain.tld", "targets": "'beta gamma'", "myTag": "alpha",
                     "spoolDir": str(self.spool), "mailTo": "'ops@domain.tld noc@domain.tld'",
                     "smtpRelay": "127.0.0.1", "smtpSSL": "no", "smtpTimeout": "1",
                     "syslogSocket": "none"}
        confdir.write("targetIP=5.6.7.8\n", target="beta")
        confdir.write("targetIP=9.10.11.12\n", target="gamma")

    def load(self, **keys):
        self.keys.update(keys)
        self.confdir.write("".join(f"{k}={v}\n" for k, v in self.keys.items()), mode=0o600)
        return config.load(str(self.confdir.main))

    def change(self, target, old, new, at=None, reason="", dns=()):
        store = Spool(str(self.spool))
        store.ensure_dir()
        with store.locked():
            entry = store.read(target)
            at = time.time() if at is None else at
            e = entry.add_transition(Transition(State(old), State(new), at, reason))
            e["dns"] = list(dns)
            entry.health = Health(State(new), at)
            store.write(entry)
        return e["id"]

    def flap(self, target, n, start):
        """n transitions of `target`, 10 s apart from `start`, alternately down and up."""
        for i in range(n):
            old, new = ("up", "down") if i % 2 == 0 else ("down", "up")
            self.change(target, old, new, at=start + i * 10, reason=f"flap {i + 1}")

    def journal(self, target):
        return Spool(str(self.spool)).read(target).journal

    def pending(self, target):
        return [e["id"] for e in self.journal(target) if not e["notified"]]


@pytest.fixture
def site(confdir, tmp_path):
    return Site(confdir, tmp_path)


def test_plain_one_mail_per_transition_then_none(site, smtp_relay):
    relay = smtp_relay()
    dns = {"at": iso(time.time()), "action": "delete", "address": "5.6.7.8",
           "rrset": "api.pool.domain.tld A", "server": "127.0.0.1:53"}
    site.change("beta", "up", "down", reason="connection refused", dns=[dns])
    out = notify.run(site.load(smtpPort=relay.port))
    assert out.errors == [] and [d.sent for d in out.deliveries] == [True]
    (got,) = relay.received
    assert got.mail_from == "robot@domain.tld" and got.tls is False
    assert got.rcpt_tos == ["ops@domain.tld", "noc@domain.tld"]
    msg = got.message
    assert msg["Subject"] == "WARNING: Server beta is DOWN."
    assert 'From: "Robot SPDU on alpha" <robot@domain.tld>\n' in msg.as_string()
    assert msg["From"].addresses[0].display_name == "Robot SPDU on alpha"
    assert msg["To"] == "ops@domain.tld, noc@domain.tld"
    assert msg["Date"] and msg["Message-ID"] and msg["Auto-Submitted"] == "auto-generated"
    text = msg.get_content()
    assert "beta (beta.domain.tld, 5.6.7.8) is DOWN" in text
    assert "Last failure: connection refused" in text
    assert "removed 5.6.7.8 from api.pool.domain.tld A on 127.0.0.1:53" in text
    (entry,) = site.journal("beta")
    assert entry["notified"] is True and entry["message_id"] == msg["Message-ID"]
    assert notify.run(site.load()).deliveries == []  # no duplicate
    assert len(relay.received) == 1


def test_several_pending_go_out_as_one_digest(site, smtp_relay):
    relay = smtp_relay()
    now = time.time()
    site.change("beta", "up", "down", at=now - 3, reason="HTTP 503")
    site.change("gamma", "unknown", "up", at=now - 2, reason="HTTP 200 in 1 ms")
    site.change("beta", "down", "up", at=now - 1)
    notify.run(site.load(smtpPort=relay.port))
    (got,) = relay.received
    assert got.message["Subject"] == "NOTICE: 3 changes: gamma is up, beta is up"
    assert site.pending("beta") == [] and site.pending("gamma") == []


@pytest.mark.parametrize("tls", ["starttls", "implicit"])
def test_tls_with_auth(site, smtp_relay, smtp_ca, tmp_path, tls):
    relay = smtp_relay(tls=tls, password="s3cret")
    ca_file = tmp_path / "ca.pem"
    smtp_ca[0].cert_pem.write_to_path(str(ca_file))
    site.change("beta", "up", "down")
    out = notify.run(site.load(smtpPort=relay.port, smtpSSL="yes" if tls == "implicit" else "no",
                               smtpCAFile=ca_file, smtpPassword="s3cret"))
    assert out.errors == []
    (got,) = relay.received
    assert got.tls and got.auth == "robot@domain.tld"
    assert site.pending("beta") == []


def test_tls_without_auth_and_starttls_required(site, smtp_relay, smtp_ca, tmp_path):
    relay = smtp_relay(tls="starttls")
    ca_file = tmp_path / "ca.pem"
    smtp_ca[0].cert_pem.write_to_path(str(ca_file))
    site.change("beta", "up", "down")
    notify.run(site.load(smtpPort=relay.port, smtpCAFile=ca_file, smtpStartTLS="yes"))
    assert relay.received[0].tls and relay.received[0].auth is None


def test_untrusted_certificate_keeps_the_mail_pending(site, smtp_relay):
    relay = smtp_relay(tls="implicit")
    site.change("beta", "up", "down")
    out = notify.run(site.load(smtpPort=relay.port, smtpSSL="yes"))
    (err,) = out.errors
    assert isinstance(err, ServiceUnavailable) and "certificate not trusted" in str(err)
    assert "smtpCAFile" in str(err) and f"127.0.0.1:{relay.port}" in str(err)
    assert relay.received == [] and site.pending("beta") == [1]


def test_wrong_password_is_a_config_error_and_is_never_shown(site, smtp_relay, smtp_ca,
                                                              tmp_path, caplog):
    relay = smtp_relay(tls="implicit", password="right")
    ca_file = tmp_path / "ca.pem"
    smtp_ca[0].cert_pem.write_to_path(str(ca_file))
    site.change("beta", "up", "down")
    out = notify.run(site.load(smtpPort=relay.port, smtpSSL="yes", smtpCAFile=ca_file,
                               smtpPassword="wrong-pw"))
    (err,) = out.errors
    assert isinstance(err, ConfigError) and "refused the login of smtpUser" in str(err)
    assert "wrong-pw" not in str(err) and "wrong-pw" not in caplog.text
    assert site.pending("beta") == [1]


def test_no_password_in_plain_text_and_starttls_required(site, smtp_relay):
    relay = smtp_relay()
    site.change("beta", "up", "down")
    out = notify.run(site.load(smtpPort=relay.port, smtpPassword="pw"))
    assert "refusing to send smtpPassword in plain text" in str(out.errors[0])
    out = notify.run(site.load(smtpPassword="", smtpStartTLS="yes"))
    assert isinstance(out.errors[0], ServiceUnavailable)
    assert "does not offer STARTTLS" in str(out.errors[0])
    assert relay.received == [] and site.pending("beta") == [1]


def test_relay_down_then_up_delivers_on_the_next_run(site, smtp_relay):
    port = free_port()
    site.change("beta", "up", "down")
    out = notify.run(site.load(smtpPort=port))
    (err,) = out.errors
    assert err.exit_status == 69 and f"127.0.0.1:{port} refused the connection" in str(err)
    assert site.pending("beta") == [1]
    relay = smtp_relay(port=port)
    assert notify.run(site.load()).errors == []
    assert len(relay.received) == 1 and site.pending("beta") == []


def test_relay_that_never_greets_times_out(site):
    from tests.smtpd import SilentRelay

    silent = SilentRelay()
    try:
        site.change("beta", "up", "down")
        started = time.monotonic()
        out = notify.run(site.load(smtpPort=silent.port, smtpTimeout="0.3"))
        assert time.monotonic() - started < 2
    finally:
        silent.stop()
    assert "did not answer within 0.3 s" in str(out.errors[0])
    assert out.errors[0].exit_status == 69
    assert site.pending("beta") == [1]


def test_one_refused_recipient_does_not_block_the_other(site, smtp_relay, caplog):
    relay = smtp_relay(refuse={"noc@domain.tld"})
    site.change("beta", "up", "down")
    with caplog.at_level(logging.WARNING, logger="spdu_cli"):
        out = notify.run(site.load(smtpPort=relay.port))
    assert out.errors == [] and out.deliveries[0].refused.keys() == {"noc@domain.tld"}
    assert relay.received[0].rcpt_tos == ["ops@domain.tld"]
    assert "refused recipient noc@domain.tld (550" in caplog.text
    assert site.pending("beta") == []


def test_every_recipient_refused_keeps_it_pending(site, smtp_relay):
    relay = smtp_relay(refuse={"noc@domain.tld", "ops@domain.tld"})
    site.change("beta", "up", "down")
    out = notify.run(site.load(smtpPort=relay.port))
    assert "refused every recipient" in str(out.errors[0]) and out.errors[0].exit_status == 69
    assert site.pending("beta") == [1]


def test_a_transition_added_while_mailing_is_kept(site, smtp_relay):
    """The lock is not held during SMTP, and marking re-reads the entry."""
    relay = smtp_relay()
    site.change("beta", "up", "down")
    relay.on_data = lambda: site.change("beta", "down", "up")  # a probe, meanwhile
    notify.run(site.load(smtpPort=relay.port))
    assert site.pending("beta") == [2]
    relay.on_data = None
    notify.run(site.load())
    assert relay.received[1].message["Subject"] == "NOTICE: Server beta is up."


def test_a_mail_that_may_have_gone_out_is_resent_alone_under_its_message_id(site, smtp_relay):
    """The relay took the DATA but its answer came too late (maybe delivered): the
    next run sends that transition again under the same Message-ID, so receivers
    can drop the repeat, and a newer transition goes in a mail of its own."""
    relay = smtp_relay()
    site.change("beta", "up", "down", at=time.time() - 60)
    relay.on_data = lambda: time.sleep(1.0)  # the answer after smtpTimeout
    out = notify.run(site.load(smtpPort=relay.port, smtpTimeout="0.3"))
    assert out.errors and out.errors[0].exit_status == 69 and site.pending("beta") == [1]
    first = out.deliveries[0].message["Message-ID"]
    relay.on_data = None
    site.change("beta", "down", "up")
    out = notify.run(site.load(smtpTimeout="3"))
    assert out.errors == []
    carried = sorted((str(d.message["Message-ID"]) == first, [c.id for _, c in d.mail.changes])
                     for d in out.deliveries)
    assert carried == [(False, [2]), (True, [1])]
    assert [r.message["Message-ID"] for r in relay.received].count(first) == 2
    assert site.pending("beta") == []


def test_a_spool_reset_while_mailing_does_not_mark_the_new_journal(site, smtp_relay):
    """Marking matches id and time: a journal that restarted at id 1 meanwhile
    (spool file lost) keeps its own transition 1 pending."""
    relay = smtp_relay()
    site.change("beta", "up", "down", at=time.time() - 60)

    def reset():
        Spool(str(site.spool)).path("beta").unlink()
        site.change("beta", "down", "up")

    relay.on_data = reset
    notify.run(site.load(smtpPort=relay.port))
    assert site.pending("beta") == [1]  # the new transition 1, still to be mailed
    assert site.journal("beta")[0]["to"] == "up"
    assert "sent" not in site.journal("beta")[0]  # not even for mail alone
    relay.on_data = None
    notify.run(site.load(smtpPort=relay.port))
    assert relay.received[-1].message["Subject"] == "NOTICE: Server beta is up."
    assert site.pending("beta") == []


def test_flap_summary_end_to_end(site, smtp_relay):
    relay = smtp_relay()
    site.flap("beta", 5, time.time() - 100)
    notify.run(site.load(smtpPort=relay.port, flapCount=2))
    (got,) = relay.received
    assert got.message["Subject"] == "WARNING: beta is flapping (5 changes in 10 min), now DOWN"
    assert all(e["sent"]["mail"]["flap"] for e in site.journal("beta"))
    site.change("beta", "down", "up")
    notify.run(site.load())  # within the window: held, not mailed
    assert len(relay.received) == 1 and site.pending("beta") == [6]
    notify.run(site.load(), now=time.time() + 601)
    assert "flapping" in relay.received[1].message["Subject"]


def test_after_a_spool_reset_new_mails_get_new_message_ids(site, smtp_relay):
    """The journal restarts at id 1 when a spool file is lost or reset; a new
    transition must not reuse an old mail's Message-ID, or receivers that drop
    duplicates (by Message-ID) never show it."""
    relay = smtp_relay()
    site.change("beta", "up", "down", at=time.time() - 60, reason="connection refused")
    notify.run(site.load(smtpPort=relay.port))
    Spool(str(site.spool)).path("beta").unlink()  # reset: the next journal starts again at 1
    assert site.change("beta", "up", "down", at=time.time(), reason="connection refused") == 1
    notify.run(site.load())
    first, second = relay.received
    assert first.message["Subject"] == second.message["Subject"] == "WARNING: Server beta is DOWN."
    assert first.message["Message-ID"] != second.message["Message-ID"]


@pytest.fixture
def syslog_socket():
    """A datagram socket standing in for /dev/log (short path: AF_UNIX limit)."""
    d = tempfile.mkdtemp(prefix="spdu-")
    path = os.path.join(d, "log")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.setblocking(False)

    def lines():
        out = []
        while True:
            try:
                out.append(s.recv(4096).decode().rstrip("\0"))
            except BlockingIOError:
                return out

    yield path, lines
    s.close()
    os.unlink(path)
    os.rmdir(d)


def test_syslog_once_per_transition_even_while_the_relay_is_down(site, syslog_socket):
    path, lines = syslog_socket
    site.change("beta", "up", "down", reason="connection refused")
    cfg = site.load(smtpPort=free_port(), syslogSocket=path)
    assert notify.run(cfg).errors
    (line,) = lines()
    assert line.startswith(f"<28>spdu[{os.getpid()}]: beta is DOWN: ")  # daemon.warning
    assert line.endswith("at 5.6.7.8: connection refused")
    assert notify.run(cfg).errors and lines() == []
    assert site.journal("beta")[0]["logged"] is True


def test_without_mail_to_transitions_are_logged_and_marked(site, syslog_socket):
    path, lines = syslog_socket
    site.change("beta", "down", "up", reason="HTTP 200 in 1 ms")
    out = notify.run(site.load(mailTo="''", syslogSocket=path))
    assert out.deliveries == [] and site.pending("beta") == []
    assert lines()[0].startswith(f"<30>spdu[{os.getpid()}]: beta is up: ")  # daemon.info


def test_dry_run_sends_logs_and_marks_nothing(site, smtp_relay, syslog_socket):
    path, lines = syslog_socket
    relay = smtp_relay()
    site.change("beta", "up", "down")
    out = notify.run(site.load(smtpPort=relay.port, syslogSocket=path), dry_run=True)
    assert out.deliveries[0].message["Subject"] == "WARNING: Server beta is DOWN."
    assert relay.received == [] and lines() == [] and site.pending("beta") == [1]


def test_non_ascii_reason_survives_encoding():
    v = view(change(1, NOW, "up", "down", "TLS error: certificat expiré"))
    msg = smtp.compose(outbox.plan([v], NOW).mails[0], NOW)
    assert msg["Content-Transfer-Encoding"] == "quoted-printable"
    assert "certificat expiré" in msg.get_content()


def test_a_damaged_journal_entry_does_not_crash():
    c = journal.StateChange.from_journal({"id": 3, "at": "garbage", "to": "down", "dns": 7})
    assert (c.id, c.at, c.old, c.new, c.dns) == (3, 0.0, "unknown", "down", ())


def test_implicit_tls_against_a_plain_relay_says_what_to_set(site, smtp_relay):
    relay = smtp_relay()
    site.change("beta", "up", "down")
    out = notify.run(site.load(smtpPort=relay.port, smtpSSL="yes"))
    error = str(out.errors[0])
    assert "TLS failed" in error and "for STARTTLS set smtpSSL=no" in error
    assert site.pending("beta") == [1]


def test_discovery_and_maintenance_do_not_count_as_flaps():
    """Issue 24: a first probe and a maintenance are not flapping."""
    first = change(1, NOW - 100, "unknown", "up")
    outage = [change(2, NOW - 80, "up", "down"), change(3, NOW - 60, "down", "up")]
    (mail,) = outbox.plan([view(first, *outage, flap_count=2)], NOW).mails
    assert [n.flapping for n in mail.notices] == [0, 0, 0]  # 2 flaps, not more than 2
    maint = [change(2, NOW - 90, "up", "maint", until=NOW - 85),
             change(3, NOW - 85, "maint", "up")]
    more = [change(4, NOW - 80, "up", "down"), change(5, NOW - 60, "down", "up")]
    (mail,) = outbox.plan([view(first, *maint, *more, flap_count=2)], NOW).mails
    assert [n.flapping for n in mail.notices] == [0] * 5
    flaps = [change(i, NOW - 80 + i, *(("up", "down") if i % 2 else ("down", "up")))
             for i in range(2, 5)]  # three real flaps: more than 2
    (mail,) = outbox.plan([view(first, *flaps, flap_count=2)], NOW).mails
    assert mail.notices[0].flapping
