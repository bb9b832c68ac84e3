"""The spool: one small JSON file per target, the only state between steps.

Each file holds the target's state, since when, its consecutive counts, the
last results and a bounded journal of transitions. Files are written
atomically (temp file, fsync, rename) while holding the spool lock, and read
defensively: a missing, truncated or corrupt file is "unknown", never a crash.
A file is parsed again only when its bytes differ from the last ones this
process read or wrote. What an entry holds: spdu_cli.entry; the format is
documented in spdu(1), FILES.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import json
import logging
import marshal
import os
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from spdu_cli.entry import VERSION, SpoolEntry, count, epoch
from spdu_cli.errors import ConfigError, SpduError, TemporaryFailure, os_failure

log = logging.getLogger(__name__)

MAX_FILE = 1 << 20
READ_CHUNK = 1 << 16
LOCK_NAME = ".lock"
RECONCILE_NAME = ".reconcile.json"  # site-level: each pool's last successful reconcile
DIR_MODE = 0o750
FILE_MODE = 0o640


class NotRegularFile(OSError):
    """A FIFO, device, socket or directory where spdu keeps a regular file."""

    def __init__(self, path):
        super().__init__(errno.EINVAL, "not a regular file", str(path))
        self.hint = f"remove {path}: only spdu's own regular files belong there"


def open_file(path, flags: int = os.O_RDONLY, mode: int = FILE_MODE) -> int:
    """The one way spdu opens a file in its spool: never through a symbolic
    link (ELOOP), never blocking (a FIFO), and a regular file only
    (NotRegularFile); returns the descriptor."""
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotRegularFile(path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_file(path, limit: int = MAX_FILE) -> bytes:
    """At most `limit` + 1 bytes of a spool file (see open_file); OSError as is."""
    fd = open_file(path)
    try:
        # os.read, not a buffered file: that would allocate `limit` bytes for every read
        chunks, left = [], limit + 1
        while left > 0:
            chunk = os.read(fd, min(left, READ_CHUNK))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _refused(e: OSError) -> bool:
    """A planted link or special file: not ours, read as missing (with a warning)."""
    return isinstance(e, NotRegularFile) or e.errno == errno.ELOOP


# Per process: a spool file's path -> the bytes last parsed from it, the entry they
# make and its journal (marshal.dumps). Keyed by the bytes themselves, not by a stat:
# mtimes are stamped from a coarse clock and inodes are reused, so a file rewritten
# by another process can look unchanged to stat. Entries are handed out as copies.
_parsed: dict[str, tuple[bytes, SpoolEntry, bytes]] = {}
PARSED_KEPT = 4096
# Per process: routine probe results kept instead of written (Spool.defer), by
# path: the bytes of the file they follow on, the entry, its journal. Never evicted.
_unwritten: dict[str, tuple[bytes, SpoolEntry, bytes]] = {}


def _remember(key: str, data: bytes, entry: SpoolEntry, journal: bytes) -> None:
    if len(_parsed) >= PARSED_KEPT and key not in _parsed:
        try:  # the oldest: a bound that a site's targets do not reach
            del _parsed[next(iter(_parsed))]
        except (RuntimeError, KeyError, StopIteration):
            pass  # the mail thread evicted or added one meanwhile
    _parsed[key] = (data, entry, journal)

class WriteTime:
    """Seconds this process has spent writing files (fsyncs included), for the
    cron loop's report of why it falls behind (spdu_cli.lag)."""

    seconds = 0.0


@functools.lru_cache(maxsize=4096)  # a Path is made anew for each file, each tick otherwise
def _target_file(directory: Path, target: str) -> Path:
    # Target names are validated (no '/', no '..'); this is a second guard.
    if "/" in target or target.startswith("."):
        raise ValueError(f"unsafe target name {target!r}")
    return directory / f"{target}.json"


