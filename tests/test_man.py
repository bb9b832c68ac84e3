"""The man pages: they render without warnings, they are installed, and they
cannot fall behind the code (every command, option, key, default, exit status
and spool field registered in spdu_cli must be documented, and nothing else).

groff and man are required: a machine without them fails here, it does not
skip (.ci/setup installs groff-base and man-db).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from spdu_cli import config, health, reconcile, render, shellconf, spool, tsig
from spdu_cli import entry as spool_entry
from spdu_cli.cli import cli
from spdu_cli.errors import ExitStatus
from spdu_cli.plan import Change, Decision, Plan, PoolKey
from spdu_cli.probe.spec import ProbeResult
from spdu_cli.probe.step import TargetReport

ROOT = Path(__file__).resolve().parent.parent
MAN1 = ROOT / "man" / "spdu.1"
MAN5 = ROOT / "man" / "spdu.conf.5"
PAGES = [MAN1, MAN5]


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, (
        f"{name} is not installed; the man page tests need it (apt-get install groff-base man-db)"
    )
    return path


# -- rendering ---------------------------------------------------------------------


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
@pytest.mark.parametrize("device", [["-z"], ["-Tutf8"], ["-Tascii"]], ids=" ".join)
def test_groff_renders_without_warnings(page, device):
    r = subprocess.run(
        [tool("groff"), "-man", "-ww", *device, str(page)],
        capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert r.stderr == "", f"groff warns about {page.name}:\n{r.stderr}"
    if device != ["-z"]:
        shown = re.sub(".\x08", "", r.stdout)  # drop grotty's overstriking (bold, underline)
        assert "NAME" in shown and "SEE ALSO" in shown


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_man_renders_it(page):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAN", "PAGER", "LESS"))}
    env.update(MANWIDTH="80", PAGER="cat", MANPAGER="cat", LC_ALL="C.UTF-8")
    r = subprocess.run(
        [tool("man"), "-l", "-P", "cat", str(page)],
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert r.stderr == "", f"man -l {page.name} warns:\n{r.stderr}"
    title, section = page.name.rsplit(".", 1)
    assert r.stdout.startswith(f"{title.upper()}({section})")
    assert max(len(line) for line in r.stdout.splitlines()) <= 90  # no runaway lines


# -- reading the roff source -------------------------------------------------------------

_ESCAPES = {
    r"\-": "-", r"\(aq": "'", r"\(dq": '"', r"\(ga": "`", r"\(lq": '"', r"\(rq": '"',
    r"\(bu": "*", r"\(em": "--", r"\e": "\\", r"\&": "", r"\~": " ", r"\ ": " ",
    r"\fB": "", r"\fI": "", r"\fR": "", r"\fP": "",
}
_ESCAPE = re.compile("|".join(re.escape(e) for e in sorted(_ESCAPES, key=len, reverse=True)))


def plain(text: str) -> str:
    return _ESCAPE.sub(lambda m: _ESCAPES[m.group()], text)


def macro_args(rest: str) -> list[str]:
    """roff's argument splitting: blanks separate, "..." groups, "" is a quote."""
    args, i = [], 0
    while i < len(rest):
        if rest[i] == " ":
            i += 1
        elif rest[i] == '"':
            j, arg = i + 1, ""
            while j < len(rest):
                if rest[j] == '"':
                    if rest[j + 1 : j + 2] == '"':
                        arg, j = arg + '"', j + 2
                        continue
                    break
                arg, j = arg + rest[j], j + 1
            args.append(arg)
            i = j + 1
        else:
            j = rest.find(" ", i)
            j = len(rest) if j < 0 else j
            args.append(rest[i:j])
            i = j
    return args


