"""The CLI end to end: help and version, the error boundary, config show/check."""

import json
import os
import subprocess
import sys
import time

import click
import pytest

from spdu_cli import __version__
from spdu_cli.cli import cli

MAIN = """
    domain="domain.tld"
    targets="beta gamma"
    mailTo="ops@domain.tld"
    smtpPassword="s3cret-pass"
    selfIP=1.2.3.4
    """


def all_commands(group=cli, path=()):
    for name, cmd in group.commands.items():
        yield path + (name,), cmd
        if isinstance(cmd, click.Group):
            yield from all_commands(cmd, path + (name,))


def test_version(run):
    r = run("--version", config=False)
    assert r.exit_code == 0 and __version__ in r.stdout


@pytest.mark.parametrize("path", [()] + [p for p, _ in all_commands()], ids=" ".join)
def test_every_command_has_help_with_an_example(run, path):
    r = run(*path, "--help", config=False)
    assert r.exit_code == 0
    assert "Example:" in r.stdout, f"spdu {' '.join(path)} --help has no example"


def test_config_show_end_to_end(run, confdir):
    confdir.write(MAIN, mode=0o600)
    confdir.write("targetIP=5.6.7.8\nprobeSSL=yes\n", target="beta")
    confdir.write("poolName=www.example.net\n", target="gamma")
    r = run("config", "show")
    assert r.exit_code == 0, r.stderr
    assert "# target beta:" in r.stdout and "# target gamma:" in r.stdout
    assert "GET https://api.domain.tld:443/status (Host: api.domain.tld) at 5.6.7.8" in r.stdout
    assert "pool:  api.pool.domain.tld in zone pool.domain.tld on 127.0.0.1 port 53" in r.stdout
    assert "www.example.net in zone example.net" in r.stdout
    assert "mail:  ops@domain.tld via smtps://smtp.domain.tld:465" in r.stdout
    assert "s3cret-pass" not in r.stdout and "smtpPassword='********'" in r.stdout
    assert "targetIP=5.6.7.8" in r.stdout and "spdu/beta:1" in r.stdout


def test_config_show_json_one_object_per_target(run, confdir):
    confdir.write(MAIN, mode=0o600)
    confdir.write("targetIP=5.6.7.8\n", target="beta")
    r = run("config", "show", "--json")
    objs = [json.loads(line) for line in r.stdout.splitlines()]
    assert [o["target"] for o in objs] == ["beta", "gamma", "self"]
    own = objs[2]  # selfCheck=yes (the default): this site's own service, probed at selfIP
    assert own["connect_to"] == ["1.2.3.4"] and own["probe_url"] == "http://api.domain.tld:80/status"
    assert own["settings"]["selfCheck"]["value"] == "yes"
    beta = objs[0]
    assert beta["probe_url"] == "http://api.domain.tld:80/status"
    assert beta["connect_to"] == ["5.6.7.8"] and beta["resolve"] is None
    assert objs[1]["resolve"] == "gamma.domain.tld"
    assert beta["pool_name"] == "api.pool.domain.tld" and beta["name_port"] == 53
    assert beta["mail_to"] == ["ops@domain.tld"] and beta["self_ip"] == ["1.2.3.4"]
    assert beta["settings"]["smtpPassword"]["value"] == "********"
    assert beta["settings"]["targetIP"]["source"].endswith("spdu/beta:1")
    assert "s3cret-pass" not in r.stdout


def test_config_show_one_target(run, confdir):
    confdir.write(MAIN, mode=0o600)
    r = run("config", "show", "gamma")
    assert "# target gamma" in r.stdout and "beta" not in r.stdout.split("\n")[0]


def test_config_check_ok_and_bad(run, confdir):
    confdir.write(MAIN, mode=0o600)
    assert run("config", "check").exit_code == 0
    confdir.write("probeTimeout=fast\n", target="gamma")
    r = run("config", "check")
    assert r.exit_code == 78
    assert r.stdout == ""
    line = r.stderr.strip()
    assert "\n" not in line
    assert line.startswith("spdu: error: ") and "spdu/gamma:1: probeTimeout=fast" in line