class Spool:
    """The spool directory: per-target files and the lock that guards them.

    Every command judges the directory by one rule before it reads or sends
    anything (see check_dir); every file in it is opened by open_file."""

    def __init__(self, directory: str):
        self.dir = Path(directory)
        self._checked = False
        self._held = False  # the lock: writes then sync the directory once, at its release
        self._dirty = False

    def path(self, target: str) -> Path:
        return _target_file(self.dir, target)

    def check_dir(self, writing: bool = False) -> bool:
        """Refuse (78) a spoolDir that is a symbolic link, not a directory or
        writable by others; and, to write, one owned by another user. False
        when it does not exist (yet)."""
        try:
            st = os.lstat(self.dir)
        except FileNotFoundError:
            return False
        except OSError as e:
            raise os_failure(e, "look at the spool directory", self.dir) from None
        problem = dir_problem(self.dir, st, os.geteuid(), writing)
        if problem is not None:
            raise problem
        self._checked = True
        return True

    def ensure_dir(self) -> None:
        try:
            self.dir.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        except FileExistsError:
            pass  # a link or a file there: check_dir names it
        except OSError as e:
            raise os_failure(e, "create the spool directory", self.dir) from None
        self.check_dir(writing=True)

    @contextmanager
    def locked(self, timeout: float = 5.0) -> Iterator[None]:
        """Hold the spool lock (flock on spoolDir/.lock); 75 when not had in time."""
        self.ensure_dir()
        lock_path = self.dir / LOCK_NAME
        try:
            fd = open_file(lock_path, os.O_RDWR | os.O_CREAT)
        except OSError as e:
            raise os_failure(e, "open the spool lock", lock_path) from None
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise TemporaryFailure(
                            f"spool lock {lock_path} is held by another spdu for over "
                            f"{timeout:g} s",
                            "try again; if it persists, look for a stuck spdu process",
                        ) from None
                    time.sleep(0.02)
            self._held = True
            try:
                yield
            finally:
                self._held = False
                if self._dirty:  # the renames are durable before another may read them
                    self._dirty = False
                    sync_dir(self.dir)
        finally:
            os.close(fd)

    def read(self, target: str) -> SpoolEntry:
        """The target's entry; "unknown" when its file is missing, corrupt, a
        link or not a regular file. A file that exists but cannot be read
        (permissions, I/O) is an error (75): it may hold pending mail, and an
        empty state would look healthy."""
        path = self.path(target)
        if not self._checked and not self.check_dir():
            log.debug("%s: no spool directory yet; state unknown", path)
            return SpoolEntry(target)
        try:
            data = read_file(path)
        except FileNotFoundError:
            log.debug("%s: no spool file yet; state unknown", path)
            return SpoolEntry(target)
        except OSError as e:
            if not _refused(e):
                raise os_failure(e, "read the spool file", path) from None
            why = "a symbolic link" if e.errno == errno.ELOOP else e.strerror
            log.warning("spool file %s is %s, never read; state unknown", path, why)
            return SpoolEntry(target)
        key = str(path)
        seen = _unwritten.get(key) or _parsed.get(key)
        if seen is not None and seen[0] == data:  # the very bytes parsed before
            return seen[1].copy(seen[2])
        _unwritten.pop(key, None)  # another process rewrote the file: it wins
        try:
            if len(data) > MAX_FILE:
                raise ValueError("file too large")
            entry = SpoolEntry.from_json(target, json.loads(data))
            journal = marshal.dumps(entry.journal)
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError,
                RecursionError) as e:  # whatever a damaged or hostile file holds
            log.warning(
                "spool file %s is corrupt (%s); state unknown until the next probe rewrites it",
                path,
                e,
            )
            return SpoolEntry(target)
        _remember(key, data, entry, journal)
        return entry.copy(journal)

    def write(self, entry: SpoolEntry) -> None:
        """Atomically replace the target's file; call with the lock held. A file
        that could not be read (corrupt) is kept aside first, as TARGET.json.corrupt,
        so what it held (unsent transitions) can still be recovered by hand."""
        path = self.path(entry.target)
        if entry.fresh:
            self._keep_corrupt(path, entry.target)
        data = json.dumps(entry.to_json(), separators=(",", ":")).encode() + b"\n"  # C speed
        self._atomic_write(path, data)
        _unwritten.pop(str(path), None)

    def defer(self, entry: SpoolEntry, max_age: float) -> bool:
        """Keep a routine probe result (one that changes nothing but the recent
        results, counters and `checked`) in this process instead of writing it,
        while the file's own `checked` is less than `max_age` older than the
        entry's; True when kept (the caller then does not write). Call with the
        lock held, after reading the entry: the file is then the one read. What
        is kept is what read() returns here, and is written by the next write
        or by flush() (spool.flush); a crash loses it, and another process that rewrites the
        file meanwhile overrides it."""
        key = str(self.path(entry.target))
        seen = _parsed.get(key)
        if (seen is None or entry.fresh or entry.checked is None or seen[1].checked is None
                or entry.checked - seen[1].checked >= max_age):
            return False
        journal = marshal.dumps(entry.journal)
        _unwritten[key] = (seen[0], entry.copy(journal), journal)
        return True

    def _atomic_write(self, path: Path, data: bytes) -> None:
        atomic_write(path, data, FILE_MODE, "spool file", "state", sync=not self._held)
        self._dirty |= self._held

    def _keep_corrupt(self, path: Path, target: str) -> None:
        try:
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode) or not st.st_size or not self.read(target).fresh:
                return  # nothing there, a planted link, or a good file
            aside = path.with_name(path.name + ".corrupt")
            if os.path.lexists(aside):
                os.unlink(aside)
            os.link(path, aside)  # a second name: the rename below leaves it in place
        except OSError:
            return
        log.warning("the unreadable spool file of %s is kept as %s", target, aside)

    def read_reconcile(self) -> dict[str, Any]:
        """The site-level record of reconcile runs (see RECONCILE_NAME): pool key ->
        {pool, server, last_success, updates}; empty when missing or damaged."""
        path = self.dir / RECONCILE_NAME
        try:
            d = json.loads(read_file(path))
            if not isinstance(d, dict) or d.get("version") != VERSION:
                raise ValueError(f"unsupported version {d.get('version')!r}")
            pools = d.get("pools")
            if not isinstance(pools, dict) or not all(isinstance(p, dict) for p in pools.values()):
                raise ValueError("malformed pools")
            for p in pools.values():
                count(p, "updates")
                epoch(p.get("last_success"))
            return pools
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, TypeError, AttributeError, RecursionError) as e:
            why = e.strerror if isinstance(e, OSError) else e
            log.warning("%s is damaged (%s); the reconcile record starts again", path, why)
            return {}

    def write_reconcile(self, pools: dict[str, Any]) -> None:
        """Atomically replace the reconcile record; call with the lock held."""
        data = json.dumps({"version": VERSION, "pools": pools}, indent=1).encode() + b"\n"
        self._atomic_write(self.dir / RECONCILE_NAME, data)


