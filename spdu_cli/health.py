"""Hysteresis: a target's state from its previous state and one probe outcome.

HAProxy's fall/rise: down after `fall` consecutive failed probes, up after
`rise` consecutive good ones. A target with no history takes the first result.
Pure functions over dataclasses, so any sequence can be tested without I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum


class State(str, Enum):  # noqa: UP042 - str(State.UP) is "State.UP" in messages; StrEnum would change them
    UP = "up"
    DOWN = "down"
    UNKNOWN = "unknown"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Health:
    state: State = State.UNKNOWN
    since: float | None = None  # when the current state began (epoch seconds)
    good: int = 0  # consecutive good probes
    bad: int = 0  # consecutive failed probes


@dataclass(frozen=True)
class Transition:
    old: State
    new: State
    at: float
    reason: str


def advance(
    h: Health, ok: bool | None, rise: int, fall: int, now: float, reason: str = ""
) -> tuple[Health, Transition | None]:
    """Apply one probe outcome. `ok=None` (inconclusive: we could not even try,
    e.g. the target's name did not resolve here) changes nothing."""
    if ok is None:
        return h, None
    good, bad = (h.good + 1, 0) if ok else (0, h.bad + 1)
    if h.state is State.UNKNOWN:
        new = State.UP if ok else State.DOWN
    elif h.state is State.UP and bad >= fall:
        new = State.DOWN
    elif h.state is State.DOWN and good >= rise:
        new = State.UP
    else:
        return replace(h, good=good, bad=bad), None
    return Health(new, now, good, bad), Transition(h.state, new, now, reason)


def suspect(h: Health) -> bool:
    """The last probe disagrees with the state, which hysteresis still holds (up
    but failing, or down but answering): worth re-probing soon (HAProxy's
    fastinter, in both directions)."""
    return (h.state is State.UP and h.bad > 0) or (h.state is State.DOWN and h.good > 0)


CERTAIN_GAP = 0.05  # seconds between a certain failure (refused, reset, no route) and its check
OVERDUE_MIN = 0.02  # a probe is never overdue sooner than this...
OVERDUE_FACTOR = 4  # ...nor before it took this many times the target's usual latency
MAX_OVERLAP = 3  # probes of one target in flight at once, at most
#: What clients behind Unbound 1.17, BIND 9.18 and PowerDNS Recursor 4.8, at their
#: Debian defaults, saw when a site's link went down (benchmarks/failover.py --clients,
#: README "What clients see"): the p95 seconds over 7 runs, of the slowest resolver, until
#: no client's answer held the site, and after its repair until every answer did; spdu at
#: its defaults, nameTTL 5.
CLIENTS_LINK_P95 = {"out": 7.28, "back": 6.89}


def confirm_after(h: Health, ok: bool | None, certain: bool, fast: float) -> float | None:
    """After one outcome was applied (`h` is the health it gave): seconds until
    a probe that confirms it, or None when nothing needs confirming (the outcome
    agrees with the state, or has just changed it, or said nothing).

    A failure that is certain at once (the peer's kernel refused or reset the
    connection, a router said there is no route) is checked again at once, a
    new connection CERTAIN_GAP later; any other disagreement `fast` seconds
    later (fastInterval)."""
    if ok is None or h.state is State.UNKNOWN or (h.state is State.UP) == ok:
        return None
    return CERTAIN_GAP if certain and not ok else fast


def overlap(h: Health, fall: int, rise: int) -> int:
    """Probes of one target that may be in flight at once: as many as the
    outcomes it still takes to change state (failures for an up target, so a
    hang is confirmed in one probeTimeout, not `fall` of them; answers for a
    down one, so a hung site that resumes answers them all at once), at most
    MAX_OVERLAP."""
    if h.state is State.UP:
        return max(1, min(MAX_OVERLAP, fall - h.bad))
    if h.state is State.DOWN:
        return max(1, min(MAX_OVERLAP, rise - h.good))
    return 1


def overdue(latencies_ms: list[float], fast: float) -> float:
    """How long a target's probe may go unanswered before an overlapping one
    starts beside it (each keeps its own full deadline): OVERDUE_FACTOR
    times its usual latency of late, at least OVERDUE_MIN, at most `fast`.
    Usual is the lower quartile, not the median: the answers of a site that
    hung and resumed come as late as it hung, and a few of them among the
    recent results must not delay the overlap when it hangs again."""
    if not latencies_ms:
        return fast
    usual = sorted(latencies_ms)[len(latencies_ms) // 4] / 1000
    return min(fast, max(OVERDUE_MIN, OVERDUE_FACTOR * usual))


@dataclass(frozen=True)
class Failover:
    """Worst-case seconds, from the settings, until DNS is changed (`dns`) and
    until every client sees it (`clients`, after nameTTL of caching)."""

    out_refused: float  # a dead site that refuses connections: each try fails at once
    out_hang: float  # a dead site that accepts nothing and answers nothing
    back: float  # a site that answers again
    ttl: float
    out_closed: float = 0.0  # a server process that dies: it closes the kept connection

    def to_json(self) -> dict[str, dict[str, float]]:
        return {
            case: {"dns": round(v, 3), "clients": round(v + self.ttl, 3)}
            for case, v in (("out_closed", self.out_closed), ("out_refused", self.out_refused),
                            ("out_hang", self.out_hang), ("back", self.back))
        }


def failover(interval: float, fast_interval: float, timeout: float, retries: int,
             fall: int, rise: int, ttl: float, down_interval: float | None = None) -> Failover:
    """What fall/rise mean in seconds under the cron loop (spdu cron).

    The loop probes an up target every `interval` and a down one every
    `down_interval`; a probe that disagrees with the state is confirmed in the
    same run, by probes `fast_interval` apart (CERTAIN_GAP after a refused or
    reset connection), and a probe that goes unanswered gets an
    overlapping one at most `fast_interval` later (up to MAX_OVERLAP in
    flight), each with its own deadline of timeout x retries. Reconcile runs
    as soon as the target's run that changed its state ends, in a thread of
    its own. Worst cases: the site dies just after a good probe, so the
    first failing probe starts `interval` later; it recovers just after a
    failed probe, so the next one starts `down_interval` later. Whatever the
    other targets do: each target's probes go on by themselves (probe.pacer).
    A site whose server process dies while its host stays up closes the
    connection kept from the last good probe (probe.kept.Kept): the loop probes it
    at once, so only the confirming probes remain (`out_closed`).
    """
    probe = timeout * retries
    down = interval if down_interval is None else down_interval
    groups = -(-fall // MAX_OVERLAP)  # hung probes that must end one after another
    return Failover(
        out_closed=(fall - 1) * CERTAIN_GAP,
        out_refused=interval + (fall - 1) * CERTAIN_GAP,
        out_hang=interval + groups * probe + (fall - 1) * fast_interval,
        back=down + (rise - 1) * fast_interval,
        ttl=ttl,
    )


def carried_over(before: Health, h: Health,
                 t: Transition | None) -> tuple[Health, Transition | None]:
    """After a restart from unknown (the target's addresses changed): the same
    state as before is no transition; another one is a transition from it."""
    if h.state is before.state:
        return replace(h, since=before.since), None
    return h, replace(t, old=before.state) if t else None
