"""Maintenance: the override in the spool, its journal entries, what probe,
reconcile (on a real knotd) and notify (on a real SMTP relay) do with it, and
its expiry."""

from __future__ import annotations

import json
import time

import pytest

import spdu_cli.notify.text as notice
from spdu_cli import config, maint
from spdu_cli.entry import Maintenance, SpoolEntry, iso
from spdu_cli.errors import UsageError
from spdu_cli.health import Health, State
from spdu_cli.journal import JournalView, StateChange
from spdu_cli.notify import outbox
from spdu_cli.plan import TargetView, decide
from spdu_cli.spool import Spool
from tests.test_reconcile import BETA, GAMMA, SELF, pool, write_conf

NOW = 1_750_000_000.0  # 2025-06-15 15:06:40 UTC


def in_pool(server) -> set[str]:
    """The test targets' addresses in the pool (selfIP and 192.0.2.2 stay throughout)."""
    found = set(pool(server))
    assert {SELF, BETA} <= found
    return found - {SELF, BETA}


# -- pure -------------------------------------------------------------------------------


@pytest.mark.parametrize("text,seconds", [
    ("90s", 90), ("30m", 1800), ("2h", 7200), ("1d", 86400), ("600", 600), ("1.5h", 5400),
    ("7d", 7 * 86400),
])
def test_durations(text, seconds):
    assert maint.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "8d", "2w", "-1h", "1h30m", "soon"])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        maint.parse_duration(text)


def view(target, state, addresses, maint_until=None, configured=()):
    return TargetView(target, State(state), tuple(addresses), NOW - 1,
                                tuple(configured), 5, 10.0, maint_until)


def test_decide_removes_a_target_in_maintenance_whatever_its_state():
    targets = [view("beta", "up", [BETA], maint_until=NOW + 60), view("gamma", "up", [GAMMA])]
    d = decide([SELF, BETA, GAMMA], targets, [SELF], 5, NOW)
    assert [(c.action, c.address, c.target) for c in d.changes] == [("delete", BETA, "beta")]
    # unknown and never probed, but with targetIP: its configured address goes too
    stale = TargetView("beta", State.UNKNOWN, (), None, (BETA,), 5, 10.0, NOW + 60)
    d = decide([SELF, BETA], [stale], [SELF], 5, NOW)
    assert [(c.action, c.address) for c in d.changes] == [("delete", BETA)]


def test_decide_expired_maintenance_is_over_before_it_is_cleared():
    targets = [view("beta", "up", [BETA], maint_until=NOW - 1)]
    d = decide([SELF], targets, [SELF], 5, NOW)
    assert [(c.action, c.address) for c in d.changes] == [("add", BETA)]


def test_decide_maintenance_never_empties_the_pool_and_keeps_self_ip():
    targets = [view("beta", "up", [BETA], maint_until=NOW + 60)]
    d = decide([BETA], targets, [], 5, NOW)
    assert d.changes == () and "no address at all" in d.blocked
    d = decide([SELF, BETA], [view("beta", "up", [SELF, BETA], NOW + 60)], [SELF], 5,
                         NOW)
    assert [(c.action, c.address) for c in d.changes] == [("delete", BETA)]  # selfIP wins


# -- the spool and the journal ----------------------------------------------------------


@pytest.fixture
def site(confdir, tmp_path):
    spool = tmp_path / "spool"
    confdir.write(f"domain=domain.tld\ntargets='beta gamma'\nspoolDir={spool}\n")
    return config.load(str(confdir.main))


def journal(site, target="beta"):
    return [(e["from"], e["to"], e["reason"]) for e in Spool(site.spool_dir).read(target).journal]


def up(site, target="beta", at=NOW - 100):
    store = Spool(site.spool_dir)
    store.ensure_dir()
    e = SpoolEntry(target, Health(State.UP, at, 2, 0), checked=at, addresses=[BETA])
    e.add_change("unknown", "up", at, "HTTP 200")
    store.write(e)


def test_start_extend_clear(site):
    up(site)
    out = maint.start(site, "beta", 3600, "kernel upgrade", now=NOW)
    assert out.maint == Maintenance(NOW, NOW + 3600, "kernel upgrade") and out.state == "up"
    assert out.change["to"] == "maint" and out.change["until"] == iso(NOW + 3600)
    out = maint.start(site, "beta", 7200, now=NOW + 10)  # again: a new end, no transition
    assert out.maint == Maintenance(NOW, NOW + 7210, "kernel upgrade") and out.change is None
    raw = json.loads((Spool(site.spool_dir).path("beta")).read_text())
    assert raw["version"] == 1 and raw["maint"]["reason"] == "kernel upgrade"
    out = maint.clear(site, "beta", now=NOW + 20)
    assert out.maint is None and out.change["from"] == "maint" and out.change["to"] == "up"
    assert journal(site) == [("unknown", "up", "HTTP 200"), ("up", "maint", "kernel upgrade"),
                             ("maint", "up", "maintenance cleared")]
    assert maint.clear(site, "beta", now=NOW + 30).change is None  # not in maintenance
    with pytest.raises(UsageError):
        maint.start(site, "nosuch", 60)


def test_expiry_is_journaled_at_until_by_the_next_step_under_the_lock(site):
    up(site)
    maint.start(site, "beta", 60, now=NOW)
    out = maint.clear(site, "beta", now=NOW + 120)  # already over: expired, not cleared
    assert out.change["reason"] == "maintenance expired"
    assert out.change["at"] == iso(NOW + 60)