def test_unsafe_file_through_the_cli(run, confdir):
    confdir.write(MAIN, mode=0o666)
    r = run("config", "check")
    assert r.exit_code == 78
    assert "owned by root, mode 0666; it is writable by group and others" in r.stderr
    assert "chmod go-w" in r.stderr


def test_missing_config_names_the_file(run, confdir):
    r = run("config", "show")
    assert r.exit_code == 78 and f"{confdir.main} does not exist" in r.stderr
    assert "--config FILE or SPDU_CONFIG=FILE" in r.stderr


def test_unknown_target_is_a_usage_error(run, confdir):
    confdir.write(MAIN, mode=0o600)
    r = run("config", "show", "delta")
    assert r.exit_code == 2 and "unknown target 'delta'" in r.stderr


def test_bad_option_is_a_usage_error(run):
    assert run("config", "show", "--nope").exit_code == 2


def test_spdu_config_env_var(run, confdir):
    confdir.write(MAIN, mode=0o600)
    r = run("config", "show", "beta", config=False, env={"SPDU_CONFIG": str(confdir.main)})
    assert r.exit_code == 0 and "# target beta" in r.stdout


def test_unknown_key_warning_reaches_stderr(run, confdir):
    confdir.write(MAIN + "probetimeout=3\n", mode=0o600)
    r = run("config", "show", "beta")
    assert r.exit_code == 0
    assert "unknown key probetimeout ignored; did you mean probeTimeout?" in r.stderr
    r = run("config", "check")  # what cron would run with: an error there
    assert r.exit_code == 78
    assert (f"spdu: error: {confdir.main}:6: probetimeout: unknown key; did you mean"
            " probeTimeout?") in r.stderr


def test_console_script_runs(confdir, tmp_path):
    """The installed entry point, in a real process, as cron starts it."""
    confdir.write(MAIN, mode=0o600)
    p = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "spdu"), "-c", str(confdir.main),
         "config", "check"],
        capture_output=True, text=True, stdin=subprocess.DEVNULL,
    )
    assert p.returncode == 0, p.stderr
    p = subprocess.run([sys.executable, "-m", "spdu_cli", "--version"], capture_output=True,
                       text=True)
    assert p.returncode == 0 and __version__ in p.stdout


def _closed_early(argv: list[str]) -> tuple[int, str]:
    """Run spdu with its standard output a pipe whose reader is gone at once."""
    r, w = os.pipe()
    p = subprocess.Popen(argv, stdout=w, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                         text=True)
    os.close(w)
    os.close(r)
    _, err = p.communicate(timeout=30)
    return p.returncode, err


def test_a_closed_pipe_ends_any_command_quietly(tmp_path, confdir):
    """Issue 24: `spdu history beta | head -c1` exited 70, "internal error:
    BrokenPipeError" (3 of 6 runs). Now: no message, exit 141, every time."""
    from tests.test_notify import Site

    site = Site(confdir, tmp_path)
    site.load()
    for i in range(40):  # more than a pipe's buffer of history, too
        site.change("beta", *(("up", "down") if i % 2 else ("down", "up")),
                    at=time.time() - 4000 + i * 60, reason="x" * 200)
    spdu = [os.path.join(os.path.dirname(sys.executable), "spdu"), "-c", str(confdir.main)]
    commands = [["history", "beta"], ["history", "--json", "beta"], ["status"],
                ["status", "--json"], ["config", "show", "beta"], ["notify", "--dry-run"],
                ["--help"], ["history", "--help"]]
    for args in commands:
        for _ in range(3):
            code, err = _closed_early(spdu + args)
            assert (code, err) == (141, ""), args
    for _ in range(6):  # as the issue ran it: head reads one byte and goes
        p = subprocess.run(["bash", "-c", '"$@" | head -c1 >/dev/null; echo ${PIPESTATUS[0]}',
                            "bash", *spdu, "history", "beta"],
                           capture_output=True, text=True)
        assert p.stderr == "" and p.stdout in ("0\n", "141\n"), (p.stdout, p.stderr)
