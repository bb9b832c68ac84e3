"""spdu-cron's first step: leave the minute to the loop that is already running.

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

import fcntl
import os
import stat
import sys
import time
from collections.abc import Mapping

CONFIG_ENV = "SPDU_CONFIG"
DEFAULT_CONFIG = "/usr/local/etc/spdu.conf"
DEFAULT_SPOOL_DIR = "/var/spool/spdu"
MAX_CONFIG = 1 << 20  # bytes: a larger configuration file is refused

# In spoolDir: the lock, held by the running loop for its whole run (it holds the
# loop's pid, and its mtime is when the loop's current minute ends, wall clock).
LOOP_LOCK = ".cron.lock"
NOTE = ".cron.handover"  # in spoolDir: touched by a copy that found the loop running
MARGIN = 0.5  # the loop looks for a note from this long before the end of its minute
GRACE = 5.0  # a --follow loop waits this long past the end of its minute for the note
POLL = 0.25  # how often the loop looks for the note meanwhile
TAKEOVER = GRACE + 1.0  # how long a copy waits for the loop to take its note or end
STUCK = 120.0  # a loop whose minute ended this long ago and still holds the lock is stuck
TEMPFAIL = 75  # ExitStatus.TEMPFAIL (errors.py imports enum: not here)


def trusted_file(st: os.stat_result, euid: int) -> bool:
    """A file spdu trusts: regular, owned by root or whoever runs spdu, and
    writable by no one else (config.read_safe_file says why one is not)."""
    return (stat.S_ISREG(st.st_mode) and st.st_uid in (0, euid)
            and not st.st_mode & 0o022)


def absolute_path(value: str) -> str:
    """The check of spoolDir and the other paths (validate, config.KEYS)."""
    if not value.startswith("/"):
        raise ValueError("not an absolute path")
    if any(ord(c) < 32 or c == "\x7f" for c in value):
        raise ValueError("control character in path")
    return value


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


def spool_dir(path: str) -> str | None:
    """spoolDir as the main configuration file sets it (else its default),
    read as config.load reads it; None when that is not certain here."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not trusted_file(st, os.geteuid()) or st.st_size > MAX_CONFIG:
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
        assignments = shellconf.parse(data.decode("utf-8"), lookup)
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


def try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def ask(directory: str) -> bool:
    """Leave the note: a copy found the loop running (its mtime is when).
    False when it could not be left (a full disk, something else there)."""
    note = os.path.join(directory, NOTE)
    try:
        fd = os.open(note, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
                     | os.O_CLOEXEC, 0o640)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        os.utime(fd)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def asked(directory: str, after: float) -> bool:
    """A note newer than `after` (wall clock) is there."""
    try:
        return os.lstat(os.path.join(directory, NOTE)).st_mtime >= after
    except OSError:
        return False


def take(directory: str) -> None:
    """The loop covers the next minute: remove the note (the copy that left it
    sees it gone and exits)."""
    try:
        os.unlink(os.path.join(directory, NOTE))
    except OSError:
        pass


def publish_end(fd: int, end: float) -> None:
    """Set the lock's mtime to when the loop's minute ends (wall clock)."""
    try:
        os.utime(fd, (end, end))
    except OSError:
        pass  # a copy then waits for this loop's answer a little longer


def wait_for_loop(fd: int, directory: str, wait: float | None = None) -> bool:
    """The lock (`fd`) is held by a loop: leave the note, then see whether the
    loop covers this minute (True) or ends (False: the lock is ours now, this
    copy must loop). A loop that is not near the end of its minute takes the
    note when it gets there (a loop always covers the minute of a note it
    finds): no need to wait for that. When no note could be left, the loop
    ends with its minute, and this copy waits for that to take over."""
    wait = TAKEOVER if wait is None else wait
    noted = ask(directory)
    try:
        end = os.fstat(fd).st_mtime
    except OSError:
        end = 0.0
    now = time.time()
    if now > end + STUCK:
        print(f"spdu-cron: the cron loop holding {os.path.join(directory, LOOP_LOCK)} should"
              f" have moved on {now - end:.0f} s ago: is it stuck? (its pid is in that file)",
              file=sys.stderr)  # cron mails it
        return True
    if noted and now + 1.0 < end - MARGIN:
        return True
    if not noted:
        wait = max(wait, end + GRACE + 1.0 - now)
    note = os.path.join(directory, NOTE)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        time.sleep(0.1)
        if try_lock(fd):
            return False
        if noted and not os.path.lexists(note):
            return True  # taken: the loop goes on
    return True  # a loop busy past the end of its minute: it takes the note when done


def loop_running(directory: str) -> bool:
    """True when a loop holds the lock in `directory` and took this copy's note."""
    try:
        st = os.lstat(directory)
    except OSError:
        return False
    # spool.Spool.check_dir refuses any other directory; the full start says so
    if (not stat.S_ISDIR(st.st_mode) or st.st_mode & 0o002
            or st.st_uid not in (0, os.geteuid())):
        return False
    try:
        fd = os.open(os.path.join(directory, LOOP_LOCK),
                     os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode) or try_lock(fd):
            return False  # no loop: the full start takes the lock
        return wait_for_loop(fd, directory)
    finally:
        os.close(fd)  # releases the lock if this copy took it


def main() -> None:
    """The `spdu-cron` command."""
    path = config_path(sys.argv[1:], os.environ)
    directory = spool_dir(path) if path else None
    if directory and loop_running(directory):
        sys.exit(TEMPFAIL)
    from spdu_cli.cli import cron_main

    cron_main()
