"""Webhook notifications (spdu_cli.notify.webhook and the webhook channels of notify):
the formats over data, and delivery to real HTTP and HTTPS receivers on loopback
(tests/webhookd.py), per channel, at least once."""

from __future__ import annotations

import json
import logging
import time

import pytest

import spdu_cli.notify.step as notify
from spdu_cli import config
from spdu_cli.config import WebhookConfig
from spdu_cli.entry import iso
from spdu_cli.errors import ConfigError
from spdu_cli.journal import JournalView, StateChange
from spdu_cli.notify import outbox, webhook
from tests.conftest import free_port
from tests.test_notify import NOW, REMOVED, Site, change, flaps, view

TOKEN = "tk_s3cret-token-value"


def post(*changes, fmt="json", token="", flap_count=4):
    cfg = WebhookConfig("https://hooks.example/services/T0/B0/XYZ", fmt, token, tag="alpha")
    v = view(*changes, mail=None, flap_count=flap_count)
    v = JournalView(**{**v.__dict__, "webhooks": (cfg,)})
    p = outbox.plan([v], NOW)
    assert p.mails == [] and p.silent == []
    (x,) = p.posts
    return x


# -- the formats (pure) ------------------------------------------------------------------


def test_json_document_names_each_transition_and_what_dns_did():
    x = post(change(1, NOW - 60, "down", "up", notified=True),
             change(2, NOW, "up", "down", "connection refused", dns=[REMOVED]))
    req = webhook.request(x, NOW + 1)
    doc = json.loads(req.body)
    assert req.headers["Content-Type"] == "application/json; charset=utf-8"
    assert doc["spdu"] == 1 and doc["site"] == "alpha" and doc["level"] == "warning"
    assert doc["summary"] == "WARNING: Server beta is DOWN."
    assert doc["id"] == req.headers["Idempotency-Key"]
    (t,) = doc["transitions"]
    assert (t["target"], t["id"], t["from"], t["to"], t["reason"]) == (
        "beta", 2, "up", "down", "connection refused")
    assert t["addresses"] == ["5.6.7.8"] and t["host"] == "beta.domain.tld"
    assert t["dns"] == [{"at": iso(NOW + 2), "action": "delete", "address": "5.6.7.8",
                         "rrset": "api.pool.domain.tld A", "server": "127.0.0.1:53"}]
    assert "is DOWN, as seen from alpha" in doc["text"]
    assert webhook.request(x, NOW + 60).headers["Idempotency-Key"] == doc["id"]  # same on retry


def test_slack_text_escapes_its_markup_and_ntfy_has_a_title_and_priority():
    x = post(change(1, NOW, "up", "down", "HTTP 503 <b>&"), fmt="slack")
    text = json.loads(webhook.request(x, NOW).body)["text"]
    assert text.startswith("*WARNING: Server beta is DOWN.*\n")
    assert "HTTP 503 &lt;b&gt;&amp;" in text and "<b>" not in text
    x = post(change(1, NOW, "down", "up", "HTTP 200 in 2 ms"), fmt="ntfy")
    req = webhook.request(x, NOW)
    assert req.headers["Title"] == "NOTICE: Server beta is up."
    assert req.headers["Priority"] == "default"
    assert req.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert "beta (beta.domain.tld, 5.6.7.8) is up" in req.body.decode()
    # A title that is not ASCII is RFC 2047-encoded; a control character never
    # reaches a header (a maintenance reason is free text).
    x = post(change(1, NOW, "up", "maint", "mise à jour\r\nX-Evil: 1", until=NOW + 60), fmt="ntfy")
    title = webhook.request(x, NOW).headers["Title"]
    assert title.startswith("=?UTF-8?B?") and "\n" not in title


def test_a_long_backlog_is_cut_to_what_ntfy_and_slack_take():
    many = [change(i, NOW - 10_000 + i * 700, *(("up", "down") if i % 2 else ("down", "up")),
                   "x" * 200) for i in range(1, 14)]
    body = webhook.request(post(*many, fmt="ntfy", flap_count=0), NOW).body
    assert len(body) <= webhook.NTFY_MAX
    assert body.decode().endswith("see `spdu history` for the rest]\n")
    doc = json.loads(webhook.request(post(*many, flap_count=0), NOW).body)
    assert len(doc["transitions"]) == 13  # json carries them all