def text_of(lines: list[str]) -> str:
    """The words of some roff lines, fonts dropped, on one line."""
    out = []
    for line in lines:
        if line.startswith(('.\\"', "'")):
            continue
        if line.startswith("."):
            name, _, rest = line[1:].partition(" ")
            if name in ("B", "I", "SH", "SS"):
                out.append(plain(" ".join(macro_args(rest))))
            elif name in ("BR", "RB", "BI", "IB", "IR", "RI"):
                out.append(plain("".join(macro_args(rest))))
            continue
        out.append(plain(line))
    return " ".join(out)


def sections(page: Path, macro: str = "SH") -> dict[str, list[str]]:
    """Title -> the source lines under it, up to the next heading of that level
    (or a higher one)."""
    stops = (".SH",) if macro == "SH" else (".SH", ".SS")
    out: dict[str, list[str]] = {}
    current = None
    for line in page.read_text().splitlines():
        if line.startswith(stops):
            current = None
        if line.startswith(f".{macro} ") or line == f".{macro}":
            current = plain(" ".join(macro_args(line[4:])))
            out[current] = []
        elif current is not None:
            out[current].append(line)
    return out


def tagged(lines: list[str]) -> dict[str, list[str]]:
    """The `.TP` paragraphs whose tag is `.B word`: word -> its body lines."""
    out: dict[str, list[str]] = {}
    current = None
    for prev, line in zip([""] + lines, lines):
        if line.startswith((".TP", ".SS", ".SH", ".PP", ".RE")):
            current = None
        elif prev.startswith(".TP") and line.startswith(".B "):
            current = plain(" ".join(macro_args(line[3:])))
            out[current] = []
        elif current is not None:
            out[current].append(line)
    return out


def mentions(text: str, word: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text) is not None


# -- spdu.1 follows the CLI ------------------------------------------------------------------


def registered(group: click.Group = cli, path: tuple[str, ...] = ()):
    for name, cmd in group.commands.items():
        if cmd.hidden:
            continue
        yield path + (name,), cmd
        if isinstance(cmd, click.Group):
            yield from registered(cmd, path + (name,))


def documented_commands() -> dict[tuple[str, ...], str]:
    """`.SS "spdu config show [--json]..."` in COMMANDS -> ("config", "show"): its text."""
    out = {}
    for title, lines in sections(MAN1, "SS").items():
        words = title.split()
        if words[:1] != ["spdu"]:
            continue
        path = tuple(w for w in words[1:] if re.fullmatch(r"[a-z][a-z0-9-]*", w))
        out[path] = text_of([f'.SS "{title}"'] + lines)
    return out


def option_names(cmd: click.Command) -> list[str]:
    return [o for p in cmd.params if isinstance(p, click.Option) and not p.hidden
            for o in p.opts + p.secondary_opts]


@pytest.mark.parametrize("path", [p for p, _ in registered()], ids=" ".join)
def test_every_command_has_a_section_in_spdu_1(path):
    documented = documented_commands()
    ok = any(d[: len(path)] == path for d in documented)
    assert ok, (
        f"`spdu {' '.join(path)}` is registered in spdu_cli/cli.py but man/spdu.1 has no "
        f'section for it: add `.SS "spdu {" ".join(path)} [OPTIONS]..."` under COMMANDS '
        "(where the NOTIFY comment marks the place), with every option, and its exit "
        "statuses under EXIT STATUS"
    )


def test_spdu_1_documents_no_command_that_does_not_exist():
    known = {p for p, _ in registered()}
    ghosts = [" ".join(p) for p in documented_commands() if p not in known]
    assert not ghosts, f"man/spdu.1 documents commands that spdu_cli.cli lacks: {ghosts}"


@pytest.mark.parametrize(
    "path", [p for p, c in registered() if not isinstance(c, click.Group)], ids=" ".join
)
def test_every_option_and_argument_is_in_its_section(path):
    cmd = cli
    for name in path:
        cmd = cmd.commands[name]
    text = documented_commands().get(path, "")
    words = option_names(cmd) + [
        (p.metavar or p.name.upper()).strip("[].") for p in cmd.params
        if isinstance(p, click.Argument)
    ]
    missing = [w for w in words if not mentions(text, w)]
    assert not missing, f"man/spdu.1, section `spdu {' '.join(path)}`, does not mention {missing}"


