"""How spdu meets the shell that runs it: spdu's own options written after the
command (said back in the right order), a standard output whose reader went
away (ended quietly, as grep does), and spdu-cron's arguments as spdu's.
Pure: no click.
"""

from __future__ import annotations

import os
import shlex
import sys

CLOSED_PIPE = 141  # 128 + SIGPIPE: what a shell shows for grep whose reader went away

GLOBAL_FLAGS = ("-v", "-vv", "-vvv", "--verbose", "-q", "--quiet", "--debug", "--syslog")
GLOBAL_VALUED = ("-c", "--config")


def closed_pipe() -> None:
    """Standard output's reader went away (`spdu history beta | head -1`): end
    quietly, with no message and no traceback; what is still buffered goes
    nowhere (not into a failing flush at exit)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # not a real file (a test's buffer)
        pass
    sys.exit(CLOSED_PIPE)


def global_first(option: str | None, prog: str, args: list[str]) -> str | None:
    """For `spdu probe -c F beta` (`option`, one of spdu's own, unknown to the
    command it follows): the end of the error, with the same arguments, spdu's
    options moved first; None for any other option."""
    if option not in GLOBAL_FLAGS + GLOBAL_VALUED:
        return None
    moved, rest, i = [], [], 0
    while i < len(args):
        a = args[i]
        if a == "--":
            rest += args[i:]
            break
        if a in GLOBAL_FLAGS or a.startswith("--config="):
            moved.append(a)
        elif a in GLOBAL_VALUED and i + 1 < len(args):
            moved += args[i:i + 2]
            i += 1
        else:
            rest.append(a)
        i += 1
    return (f"; {option} is one of spdu's own options: they go before the command,"
            f" as in: {shlex.join([prog, *moved, *rest])}")


def cron_args(args: list[str], params: list) -> list[str]:
    """spdu-cron's arguments as spdu's: `--syslog [GLOBAL OPTIONS] cron --follow
    [CRON OPTIONS]`. The cron options (--for, --lock-timeout, --no-follow) may
    come anywhere, after `--` or not, and a `cron` word is allowed, as its help
    shows it. `params`: the cron command's options (click's Option objects)."""
    own, extra = (args[: args.index("--")], args[args.index("--") + 1 :]) if "--" in args else (
        list(args), [])
    if own[:1] == ["cron"]:
        own = own[1:]
    takes_value = {o for p in params for o in p.opts if not p.is_flag}
    flags = {o for p in params if p.is_flag for o in [*p.opts, *p.secondary_opts]}
    glob, i = [], 0
    while i < len(own):
        a = own[i]
        name = a.split("=", 1)[0]
        if name in takes_value:
            n = 1 if "=" in a else 2
            extra, i = [*own[i:i + n], *extra], i + n
            continue
        if name in ("-c", "--config") and "=" not in a:  # its value is no option
            glob, i = [*glob, *own[i:i + 2]], i + 2
            continue
        if a in ("-h", "--help"):  # the help of what spdu-cron runs, not of the group
            extra = [*extra, "--help"]
        elif a in flags:
            extra = [a, *extra]
        elif a == "cron":
            pass
        else:
            glob.append(a)
        i += 1
    return ["--syslog", *glob, "cron", "--follow", *extra]
