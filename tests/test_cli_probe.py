"""`spdu probe` end to end: exit codes, output forms, hysteresis across runs,
the spool it leaves, and the lock."""

import fcntl
import json
import os

import pytest


@pytest.fixture
def site(confdir, http_server, tmp_path):
    """beta (127.0.0.12) and gamma (127.0.0.13) with real status servers."""
    servers = {"beta": http_server("127.0.0.12"), "gamma": http_server("127.0.0.13")}
    spool = tmp_path / "spool"
    confdir.write(f"domain=domain.tld\ntargets='beta gamma'\nspoolDir={spool}\nprobeTimeout=0.5\n")
    for name, srv in servers.items():
        confdir.write(f"targetIP={srv.host}\nprobePort={srv.port}\n", target=name)
    servers["spool"] = spool
    return servers


def states(r):
    return {o["target"]: o["state"] for o in map(json.loads, r.stdout.splitlines())}


def test_all_up_exit_0_and_quiet_in_a_pipe(run, site):
    r = run("probe")
    assert r.exit_code == 0, r.stderr
    assert r.stdout == "" and r.stderr == ""
    assert json.loads((site["spool"] / "beta.json").read_text())["state"] == "up"


def test_json_lines(run, site):
    r = run("probe", "--json")
    objs = [json.loads(line) for line in r.stdout.splitlines()]
    assert [o["target"] for o in objs] == ["beta", "gamma"]
    beta = objs[0]
    assert beta["state"] == "up" and beta["ok"] is True and beta["status"] == 200
    assert beta["address"] == "127.0.0.12" and beta["latency_ms"] > 0
    assert beta["transition"]["from"] == "unknown" and beta["transition"]["to"] == "up"


def test_fall_and_rise_across_runs(run, site):
    assert run("probe", "beta").exit_code == 0
    site["beta"].behaviour = "503"
    r = run("probe", "beta", "--json")
    assert r.exit_code == 0 and states(r) == {"beta": "up"}  # one failure: still up
    assert json.loads(r.stdout)["error"] == "HTTP 503"
    r = run("probe", "beta", "--json")
    assert r.exit_code == 1 and states(r) == {"beta": "down"}
    assert json.loads(r.stdout)["transition"]["reason"] == "HTTP 503"
    site["beta"].behaviour = "ok"
    r = run("probe", "beta", "--json")
    assert r.exit_code == 1 and states(r) == {"beta": "down"}  # one success: still down
    r = run("probe", "beta", "--json")
    assert r.exit_code == 0 and states(r) == {"beta": "up"}
    journal = json.loads((site["spool"] / "beta.json").read_text())["journal"]
    assert [(j["id"], j["from"], j["to"]) for j in journal] == [
        (1, "unknown", "up"), (2, "up", "down"), (3, "down", "up")]


def test_one_down_target_exits_1(run, site):
    site["gamma"].stop()
    r = run("probe", "--json")
    assert r.exit_code == 1
    assert states(r) == {"beta": "up", "gamma": "down"}
    assert json.loads(r.stdout.splitlines()[1])["error"] == "connection refused"


def test_terminal_output(site, confdir):
    """On a terminal: one aligned line per target (rendered from real reports)."""
    import spdu_cli.probe.step as probe_step
    from spdu_cli import config, render

    site["gamma"].behaviour = "500"
    reports = probe_step.run(config.load(str(confdir.main)))
    lines = list(render.probe_lines(reports))
    assert lines[0].startswith("beta   up ") and lines[0].endswith("HTTP 200  [was unknown]")
    assert " ms " in lines[0]
    assert lines[1].startswith("gamma  down") and "HTTP 500" in lines[1]


def test_lock_held_exits_75(run, site):
    site["spool"].mkdir(mode=0o750)
    fd = os.open(site["spool"] / ".lock", os.O_RDWR | os.O_CREAT, 0o640)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        r = run("probe", "--lock-timeout", "0.2")
    finally:
        os.close(fd)
    assert r.exit_code == 75
    assert "spool lock" in r.stderr and "held by another spdu" in r.stderr


def test_corrupt_spool_file_warns_and_is_rewritten(run, site):
    site["spool"].mkdir(mode=0o750)
    (site["spool"] / "beta.json").write_text('{"version": 1, "tar')
    r = run("probe", "beta")
    assert r.exit_code == 0
    assert "beta.json is corrupt" in r.stderr
    assert json.loads((site["spool"] / "beta.json").read_text())["state"] == "up"


def test_unknown_target_and_bad_config(run, site, confdir):
    assert run("probe", "delta").exit_code == 2
    confdir.write("probeFall=0\n", target="beta")
    r = run("probe")
    assert r.exit_code == 78 and "probeFall=0" in r.stderr


