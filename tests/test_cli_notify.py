"""`spdu notify` end to end against a real SMTP relay: exit codes, --dry-run,
--json, and the probe -> spool -> notify path."""

import json
import time

import pytest

from tests.conftest import free_port
from tests.test_notify import Site


@pytest.fixture
def site(confdir, tmp_path):
    return Site(confdir, tmp_path)


def test_relay_down_exits_69_then_the_next_run_delivers(run, site, smtp_relay):
    port = free_port()
    site.load(smtpPort=port, smtpPassword="pw-not-shown", smtpStartTLS="no")
    site.change("beta", "up", "down", reason="connection refused")
    r = run("notify")
    assert r.exit_code == 69 and r.stdout == ""
    assert r.stderr.count("\n") == 1  # one line
    assert f"SMTP relay 127.0.0.1:{port} refused the connection" in r.stderr
    assert "stays pending" in r.stderr and "pw-not-shown" not in r.stderr
    assert site.pending("beta") == [1]
    relay = smtp_relay(port=port, password=None)
    site.load(smtpPassword="''")
    r = run("notify")
    assert r.exit_code == 0 and r.stderr == ""
    assert [m.message["Subject"] for m in relay.received] == ["WARNING: Server beta is DOWN."]
    assert run("notify").exit_code == 0 and len(relay.received) == 1


def test_dry_run_prints_the_mail_and_marks_nothing(run, site, smtp_relay):
    relay = smtp_relay()
    site.load(smtpPort=relay.port, smtpPassword="pw-not-shown")
    site.change("beta", "up", "down", reason="HTTP 503")
    site.change("gamma", "down", "up", reason="HTTP 200 in 1 ms")
    r = run("notify", "--dry-run")
    assert r.exit_code == 0, r.stderr
    assert "Subject: WARNING: 2 changes: beta is DOWN, gamma is up\n" in r.stdout
    assert 'From: "Robot SPDU on alpha" <robot@domain.tld>\n' in r.stdout
    assert "To: ops@domain.tld, noc@domain.tld\n" in r.stdout
    assert "Last failure: HTTP 503" in r.stdout
    assert "pw-not-shown" not in r.stdout + r.stderr
    assert relay.received == [] and site.pending("beta") == [1] and site.pending("gamma") == [1]
    again = run("notify", "--dry-run").stdout  # the same mail: nothing was marked

    def undated(text):
        return [line for line in text.splitlines() if not line.startswith("Date: ")]

    assert undated(again) == undated(r.stdout)


def test_json_one_object_per_mail(run, site, smtp_relay):
    relay = smtp_relay(refuse={"noc@domain.tld"})
    site.load(smtpPort=relay.port)
    site.change("beta", "up", "down")
    r = run("notify", "--json")
    assert r.exit_code == 0
    (obj,) = map(json.loads, r.stdout.splitlines())
    assert obj["subject"] == "WARNING: Server beta is DOWN." and obj["sent"] is True
    assert obj["transitions"] == [{"target": "beta", "id": 1}]
    assert list(obj["refused"]) == ["noc@domain.tld"] and obj["error"] is None
    assert "refused recipient noc@domain.tld" in r.stderr


def test_probe_then_notify(run, confdir, site, http_server, smtp_relay):
    """What cron does: probe writes transitions, notify mails them as one digest."""
    relay = smtp_relay()
    srv = http_server("127.0.0.12")
    site.load(smtpPort=relay.port, targets="beta", probeTimeout="0.5", probeFall="1")
    confdir.write(f"targetIP={srv.host}\nprobePort={srv.port}\n", target="beta")
    assert run("probe").exit_code == 0
    srv.behaviour = "503"
    assert run("probe").exit_code == 1
    assert run("notify").exit_code == 0
    (got,) = relay.received
    assert got.message["Subject"] == "WARNING: 2 changes: beta is DOWN"
    text = got.message.get_content()
    assert f"beta (beta.domain.tld, {srv.host}) is DOWN" in text
    assert f"http://api.domain.tld:{srv.port}/status" in text and "Last failure: HTTP 503" in text


def test_day_one_discovery_and_maintenance_are_not_flaps(run, confdir, site, http_server,
                                                          smtp_relay):
    """Issue 24: first probe, maint on, maint --clear, one test outage (five
    changes, over flapCount=4), then a real DOWN: it is mailed at once."""
    relay = smtp_relay()
    srv = http_server("127.0.0.13")
    site.load(smtpPort=relay.port, targets="beta", probeTimeout="0.5", probeFall="1",
              probeRise="1")
    confdir.write(f"targetIP={srv.host}\nprobePort={srv.port}\n", target="beta")

    def step(*args, code=0):
        r = run(*args)
        assert r.exit_code == code, r.stderr
        assert run("notify").exit_code == 0

    step("probe")                                    # unknown -> up
    step("maint", "beta", "--for", "1h")             # up -> maint
    step("maint", "beta", "--clear")                 # maint -> up
    srv.behaviour = "503"
    step("probe", "beta", code=1)                    # up -> down
    srv.behaviour = "200"
    step("probe", "beta")                            # down -> up
    assert [e["to"] for e in site.journal("beta")] == ["up", "maint", "up", "down", "up"]
    srv.behaviour = "503"
    step("probe", "beta", code=1)                    # the real DOWN
    subjects = [m.message["Subject"] for m in relay.received]
    assert len(subjects) == 6 and not any("flapping" in s for s in subjects)
    assert "DOWN" in subjects[-1] and site.pending("beta") == []


def test_a_held_down_is_said_in_a_pipe_in_json_and_in_syslog(run, site, smtp_relay):
    import os
    import socket
    import tempfile

    relay = smtp_relay()
    d = tempfile.mkdtemp(prefix="spdu-")
    path = os.path.join(d, "log")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    try:
        site.load(smtpPort=relay.port, flapCount="2", syslogSocket=path)
        site.flap("beta", 5, time.time() - 100)
        assert run("notify").exit_code == 0  # the summary
        assert len(relay.received) == 1
        while True:  # what the summary logged
            sock.settimeout(0.2)
            try:
                sock.recv(4096)
            except TimeoutError:
                break
        site.change("beta", "up", "down", reason="HTTP 503")  # journaled: logged now
        r = run("notify")
        assert r.exit_code == 0 and len(relay.received) == 1
        (line,) = r.stdout.splitlines()
        assert line.startswith("held: beta is DOWN, flapping; 1 change(s) held for the"
                               " summary due at ")
        logged = sock.recv(4096).decode()
        held = "flapping: its mail is held for the summary due at "
        assert "beta is DOWN: " in logged and held in logged
        assert "held" not in run("notify").stderr
        r = run("-v", "notify")
        said = "spdu: info: beta is DOWN and flapping: 1 change(s) held for the summary due at "
        assert said in r.stderr
        r = run("notify", "--json")
        (obj,) = map(json.loads, r.stdout.splitlines())
        from tests.test_json import documented, fields

        names = documented()["notify, held"]  # spdu(1), JSON OUTPUT
        assert fields(obj, names) == names
        assert set(obj) == {"channel", "held", "state", "summary_due", "transitions", "sent"}
        assert obj["held"] == "beta" and obj["state"] == "down" and obj["channel"] == "mail"
        assert obj["transitions"] == [{"target": "beta", "id": 6}] and obj["sent"] is False
        due = json.loads(r.stdout)["summary_due"]
        assert due.endswith(("Z", "+00:00"))
    finally:
        sock.close()
        os.unlink(path)
        os.rmdir(d)
