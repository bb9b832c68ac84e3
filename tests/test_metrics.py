"""The metrics file after real probe, reconcile (knotd) and notify runs, read
back with prometheus_client's own text parser; and the failover figures of
`spdu config show`."""

from __future__ import annotations

import json
import os
import stat
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from spdu_cli import config, health, metrics
from spdu_cli.spool import Spool
from tests.test_reconcile import write_conf


def parse(path) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(path.read_text()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples, name, **labels):
    return samples[(name, tuple(sorted(labels.items())))]


def test_metrics_after_real_runs(run, confdir, knot, http_server, tmp_path):
    beta, gamma = http_server("127.0.0.12"), http_server("127.0.0.13")
    store = Spool(str(tmp_path / "spool"))
    prom = tmp_path / "textfile" / "spdu.prom"
    prom.parent.mkdir()
    write_conf(confdir, knot, store, targets={"beta": beta.host, "gamma": gamma.host},
               extra=f"probeTimeout=0.5\nprobeFall=2\nmetricsFile={prom}\n")
    confdir.write(f"targetIP={beta.host}\nprobePort={beta.port}\n", target="beta")
    confdir.write(f"targetIP={gamma.host}\nprobePort={gamma.port}\n", target="gamma")
    assert run("probe").exit_code == 0
    assert stat.S_IMODE(os.stat(prom).st_mode) == 0o644
    m = parse(prom)
    assert value(m, "spdu_target_up", target="beta") == 1
    assert value(m, "spdu_probes_total", target="beta") == 1
    assert not any(n == "spdu_dns_updates_total" for n, _ in m)  # no reconcile yet
    before = time.time()
    assert run("reconcile").exit_code == 0
    gamma.behaviour = "503"
    for _ in range(3):
        run("probe")
    assert run("reconcile").exit_code == 0  # gamma removed: a second UPDATE
    assert run("reconcile").exit_code == 0  # in sync: no UPDATE, still a success
    m = parse(prom)
    assert value(m, "spdu_target_up", target="gamma") == 0
    assert value(m, "spdu_target_state", target="gamma", state="down") == 1
    assert value(m, "spdu_target_maintenance", target="beta") == 0
    assert value(m, "spdu_probes_total", target="gamma") == 4
    assert value(m, "spdu_probe_failures_total", target="gamma") == 3
    assert value(m, "spdu_probe_failures_total", target="beta") == 0
    assert value(m, "spdu_transitions_total", target="gamma") == 2  # unknown>up, up>down
    assert value(m, "spdu_notifications_pending", target="gamma") == 2
    assert 0 < value(m, "spdu_probe_latency_seconds", target="beta") < 0.5
    assert value(m, "spdu_probe_last_timestamp_seconds", target="beta") >= before
    pool = {"pool": "api.pool.domain.tld", "server": f"127.0.0.1:{knot.port}"}
    assert value(m, "spdu_dns_updates_total", **pool) == 2
    last = value(m, "spdu_reconcile_last_success_timestamp_seconds", **pool)
    assert before <= last <= time.time()
    # the counters live in the spool: another process goes on from there
    assert json.loads(store.path("gamma").read_text())["counters"] == {
        "probes": 4, "probe_failures": 3}
    assert run("maint", "beta", "--for", "10m").exit_code == 0
    assert value(parse(prom), "spdu_target_maintenance", target="beta") == 1
    assert run("notify").exit_code == 0  # no mailTo: marked, logged only
    assert value(parse(prom), "spdu_notifications_pending", target="gamma") == 0
    assert [p.name for p in prom.parent.iterdir()] == ["spdu.prom"]  # no temp file left


def test_a_failing_reconcile_is_not_a_success(run, confdir, tmp_path):
    prom = tmp_path / "spdu.prom"
    down = type("Down", (), {"address": "127.0.0.1", "port": 9})()  # discard: nothing there
    write_conf(confdir, down, Spool(str(tmp_path / "spool")), extra=f"metricsFile={prom}\n"
               "nameTimeout=0.2\n")
    assert run("reconcile").exit_code == 69
    m = parse(prom)
    assert value(m, "spdu_dns_updates_total", pool="api.pool.domain.tld",
                 server="127.0.0.1:9") == 0
    assert not any(n == "spdu_reconcile_last_success_timestamp_seconds" for n, _ in m)


