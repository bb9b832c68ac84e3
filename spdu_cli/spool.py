"""The spool: one small JSON file per target, the only state between steps.

Each file holds the target's state, since when, its consecutive counts, the
last results and a bounded journal of transitions. Files are written
atomically (temp file, fsync, rename) while holding the spool lock, and read
defensively: a missing, truncated or corrupt file is "unknown", never a crash.
A file is parsed again only when its bytes differ from the last ones this
process read or wrote. The format is documented in spdu(1), FILES.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import ipaddress
import json
import logging
import marshal
import os
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from spdu_cli.errors import ConfigError, TemporaryFailure, os_failure
from spdu_cli.health import Health, State, Transition

log = logging.getLogger(__name__)

VERSION = 1
MAX_RESULTS = 10  # recent probe results kept per target
MAX_JOURNAL = 100  # transitions kept; notified ones are dropped first
MAX_PENDING = 1000  # even unsent transitions are bounded, oldest dropped and counted
MAX_RETIRED = 16  # old addresses of a target still to be removed from the pool
MAX_FILE = 1 << 20
READ_CHUNK = 1 << 16
LOCK_NAME = ".lock"
RECONCILE_NAME = ".reconcile.json"  # site-level: each pool's last successful reconcile
COUNTERS = ("probes", "probe_failures")  # per target, for the metrics; they only grow
DIR_MODE = 0o750
FILE_MODE = 0o640
CLOCK_SLACK = 1.0  # seconds a recorded time may lie ahead of the clock before it is doubted


def staleness(checked: float | None, now: float, limit: float) -> str | None:
    """Why a probe made at `checked` is not to be trusted at `now` (in words:
    "never", "60 s ago", "3600 s in the future"), or None while it is fresh.

    The one rule for every age spdu judges: older than `limit` is stale, and
    so is a time in the future (the clock was stepped back since it was
    written): how old such data really is cannot be known."""
    if checked is None:
        return "never"
    age = now - checked
    if age < -CLOCK_SLACK:
        return f"{-age:.0f} s in the future (was the clock stepped back?)"
    if age > limit:
        return f"{age:.0f} s ago"
    return None


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


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return _iso(ts)


# Memoized both ways: each write of a spool file renders its last results again,
# and each read parses them again (the same times, one new one a probe).
@functools.lru_cache(maxsize=1024)
def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z"
    )


def duration(seconds: float) -> str:
    """3725 -> '1 h 2 min'; two units at most."""
    s = max(0, int(seconds))
    units = [("d", 86400), ("h", 3600), ("min", 60), ("s", 1)]
    parts = []
    for name, size in units:
        if s >= size or (name == "s" and not parts):
            parts.append(f"{s // size} {name}")
            s %= size
        if len(parts) == 2 or (parts and not s):
            break
    return " ".join(parts)


def epoch(value: Any) -> float | None:
    if value is None:
        return None
    return _epoch(str(value))


@functools.lru_cache(maxsize=1024)
def _epoch(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def _count(d: dict[str, Any], key: str, default: int = 0) -> int:
    """A counter from the file: a whole number in a sane range, or the file is corrupt."""
    value = d.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 31:
        raise ValueError(f"{key} is not a count: {str(value)[:20]}")
    return value


def _addresses(d: dict[str, Any], key: str) -> list[str]:
    """A list of IP addresses from the file (canonical), or the file is corrupt."""
    value = d.get(key, [])
    if not isinstance(value, list):
        raise ValueError(f"{key} is not a list")
    out = []
    for a in value:
        try:
            if not isinstance(a, str):
                raise ValueError
            out.append(str(ipaddress.ip_address(a)))
        except ValueError:
            raise ValueError(f"{key} holds {str(a)[:45]!r}, not an IP address") from None
    return out


def _counters(d: Any) -> dict[str, int]:
    if d is None:
        d = {}
    if not isinstance(d, dict):
        raise ValueError("counters is not an object")
    return {k: _count(d, k) for k in COUNTERS}


@dataclass(frozen=True)
class ResultRecord:
    """One probe, as kept in the spool's `results` list."""

    at: float
    ok: bool | None
    address: str | None
    status: int | None
    latency_ms: float | None
    error: str | None

    def to_json(self) -> dict[str, Any]:
        return {"at": iso(self.at), "ok": self.ok, "address": self.address,
                "status": self.status, "latency_ms": self.latency_ms, "error": self.error}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ResultRecord:
        return cls(
            at=epoch(d["at"]) or 0.0,
            ok=d.get("ok"),
            address=d.get("address"),
            status=d.get("status"),
            latency_ms=d.get("latency_ms"),
            error=d.get("error"),
        )


