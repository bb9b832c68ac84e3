"""The hand-over between the running cron loop and the copy cron starts each
minute: the loop's lock (its mtime is when the loop's minute ends), the copy's
note ("cover the next minute too"), and the copy's wait for the loop's answer.
Light on purpose: the copy runs it before anything heavy is imported.
"""

from __future__ import annotations

import fcntl
import os
import stat
import sys
import time

# In spoolDir: the lock, held by the running loop for its whole run (it holds the
# loop's pid, and its mtime is when the loop's current minute ends, wall clock).
LOOP_LOCK = ".cron.lock"
NOTE = ".cron.handover"  # in spoolDir: touched by a copy that found the loop running
MARGIN = 0.5  # the loop looks for a note from this long before the end of its minute
GRACE = 5.0  # a --follow loop waits this long past the end of its minute for the note
POLL = 0.25  # how often the loop looks for the note meanwhile
TAKEOVER = GRACE + 1.0  # how long a copy waits for the loop to take its note or end
STUCK = 120.0  # a loop whose minute ended this long ago and still holds the lock is stuck
# In spoolDir: what the running loop says of itself (a target or configuration it
# refused, a step failing for too long), which each copy prints on its stderr, so
# cron mails it. Lines: "config\tPATH", "every\tTEXT" (printed by every copy) and
# "once\tN\tTEXT" (printed by the first copy only: SAID holds the last N printed).
STATUS = ".cron.status"
SAID = ".cron.said"


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
    if now > end + STUCK and not _moving(directory):
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


def _read_small(path: str, limit: int = 65536) -> str | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, limit).decode("utf-8", "replace")
    except OSError:
        return None
    finally:
        os.close(fd)


def status(directory: str) -> tuple[str | None, list[tuple[str, int, str]]]:
    """The loop's status file: the configuration it runs on, and its lines as
    (kind, number, text)."""
    text = _read_small(os.path.join(directory, STATUS)) or ""
    config, lines = None, []
    for line in text.splitlines():
        kind, _, rest = line.partition("\t")
        if kind == "config":
            config = rest
        elif kind == "every":
            lines.append((kind, 0, rest))
        elif kind == "once":
            n, _, said = rest.partition("\t")
            if n.isdigit():
                lines.append((kind, int(n), said))
    return config, lines


def _moving(directory: str) -> bool:
    """The loop's status file gives when its minute ends on the monotonic clock
    (which a step of the wall clock does not move), and that is not long ago:
    the lock's time is stale only because the wall clock was stepped forward."""
    text = _read_small(os.path.join(directory, STATUS)) or ""
    for line in text.splitlines():
        kind, _, value = line.partition("\t")
        if kind == "end":
            try:
                return time.monotonic() <= float(value) + STUCK
            except ValueError:
                return False
    return False


def tell(directory: str) -> None:
    """Print what the loop says of itself on stderr (a copy, after handing
    over its minute): every line meant for every copy, and the one-off lines
    no copy printed yet."""
    _, lines = status(directory)
    said_text = _read_small(os.path.join(directory, SAID)) or ""
    said = int(said_text.strip()) if said_text.strip().isdigit() else 0
    top = said
    for kind, n, text in lines:
        if kind == "every" or n > said:
            print(f"spdu-cron: {text}", file=sys.stderr)  # cron mails it
            top = max(top, n)
    if top > said:
        try:
            fd = os.open(os.path.join(directory, SAID), os.O_WRONLY | os.O_CREAT | os.O_TRUNC
                         | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o640)
        except OSError:
            return
        try:
            os.write(fd, f"{top}\n".encode())
        except OSError:
            pass
        finally:
            os.close(fd)
