"""Hardening: hostile configuration values, spool files and target names, and
property tests (hypothesis) that no input crashes the config reader or the
spool reader with anything but the documented error."""

from __future__ import annotations

import json
import os
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spdu_cli import config
from spdu_cli.config import System
from spdu_cli.errors import ConfigError
from spdu_cli.plan import decide
from spdu_cli.reconcile import Plan, PoolKey
from spdu_cli.spool import Spool

ALPHA = System(hostname="alpha.domain.tld")
SCRIPT_LINE = re.compile(r"(; [ -~]*|server [0-9a-f.:]+ \d+|zone [a-z0-9.-]+\.|"
                         r"prereq (yx|nx)rrset [a-z0-9.-]+\. IN (A|AAAA)( [0-9a-f.:]+)?|"
                         r"update (add [a-z0-9.-]+\. \d+|delete [a-z0-9.-]+\.) IN (A|AAAA) "
                         r"[0-9a-f.:]+|send)")
HOSTILE = ["api\nupdate add evil.pool.domain.tld. 5 A 203.0.113.66", "api;rm -rf /",
           "api\x00", "a$(id)", "a`id`", "api pool", "../../etc", "api\r\nBcc: x@y.z",
           "api.pool.domain.tld.\nsend"]
ONE_TIME = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def _script(cfg) -> str:
    key = PoolKey(cfg.pool_name, cfg.pool_zone, str(cfg.name_server), cfg.name_port)
    decision = decide([str(i) for i in cfg.self_ips], [], cfg.self_ips, cfg.name_ttl, 0)
    return Plan(key, None, {"A": ["192.0.2.1"], "AAAA": []}, decision).script()


def _write(confdir, text: str) -> None:
    confdir.main.write_bytes(text.encode("utf-8", "surrogatepass"))
    os.chmod(confdir.main, 0o600)


@pytest.mark.parametrize("key", ["poolName", "poolZone", "nameServer", "myTag", "mailFrom",
                                 "mailTo", "apiName", "targetName", "smtpUser", "probePath"])
@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_values_are_refused_before_they_reach_a_script_or_a_header(confdir, key, value):
    quoted = "'" + value.replace("'", "") + "'"
    _write(confdir, f"domain=domain.tld\nselfIP=192.0.2.1\n{key}={quoted}\n")
    try:
        cfg = config.load(str(confdir.main), system=ALPHA).target("beta")
    except ConfigError as e:
        assert (str(confdir.main) in str(e) and key in str(e)) or "line" in str(e)
        return
    # Accepted (e.g. a probePath with ';'): it must not reach DNS or mail verbatim.
    for line in _script(cfg).splitlines():
        assert SCRIPT_LINE.fullmatch(line), line
    for v in (cfg.my_tag, *(cfg.mail.to if cfg.mail else ()), cfg.pool_name):
        assert not re.search(r"[\x00-\x1f\x7f]", v)


@ONE_TIME
@given(key=st.sampled_from(sorted(config.KEYS)), value=st.text(max_size=40))
def test_any_value_of_any_key_loads_or_fails_with_a_config_error(confdir, key, value):
    quoted = "'" + value.replace("'", "") + "'"
    _write(confdir, f"domain=domain.tld\ntargets=beta\n{key}={quoted}\n")
    try:
        site = config.load(str(confdir.main), system=ALPHA)
        cfgs = site.check()
    except ConfigError as e:
        assert not re.search(r"[\x00-\x1f\x7f]", str(e)), "one line, no raw control characters"
        return
    for cfg in cfgs:
        for line in _script(cfg).splitlines():
            assert SCRIPT_LINE.fullmatch(line), line


@ONE_TIME
@given(st.binary(max_size=300))
def test_any_bytes_as_a_config_file_load_or_fail_cleanly(confdir, data):
    confdir.main.write_bytes(data)
    os.chmod(confdir.main, 0o600)
    try:
        config.load(str(confdir.main), system=ALPHA).check()
    except ConfigError:
        pass


# -- the spool reader ----------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=3),
    max_leaves=10,
)
VALID = {"version": 1, "target": "beta", "state": "up", "since": "2026-01-01T00:00:00.000Z",
         "good": 2, "bad": 0, "checked": "2026-01-01T00:00:00.000Z", "addresses": ["192.0.2.2"],
         "url": "http://api.domain.tld:80/status", "results": [], "next_id": 2,
         "dropped_pending": 0, "journal": [{"id": 1, "at": "2026-01-01T00:00:00.000Z",
                                            "from": "unknown", "to": "up", "reason": "x",
                                            "notified": False, "dns": []}]}


@pytest.fixture
def store(tmp_path):
    s = Spool(str(tmp_path / "spool"))
    s.ensure_dir()
    return s


@ONE_TIME
@given(field=st.sampled_from(sorted(VALID)), value=json_values)
def test_any_field_value_reads_as_an_entry_or_unknown(store, field, value):
    store.path("beta").write_text(json.dumps({**VALID, field: value}))
    entry = store.read("beta")  # never raises
    assert entry.target == "beta"
    with store.locked():
        store.write(entry)  # and whatever was read can be written back
    assert json.loads(store.path("beta").read_text())["version"] == 1