def test_global_options_are_in_options():
    text = text_of(sections(MAN1)["OPTIONS"])
    names = option_names(cli) + cli.context_settings["help_option_names"]
    missing = [o for o in names if not mentions(text, o)]
    assert not missing, f"man/spdu.1, OPTIONS, does not mention {missing}"
    synopsis = text_of(sections(MAN1)["SYNOPSIS"])
    assert all(mentions(synopsis, o) for o in ("-c", "--debug", "-v", "-q", "-V", "-h"))


def test_exit_statuses_are_listed():
    listed = set(tagged(sections(MAN1)["EXIT STATUS"]))
    wanted = {str(int(s)) for s in ExitStatus}
    assert wanted <= listed, f"EXIT STATUS lacks {sorted(wanted - listed, key=int)}"
    assert listed <= wanted, f"EXIT STATUS lists {sorted(listed - wanted)}, not in errors.py"


def test_environment_and_files():
    env = text_of(sections(MAN1)["ENVIRONMENT"])
    assert mentions(env, config.ENV_VAR) and config.DEFAULT_PATH in env
    files = text_of(sections(MAN1)["FILES"])
    spool_dir = config.KEYS["spoolDir"].default
    for word in (
        config.DEFAULT_PATH, f"{spool_dir}/", f"{spool_dir}/TARGET.json",
        f"{spool_dir}/{spool.LOCK_NAME}", f"{spool.DIR_MODE:04o}", f"{spool.FILE_MODE:04o}",
        f"last {spool_entry.MAX_RESULTS} probes", f"At most {spool_entry.MAX_JOURNAL} transitions",
        f"beyond {spool_entry.MAX_PENDING}", f"version, {spool_entry.VERSION}", "fsync", "unknown",
    ):
        assert word in files, f"man/spdu.1, FILES, does not mention {word!r}"


def _spool_sample(tmp_path) -> dict:
    """A real spool file: a probe's transition, then a change reconcile recorded."""
    store = spool.Spool(str(tmp_path / "spool"))
    with store.locked():
        entry = store.read("beta")
        entry.record(spool_entry.ResultRecord(1.0, True, "192.0.2.1", 200, 3.2, None))
        entry.add_transition(health.Transition(health.State.UNKNOWN, health.State.UP, 1.0, "ok"))
        store.write(entry)
    key = PoolKey("api.pool.domain.tld", "pool.domain.tld", "127.0.0.1", 53)
    change = Change("add", "192.0.2.1", 5, "beta")
    plan = Plan(key, None, {}, Decision((change,), (), None))
    with store.locked():
        reconcile.record(store, plan, 2.0)
    return json.loads((tmp_path / "spool" / "beta.json").read_text())


def test_the_spool_format_names_every_field(tmp_path):
    data = _spool_sample(tmp_path)
    lines = sections(MAN1, "SS")["The spool format"]
    text = text_of(lines)
    top = set(tagged(lines))
    assert set(data) <= top, f"The spool format lacks top-level fields {set(data) - top}"
    nested = {
        "results[]": data["results"][0],
        "journal[]": data["journal"][0],
        "journal[].dns[]": data["journal"][0]["dns"][0],
    }
    for where, obj in nested.items():
        missing = [k for k in obj if not mentions(text, k)]
        assert not missing, f"The spool format does not name the {where} fields {missing}"


