"""spdu-cron's first step: leave the minute to the loop that is already running.
(The lock and the note it uses: spdu_cli.handover; what it trusts: spdu_cli.paths.)

cron starts spdu-cron every minute. A loop started that way goes on from
minute to minute for as long as cron keeps starting copies (up to an hour):
each copy finds the loop's lock held, leaves a note that the running loop
takes as "cover the next minute too", and exits 75. That copy is what most
minutes cost, so this module does it before anything heavy is imported:
Python's own start-up, the main configuration file read with `shellconf`
alone, one lock tried. On any doubt (an argument other than -c/--config, a
file it cannot read or does not trust, a `$reference` in spoolDir, no loop
running) it does nothing and spdu-cron starts in full (`spdu --syslog cron
--follow`), which checks everything and says what is wrong.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

from spdu_cli.handover import loop_running, status, tell
from spdu_cli.paths import (
    CONFIG_ENV,
    DEFAULT_CONFIG,
    DEFAULT_SPOOL_DIR,
    MAX_CONFIG,
    absolute_path,
    trusted_file,
)

TEMPFAIL = 75  # ExitStatus.TEMPFAIL (errors.py imports enum: not here)


def config_path(argv: list[str], environ: Mapping[str, str]) -> str | None:
    """The configuration file that spdu-cron's arguments select; None when
    they hold anything else (the full start deals with it)."""
    path = None
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("-c", "--config") and i + 1 < len(argv) and path is None:
            path, i = argv[i + 1], i + 2
        elif a.startswith("--config=") and path is None:
            path, i = a[len("--config="):], i + 1
        else:
            return None
    return path or environ.get(CONFIG_ENV) or DEFAULT_CONFIG


def spool_dir(path: str, lenient: bool = False) -> str | None:
    """spoolDir as the main configuration file sets it (else its default),
    read as config.load reads it; None when that is not certain here.
    `lenient`: also from a file spdu refuses (not trusted, a syntax error
    elsewhere in it), line by line: only a guess, for finding a loop that
    runs on this file's last good version (main checks it)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if (not lenient and not trusted_file(st, os.geteuid())) or st.st_size > MAX_CONFIG:
            return None
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(MAX_CONFIG + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    from spdu_cli import shellconf

    def lookup(name, line, seen):  # a default's value: not known here
        return "\0"  # refused below if spoolDir holds it; any other key's value is not used

    try:
        text = data.decode("utf-8", "replace" if lenient else "strict")
        if lenient:
            assignments = []
            for line in text.splitlines():
                try:
                    assignments += shellconf.parse(line, lookup)
                except (ValueError, RecursionError):
                    continue
        else:
            assignments = shellconf.parse(text, lookup)
    except (ValueError, RecursionError):  # ShellSyntaxError, UnicodeDecodeError
        return None
    value = DEFAULT_SPOOL_DIR
    for a in assignments:
        if a.key == "spoolDir":
            value = a.value
    try:
        return absolute_path(value)
    except ValueError:
        return None  # the full start says why


def main() -> None:
    """The `spdu-cron` command."""
    path = config_path(sys.argv[1:], os.environ)
    directory = spool_dir(path) if path else None
    if path and directory is None:
        # A file spdu refuses now (an edit gone wrong): the loop that runs on its
        # last good version says so in its status file, which names this file.
        guess = spool_dir(path, lenient=True)
        if guess and status(guess)[0] == os.path.abspath(path):
            directory = guess
    if directory and loop_running(directory):
        tell(directory)
        sys.exit(TEMPFAIL)
    from spdu_cli.cli import cron_main

    cron_main()
