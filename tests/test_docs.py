"""The prose docs (README.md, cron/README.md, spdu(1), spdu.conf(5)) cannot
drift from the code: every default they show is the key table's
(spdu_cli.settings.KEYS), every crontab line is cron/crontab.example's, and
the commands that touch the spool are shown as the spool's owner.

A default is "shown" where a key is followed by a value that is no
assignment (`probeTimeout` 1.5, `fastInterval` (0.25 s), `interval`
seconds (default 2), "Default: 0.25" in spdu.conf(5)); `KEY=VALUE` is an
example setting and is not checked here (test_man checks those parse). A
phrase that shows a key with another value on purpose is listed in
NOT_DEFAULTS, and must still be there.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest

from spdu_cli.settings import KEYS, Setting, System, Values
from tests.test_man import MAN1, MAN5, sections, tagged, text_of

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
CRON_README = ROOT / "cron" / "README.md"
MARKDOWN = [README, CRON_README]
DOCS = [*MARKDOWN, MAN1, MAN5]


def doc_id(path: Path) -> str:
    return str(path.relative_to(ROOT))

#: Phrases that show a key with a value that is not its default, on purpose.
NOT_DEFAULTS = {
    README: ["spdu fast (interval 1, probeTimeout 1)",  # the Figures' tuned profile
             "probeTimeout 2 s (benchmarks/probe_scaling.py"],  # a benchmark's setting
}

_VALUE = r"(\d+(?:\.\d+)?(?:-\d+)?)(?![\w.])"
_KEY = "|".join(sorted(KEYS, key=len, reverse=True))
#: `KEY VALUE`, `KEY (VALUE s)`, `KEY ... (default VALUE)` within a few words.
CLAIMS = [
    re.compile(rf"(?<![\w$-])({_KEY}) \(?{_VALUE}"),
    re.compile(rf"(?<![\w$-])({_KEY})(?: [a-z]+){{0,5}} \(default {_VALUE}\)"),
]


def default_of(key: str) -> str:
    """A key's default as a site with no settings has it (interval 2...)."""
    return Values({}, "beta", System("alpha.domain.tld")).get(key)


def symbolic_default(key: str) -> str:
    """The default as spdu.conf(5) writes it: `${loopWait}`, `robot@${domain}`;
    a computed one (fastInterval: the lesser of interval and 0.25) by value."""
    default = KEYS[key].default
    if isinstance(default, str):
        return default
    try:
        return default(lambda k: f"${{{k}}}")
    except ValueError:
        return default_of(key)


def same(shown: str, wanted: str) -> bool:
    try:
        return float(shown) == float(wanted)
    except ValueError:
        return shown == wanted


def prose(path: Path) -> str:
    """The words of a page, markup dropped, one line (a claim may wrap)."""
    if path.suffix == ".md":
        text = path.read_text().replace("`", "").replace("**", "")
    else:
        text = text_of(path.read_text().splitlines())
    return re.sub(r"\s+", " ", text)


def claims(path: Path) -> list[tuple[str, str, str]]:
    """(key, value shown, the phrase) for every default the page shows."""
    text = prose(path)
    for phrase in NOT_DEFAULTS.get(path, []):
        assert phrase in text, f"{path.name}: NOT_DEFAULTS lists {phrase!r}, no longer there"
        text = text.replace(phrase, "")
    found = []
    for pattern in CLAIMS:
        for m in pattern.finditer(text):
            found.append((m.group(1), m.group(2), text[max(0, m.start() - 30):m.end() + 10]))
    return found


@pytest.mark.parametrize("path", DOCS, ids=doc_id)
def test_every_default_shown_is_the_key_tables(path):
    wrong = [f"{key} {shown} (the code: {default_of(key)}) in ...{where}..."
             for key, shown, where in claims(path) if not same(shown, default_of(key))]
    assert not wrong, f"{path.relative_to(ROOT)} shows defaults the code does not have:\n" + (
        "\n".join(wrong))


def test_the_claims_are_found():
    """The scanner sees the sentences that drifted once (issue 24)."""
    found = {(p.name, k) for p in DOCS for k, _, _ in claims(p)}
    for wanted in [("README.md", "probeTimeout"), ("README.md", "interval"),
                   ("README.md", "fastInterval"), ("README.md", "downInterval"),
                   ("README.md", "fastInterval"), ("README.md", "interval"),
                   ("spdu.conf.5", "probeTimeout"), ("spdu.conf.5", "probeFall")]:
        assert wanted in found, f"no default of {wanted[1]} found in {wanted[0]}"
    drifted = "... `fastInterval` (0.5 s), so ..."
    assert [(k, v) for k, v, _ in claims_in(drifted)] == [("fastInterval", "0.5")]
    assert [(k, v) for k, v, _ in claims_in("every `interval` seconds (default 3)")] == [
        ("interval", "3")]
    assert claims_in("set probeTimeout=3 or fastInterval=1") == []


def claims_in(text: str) -> list[tuple[str, str, str]]:
    out = []
    text = text.replace("`", "")
    for pattern in CLAIMS:
        out += [(m.group(1), m.group(2), m.group(0)) for m in pattern.finditer(text)]
    return out