def test_json_outputs_are_described(tmp_path):
    """The fields of `--json` in each command's section, from the objects the code makes."""
    result = ProbeResult("beta", 1.0, True, ("192.0.2.1",), 200, 3.2, None, "192.0.2.1")
    report = TargetReport(result, health.Health(), None)
    key = PoolKey("api.pool.domain.tld", "pool.domain.tld", "127.0.0.1", 53)
    plan = Plan(key, None, {}, Decision(
        (Change("add", "192.0.2.1", 5, "beta"),), (), None))
    (tmp_path / "spdu.conf").write_text('domain=domain.tld\nmyTag=alpha\ntargets=beta\n')
    cfg = config.load(str(tmp_path / "spdu.conf")).target("beta")
    docs = {title: text_of(lines) for title, lines in sections(MAN1, "SS").items()}
    for path, fields in [
        (("probe",), report.to_json()),
        (("reconcile",), {**plan.to_json(), **plan.to_json()["changes"][0]}),
        (("config", "show"), render.config_json(cfg)),
        (("config", "show"), render.config_json(cfg)["settings"]["domain"]),
    ]:
        text = docs[" ".join(path)]  # JSON OUTPUT's subsection (tests/test_json.py: exactly)
        missing = [k for k in fields if not mentions(text, k)]
        assert not missing, f"spdu {' '.join(path)} --json: man/spdu.1 does not name {missing}"


# -- spdu.conf.5 follows KEYS ----------------------------------------------------------------


def documented_keys() -> dict[str, str]:
    return {k: text_of(body) for k, body in tagged(sections(MAN5)["KEYS"]).items()}


def test_every_key_is_documented_and_nothing_else():
    documented = set(documented_keys())
    missing = [k for k in config.KEYS if k not in documented]
    assert not missing, (
        f"keys of spdu_cli.config.KEYS missing from man/spdu.conf.5, KEYS: {missing} "
        "(add `.TP` / `.B KEY` with what it does, `Default:` and `Example:`)"
    )
    ghosts = sorted(documented - set(config.KEYS))
    assert not ghosts, f"man/spdu.conf.5 documents keys that do not exist: {ghosts}"


@pytest.mark.parametrize("key", list(config.KEYS))
def test_each_key_gives_its_default_and_a_valid_example(key):
    text = documented_keys().get(key)
    assert text is not None, f"{key} is not documented in man/spdu.conf.5"
    m = re.search(r"Default: (\S+)", text)
    assert m, f"{key}: no 'Default:' in man/spdu.conf.5"
    default = config.KEYS[key].default
    shown = m.group(1).rstrip(".,;")
    if isinstance(default, str):
        wanted = default or "empty"
        assert shown == wanted, f"{key}: the page says {shown!r}, the code {default!r}"
    m = re.search(r"Example: (.*)$", text)
    assert m, f"{key}: no 'Example:' in man/spdu.conf.5"
    example = m.group(1).removesuffix(".")

    def no_reference(name, line, seen):
        raise AssertionError(f"{key}: the example refers to ${name}; write a literal value")

    [a] = shellconf.parse(example, no_reference)
    assert a.key == key, f"the example of {key} sets {a.key}"
    config.KEYS[key].check(a.value)  # raises ValueError when the example is invalid


def test_site_wide_and_secret_keys_are_marked():
    docs = documented_keys()
    for key, spec in config.KEYS.items():
        if key not in docs:
            continue  # test_every_key_is_documented_and_nothing_else says so
        if spec.site_only:
            assert "Site-wide" in docs[key], f"{key} applies to the whole site: say 'Site-wide.'"
        if spec.secret:
            assert "A secret" in docs[key], f"{key} is a secret: say 'A secret: ...'"


def test_the_tsig_key_file_examples_parse():
    blocks = examples(sections(MAN5)["TSIG KEY FILES"])
    assert len(blocks) == 3
    for block in blocks:
        key = tsig.parse_file(block)
        assert (key.name, key.algorithm) == ("spdu-alpha", "hmac-sha256")


def examples(lines: list[str]) -> list[str]:
    """The text of each .EX/.EE block, unescaped."""
    out, current = [], None
    for line in lines:
        if line == ".EX":
            current = []
        elif line == ".EE":
            out.append("\n".join(current) + "\n")
            current = None
        elif current is not None:
            current.append(plain(line))
    return out


