"""One JSON vocabulary: each command's `--json` object has exactly the fields
spdu(1), JSON OUTPUT, lists for it, no more and no fewer. The fields are
read from the man page; the objects come from running every command against
a real setup (Knot with a TSIG key, an HTTP status server, an SMTP relay, a
webhook receiver), in an order that fills every nested object at least once.

Field names as the page writes them: `a.b` a field of the object in `a`,
`a[].b` a field of each object in the list `a`, `a{}` an object whose keys
are data (targets, states, servers), `a{}.b` a field of each of its values.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from typing import Any

import pytest
from click.testing import CliRunner

from spdu_cli.cli import cli
from tests.dnsservers import KnotServer, free_port
from tests.httpd import StatusServer
from tests.smtpd import SmtpRelay
from tests.test_man import MAN1, macro_args, plain, tagged
from tests.webhookd import WebhookReceiver

KEY = ("spdu-alpha", "hmac-sha256", "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3I=")


def documented() -> dict[str, set[str]]:
    """JSON OUTPUT's subsections (`.SS "probe"`...) -> the fields listed."""
    lines = MAN1.read_text().splitlines()
    start = lines.index(".SH JSON OUTPUT")
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith(".SH "))
    out, title, body = {}, None, []
    for line in [*lines[start + 1:end], ".SS end"]:
        if line.startswith(".SS "):
            if title is not None:
                out[title] = set(tagged(body))
            title, body = plain(" ".join(macro_args(line[4:]))), []
        elif title is not None:
            body.append(line)
    return out


def fields(obj: dict[str, Any], names: set[str], prefix: str = "") -> set[str]:
    """The field names of `obj` in the page's notation (see the docstring)."""
    out = set()
    for k, v in obj.items():
        name = prefix + k
        if f"{name}{{}}" in names:
            out.add(f"{name}{{}}")
            for value in (v or {}).values():
                if isinstance(value, dict):
                    out |= fields(value, names, f"{name}{{}}.")
            continue
        out.add(name)
        if isinstance(v, dict):
            out |= fields(v, names, f"{name}.")
        elif isinstance(v, list):
            for item in v:
                if isinstance(item, dict):
                    out |= fields(item, names, f"{name}[].")
    return out


@pytest.fixture
def site(tmp_path, monkeypatch):
    monkeypatch.delenv("SPDU_CONFIG", raising=False)
    knot = KnotServer(tmp_path / "knot", key=KEY, allow_unsigned=False)
    http = StatusServer("127.0.0.23")
    smtp = SmtpRelay(port=free_port())
    hook = WebhookReceiver()
    etc = tmp_path / "etc"
    etc.mkdir()
    conf = etc / "spdu.conf"
    conf.write_text(
        "domain=domain.tld\nmyTag=alpha\ntargets=beta\n"
        f"spoolDir={tmp_path / 'spool'}\n"
        f"nameServer=127.0.0.1\nnamePort={knot.port}\nnameTimeout=2\n"
        f"secondaryServers=127.0.0.1@{knot.port}\n"
        f"tsigKey={KEY[1]}:{KEY[0]}:{KEY[2]}\n"
        f"targetIP=127.0.0.23\nprobePort={http.port}\nprobeRise=1\n"
        f"mailTo=ops@domain.tld\nsmtpRelay=127.0.0.1\nsmtpPort={smtp.port}\n"
        "smtpSSL=no\nsmtpStartTLS=no\n"
        f"webhookURL=http://127.0.0.1:{hook.port}/hook\n")
    conf.chmod(0o600)
    yield conf
    knot.stop()
    http.stop()
    smtp.stop()
    hook.stop()


def run(conf, *args) -> tuple[int, list[dict]]:
    r = CliRunner().invoke(cli, ["--config", str(conf), *args], catch_exceptions=False)
    return r.exit_code, [json.loads(line) for line in r.stdout.splitlines() if line]


def test_every_commands_json_has_exactly_the_documented_fields(site, tmp_path):
    seen: dict[str, list[dict]] = defaultdict(list)

    def record(title, *args, status=0):
        code, objs = run(site, *args)
        assert code == status, (args, code, objs)
        assert objs, f"spdu {' '.join(args)} printed no JSON"
        for o in objs:
            seen[title(o) if callable(title) else title].append(o)

    record("config check", "config", "check", "--json")
    bad = tmp_path / "etc" / "bad.conf"
    bad.write_text("probeTimeout=fast\n")
    bad.chmod(0o600)
    code, objs = run(bad, "config", "check", "--json")
    assert code == 78 and objs[0]["valid"] is False and "probeTimeout" in objs[0]["error"]
    seen["config check"] += objs
    record("config show", "config", "show", "--json")
    record("probe", "probe", "--json")  # unknown -> up: a transition
    record("status", "status", "--dns", "--json")  # DNS would add beta's address
    record("status --peers", "status", "--peers", "--json")  # read now: no loop ran
    record("reconcile", "reconcile", "--dry-run", "--json")
    record("reconcile", "reconcile", "--json")
    record(lambda o: f"notify, {o['channel']}", "notify", "--json")
    record("maint", "maint", "beta", "--for", "1h", "--reason", "disk", "--json")
    record("status", "status", "--json")  # in maintenance
    record("maint", "maint", "beta", "--clear", "--json")
    record("history", "history", "beta", "--json")
    record("keygen", "keygen", "--server", "all", "--key-file",
           str(tmp_path / "keys" / "spdu.key"), "--json")
    record("cron", "cron", "--for", "1", "--json")

    docs = documented()
    # a flapping target held: tests/test_cli_notify.py checks its fields against the page
    del docs["notify, held"]
    # a certificate (this site's target is plain HTTP): tests/test_certs.py checks those
    del docs["notify, notice"]
    docs["status"] = {n for n in docs["status"] if not n.startswith("cert.")}
    assert set(docs) == set(seen), "JSON OUTPUT's subsections and the commands differ"
    for title, objs in seen.items():
        names = docs[title]
        got = set().union(*(fields(o, names) for o in objs))
        assert got == names, (
            f"spdu(1), JSON OUTPUT, {title}: undocumented {sorted(got - names)}, "
            f"documented but never seen {sorted(names - got)}")


def test_one_vocabulary_the_same_field_names_mean_the_same(site):
    """probe's and status's `reason` agree; every `tsig` is {name, algorithm, source}."""
    _, [probed] = run(site, "probe", "--json")
    _, [status] = run(site, "status", "--json")
    assert probed["reason"] == status["reason"] == "HTTP 200"
    _, [shown] = run(site, "config", "show", "--json")
    _, [plan] = run(site, "reconcile", "--dry-run", "--json")
    assert shown["tsig"] == plan["tsig"] == {
        "name": "spdu-alpha", "algorithm": "hmac-sha256", "source": f"{site}:9"}  # tsigKey's line
    assert plan["signed_with"] and shown["tsig_key"]  # the old names, for one release
    assert probed["error"] is None


def test_the_page_uses_one_notation():
    for title, names in documented().items():
        for name in names:
            assert re.fullmatch(r"[a-z_]+(?:(?:\[\]|\{\})?\.[A-Za-z_]+)*(?:\{\})?", name), (
                title, name)