@dataclass(frozen=True)
class Maintenance:
    """An operator's override (`spdu maint`): the target is out of the pool until `until`."""

    since: float
    until: float
    reason: str = ""

    def active(self, now: float) -> bool:
        return now < self.until

    def to_json(self) -> dict[str, Any]:
        return {"since": iso(self.since), "until": iso(self.until), "reason": self.reason}

    @classmethod
    def from_json(cls, d: Any) -> Maintenance | None:
        if d is None:
            return None
        if not isinstance(d, dict):
            raise ValueError("maint is not an object")
        since, until = epoch(d["since"]), epoch(d["until"])
        if since is None or until is None:
            raise ValueError("maint lacks since or until")
        return cls(since, until, str(d.get("reason") or ""))


@dataclass
class SpoolEntry:
    target: str
    health: Health = field(default_factory=Health)
    checked: float | None = None  # last conclusive probe: what staleness is measured from
    addresses: list[str] = field(default_factory=list)  # probed, from config or resolution
    # Addresses the target had before its addresses changed (targetIP edited, its
    # name resolving elsewhere): reconcile removes them from the pool, then forgets them.
    retired: list[str] = field(default_factory=list)
    url: str | None = None
    results: list[ResultRecord] = field(default_factory=list)
    journal: list[dict[str, Any]] = field(default_factory=list)
    next_id: int = 1
    dropped_pending: int = 0
    maint: Maintenance | None = None  # set by `spdu maint`, cleared by --clear or expiry
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    fresh: bool = True  # no valid file was read

    def readdress(self, addresses: list[str]) -> bool:
        """Take the addresses a conclusive probe checked; True when they changed
        (the old ones are kept in `retired` for reconcile to remove)."""
        old, self.addresses = self.addresses, list(addresses)
        if not old or set(old) == set(addresses):
            return False
        gone = [a for a in old if a not in addresses]
        keep = [a for a in self.retired if a not in addresses and a not in gone]
        self.retired = (keep + gone)[-MAX_RETIRED:]
        return True

    def record(self, result: ResultRecord) -> None:
        self.results.append(result)
        del self.results[:-MAX_RESULTS]

    def add_transition(self, t: Transition) -> dict[str, Any]:
        return self.add_change(t.old.value, t.new.value, t.at, t.reason)

    def add_change(self, old: str, new: str, at: float, reason: str,
                   **extra: Any) -> dict[str, Any]:
        """Journal a change of what the target is seen as: a state, or `maint`."""
        entry = {
            "id": self.next_id,
            "at": iso(at),
            "from": old,
            "to": new,
            "reason": reason,
            **extra,
            "notified": False,
            "dns": [],
        }
        self.next_id += 1
        self.journal.append(entry)
        self._trim()
        return entry

    def pending(self) -> list[dict[str, Any]]:
        return [e for e in self.journal if not e.get("notified")]

    def _trim(self) -> None:
        while len(self.journal) > MAX_JOURNAL:
            done = next((e for e in self.journal if e.get("notified")), None)
            if done is None:
                break
            self.journal.remove(done)
        while len(self.journal) > MAX_PENDING:
            self.journal.pop(0)
            self.dropped_pending += 1

    def copy(self, journal: bytes | None = None) -> SpoolEntry:
        """An entry no caller shares with another: its lists, counters and
        journal are new (`journal`: the journal as marshal.dumps made it)."""
        return SpoolEntry(
            self.target, self.health, self.checked, list(self.addresses), list(self.retired),
            self.url, list(self.results),
            marshal.loads(journal if journal is not None else marshal.dumps(self.journal)),
            self.next_id, self.dropped_pending, self.maint, dict(self.counters), self.fresh,
        )

    def to_json(self) -> dict[str, Any]:
        h = self.health
        return {
            "version": VERSION,
            "target": self.target,
            "state": h.state.value,
            "since": iso(h.since),
            "good": h.good,
            "bad": h.bad,
            "checked": iso(self.checked),
            "addresses": self.addresses,
            "retired": self.retired,
            "url": self.url,
            "results": [r.to_json() for r in self.results],
            "journal": self.journal,
            "next_id": self.next_id,
            "dropped_pending": self.dropped_pending,
            "maint": self.maint.to_json() if self.maint else None,
            "counters": self.counters,
        }

    @classmethod
    def from_json(cls, target: str, d: Any) -> SpoolEntry:
        if not isinstance(d, dict):
            raise ValueError("not a JSON object")
        if d.get("version") != VERSION:
            raise ValueError(f"unsupported version {d.get('version')!r} (this spdu writes {VERSION})")
        if d.get("target") != target:
            raise ValueError(f"holds target {d.get('target')!r}")
        journal = d.get("journal", [])
        if not isinstance(journal, list) or not all(
            isinstance(e, dict) and isinstance(e.get("id"), int) for e in journal
        ):
            raise ValueError("malformed journal")
        return cls(
            target=target,
            health=Health(
                state=State(d["state"]),
                since=epoch(d.get("since")),
                good=_count(d, "good"),
                bad=_count(d, "bad"),
            ),
            checked=epoch(d.get("checked")),
            addresses=_addresses(d, "addresses"),
            retired=_addresses(d, "retired")[-MAX_RETIRED:],
            url=d.get("url"),
            results=[ResultRecord.from_json(r) for r in d.get("results", [])][-MAX_RESULTS:],
            journal=journal,
            next_id=max([_count(d, "next_id", 1)] + [_count(e, "id") + 1 for e in journal]),
            dropped_pending=_count(d, "dropped_pending"),
            maint=Maintenance.from_json(d.get("maint")),
            counters=_counters(d.get("counters")),
            fresh=False,
        )


