"""Two writers of one zone, each with its own view (a hidden primary that two
sites update): each undoes the other's change, and spdu makes the same change
again and again without a word. reconcile notes each change it made in
spoolDir/.flips.json; the same change (action and address) made twice in a
row within WINDOW seconds while its target stayed in one state (selfIP:
always) means something else undid it in between. spdu's own changes back
and forth (the quorum taking a peer back and letting it go, the self-check)
are no repeat: each undoes the last. Said once as a notice, and in `spdu
status --peers`; its end once too, when WINDOW passed without a repeat.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from spdu_cli.errors import SpduError

log = logging.getLogger(__name__)

FLIPS_NAME = ".flips.json"
WINDOW = 120.0  # s
KEPT = 64  # changes kept
MAX_FILE = 1 << 16


def _load(spool_dir: str) -> dict:
    """The record; empty when missing or damaged (logged), each change as
    spdu writes it or left out."""
    from spdu_cli.spool import read_file

    path = Path(spool_dir) / FLIPS_NAME
    try:
        data = read_file(path, MAX_FILE)
    except OSError:
        return {"changes": [], "noticed": []}
    try:
        if len(data) > MAX_FILE:
            raise ValueError("file too large")
        d = json.loads(data)
        if not isinstance(d, dict) or not isinstance(d.get("changes"), list):
            raise ValueError("not a record spdu writes")
    except (ValueError, RecursionError) as e:  # whatever a damaged or hostile file holds
        log.warning("%s is damaged (%s); the record of DNS changes starts again", path,
                    str(e)[:200] or type(e).__name__)
        return {"changes": [], "noticed": []}
    fields = ("pool", "action", "address", "target", "state")
    changes = [c for c in d["changes"] if isinstance(c, dict)
               and type(c.get("at")) in (int, float) and math.isfinite(c["at"])
               and all(isinstance(c.get(f), str) for f in fields)]
    noticed = d.get("noticed") if isinstance(d.get("noticed"), list) else []
    return {"changes": [{f: c[f] for f in ("at", *fields)} for c in changes][-KEPT:],
            "noticed": [k for k in noticed if isinstance(k, str)][:KEPT]}


def repeats(changes: list[dict], now: float) -> dict[tuple[str, str], dict]:
    """(pool, address) -> what was made again within WINDOW: {adds, deletes,
    first, target}; only those where one change was made twice in one state
    with no opposite change by spdu in between (the quorum, the self-check:
    spdu itself undid it, not something else)."""
    recent = [c for c in changes if -1.0 <= now - c["at"] <= WINDOW]
    out: dict[tuple[str, str], dict] = {}
    last: dict[tuple, tuple] = {}  # (pool, address) -> (action, state) of the last change
    undone: set[tuple] = set()
    for c in recent:
        k, did = (c["pool"], c["address"]), (c["action"], c["state"])
        if last.get(k) == did:
            undone.add(k)
        last[k] = did
    for pool, address in undone:
        mine = [c for c in recent if c["pool"] == pool and c["address"] == address]
        out[(pool, address)] = {
            "adds": sum(c["action"] == "add" for c in mine),
            "deletes": sum(c["action"] == "delete" for c in mine),
            "first": min(c["at"] for c in mine), "last": max(c["at"] for c in mine),
            "target": mine[-1]["target"] or "selfIP"}
    return out


def _times(n: int) -> str:
    return "once" if n == 1 else "twice" if n == 2 else f"{n} times"


def text(pool: str, address: str, r: dict) -> str:
    span = r["last"] - r["first"]
    did = " and ".join(f"{word} it {_times(n)}" for word, n in (("removed", r["deletes"]),
                                                              ("added", r["adds"])) if n)
    return (f"{pool}: this site {did} ({address}, {r['target']}) in {span:.0f} s, its"
            " target's state unchanged: something else undoes each change. Two writers with"
            " different views update this zone (two sites sharing one primary, a hidden"
            " primary?); give each site its own primary, or run spdu on one site only for"
            " this zone")


def note(spool_dir: str, plans, entries: dict, now: float) -> list:
    """Note the changes sent; the notices (key, level, Problem) of a flip-flop
    that began or ended. Call with the spool lock held. Never raises: it runs
    after an UPDATE went out, which must be recorded whatever this does."""
    try:
        return _note(spool_dir, plans, entries, now)
    except Exception as e:  # noqa: BLE001 - a record lost, no reconcile
        log.warning("the record of DNS changes is not updated: %s: %s", type(e).__name__,
                    str(e)[:200])
        return []


def _note(spool_dir: str, plans, entries: dict, now: float) -> list:
    from spdu_cli.spool import FILE_MODE, atomic_write
    from spdu_cli.trouble import Problem

    d = _load(spool_dir)
    sent = False
    for p in plans:
        if not p.sent or p.error is not None:
            continue
        for c in p.changes:
            if c.pruned:
                continue
            e = entries.get(c.target) if c.target else None
            state = f"{e.health.state.value} {e.health.since}" if e is not None else "self"
            d["changes"].append({"at": now, "pool": f"{p.pool.name} on {p.pool.where}",
                                 "action": c.action, "address": c.address,
                                 "target": c.target or "", "state": state})
            sent = True
    d["changes"] = [c for c in d["changes"] if -1.0 <= now - c["at"] <= WINDOW][-KEPT:]
    found = repeats(d["changes"], now)
    keys = [f"{pool} {addr}" for pool, addr in found]
    out = []
    for (pool, addr), r in found.items():
        if f"{pool} {addr}" not in d["noticed"]:
            out.append((f"flipflop {pool} {addr}", "WARNING",
                        Problem(text(pool, addr, r), False, f"{addr} flip-flops in {pool}")))
    for k in d["noticed"]:
        if k not in keys:
            pool, _, addr = k.rpartition(" ")
            out.append((f"flipflop {k}", "NOTICE", Problem(
                f"{pool}: {addr} has not been changed again for {WINDOW:g} s", False,
                f"{addr} flip-flops in {pool}")))
    if sent or out or keys != d["noticed"]:
        d["noticed"] = keys
        try:
            atomic_write(Path(spool_dir) / FLIPS_NAME,
                         json.dumps(d, indent=1).encode() + b"\n", FILE_MODE,
                         "record of DNS changes", sync=False)
        except SpduError as e:
            log.warning("%s", e)
    for _key, level, problem in out:
        log.warning("%s: %s", level, problem.text)
    return out


def standing(spool_dir: str, now: float) -> list[dict]:
    """The flip-flops within WINDOW, for status --peers."""
    d = _load(spool_dir)
    return [{"pool": pool, "address": addr, **r, "text": text(pool, addr, r)}
            for (pool, addr), r in repeats(d["changes"], now).items()]