def dir_problem(path, st: os.stat_result, uid: int, writing: bool) -> ConfigError | None:
    """Why spoolDir (`st`, its lstat) is refused to the user `uid` (check_dir;
    config check asks it for the user --as names), or None."""
    if stat.S_ISLNK(st.st_mode):
        return ConfigError(
            f"spoolDir {path} is a symbolic link; spdu never follows one there",
            f"set spoolDir to the directory itself ({os.path.realpath(path)})",
        )
    if not stat.S_ISDIR(st.st_mode):
        return ConfigError(f"spoolDir {path} is not a directory")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o002:
        return ConfigError(
            f"refusing unsafe spool directory {path}: writable by others (mode {mode:04o})",
            f"chmod 0750 {path}",
        )
    if writing and st.st_uid not in (0, uid):
        import pwd

        try:
            owner = pwd.getpwuid(st.st_uid).pw_name
        except KeyError:
            owner = f"uid {st.st_uid}"
        return ConfigError(
            f"spool directory {path} belongs to {owner}, not to the user running"
            " spdu: files written now would lock its owner out",
            f"run it as that user: sudo -u {owner} spdu ..., or chown it to this one",
        )
    return None


def flush(lock_timeout: float = 5.0) -> None:
    """Write what Spool.defer kept, in every spool directory (the loop's end);
    the first failure is raised once every file was tried."""
    failed = None
    for directory in sorted({os.path.dirname(k) for k in _unwritten}):
        store = Spool(directory)
        try:
            with store.locked(lock_timeout):
                for key in [k for k in _unwritten if os.path.dirname(k) == directory]:
                    kept = _unwritten.pop(key, None)
                    if kept is None:
                        continue
                    _unwritten[key] = kept  # read() gives it, unless the file changed
                    entry = store.read(kept[1].target)
                    if _unwritten.pop(key, None) is not None:
                        try:
                            store.write(entry)
                        except SpduError as e:
                            failed = failed or e
        except SpduError as e:
            failed = failed or e
    if failed is not None:
        raise failed


def _create_temp(path: str) -> tuple[int, str]:
    """tempfile.mkstemp beside `path`, without importing tempfile (shutil,
    random...) into every probe run: a random name, created exclusively, mode
    0600 until fchmod, never through a link."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    parent, name = os.path.split(path)
    stem = os.path.splitext(name)[0]
    for _ in range(100):
        tmp = os.path.join(parent, f".{stem}.{os.urandom(6).hex()}.tmp")
        try:
            return os.open(tmp, flags, 0o600), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", parent)


def atomic_write(path: Path, data: bytes, mode: int, what: str, kept: str = "file",
                 sync: bool = True) -> None:
    """Replace `path` with `data`: temp file in the same directory, fsync, rename,
    directory fsync (`sync`; else the caller syncs the directory once for many
    files). A reader sees the old file or the new one, never a part."""
    target = os.fspath(path)
    began = time.monotonic()
    try:
        _replace(target, data, mode, what, kept)
    finally:
        WriteTime.seconds += time.monotonic() - began
    if sync:
        sync_dir(os.path.dirname(target) or ".")


def _replace(target: str, data: bytes, mode: int, what: str, kept: str) -> None:
    try:
        fd, tmp = _create_temp(target)
    except OSError as e:
        raise os_failure(e, f"write {what}", target) from None
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, target)  # replaces a planted symlink itself, never its target
    except BaseException as e:  # SIGINT (KeyboardInterrupt) too: never a stray .tmp file
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if not isinstance(e, OSError):
            raise
        err = os_failure(e, f"write {what}", target)
        err.message += f"; the previous {kept} is kept"
        raise err from None


def sync_dir(directory: str | Path) -> None:
    """fsync a directory: the renames done in it survive a crash."""
    began = time.monotonic()
    try:
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as e:
        raise os_failure(e, "sync the directory", directory) from None
    finally:
        WriteTime.seconds += time.monotonic() - began