@ONE_TIME
@given(st.binary(max_size=400))
def test_any_bytes_read_as_unknown(store, data):
    store.path("beta").write_bytes(data)
    assert store.read("beta").target == "beta"


@pytest.mark.parametrize("content", [
    json.dumps({**VALID, "good": 1e400}).replace("Infinity", "1e400"),
    json.dumps({**VALID, "next_id": 10**400}),
    "[" * 200000 + "]" * 200000,
    json.dumps({**VALID, "journal": [{"id": 1e400}]}).replace("Infinity", "1e400"),
])
def test_pathological_json_reads_as_unknown(store, content, caplog):
    store.path("beta").write_text(content)
    assert store.read("beta").health.state.value == "unknown"
    assert "corrupt" in caplog.text


def test_target_names_cannot_escape_the_spool(store, run, confdir, tmp_path):
    for name in ("../evil", "..", ".hidden", "a/b"):
        with pytest.raises(ValueError):
            store.path(name)
    confdir.write(f"domain=domain.tld\ntargets=beta\nspoolDir={tmp_path}/spool\n")
    r = run("probe", "../../etc/passwd")
    assert r.exit_code == 2 and "target" in r.stderr
    assert sorted(p.name for p in tmp_path.rglob("*.json")) == []


def test_reconcile_ignores_an_entry_planted_through_a_symlink(store, tmp_path):
    elsewhere = tmp_path / "planted.json"
    elsewhere.write_text(json.dumps({**VALID, "state": "down"}))
    os.symlink(elsewhere, store.path("beta"))
    assert store.read("beta").health.state.value == "unknown"  # and so: no DNS change


@pytest.mark.parametrize("line", ["smtpPassword=hunter2 secretpart",
                                  'smtpPassword="hunter$secretpart"',
                                  "tsigKey=k1:c2VjcmV0cGFydA== more",
                                  'smtpPassword="hunter2 secretpart'])
def test_a_secret_is_never_repeated_in_a_syntax_error(run, confdir, line):
    confdir.write(f"domain=domain.tld\ntargets=beta\n{line}\n", mode=0o600)
    r = run("config", "check")
    assert r.exit_code == 78
    assert "secret" in r.stderr and ":3:" in r.stderr and "single quotes" in r.stderr
    assert "secretpart" not in r.stderr and "c2VjcmV0cGFydA" not in r.stderr


def test_config_check_warns_about_unsigned_updates_to_another_host(run, confdir, tmp_path):
    confdir.write(f"domain=domain.tld\ntargets=beta\nspoolDir={tmp_path}/s\n"
                  "nameServer=192.0.2.53\n")
    r = run("config", "check")
    assert r.exit_code == 0
    assert "UNSIGNED updates to 192.0.2.53" in r.stderr and "spdu keygen" in r.stderr
    confdir.write(f"domain=domain.tld\ntargets=beta\nspoolDir={tmp_path}/s\n")
    r = run("config", "check")
    assert r.exit_code == 0 and "UNSIGNED" not in r.stderr  # loopback: the original's setup


def test_a_maintenance_reason_cannot_inject_a_mail_header(run, confdir, tmp_path):
    confdir.write(f"domain=domain.tld\ntargets=beta\nspoolDir={tmp_path}/spool\n"
                  "mailTo=ops@domain.tld\n")
    r = run("maint", "beta", "--reason", "upgrade\r\nBcc: evil@example.org")
    assert r.exit_code == 2 and "--reason" in r.stderr
    # and one planted in the spool by other means is flattened, not obeyed
    store = Spool(str(tmp_path / "spool"))
    entry = store.read("beta")
    from spdu_cli.health import State, Transition

    j = entry.add_transition(Transition(State.UP, State.DOWN, 1.0, "x"))
    j["to"], j["reason"] = "maint", "upgrade\r\nBcc: evil@example.org"
    j["until"] = "2099-01-01T00:00:00.000Z"
    with store.locked():
        store.write(entry)
    r = run("notify", "--dry-run")
    assert r.exit_code == 0, r.stderr
    headers = r.stdout.split("\n\n")[0]
    assert "\nBcc:" not in headers and "Bcc: evil" in headers  # kept as text, in the subject


def test_config_check_warns_about_settings_that_do_nothing(run, confdir, tmp_path):
    confdir.write(f"domain=domain.tld\nspoolDir={tmp_path}/s\ninterval=2\nfastInterval=5\n")
    r = run("config", "check")
    assert r.exit_code == 78  # no target: as every command that acts on them says
    assert "no targets configured" in r.stderr and "add targets=" in r.stderr
    assert "fastInterval=5 is longer than interval=2" in r.stderr
    confdir.write(f"domain=domain.tld\ntargets=beta\nspoolDir={tmp_path}/s\n")
    assert "selfIP is empty" in run("config", "check").stderr