def test_unwritable_spool_is_75_and_names_the_file(run, site):
    site["spool"].mkdir(mode=0o750)
    (site["spool"] / "beta.json").mkdir()  # rename over a directory fails
    r = run("probe", "--json")
    assert r.exit_code == 75
    assert "cannot write spool file" in r.stderr and "beta.json" in r.stderr
    assert states(r)["gamma"] == "up"  # the other target was still recorded
    assert json.loads((site["spool"] / "gamma.json").read_text())["state"] == "up"


def test_probe_path_imports_no_dnspython_no_rich_no_ssl(site, confdir):
    import subprocess
    import sys

    conf = str(confdir.main)
    code = (
        f"import sys; from spdu_cli.cli import main; sys.argv=['spdu','-c',{conf!r},'probe'];\n"
        "try: main()\nexcept SystemExit: pass\n"
        "bad=[m for m in ('dns','rich','ssl','requests','asyncio','urllib3') if m in sys.modules]\n"
        "print(','.join(bad))"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == ""


@pytest.mark.parametrize("command", [["status"], ["history", "beta"], ["config", "show"]])
def test_reports_in_a_pipe_import_no_rich_and_no_dnspython(site, confdir, command):
    import subprocess
    import sys

    conf = str(confdir.main)
    code = (
        "import sys; from spdu_cli.cli import main;"
        f" sys.argv=['spdu','-c',{conf!r},*{command!r}];\n"
        "try: main()\nexcept SystemExit: pass\n"
        "sys.stderr.write('MODULES:' + ','.join(m for m in ('dns','rich','smtplib')"
        " if m in sys.modules) + '\\n')"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr
    assert "MODULES:\n" in p.stderr, p.stderr


def test_a_mapped_target_address_is_probed_and_recorded_as_ipv4(run, site, confdir):
    confdir.write(f"targetIP=::ffff:{site['beta'].host}\nprobePort={site['beta'].port}\n",
                  target="beta")
    r = run("probe", "beta", "--json")
    assert r.exit_code == 0, r.stderr
    beta = json.loads(r.stdout)
    assert beta["ok"] is True and beta["addresses"] == [site["beta"].host]
    spool = json.loads((site["spool"] / "beta.json").read_text())
    assert "::ffff:" not in json.dumps(spool)


@pytest.mark.parametrize("found, usable", [
    (["::ffff:192.0.2.7", "192.0.2.7"], ("192.0.2.7",)),
    (["0.0.0.0", "192.0.2.8"], ("192.0.2.8",)),
    (["fe80::1%eth0", "2001:db8::8"], ("2001:db8::8",)),
    (["0.0.0.0", "::"], "blocked.example resolves only to 0.0.0.0, ::: not one host's address"),
    (["::ffff:0.0.0.0"], "blocked.example resolves only to ::ffff:0.0.0.0: not one host's address"),
])
def test_resolved_addresses_are_taken_as_targetip_would_take_them(found, usable):
    """A resolver's answer is held to targetIP's rules: a mapped address is its
    IPv4 address, and this host (0.0.0.0, as blocking resolvers answer) is never
    probed or published."""
    from spdu_cli.probe.names import usable as usable_of

    assert usable_of("blocked.example", found) == usable


def test_verbose_shows_each_state_change(run, site):
    """Issue 24: only -vv showed them."""
    r = run("-v", "probe")
    assert r.exit_code == 0
    assert "spdu: info: beta: unknown -> up: HTTP 200" in r.stderr
    assert "spdu: info: gamma: unknown -> up: HTTP 200" in r.stderr
    assert run("-v", "probe").stderr == ""  # no change, nothing said
    assert "unknown -> up" not in run("probe").stderr


@pytest.mark.parametrize(("args", "said"), [
    (["probe", "-c", "F", "beta"], ("-c is one of spdu's own options: they go before the"
                                    " command, as in: spdu -c F probe beta")),
    (["probe", "beta", "-v", "--config=F"], "as in: spdu -v --config=F probe beta"),
    (["status", "--debug", "-q"], "as in: spdu --debug -q status"),
    (["config", "show", "--syslog", "beta"], "as in: spdu --syslog config show beta"),
])
def test_global_options_after_the_command_say_they_go_first(run, args, said):
    r = run(*args, config=False)
    assert r.exit_code == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and said in r.stderr and "--help" not in r.stderr


def test_spdu_cron_help_is_its_own(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    spdu_cron = Path(sys.executable).parent / "spdu-cron"
    for args in (["--help"], ["-h"], ["cron", "--help"], ["-c", str(tmp_path / "x"), "--help"]):
        p = subprocess.run([str(spdu_cron), *args], capture_output=True, text=True,
                           stdin=subprocess.DEVNULL, timeout=30)
        assert p.returncode == 0, p.stderr
        assert p.stdout.startswith("Usage: spdu-cron [OPTIONS]\n"), (args, p.stdout[:80])
        assert "spdu-cron cron" not in p.stdout and "--for SECONDS" in p.stdout