def test_off_by_default_and_an_unwritable_file_is_a_warning(run, confdir, tmp_path):
    confdir.write(f"domain=domain.tld\ntargets=beta\nspoolDir={tmp_path / 'spool'}\n")
    site = config.load(str(confdir.main))
    assert site.metrics_file == "" and metrics.write(site) is None
    prom = tmp_path / "missing-dir" / "spdu.prom"
    confdir.write(f"domain=domain.tld\ntargets=beta\nspoolDir={tmp_path / 'spool'}\n"
                  f"metricsFile={prom}\n")
    r = run("maint", "beta")
    assert r.exit_code == 0 and "cannot write metrics file" in r.stderr
    confdir.write("domain=domain.tld\ntargets=beta\nmetricsFile=relative.prom\n")
    assert run("config", "check").exit_code == 78


# -- what the settings mean in seconds ------------------------------------------------------


def test_failover_worst_cases():
    # interval 2, fastInterval 0.25, downInterval 0.5, probeTimeout 2 x 1,
    # fall 2, rise 2, TTL 5. Refused: the next probe, then its check CERTAIN_GAP later;
    # hang: the next probe and one overlapping it fastInterval later, each its deadline;
    # back: the next probe of the down target, then rise-1 checks fastInterval apart.
    f = health.failover(2, 0.25, 2.0, 1, 2, 2, 5, 0.5)
    assert (f.out_refused, f.out_hang, f.back) == pytest.approx((2.05, 4.25, 0.75))
    assert f.out_closed == pytest.approx(0.05)  # the kept connection closes: probed at once
    assert f.to_json()["out_hang"] == {"dns": 4.25, "clients": 9.25}
    f = health.failover(5, 1, 0.5, 2, 3, 1, 60, 2)
    assert (f.out_refused, f.out_hang, f.back) == pytest.approx((5.1, 5 + 1 + 2 * 1, 2))
    # fall 4 > MAX_OVERLAP (3): two hung probes end one after the other
    f = health.failover(1, 0.5, 3, 1, 4, 3, 0, 1)
    assert (f.out_refused, f.out_hang, f.back) == pytest.approx((1.15, 1 + 2 * 3 + 1.5, 2))
    f = health.failover(1, 1, 3, 1, 1, 3, 0)  # fall 1; no downInterval: interval
    assert (f.out_refused, f.out_hang, f.back) == (1, 4, 3)


@pytest.mark.parametrize("as_json", [False, True])
def test_config_show_prints_them(run, confdir, as_json):
    confdir.write("domain=domain.tld\ntargets=beta\ninterval=2\nnameTTL=30\nprobeFall=3\n")
    r = run("config", "show", *(["--json"] if as_json else []))
    assert r.exit_code == 0, r.stderr
    if as_json:
        assert json.loads(r.stdout)["failover"] == {
            "out_closed": {"dns": 0.1, "clients": 30.1},
            "out_refused": {"dns": 2.1, "clients": 32.1},
            "out_hang": {"dns": 4.0, "clients": 34.0},
            "back": {"dns": 0.75, "clients": 30.75},
        }
    else:
        assert ("#   out of DNS within 2.1 s if it refuses connections, 4 s if it hangs"
                " (probeTimeout 1.5 s x probeRetries 1), after probeFall=3; 0.1 s if its"
                " server process dies and closes the connection kept from the last good"
                " probe") in r.stdout
        assert "#   back in DNS within 0.75 s after it answers again" in r.stdout
        assert "nameTTL=30 s longer: 32.1 s / 34 s out, 30.75 s back" in r.stdout
        # what the client-side figures imply (README, "What clients see")
        p95 = health.CLIENTS_LINK_P95
        assert (f"a site whose link went down left every client's answers within"
                f" {p95['out']:g} s (p95) and was back in them within {p95['back']:g} s"
                ) in r.stdout
        assert ("keep the pool zone's SOA minimum, or its SOA record's TTL if that is"
                " lower, at or below nameTTL=30: resolvers cache a NODATA or NXDOMAIN answer"
                " for the lesser of the two") in r.stdout
        assert "stays in its own server's answers" not in r.stdout  # no selfIP here


@pytest.mark.parametrize("self_check", ["yes", "no"])
def test_config_show_says_selfip_stays_in_resolvers_answers(run, confdir, self_check):
    """With selfCheck=no, a site whose service dies keeps its own address in its own
    server's answers, and resolvers that ask it hand it on (README, "What clients see")."""
    confdir.write(f"domain=domain.tld\ntargets=beta\nselfIP=192.0.2.1\nselfCheck={self_check}\n")
    r = run("config", "show", "beta")
    assert r.exit_code == 0, r.stderr
    said = ("selfCheck=no: a site whose service refuses or hangs while its DNS server answers"
            " stays in its own server's answers (selfIP), and resolvers that ask that server"
            " pass them on")
    assert (said in r.stdout) == (self_check == "no"), r.stdout
