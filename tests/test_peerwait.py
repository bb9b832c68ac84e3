"""peerWait's minimum (spdu_cli/peerwait.py): with the quorum on (and three
sites or more), a peerWait below a site's worst time out of DNS plus
peerInterval is refused (exit 78), for with 0 every site takes a dead peer
back the moment it removes it; config show prints the minimum."""

from __future__ import annotations

import json

from spdu_cli import health
from tests.test_config_check import conf as one_peer
from tests.test_config_check import errors


def conf(confdir, spool, extra: str = "") -> None:
    """Three sites: this one, beta and gamma."""
    one_peer(confdir, spool, extra=extra)
    text = confdir.main.read_text().replace("targets=beta", "targets='beta gamma'")
    confdir.write(text)
    confdir.write("targetIP=192.0.2.3\n", target="gamma")

# the defaults: interval 2 + probeTimeout 1.5 x probeRetries 1 + (probeFall 2 - 1) x
# fastInterval 0.25 (a site that hangs), plus peerInterval 3
DEFAULT_MIN = 2 + 1.5 + 0.25 + 3


def test_the_default_minimum_is_the_failover_time_plus_peer_interval():
    f = health.failover(2, 0.25, 1.5, 1, 2, 2, 60, 0.5)
    assert max(f.out_closed, f.out_refused, f.out_hang) + 3 == DEFAULT_MIN


def test_a_peer_wait_below_the_minimum_is_78_naming_file_key_value_and_minimum(run, confdir,
                                                                               tmp_path):
    conf(confdir, tmp_path / "s", extra="peerWait=0\n")
    r = run("config", "check")
    assert r.exit_code == 78, r.stderr
    [line] = errors(r)
    assert line.startswith(f"spdu: error: {confdir.main}:8: peerWait=0: below its minimum of"
                           f" {DEFAULT_MIN:g} s"), line
    assert "peerInterval 3" in line and "target beta" in line
    assert "set peerWait=6.75 or more (or peerQuorum=no)" in r.stderr
    # the cron loop does not start with it either
    assert run("cron", "--for", "1").exit_code == 78
    # one just at the minimum is taken
    conf(confdir, tmp_path / "s", extra=f"peerWait={DEFAULT_MIN:g}\n")
    assert run("config", "check").exit_code == 0


def test_the_minimum_follows_the_slowest_target_and_peer_interval(run, confdir, tmp_path):
    conf(confdir, tmp_path / "s", extra="peerWait=10\npeerInterval=5\n")
    confdir.write("targetIP=192.0.2.2\nprobeTimeout=4\n", target="beta")
    r = run("config", "check")
    # 2 + 4 + 0.25 + 5
    assert r.exit_code == 78 and "below its minimum of 11.25 s" in r.stderr, r.stderr


def test_a_default_peer_wait_too_short_is_raised_to_the_minimum_not_refused(run, confdir,
                                                                            tmp_path):
    """A configuration kept from before, with slow probes, names no peerWait: it
    is not refused for it; the quorum waits the minimum instead of 10 s."""
    conf(confdir, tmp_path / "s", extra="probeTimeout=20\n")
    r = run("config", "check")
    assert r.exit_code == 0, r.stderr
    out = run("config", "show").stdout
    low = 2 + 20 + 0.25 + 3
    assert f"peerWait not set: its default 10 s is raised to its minimum, {low:g} s" in out
    from spdu_cli.config import load
    from spdu_cli.peerwait import effective

    site = load(str(confdir.main))
    cfgs = [site.target(n) for n in site.select(())]
    assert effective(cfgs) == low
    # set explicitly, the same value is refused
    conf(confdir, tmp_path / "s", extra="probeTimeout=20\npeerWait=10\n")
    assert run("config", "check").exit_code == 78


def test_without_the_quorum_the_views_or_a_third_site_any_peer_wait_is_taken(run, confdir,
                                                                            tmp_path):
    one_peer(confdir, tmp_path / "s", extra="peerWait=0\n")  # two sites: no quorum
    assert run("config", "check").exit_code == 0
    for off in ("peerQuorum=no", "peerViews=no"):
        conf(confdir, tmp_path / "s", extra=f"peerWait=0\n{off}\n")
        r = run("config", "check")
        assert r.exit_code == 0, r.stderr
        r = run("config", "show", "--json")
        assert json.loads(r.stdout.splitlines()[0])["peer_wait_min"] is None
        assert "peerWait=0: at least" not in run("config", "show").stdout


def test_config_show_prints_the_minimum(run, confdir, tmp_path):
    conf(confdir, tmp_path / "s")
    r = run("config", "show")
    assert r.exit_code == 0, r.stderr
    assert (f"#   peerWait=10: at least {DEFAULT_MIN:g} s (3.75 s, target beta's worst time out"
            " of DNS (health.failover), plus peerInterval 3 s)") in r.stdout
    gamma = run("config", "show", "--json").stdout.splitlines()[1]
    assert json.loads(gamma)["peer_wait_min"] == DEFAULT_MIN


def test_a_running_loop_keeps_its_last_good_configuration(confdir, tmp_path):
    import os

    from spdu_cli import cycle
    from spdu_cli.config import load

    conf(confdir, tmp_path / "s")
    cache = cycle.SiteCache(lambda: load(str(confdir.main)), str(confdir.main))
    good = cache.get()
    conf(confdir, tmp_path / "s", extra="peerWait=1\n")
    st = os.stat(confdir.main)
    os.utime(confdir.main, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert cache.get() is good
    [e] = cache.stale
    assert "peerWait=1: below its minimum of 6.75 s" in str(e)