def test_the_token_is_a_bearer_header_and_dry_run_never_shows_it_nor_the_path():
    x = post(change(1, NOW, "up", "down"), token=TOKEN)
    req = webhook.request(x, NOW)
    assert req.headers["Authorization"] == f"Bearer {TOKEN}"
    shown = req.shown(x.config)
    assert TOKEN not in shown and "XYZ" not in shown and "services" not in shown
    assert shown.startswith("POST webhookURL https://hooks.example/... (json)\n")
    assert "Authorization: Bearer ********" in shown


def test_each_channel_sees_its_own_pending_and_flap_summaries():
    sent = {"sent": (("mail", NOW, False),)}
    c = change(1, NOW, "up", "down", **sent)
    assert c.on("mail").notified and not c.on("webhook:x").notified
    # a flap summary that went to one channel does not hold the other back
    done = [StateChange(**{**f.__dict__, "sent": (("webhook:a", NOW, f.id == 5),)})
            for f in flaps(5, NOW - 100)]
    v = view(*done, change(6, NOW + 10, "up", "down"))
    assert isinstance(outbox.notices_for(v.on("webhook:a"), NOW + 60), outbox.Held)
    assert not isinstance(outbox.notices_for(v.on("webhook:b"), NOW + 60), outbox.Held)


# -- configuration ---------------------------------------------------------------------


@pytest.fixture
def site(confdir, tmp_path):
    s = Site(confdir, tmp_path)
    s.keys.update(mailTo="''")
    return s


def test_webhook_keys_are_checked(site, tmp_path):
    with pytest.raises(ConfigError, match=r"webhookURL=\(secret not shown\): URL 2: the scheme"):
        site.load(webhookURL="'https://a.example/x ftp://b.example/y'").target("beta")
    with pytest.raises(ConfigError, match="credentials in the URL"):
        site.load(webhookURL="https://u:pw@a.example/").target("beta")
    with pytest.raises(ConfigError, match="webhookFormat names 2 formats for 1 URLs"):
        site.load(webhookURL="https://a.example/", webhookFormat="'slack ntfy'").target("beta")
    with pytest.raises(ConfigError, match="'teams' is not one of json, slack, ntfy"):
        site.load(webhookFormat="teams").target("beta")
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o644)
    with pytest.raises(ConfigError, match=r"readable by group or others.*chmod 0600") as e:
        site.load(webhookFormat="json", webhookTokenFile=token).target("beta")
    assert TOKEN not in str(e.value)
    token.chmod(0o600)
    (w,) = site.load().target("beta").webhooks
    assert w.token == TOKEN and w.format == "json" and TOKEN not in repr(w)
    token.write_text("two words\n")
    with pytest.raises(ConfigError, match="not one token"):
        site.load().target("beta")


def test_two_urls_one_format_each(site):
    cfg = site.load(webhookURL="'https://a.example/1 http://b.example:8080/2'",
                    webhookFormat="'slack ntfy'").target("beta")
    assert [(w.format, w.where) for w in cfg.webhooks] == [
        ("slack", "webhookURL #1 https://a.example/... (slack)"),
        ("ntfy", "webhookURL #2 http://b.example:8080/... (ntfy)")]
    assert len({w.channel for w in cfg.webhooks}) == 2


# -- against real receivers --------------------------------------------------------------


def journal(site, target="beta"):
    return site.journal(target)


@pytest.mark.parametrize("fmt", ["json", "slack", "ntfy"])
def test_each_format_is_delivered_once_and_marked(site, webhook_receiver, tmp_path, fmt):
    r = webhook_receiver()
    token = tmp_path / "token"
    token.write_text(TOKEN)
    token.chmod(0o600)
    site.change("beta", "up", "down", reason="connection refused")
    out = notify.run(site.load(webhookURL=r.url, webhookFormat=fmt, webhookTokenFile=token))
    assert out.errors == [] and [x.sent for x in out.posts] == [True]
    (got,) = r.received
    assert got.path == "/hooks/T0/B0/s3cretpath"
    assert got.headers["Authorization"] == f"Bearer {TOKEN}"
    text = {"json": lambda: got.json()["summary"], "slack": lambda: got.json()["text"],
            "ntfy": lambda: got.headers["Title"]}[fmt]()
    assert "WARNING: Server beta is DOWN." in text
    (e,) = journal(site)
    channel = site.load().target("beta").webhooks[0].channel
    assert e["notified"] is True and list(e["sent"]) == [channel]
    assert notify.run(site.load()).posts == [] and len(r.received) == 1  # no duplicate


