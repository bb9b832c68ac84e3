"""The marks: what notify records in the spool per transition and channel
(sent, logged, the Message-ID about to carry it, notified once every channel
took it), always under the lock and re-reading each entry first.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from spdu_cli.entry import SpoolEntry, iso
from spdu_cli.journal import JournalView
from spdu_cli.notify.outbox import Notice
from spdu_cli.spool import Spool

log = logging.getLogger(__name__)

Marks = dict[str, dict[tuple[int, str], dict[str, Any]]]  # target -> transition -> fields


def _mark(entry: SpoolEntry, updates: dict[tuple[int, str], dict[str, Any]]) -> int:
    """Set the fields of each transition named; `sent` and `post_id` (per channel)
    are merged."""
    done = 0
    for e in entry.journal:
        fields = updates.get((e.get("id"), str(e.get("at"))))
        if fields:
            for name, value in fields.items():
                if name in ("sent", "post_id"):  # per channel: merged
                    e[name] = {**(e[name] if isinstance(e.get(name), dict) else {}), **value}
                else:
                    e[name] = value
            done += 1
    return done


def _settle(entry: SpoolEntry, view: JournalView, now: float) -> int:
    """Mark notified each transition of `view` that every channel it has now took
    (or that has no channel: mailTo and webhookURL empty, or a channel removed)."""
    pending = {c.key for c in view.pending()}
    need = view.channels()
    done = 0
    for e in entry.journal:
        if e.get("notified") or (e.get("id"), str(e.get("at"))) not in pending:
            continue
        if need <= set(e["sent"] if isinstance(e.get("sent"), dict) else ()):
            e.update(notified=True, notified_at=iso(now))
            done += 1
    return done


def write_marks(store: Spool, views: list[JournalView], marks: Marks, now: float,
                 lock_timeout: float) -> None:
    """Under the lock, re-reading each entry so transitions a concurrent probe added are kept."""
    targets = [v for v in views if v.target in marks or v.pending()]
    if not targets:
        return
    with store.locked(lock_timeout):
        for v in targets:
            updates = marks.get(v.target, {})
            entry = store.read(v.target)
            found = 0 if entry.fresh else _mark(entry, updates)
            if found < len(updates):
                log.warning("%s: the spool entry changed meanwhile; %d transition(s) not"
                            " found to mark", v.target, len(updates) - found)
            if found + (0 if entry.fresh else _settle(entry, v, now)):
                store.write(entry)


def sent_mark(marks: Marks, notices: Iterable[Notice], channel: str, now: float,
               **fields: Any) -> None:
    for n in notices:
        for c in n.changes:
            mark = marks.setdefault(n.view.target, {}).setdefault(c.key, {})
            mark.setdefault("sent", {})[channel] = {"at": iso(now), "flap": bool(n.flapping)}
            mark.update(fields)


def write_notes(store: Spool, marks: Marks, lock_timeout: float) -> None:
    """Set fields of journal entries (target -> (id, at) -> fields), under the
    lock, re-reading each entry so what a concurrent probe added is kept."""
    with store.locked(lock_timeout):
        for target, updates in marks.items():
            entry = store.read(target)
            found = 0 if entry.fresh else _mark(entry, updates)
            if found < len(updates):
                log.warning("%s: the spool entry changed meanwhile; %d transition(s) not"
                            " found to mark", target, len(updates) - found)
            if found:
                store.write(entry)