def test_the_full_example_passes_config_check(tmp_path):
    """The files under EXAMPLE, written out as the page says, are valid and mean
    what the page's comments say."""
    lines = sections(MAN5)["EXAMPLE"]
    etc = tmp_path / "etc"
    written = []
    for i, line in enumerate(lines):
        m = re.fullmatch(r'\.\\" test: file (\S+)', line)
        if m:
            [text] = examples(lines[i + 1 :])[:1]
            path = etc / m.group(1)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text.replace("/usr/local/etc", str(etc)))
            path.chmod(0o640)
            written.append(m.group(1))
    assert written == ["spdu.conf", "spdu/beta", "spdu/gamma", "spdu.tsig.key"]
    runner = CliRunner()
    r = runner.invoke(cli, ["--config", str(etc / "spdu.conf"), "config", "check"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, ["--config", str(etc / "spdu.conf"), "config", "show", "--json"])
    assert r.exit_code == 0, r.output
    beta, gamma, own = [json.loads(line) for line in r.stdout.splitlines()]
    assert own["target"] == "self"  # selfCheck=yes: alpha's own service, at selfIP
    assert own["connect_to"] == ["1.2.3.4", "2001:db8::4"]
    assert own["probe_url"] == "https://api.domain.tld:443/status?from=alpha"
    assert beta["probe_url"] == "https://api.domain.tld:443/status?from=alpha"
    assert beta["connect_to"] == ["5.6.7.8"]
    assert gamma["connect_to"] == ["9.10.11.12", "2001:db8::12"]
    assert gamma["settings"]["probeTimeout"]["value"] == "3.0"
    assert (gamma["pool_name"], gamma["pool_zone"]) == ("api.pool.domain.tld", "pool.domain.tld")
    assert gamma["tsig_key"].startswith("spdu-alpha (hmac-sha256)")
    assert gamma["self_ip"] == ["1.2.3.4", "2001:db8::4"]
    assert gamma["mail_to"] == ["ops@domain.tld", "noc@domain.tld"]


def test_the_required_sections_are_there():
    conf = sections(MAN5)
    for title in ("SYNTAX", "SAFETY", "KEYS", "COMPLETION OF NAMES", "TSIG KEY FILES",
                  "DEFAULTS THAT DIFFER FROM THE ORIGINAL", "MIGRATION FROM THE ORIGINAL",
                  "EXAMPLE"):
        assert title in conf, f"man/spdu.conf.5 has no {title} section"
    differ = text_of(conf["DEFAULTS THAT DIFFER FROM THE ORIGINAL"])
    for key in ("probeTimeout", "probeRetries", "mailFrom"):
        default = config.KEYS[key].default
        assert mentions(differ, key)
        if isinstance(default, str):
            assert f"{key} {default}" in differ
    assert "robot@${domain}" in differ


# -- the pages are installed -------------------------------------------------------------


def test_a_wheel_installs_the_pages_under_share_man(tmp_path):
    """What `pip install .` installs: the wheel's data files (built from a copy,
    so the checkout gets no build/ directory)."""
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".hypothesis", ".pytest_cache", ".ruff_cache", "__pycache__",
        "*.egg-info", "build", "dist", "tests", "benchmarks", ".ci", "cron"))
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "dist"),
         str(src)],
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, f"pip wheel failed (needs setuptools>=77 from the index):\n{r.stderr}"
    [wheel] = (tmp_path / "dist").glob("spdu-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    data = sorted(n.split(".data/data/", 1)[1] for n in names if ".data/data/" in n)
    assert {"share/man/man1/spdu.1", "share/man/man5/spdu.conf.5"} <= set(data), data
    with zipfile.ZipFile(wheel) as z:
        for page in PAGES:
            [name] = [n for n in names if n.endswith("/" + page.name)]
            assert z.read(name) == page.read_bytes()
