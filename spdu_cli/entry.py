"""One target's spool entry, as data: its state and counts, recent results,
maintenance and bounded journal of transitions, parsed defensively from its
JSON (anything odd is an error the spool reads as "unknown") and written back;
and the words for times it is written in (iso, epoch, duration, staleness).
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import marshal
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from spdu_cli.health import Health, State, Transition

log = logging.getLogger(__name__)

VERSION = 1
MAX_RESULTS = 10  # recent probe results kept per target
MAX_JOURNAL = 100  # transitions kept; notified ones are dropped first
MAX_PENDING = 1000  # even unsent transitions are bounded, oldest dropped and counted
MAX_RETIRED = 16  # old addresses of a target still to be removed from the pool
COUNTERS = ("probes", "probe_failures")  # per target, for the metrics; they only grow
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


def canon(address: str) -> str:
    """An address as spdu compares and writes it (2001:DB8::0001 is 2001:db8::1)."""
    return str(ipaddress.ip_address(address))


def standing(view: Any, now: float) -> tuple[str, str | None]:
    """How far a target's state (plan.TargetView, self's too) may be taken as it
    is, the one rule of plan.decide and selfcheck.judge: ("maint", None) in a
    maintenance not over yet; ("unknown", None); ("stale", how old, as
    staleness says); ("changed", None) when its configured addresses
    (targetIP, selfIP) are not the ones it was last probed at; ("ok", None)."""
    if view.maint_until is not None and now < view.maint_until:
        return "maint", None
    if view.state is State.UNKNOWN:
        return "unknown", None
    stale = staleness(view.checked, now, view.stale_after)
    if stale:
        return "stale", stale
    if view.configured and ({canon(a) for a in view.configured}
                            != {canon(a) for a in view.addresses}):
        return "changed", None
    return "ok", None


@functools.cache
def _boot() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:  # Linux; elsewhere: the wall clock
            return f.read().strip() or None
    except OSError:
        return None


def steady(at: float) -> list | None:
    """[boot id, monotonic seconds] of the wall clock's time `at` (as the clocks
    stand now): a time no later step of the wall clock moves, comparable within
    one boot."""
    boot = _boot()
    if boot is None:
        return None
    import time

    return [boot, round(time.monotonic() - (time.time() - at), 3)]


def elapsed(a: Any, b: Any, wall: float) -> float:
    """Seconds from steady stamp `a` to `b` (journal "clock" values) when both
    are of this boot; else `wall`, the difference of the wall clock's times."""
    if (isinstance(a, list) and isinstance(b, list) and len(a) == len(b) == 2
            and a[0] == b[0] and all(isinstance(x, int | float) for x in (a[1], b[1]))):
        return max(0.0, float(b[1]) - float(a[1]))
    return wall


def lasted(at: float, stamp: Any, now: float) -> float:
    """Seconds from a journaled time (wall `at`, steady `stamp`) until `now`:
    on the monotonic clock when the stamp is of this boot, so a step of the
    wall clock since is not time spent; else by the wall clock."""
    return elapsed(stamp, steady(now), max(0.0, now - at))


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return _iso(ts)


# Memoized both ways: each write of a spool file renders its last results again,
# and each read parses them again (the same times, one new one a probe).
@functools.lru_cache(maxsize=1024)
def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace(
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


def count(d: dict[str, Any], key: str, default: int = 0) -> int:
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
    return {k: count(d, k) for k in COUNTERS}


def result_reason(ok: bool | None, status: int | None, error: str | None) -> str:
    """A probe's outcome in words, the `reason` of probe's and status's JSON:
    HTTP 200, connected (tcp), the failure, or inconclusive: the failure."""
    if ok:  # a good TCP probe (probeType=tcp) has no status
        return "connected" if status is None else f"HTTP {status}"
    words = error or (f"HTTP {status}" if status else "failed")
    return f"inconclusive: {words}" if ok is None else words


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


MAX_NOTICED = 16  # (certificate, channel) pairs a target's certificate notices remember


@dataclass(frozen=True)
class CertRecord:
    """The certificate of the target's last TLS handshake (of its addresses',
    the first to expire), and which certificates were noticed on which channel
    (`noticed`: (certs.key, channel) pairs, the latest last).

    Only a report: a damaged one is dropped when read (the next TLS probe
    writes it again), never the entry with it."""

    not_after: float | None  # None: the peer's certificate holds no date spdu can read
    serial: str
    address: str | None
    seen: float  # when a handshake last brought it
    noticed: tuple[tuple[str, str], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"not_after": iso(self.not_after), "serial": self.serial,
                "address": self.address, "seen": iso(self.seen),
                "noticed": [list(n) for n in self.noticed]}

    @classmethod
    def from_json(cls, d: Any) -> CertRecord | None:
        try:
            pairs = d.get("noticed")
            noticed = tuple((n[0], n[1]) for n in (pairs if isinstance(pairs, list) else ())
                            if isinstance(n, list) and len(n) == 2
                            and all(isinstance(x, str) for x in n))[-MAX_NOTICED:]
            serial, address = d.get("serial") or "", d.get("address")
            if not isinstance(serial, str) or not isinstance(address, str | None):
                return None
            seen = epoch(d["seen"])
            return None if seen is None else cls(epoch(d.get("not_after")), serial[:64],
                                                 address, seen, noticed)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError):
            return None


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
    cert: CertRecord | None = None  # TLS targets: the certificate last seen (spdu_cli.certs)

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
            **({"clock": c} if (c := steady(at)) else {}),  # durations across clock steps
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
            self.cert,
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
            "cert": self.cert.to_json() if self.cert else None,
        }

    @classmethod
    def from_json(cls, target: str, d: Any) -> SpoolEntry:
        if not isinstance(d, dict):
            raise ValueError("not a JSON object")
        if d.get("version") != VERSION:
            raise ValueError(f"unsupported version {d.get('version')!r}"
                             f" (this spdu writes {VERSION})")
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
                good=count(d, "good"),
                bad=count(d, "bad"),
            ),
            checked=epoch(d.get("checked")),
            addresses=_addresses(d, "addresses"),
            retired=_addresses(d, "retired")[-MAX_RETIRED:],
            url=d.get("url"),
            results=[ResultRecord.from_json(r) for r in d.get("results", [])][-MAX_RESULTS:],
            journal=journal,
            next_id=max([count(d, "next_id", 1)] + [count(e, "id") + 1 for e in journal]),
            dropped_pending=count(d, "dropped_pending"),
            maint=Maintenance.from_json(d.get("maint")),
            counters=_counters(d.get("counters")),
            fresh=False,
            cert=CertRecord.from_json(d.get("cert")) if d.get("cert") is not None else None,
        )