@pytest.mark.parametrize("key", list(KEYS))
def test_spdu_conf_5_default_line(key):
    """Each key's `Default:` in spdu.conf(5), KEYS, computed defaults included."""
    body = tagged(sections(MAN5)["KEYS"])[key]
    text = text_of(body)
    m = re.search(r"Default: (.*?)(?: Example:|$)", text)
    assert m, f"{key}: no Default: in spdu.conf(5)"
    shown = m.group(1)
    wanted = symbolic_default(key)
    first = shown.split()[0].rstrip(".,;") if shown.split() else ""
    if "${@" in wanted:  # the host's names and the target's: said in words
        return
    ssl = {"probePort": "probeSSL", "smtpPort": "smtpSSL"}.get(key)
    if ssl:  # "443 when probeSSL is yes, else 80"
        on, off = (Values({ssl: Setting(v)}, "beta", System("a.b.c")).get(key)
                   for v in ("yes", "no"))
        assert shown.startswith(f"{on} when {ssl} is yes, else {off}"), (key, shown)
        return
    if wanted == "":
        assert first == "empty", f"{key}: the page says {shown!r}, the code: empty"
    elif key == "staleAfter":  # five times interval, at least 1 (10 with the default interval)
        assert f"({default_of(key)} with the default interval)" in shown, shown
    else:
        assert same(first, wanted), f"{key}: the page says {shown!r}, the code {wanted!r}"


def test_the_defaults_that_differ_section():
    lines = sections(MAN5)["DEFAULTS THAT DIFFER FROM THE ORIGINAL"]
    tags = [text_of([line]) for prev, line in itertools.pairwise(lines) if prev == ".TP"]
    assert len(tags) >= 4, tags
    for tag in tags:
        key, shown = tag.split()[:2]
        assert same(shown, symbolic_default(key)), (
            f"spdu.conf(5), DEFAULTS THAT DIFFER: {key} {shown}, the code "
            f"{symbolic_default(key)}")


def crontab_lines(path: Path) -> list[str]:
    pattern = re.compile(r"^(?:echo ')?(\* \* \* \* \* \S+ .*?)'?(?: >>.*)?$")
    text = path.read_text()
    if path.suffix not in (".md", ""):
        text = "\n".join(re.sub(r"\\-", "-", line) for line in text.splitlines())
    text = re.sub(r"`([^`\n]*)`", r"\n\1\n", text)  # inline code on its own line
    return [m.group(1).strip() for line in text.splitlines()
            if (m := pattern.match(line.strip()))]


@pytest.mark.parametrize("path", DOCS, ids=doc_id)
def test_every_crontab_line_is_the_example(path):
    [example] = crontab_lines(ROOT / "cron" / "crontab.example")
    assert example == "* * * * * knot /usr/local/bin/spdu-cron"
    for line in crontab_lines(path):
        assert line == example, f"{path.name} shows the crontab line {line!r}, not {example!r}"


def test_spdu_1_shows_the_crontab_line():
    assert crontab_lines(MAN1) == ["* * * * * knot /usr/local/bin/spdu-cron"]


SPOOL_COMMANDS = re.compile(r"(?<![\w/-])(?:(sudo -u knot|runuser -u knot --) )?"
                            r"spdu (probe|reconcile|notify|maint|status|history)\b")


@pytest.mark.parametrize("path", MARKDOWN, ids=doc_id)
def test_spool_commands_are_shown_as_the_spools_owner(path):
    """cron/README.md gives the spool to knot; a command run as root there is
    refused (78), so the install steps and the quick start show `sudo -u knot`."""
    text = path.read_text()
    if path == README:  # the steps of the quick start
        text = text[text.index("## Quick start"):text.index("## Exit codes")]
    else:  # the install steps, as shell
        text = "\n".join(re.findall(r"```sh\n(.*?)```", text, re.DOTALL))
    shown = list(SPOOL_COMMANDS.finditer(text))
    assert shown, f"{path.name}: no spdu command found to check"
    bare = [m.group(0) for m in shown if not m.group(1)]
    assert not bare, f"{path.name} shows {bare} without sudo -u knot"


def test_the_client_side_figures_agree():
    """README's "What clients see" table, spdu.conf(5) (nameTTL) and `spdu config
    show` (health.CLIENTS_LINK_P95) give the same measured p95s of a link down:
    the slowest resolver's, spdu's column."""
    from spdu_cli.health import CLIENTS_LINK_P95

    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in README.read_text().splitlines()
            if line.startswith("| link down |")]
    rows = [r for r in rows if r[1] in ("Unbound", "BIND", "PowerDNS Recursor")]
    assert len(rows) == 3, rows

    def p95(cell: str) -> float:
        return float(re.search(r"\*\*([\d.]+)\*\*", cell).group(1))

    out, back = max(p95(r[2]) for r in rows), max(p95(r[4]) for r in rows)
    assert {"out": out, "back": back} == CLIENTS_LINK_P95
    man = prose(MAN5)
    assert f"got its address {out:g} s after (p95, the slowest resolver" in man
    assert f"got it again {back:g} s after its repair" in man
