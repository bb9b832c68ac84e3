"""The cron loop's own lock (spoolDir/.cron.lock, not the spool lock): held by
the running loop for its whole run, and taken again at once when someone
removes or replaces it (or the whole spool) under the loop, so that two loops
never run at once.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from spdu_cli import handover
from spdu_cli.errors import SpduError, TemporaryFailure, os_failure
from spdu_cli.spool import Spool, open_file

log = logging.getLogger(__name__)


class LoopRunning(TemporaryFailure):
    """Another loop holds the loop lock: normal when a tick overran the minute."""


def hold_lock(spool_dir: str, seconds: float = 60.0):
    """The loop's own lock (not the spool lock): held for the whole run. A
    second copy does not wait for the run to end: it leaves a note for the
    running one (which then covers the next minute too) and exits 75."""
    fd, path = _open_lock(spool_dir)
    # The running loop may end instead of taking the note (its hour is up, or it
    # was not started with --follow and its minute ended just before it could see
    # the note): the lock is then ours, so a minute is never left without a loop.
    if not handover.try_lock(fd) and handover.wait_for_loop(fd, str(path.parent)):
        os.close(fd)
        raise LoopRunning(
            f"another spdu cron loop holds {path}; this one exits (the running one"
            " covers this minute)"
        )
    _claim(fd, path, time.time() + seconds)  # the loop sets the end exactly
    return fd


def _open_lock(spool_dir: str) -> tuple[int, Path]:
    store = Spool(spool_dir)
    store.ensure_dir()
    path = store.dir / handover.LOOP_LOCK
    try:
        return open_file(path, os.O_RDWR | os.O_CREAT), path
    except OSError as e:
        raise os_failure(e, "open the cron loop's lock", path) from None


def _claim(fd: int, path, end: float) -> None:
    try:  # the pid is for people; the flock is what counts
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    except OSError as e:
        log.warning("%s", os_failure(e, "write the pid into", path))
    handover.publish_end(fd, end)


def relock(spool_dir: str, fd: int, end: float) -> int | None:
    """The loop lock `fd` is still spoolDir/.cron.lock: `fd`. Removed or
    replaced under the loop (the file or the whole spool): the new one, taken
    at once (a copy that came meanwhile then hands over to this loop), or None
    when another loop has it (this one must end: two loops never run at once)."""
    path = os.path.join(spool_dir, handover.LOOP_LOCK)
    try:
        st, held = os.lstat(path), os.fstat(fd)
        if (st.st_dev, st.st_ino) == (held.st_dev, held.st_ino):
            return fd
    except OSError:
        pass
    try:
        new, _ = _open_lock(spool_dir)
    except SpduError as e:
        log.error("%s was removed or replaced under this loop, and %s; this loop ends",
                  path, e)
        return None
    if not handover.try_lock(new):
        os.close(new)
        log.error("%s was removed or replaced under this loop, and another loop holds it"
                  " now; this one ends", path)
        return None
    _claim(new, path, end)
    os.close(fd)
    log.warning("%s was removed or replaced under this loop; it holds the new one", path)
    return new