def test_the_token_is_sent_even_with_a_netrc_for_the_receiver(site, webhook_receiver, tmp_path,
                                                               monkeypatch):
    """~/.netrc (here $NETRC) is not read: its password would replace the bearer token."""
    r = webhook_receiver()
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password netrc-pw\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    token = tmp_path / "token"
    token.write_text(TOKEN)
    token.chmod(0o600)
    site.change("beta", "up", "down")
    assert notify.run(site.load(webhookURL=r.url, webhookTokenFile=token)).errors == []
    (got,) = r.received
    assert got.headers["Authorization"] == f"Bearer {TOKEN}"


def test_https_with_a_ca_file_and_an_untrusted_certificate(site, webhook_receiver, smtp_ca,
                                                          tmp_path):
    r = webhook_receiver(https=True)
    site.change("beta", "up", "down")
    out = notify.run(site.load(webhookURL=r.url))
    (err,) = out.errors
    assert err.exit_status == 69 and "certificate not trusted" in str(err)
    assert "webhookCAFile" in str(err) and "s3cretpath" not in str(err)
    assert site.pending("beta") == [1] and r.received == []
    ca = tmp_path / "ca.pem"
    smtp_ca[0].cert_pem.write_to_path(str(ca))
    assert notify.run(site.load(webhookCAFile=ca)).errors == []
    assert len(r.received) == 1 and site.pending("beta") == []


def test_5xx_and_a_receiver_that_is_down_keep_it_for_the_next_run(site, webhook_receiver):
    r = webhook_receiver()
    r.answer = "503"
    site.change("beta", "up", "down")
    out = notify.run(site.load(webhookURL=r.url))
    assert out.errors[0].exit_status == 69 and "answered 503" in str(out.errors[0])
    assert site.pending("beta") == [1] and r.tried == 1
    port = free_port()
    out = notify.run(site.load(webhookURL=f"http://127.0.0.1:{port}/hook/secret"))
    assert "refused the connection" in str(out.errors[0]) and "secret" not in str(out.errors[0])
    r.answer = "204"
    assert notify.run(site.load(webhookURL=r.url)).errors == []
    assert len(r.received) == 1 and site.pending("beta") == []


@pytest.mark.parametrize("answer, bound", [("hang", 1.5), ("trickle", 2.0)])
def test_a_receiver_past_its_timeout_costs_it_and_is_not_counted_as_accepted(
        site, webhook_receiver, answer, bound):
    """One that hangs, and one that trickles (each byte within webhookTimeout, so
    no socket timeout fires; the POST's own deadline does): a POST abandoned at
    its deadline is not delivered, and the change stays pending."""
    r = webhook_receiver()
    r.answer = answer
    site.change("beta", "up", "down")
    t0 = time.monotonic()
    out = notify.run(site.load(webhookURL=r.url, webhookTimeout="0.5"))
    assert time.monotonic() - t0 < bound
    (err,) = out.errors
    assert err.exit_status == 69 and "did not answer within 0.5 s" in str(err)
    assert [x.sent for x in out.posts] == [False] and site.pending("beta") == [1]


def test_a_4xx_is_a_refusal_kept_pending_with_a_78(site, webhook_receiver, caplog):
    """The choice: a 4xx (but 408 and 429) says the URL, token or format is wrong.
    Nothing is dropped: the change waits for the fix, and the error says what to fix."""
    r = webhook_receiver()
    site.change("beta", "up", "down")
    for answer, fix in (("401", "check webhookTokenFile"), ("404", "check webhookURL"),
                        ("400", "check webhookFormat")):
        r.answer = answer
        with caplog.at_level(logging.ERROR, logger="spdu_cli"):
            out = notify.run(site.load(webhookURL=r.url))
        (err,) = out.errors
        assert isinstance(err, ConfigError) and err.exit_status == 78
        assert f"answered {answer}" in str(err) and fix in str(err)
        assert site.pending("beta") == [1]
    assert "s3cretpath" not in caplog.text
    r.answer = "429"  # too many requests: temporary
    assert notify.run(site.load()).errors[0].exit_status == 69
    r.answer = "redirect"
    err = notify.run(site.load()).errors[0]
    assert err.exit_status == 78 and "a redirect (not followed)" in str(err)
    r.answer = "200"
    assert notify.run(site.load()).errors == [] and site.pending("beta") == []


