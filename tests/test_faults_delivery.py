"""The fault matrix of issue 27, delivery: a real `spdu notify` killed with
SIGKILL between a webhook receiver's 200 and the marking; a real relay
(aiosmtpd) answering 452 for one recipient of two.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess

from tests import test_faults as faults
from tests.test_faults import BIN

world, knot, site = faults.world, faults.knot, faults.site  # the fixtures of the first matrix

KILLS = 20


def _flip(site: faults.Site) -> None:
    srv = site.servers["beta"]
    srv.behaviour = "503" if srv.behaviour == "ok" else "ok"
    assert site.run("probe", "beta").returncode in (0, 1)  # 1: it is down


def _killed_after_the_200(site: faults.Site, rx) -> object:
    """Run `spdu notify` and kill -9 it once the receiver's 200 is on the wire,
    the spool lock held meanwhile so that it cannot mark; the POST it made."""
    state = {}

    def hold_spool_lock(got):  # the 200 goes out while notify cannot mark...
        fd = os.open(site.spool / ".lock", os.O_RDWR)
        fcntl.flock(fd, fcntl.LOCK_EX)
        state["fd"] = fd

    def kill(got):  # ...and then it dies
        state["proc"].kill()
        state["proc"].wait()
        os.close(state.pop("fd"))
        state["killed"] = got

    rx.before_answer, rx.after_answer = hold_spool_lock, kill
    try:
        state["proc"] = subprocess.Popen(
            [str(BIN / "spdu"), "-c", str(site.conf), "notify"], stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert state["proc"].wait(30) == -signal.SIGKILL
    finally:
        rx.before_answer = rx.after_answer = None
    return state["killed"]


def test_a_webhook_repeat_after_kill_9_has_the_same_key_and_content(site, webhook_receiver):
    rx = webhook_receiver()
    site.write(f"webhookURL={rx.url}\nwebhookFormat=json\nflapCount=0\n")
    os.chmod(site.conf, 0o600)
    assert site.run("probe", "beta").returncode in (0, 1)  # 1: it is down
    fresh_keys = 0  # repeats under a key the receiver has never seen (goal 0)
    for _ in range(KILLS):
        _flip(site)
        killed = _killed_after_the_200(site, rx)
        _flip(site)  # a newer transition, pending with the one posted
        seen = {r.headers["Idempotency-Key"] for r in rx.received}
        before = len(rx.received)
        r = site.run("notify")
        assert r.returncode == 0, r.stderr
        ids = {t["id"] for t in killed.json()["transitions"]}
        [repeat] = [x for x in rx.received[before:]
                    if ids & {t["id"] for t in x.json()["transitions"]}]
        fresh_keys += repeat.headers["Idempotency-Key"] not in seen
        assert repeat.body == killed.body  # the same content, sent_at included
        assert len(rx.received) - before == 2  # the repeat alone, the news in its own POST
    assert fresh_keys == 0
    assert all(e["notified"] for e in site.entry("beta")["journal"])


def test_a_flap_summary_posted_again_is_the_same_summary(site, webhook_receiver):
    rx = webhook_receiver()
    site.write(f"webhookURL={rx.url}\nwebhookFormat=json\nflapCount=1\nflapWindow=600\n")
    os.chmod(site.conf, 0o600)
    for _ in range(3):
        _flip(site)
    _killed_after_the_200(site, rx)
    [summary] = rx.received
    assert len(summary.json()["flapping"]) == 1 and len(summary.json()["transitions"]) == 3
    _flip(site)  # news
    assert site.run("notify").returncode == 0
    again = {r.headers["Idempotency-Key"]: r for r in rx.received[1:]}
    assert len(again) == 2  # the summary again, alone; the news in a POST of its own
    repeat = again[summary.headers["Idempotency-Key"]]
    assert repeat.body == summary.body  # the same summary, the same 3 changes, sent_at


def test_a_repeat_keeps_its_content_when_dns_was_changed_meanwhile(site, webhook_receiver,
                                                                     smtp_relay):
    """The mail and the POST of beta's change are taken, spdu dies before it
    marks them, and then reconcile records what it did in DNS for that change:
    the repeats are the same mail (Message-ID, Date, body) and the same POST
    (key, body), as they were first tried, not with the DNS line added."""
    lock = {}

    def hold_spool_lock(*_):  # taken, and then the spool cannot be written
        fd = os.open(site.spool / ".lock", os.O_RDWR)
        fcntl.flock(fd, fcntl.LOCK_EX)
        lock["fd"] = fd

    rx, relay = webhook_receiver(), smtp_relay(on_data=hold_spool_lock)
    site.write(f"webhookURL={rx.url}\nwebhookFormat=json\nflapCount=0\nmailTo=ops@domain.tld\n"
               f"smtpRelay=127.0.0.1\nsmtpPort={relay.port}\nsmtpSSL=no\nsmtpStartTLS=no\n")
    os.chmod(site.conf, 0o600)
    assert site.run("probe", "beta").returncode == 0  # beta up: to be added to the pool
    r = site.run("notify", "--lock-timeout", "0.5")
    assert r.returncode == 75, r.stderr  # mailed and posted, not marked
    relay.on_data = None
    os.close(lock.pop("fd"))
    [first_mail], [first_post] = relay.received, rx.received
    assert site.run("reconcile").returncode == 0  # records "added" on beta's change
    assert [d["action"] for d in site.entry("beta")["journal"][-1]["dns"]] == ["add"]
    assert site.run("notify").returncode == 0
    [mail], [post] = relay.received[1:], rx.received[1:]
    for h in ("Message-ID", "Date", "Subject"):
        assert mail.message[h] == first_mail.message[h], h
    assert mail.message.get_content() == first_mail.message.get_content()
    assert "DNS has not been changed yet" in mail.message.get_content()
    assert post.headers["Idempotency-Key"] == first_post.headers["Idempotency-Key"]
    assert post.body == first_post.body
    assert all(e["notified"] for e in site.entry("beta")["journal"])


def test_a_post_the_receiver_refused_joins_the_next_digest(site, webhook_receiver):
    rx = webhook_receiver()
    site.write(f"webhookURL={rx.url}\nwebhookFormat=json\nflapCount=0\n")
    os.chmod(site.conf, 0o600)
    rx.answer = "503"
    _flip(site)
    assert site.run("notify").returncode == 69
    [first] = site.entry("beta")["journal"]
    assert list(first["post_id"].values()) == [None]  # surely not taken: no key kept
    rx.answer = "200"
    _flip(site)
    assert site.run("notify").returncode == 0
    [digest] = rx.received
    assert len(digest.json()["transitions"]) == 2


def test_a_452_for_one_recipient_keeps_the_mail_pending_for_it_alone(site, smtp_relay):
    relay = smtp_relay(defer={"noc@domain.tld"}, refuse={"gone@domain.tld"})
    site.write("mailTo='ops@domain.tld noc@domain.tld gone@domain.tld'\nsmtpRelay=127.0.0.1\n"
               f"smtpPort={relay.port}\nsmtpSSL=no\nsmtpStartTLS=no\nflapCount=0\n")
    _flip(site)
    r = site.run("notify")
    assert r.returncode == 69, r.stderr
    line = faults.one_line_error(r.stderr)
    assert "452 4.2.2 mailbox full" in line and "for recipient noc@domain.tld" in line
    assert "refused recipient gone@domain.tld" in r.stderr  # a 5xx: logged, given up
    [first] = relay.received
    assert first.rcpt_tos == ["ops@domain.tld"]
    [down] = site.entry("beta")["journal"]
    assert down["notified"] is False and "mail" not in (down.get("sent") or {})
    [planned] = [json.loads(x) for x in site.run("notify", "-n", "--json").stdout.splitlines()]
    assert planned["to"] == ["noc@domain.tld"]  # the same mail, to noc alone
    assert planned["message_id"] == first.message["Message-ID"]
    relay.defer.clear()
    _flip(site)  # news: the next run mails it to everyone, the repeat to noc alone
    r = site.run("notify")
    assert r.returncode == 0, r.stderr
    again = {tuple(m.rcpt_tos): m.message for m in relay.received[1:]}
    assert again.keys() == {("noc@domain.tld",), ("ops@domain.tld", "noc@domain.tld")}
    repeat = again["noc@domain.tld",]
    assert repeat["Message-ID"] == first.message["Message-ID"]
    assert repeat["To"] == first.message["To"] and repeat["Subject"] == first.message["Subject"]
    assert all(e["notified"] for e in site.entry("beta")["journal"])


def test_a_repeat_the_relay_could_not_take_at_all_stays_the_same_mail(site, smtp_relay):
    """A mail still owed to one recipient (a 452 before) meets a relay that is
    down: it stays that mail, for that recipient, under its Message-ID; it
    does not join a new digest to everyone (who had it already)."""
    from tests.conftest import free_port

    relay = smtp_relay(defer={"noc@domain.tld"})
    mail = ("mailTo='ops@domain.tld noc@domain.tld'\nsmtpRelay=127.0.0.1\nsmtpSSL=no\n"
            "smtpStartTLS=no\nflapCount=0\nsmtpTimeout=2\n")
    site.write(mail + f"smtpPort={relay.port}\n")
    _flip(site)
    assert site.run("notify").returncode == 69
    [first] = relay.received
    assert first.rcpt_tos == ["ops@domain.tld"]
    site.write(mail + f"smtpPort={free_port()}\n")  # nothing listens: refused outright
    r = site.run("notify")
    assert r.returncode == 69 and "refused the connection" in r.stderr, r.stderr
    relay.defer.clear()
    site.write(mail + f"smtpPort={relay.port}\n")
    assert site.run("notify").returncode == 0
    [repeat] = relay.received[1:]
    assert repeat.rcpt_tos == ["noc@domain.tld"]
    assert repeat.message["Message-ID"] == first.message["Message-ID"]