def test_a_file_without_maint_or_counters_reads_and_an_older_spdu_ignores_them(site):
    up(site)
    path = Spool(site.spool_dir).path("beta")
    raw = json.loads(path.read_text())
    del raw["maint"], raw["counters"]
    path.write_text(json.dumps(raw))
    e = Spool(site.spool_dir).read("beta")
    assert not e.fresh and e.maint is None and e.counters == {"probes": 0, "probe_failures": 0}


# -- end to end: probe, reconcile on knotd, notify on a real relay ---------------------------


def test_probes_go_on_during_maintenance_and_reconcile_takes_it_out(
        run, confdir, knot, http_server, tmp_path, smtp_relay):
    relay = smtp_relay()
    beta, gamma = http_server("127.0.0.12"), http_server("127.0.0.13")
    store = Spool(str(tmp_path / "spool"))
    write_conf(confdir, knot, store, targets={"beta": beta.host, "gamma": gamma.host},
               extra=f"probeTimeout=0.5\nprobeFall=1\nprobePort={beta.port}\nmailTo=ops@x.tld\n"
                     f"smtpRelay=127.0.0.1\nsmtpPort={relay.port}\nsmtpSSL=no\n")
    confdir.write(f"targetIP={beta.host}\nprobePort={beta.port}\n", target="beta")
    confdir.write(f"targetIP={gamma.host}\nprobePort={gamma.port}\n", target="gamma")
    assert run("probe").exit_code == 0
    assert run("reconcile").exit_code == 0 and in_pool(knot) == {beta.host, gamma.host}
    assert run("notify").exit_code == 0 and len(relay.received) == 1  # the first probe
    r = run("maint", "beta", "--for", "2h", "--reason", "disk swap")
    assert r.exit_code == 0, r.stderr
    assert run("reconcile").exit_code == 0 and in_pool(knot) == {gamma.host}
    beta.behaviour = "503"  # probed, down, but no transition journaled while in maintenance
    assert run("probe", "beta").exit_code == 1
    entry = store.read("beta")
    assert entry.health.state is State.DOWN and entry.journal[-1]["to"] == "maint"
    assert entry.journal[-1]["dns"][0]["action"] == "delete"  # recorded on the maint change
    assert run("notify").exit_code == 0
    subject = str(relay.received[-1].message["Subject"]).strip()  # folded: long
    assert subject.startswith("NOTICE: beta is in maintenance until ")
    assert subject.endswith(" UTC (disk swap)")
    body = relay.received[-1].message.get_content()
    assert "Reason: disk swap" in body and f"removed {beta.host} from" in body
    beta.behaviour = "ok"
    assert run("probe", "beta").exit_code == 1  # rise=2: still down
    assert run("maint", "beta", "--clear").exit_code == 0
    assert run("reconcile").exit_code == 0 and in_pool(knot) == {gamma.host}  # down
    assert run("probe", "beta").exit_code == 0  # up: an ordinary transition again
    assert run("reconcile").exit_code == 0 and in_pool(knot) == {beta.host, gamma.host}
    assert run("notify").exit_code == 0
    assert relay.received[-1].message["Subject"] == (
        "NOTICE: 2 changes: beta is up")
    assert [(e["from"], e["to"]) for e in store.read("beta").journal] == [
        ("unknown", "up"), ("up", "maint"), ("maint", "down"), ("down", "up")]


def test_probe_clears_an_expired_maintenance(run, confdir, http_server, tmp_path):
    beta = http_server("127.0.0.12")
    spool = tmp_path / "spool"
    confdir.write(f"domain=domain.tld\ntargets=beta\nspoolDir={spool}\nprobeTimeout=0.5\n")
    confdir.write(f"targetIP={beta.host}\nprobePort={beta.port}\n", target="beta")
    assert run("probe").exit_code == 0
    site = config.load(str(confdir.main))
    maint.start(site, "beta", 60, "short", now=time.time() - 120)  # ended a minute ago
    r = run("probe", "--json")
    assert json.loads(r.stdout)["transition"]["from"] == "maint"  # the way back, reported
    entry = Spool(str(spool)).read("beta")
    assert entry.maint is None
    assert [(e["from"], e["to"], e["reason"]) for e in entry.journal][-1] == (
        "maint", "up", "maintenance expired")


def test_notify_texts_for_maintenance():
    mail = config.MailConfig(("ops@domain.tld",), "robot@domain.tld", "127.0.0.1", 25, False,
                             "", "", tag="alpha")

    def one(*changes):
        v = JournalView("beta", "beta.domain.tld", (BETA,), "http://api/status", mail, 4,
                              600.0, tuple(changes))
        return outbox.plan([v], NOW + 10).mails[0]

    on = StateChange(2, "x", NOW, "up", "maint", "kernel", until=NOW + 3600)
    assert notice.subject(one(on)) == (
        "NOTICE: beta is in maintenance until 2025-06-15 16:06:40 UTC (kernel)")
    back = StateChange(3, "y", NOW + 5, "maint", "down", "maintenance expired")
    assert notice.subject(one(back)) == "WARNING: beta is back from maintenance: DOWN"
    text = notice.body(one(on, back))
    assert "It had been in maintenance for 5 s" in text