def test_channels_are_marked_independently(site, webhook_receiver, smtp_relay):
    """The relay is down: the webhook gets it now, the mail later, and neither twice."""
    r = webhook_receiver()
    port = free_port()
    site.change("beta", "up", "down")
    cfg = site.load(webhookURL=r.url, mailTo="ops@domain.tld", smtpPort=port)
    out = notify.run(cfg)
    assert [x.sent for x in out.posts] == [True] and out.errors[0].exit_status == 69
    (e,) = journal(site)
    assert list(e["sent"]) == [cfg.target("beta").webhooks[0].channel] and not e["notified"]
    relay = smtp_relay(port=port)
    out = notify.run(site.load())
    assert out.errors == [] and out.posts == [] and len(relay.received) == 1
    assert len(r.received) == 1 and site.pending("beta") == []
    assert set(journal(site)[0]["sent"]) == {"mail", cfg.target("beta").webhooks[0].channel}


def test_a_mailed_change_still_goes_to_a_webhook_that_was_down(site, webhook_receiver,
                                                                  smtp_relay):
    """The mail goes out; the receiver is down: the change stays pending for it alone."""
    relay = smtp_relay()
    port = free_port()
    site.change("beta", "up", "down")
    out = notify.run(site.load(webhookURL=f"http://127.0.0.1:{port}/hook",
                               mailTo="ops@domain.tld", smtpPort=relay.port))
    assert len(relay.received) == 1 and "refused the connection" in str(out.errors[0])
    assert site.pending("beta") == [1]
    r = webhook_receiver()
    out = notify.run(site.load(webhookURL=r.url))
    assert out.errors == [] and [x.sent for x in out.posts] == [True]
    assert len(r.received) == 1 and len(relay.received) == 1 and site.pending("beta") == []


def test_a_webhook_removed_from_the_configuration_settles_its_backlog(site, webhook_receiver):
    r = webhook_receiver()
    r.answer = "500"
    site.change("beta", "up", "down")
    assert notify.run(site.load(webhookURL=r.url)).errors
    assert site.pending("beta") == [1]
    assert notify.run(site.load(webhookURL="''")).errors == []
    assert site.pending("beta") == []


def test_flap_summary_per_webhook(site, webhook_receiver):
    r = webhook_receiver()
    site.flap("beta", 5, time.time() - 100)
    notify.run(site.load(webhookURL=r.url, flapCount=2))
    (got,) = r.received
    doc = got.json()
    assert doc["flapping"][0]["target"] == "beta" and doc["flapping"][0]["changes"] == 5
    assert all(t["flapping"] for t in doc["transitions"])
    site.change("beta", "down", "up")
    out = notify.run(site.load())  # within the window: held
    assert len(r.received) == 1 and out.plan.held[0].channel.startswith("webhook:")
    notify.run(site.load(), now=time.time() + 601)
    assert len(r.received) == 2 and r.received[1].json()["flapping"]


def test_dry_run_shows_each_channel_and_sends_nothing(site, webhook_receiver, run, confdir):
    r = webhook_receiver()
    site.change("beta", "up", "down")
    site.load(webhookURL=f"'{r.url} {r.url}/2'", webhookFormat="'slack ntfy'")
    res = run("notify", "--dry-run")
    assert res.exit_code == 0, res.stderr
    assert f"POST webhookURL #1 http://127.0.0.1:{r.port}/... (slack)" in res.stdout
    assert "POST webhookURL #2" in res.stdout
    assert "Title: WARNING: Server beta is DOWN." in res.stdout
    assert "s3cretpath" not in res.stdout + res.stderr
    assert r.tried == 0 and site.pending("beta") == [1]
    res = run("notify", "--json")
    lines = [json.loads(line) for line in res.stdout.splitlines()]
    assert [(x["channel"], x["format"], x["sent"]) for x in lines] == [
        ("webhook", "slack", True), ("webhook", "ntfy", True)]
    assert len(r.received) == 2 and site.pending("beta") == []


def test_notify_without_webhooks_loads_no_requests(site, smtp_relay):
    import subprocess
    import sys

    relay = smtp_relay()
    site.change("beta", "up", "down")
    site.load(mailTo="ops@domain.tld", smtpPort=relay.port)
    code = ("import sys; from spdu_cli import config; import spdu_cli.notify.step as notify; "
            f"notify.run(config.load({str(site.confdir.main)!r})); "
            "print('requests' in sys.modules, 'spdu_cli.notify.webhook' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.stdout.split() == ["False", "False"], out.stderr
    assert len(relay.received) == 1


def test_config_show_hides_the_url(site, run):
    site.load(webhookURL="https://hooks.example/services/T0/B0/XYZ")
    res = run("config", "show", "beta")
    assert res.exit_code == 0 and "XYZ" not in res.stdout
    assert config.KEYS["webhookURL"].secret
