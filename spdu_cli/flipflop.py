"""Two writers of one zone, each with its own view (a hidden primary that two
sites update): each undoes the other's change, and spdu makes the same change
again and again without a word. reconcile notes each change it made in
spoolDir/.flips.json; the same change (action and address) made twice within
WINDOW seconds while its target stayed in one state (selfIP: always) means
something else undid it in between. Said once as a notice, and in `spdu
status --peers`; its end once too, when WINDOW passed without a repeat.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from spdu_cli.errors import SpduError

log = logging.getLogger(__name__)

FLIPS_NAME = ".flips.json"
WINDOW = 120.0  # s
KEPT = 64  # changes kept
MAX_FILE = 1 << 16


def _load(spool_dir: str) -> dict:
    from spdu_cli.spool import read_file

    try:
        data = read_file(Path(spool_dir) / FLIPS_NAME, MAX_FILE)
        d = json.loads(data) if len(data) <= MAX_FILE else None
    except (OSError, ValueError):
        return {"changes": [], "noticed": []}
    if not isinstance(d, dict) or not isinstance(d.get("changes"), list):
        return {"changes": [], "noticed": []}
    d["changes"] = [c for c in d["changes"] if isinstance(c, dict)
                    and isinstance(c.get("at"), int | float)]
    if not isinstance(d.get("noticed"), list):
        d["noticed"] = []
    return d


def repeats(changes: list[dict], now: float) -> dict[tuple[str, str], dict]:
    """(pool, address) -> what was made again within WINDOW: {adds, deletes,
    first, target}; only those where one change was made twice in one state."""
    recent = [c for c in changes if now - c["at"] <= WINDOW]
    out: dict[tuple[str, str], dict] = {}
    seen: dict[tuple, int] = {}
    for c in recent:
        k = (c.get("pool"), c.get("action"), c.get("address"), c.get("state"))
        seen[k] = seen.get(k, 0) + 1
    for (pool, _action, address, _state), n in seen.items():
        if n < 2:
            continue
        mine = [c for c in recent if c.get("pool") == pool and c.get("address") == address]
        out[(str(pool), str(address))] = {
            "adds": sum(c.get("action") == "add" for c in mine),
            "deletes": sum(c.get("action") == "delete" for c in mine),
            "first": min(c["at"] for c in mine), "last": max(c["at"] for c in mine),
            "target": mine[-1].get("target") or "selfIP"}
    return out


def text(pool: str, address: str, r: dict) -> str:
    span = r["last"] - r["first"]
    did = " and ".join(f"{word} it {n} times" for word, n in (("removed", r["deletes"]),
                                                              ("added", r["adds"])) if n)
    return (f"{pool}: this site {did} ({address}, {r['target']}) in {span:.0f} s, its"
            " target's state unchanged: something else undoes each change. Two writers with"
            " different views update this zone (two sites sharing one primary, a hidden"
            " primary?); give each site its own primary, or run spdu on one site only for"
            " this zone")


def note(spool_dir: str, plans, entries: dict, now: float) -> list:
    """Note the changes sent; the notices (key, level, Problem) of a flip-flop
    that began or ended. Call with the spool lock held."""
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
    d["changes"] = [c for c in d["changes"] if now - c["at"] <= WINDOW][-KEPT:]
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