# Per process: a spool file's path -> the bytes last parsed from it, the entry they
# make and its journal (marshal.dumps). Keyed by the bytes themselves, not by a stat:
# mtimes are stamped from a coarse clock and inodes are reused, so a file rewritten
# by another process can look unchanged to stat. Entries are handed out as copies.
_parsed: dict[str, tuple[bytes, SpoolEntry, bytes]] = {}
PARSED_KEPT = 4096


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
        if stat.S_ISLNK(st.st_mode):
            raise ConfigError(
                f"spoolDir {self.dir} is a symbolic link; spdu never follows one there",
                f"set spoolDir to the directory itself ({os.path.realpath(self.dir)})",
            )
        if not stat.S_ISDIR(st.st_mode):
            raise ConfigError(f"spoolDir {self.dir} is not a directory")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o002:
            raise ConfigError(
                f"refusing unsafe spool directory {self.dir}: writable by others"
                f" (mode {mode:04o})",
                f"chmod 0750 {self.dir}",
            )
        if writing and st.st_uid not in (0, os.geteuid()):
            import pwd

            try:
                owner = pwd.getpwuid(st.st_uid).pw_name
            except KeyError:
                owner = f"uid {st.st_uid}"
            raise ConfigError(
                f"spool directory {self.dir} belongs to {owner}, not to the user running"
                " spdu: files written now would lock its owner out",
                f"run it as that user: sudo -u {owner} spdu ..., or chown it to this one",
            )
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
        seen = _parsed.get(key)
        if seen is not None and seen[0] == data:  # the very bytes parsed before
            return seen[1].copy(seen[2])
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
        if len(_parsed) >= PARSED_KEPT and key not in _parsed:
            try:  # the oldest: a bound that a site's targets do not reach
                del _parsed[next(iter(_parsed))]
            except (RuntimeError, KeyError, StopIteration):
                pass  # the mail thread evicted or added one meanwhile
        _parsed[key] = (data, entry, journal)
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
                _count(p, "updates")
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
    try:
        fd, tmp = _create_temp(target)
    except OSError as e:
        raise os_failure(e, f"write {what}", path) from None
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
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        err = os_failure(e, f"write {what}", path)
        err.message += f"; the previous {kept} is kept"
        raise err from None
    if sync:
        sync_dir(os.path.dirname(target) or ".")


def sync_dir(directory: str | Path) -> None:
    """fsync a directory: the renames done in it survive a crash."""
    try:
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as e:
        raise os_failure(e, "sync the directory", directory) from None
