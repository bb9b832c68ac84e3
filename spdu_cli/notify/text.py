"""The words of a notice: subject and body, the same for a mail and a webhook
(pure; the original's subjects, plus what DNS did).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from spdu_cli import __version__
from spdu_cli.entry import duration
from spdu_cli.journal import JournalView, StateChange, address_list, clock, since, state_word
from spdu_cli.notify.outbox import Mail, Notice
from spdu_cli.selfcheck import SELF

MAX_SUBJECT = 150
CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # what a header may not hold


def _dns_lines(changes: Iterable[StateChange]) -> list[str]:
    actions = [d for c in changes for d in c.dns]
    if not actions:
        return [("DNS has not been changed yet (spdu reconcile has not recorded an update"
                 " for this change).")]
    return [f"DNS: {d.words()}." for d in actions]


def _history_line(view: JournalView, change: StateChange) -> str:
    prev = view.previous(change)
    if change.old == "unknown":
        return "Its state before was unknown (first probe, or the spool was reset)."
    if prev is None:
        return f"It had been {state_word(change.old)} since before the journal begins."
    return (
        f"It had been {state_word(change.old)} for {duration(since(prev, change))}"
        f" (since {clock(prev.at)})."
    )


def _self_text(view: JournalView, change: StateChange, tag: str) -> list[str]:
    """A change of this site's own service (the self-check, target `self`)."""
    who = f"{SELF} (this site, {tag}: {address_list(view)})"
    if change.new == "down":
        return [
            f"{who} is DOWN, as seen from {tag} itself.",
            (f"This site's own service stopped answering {view.url} at its own addresses"
             f" at {clock(change.at)}."),
            f"Last failure: {change.reason or 'not recorded'}",
            ("While it is down and a peer is up, this site's addresses (selfIP) leave its own"
             " pool, so that its DNS server stops sending clients to a dead service; with no"
             " peer up they stay (the pool is never emptied)."),
            _history_line(view, change),
        ]
    return [
        f"{who} is {state_word(change.new)}, as seen from {tag} itself.",
        f"This site's own service answers {view.url} since {clock(change.at)}"
        + (f": {change.reason}." if change.reason else "."),
        "Its addresses (selfIP) are in its own pool again.",
        _history_line(view, change),
    ]


def change_text(view: JournalView, change: StateChange, tag: str) -> list[str]:
    """One transition, as the original's mail said it, plus what DNS did."""
    who = f"{view.target} ({view.host}, {address_list(view)})"
    if view.target == SELF and "maint" not in (change.old, change.new):
        if change.new == "down" and not change.dns:  # kept: no peer up, or not yet reconciled
            return _self_text(view, change, tag) + [
                ("DNS: selfIP is still in the pool (no peer is up, or spdu reconcile has not"
                 " recorded an update for this change yet).")]
        return _self_text(view, change, tag) + _dns_lines([change])
    if change.new == "maint":
        lines = [
            (f"{who} is in maintenance until {clock(change.until)}, as set on {tag}"
             f" at {clock(change.at)}."),
            f"Reason: {change.reason or 'not given'}",
            ("Its addresses are taken out of the pool; probes go on, and decide again"
             " when the maintenance ends."),
            _history_line(view, change),
        ]
    elif change.old == "maint":
        lines = [
            (f"{who} is back from maintenance ({change.reason or 'ended'} at"
             f" {clock(change.at)}), and {state_word(change.new)} as seen from {tag}."),
            f"Probed at {view.url}.",
            _history_line(view, change),
        ]
    elif change.new == "down":
        lines = [
            f"{who} is DOWN, as seen from {tag}.",
            f"It stopped answering {view.url} at {clock(change.at)}.",
            f"Last failure: {change.reason or 'not recorded'}",
            _history_line(view, change),
        ]
    else:
        failure = view.last_failure(change)
        lines = [
            f"{who} is {state_word(change.new)}, as seen from {tag}.",
            f"It answers {view.url} since {clock(change.at)}"
            + (f": {change.reason}." if change.reason else "."),
            _history_line(view, change),
        ]
        if failure is not None and failure.id < change.id:
            lines.append(f"Last failure: {failure.reason or 'not recorded'}"
                         f" (at {clock(failure.at)})")
    return lines + _dns_lines([change])


def notice_text(n: Notice, tag: str) -> list[str]:
    v = n.view
    if not n.flapping:
        return change_text(v, n.changes[0], tag)
    first, last = n.changes[0], n.changes[-1]
    failure = v.last_failure(last)
    lines = [
        (f"{v.target} ({v.host}, {address_list(v)}) is flapping, as seen from {tag}:"
         f" {n.flapping} changes within {duration(v.flap_window)} (flapCount={v.flap_count})."),
        ("They are summarized here instead of one mail each; the next summary comes no"
         f" sooner than {clock(n.next_summary)}."),
        f"Now: {state_word(last.new)} since {clock(last.at)} ({v.url}).",
    ]
    if failure is not None:
        lines.append(f"Last failure: {failure.reason or 'not recorded'} (at {clock(failure.at)})")
    lines.append(f"Changes not mailed before ({clock(first.at)} to {clock(last.at)}):")
    lines += [
        f"  {clock(c.at)}  {state_word(c.old)} -> {state_word(c.new)}: {c.reason or '-'}"
        for c in n.changes
    ]
    return lines + _dns_lines(n.changes)


def original_subject(n: Notice) -> str | None:
    """The original's exact words for one change to up or down (mail filters
    match on them); None for what it never sent (maintenance, flapping)."""
    c = n.changes[-1]
    if n.flapping or len(n.changes) != 1 or "maint" in (c.old, c.new):
        return None
    if c.new == "down":
        return f"WARNING: Server {n.view.target} is DOWN."
    if c.new == "up":
        return f"NOTICE: Server {n.view.target} is up."
    return None


def subject(mail: Mail) -> str:
    """One change alone: the original's subject (`WARNING: Server beta is DOWN.`,
    `NOTICE: Server beta is up.`); maintenance and flap summaries in its style;
    a digest lists each target once with its latest state."""
    latest: dict[str, Notice] = {}
    for n in mail.notices:
        latest.pop(n.view.target, None)
        latest[n.view.target] = n
    flapping = {n.view.target for n in mail.notices if n.flapping}
    warn = flapping or any(n.final == "down" for n in latest.values())
    level = "WARNING" if warn else "NOTICE"
    if len(mail.notices) == 1:
        return original_subject(mail.notices[0]) or f"{level}: {mail.notices[0].headline()}"
    words = [
        f"{t} is flapping" if t in flapping else f"{t} is {state_word(n.final)}"
        for t, n in latest.items()
    ]
    text = f"{level}: {len(mail.changes)} changes: {', '.join(words)}"
    return text if len(text) <= MAX_SUBJECT else text[: MAX_SUBJECT - 3] + "..."


def body(mail: Mail) -> str:
    tag = mail.config.tag
    sections = [notice_text(n, tag) for n in mail.notices]
    if len(sections) > 1:
        head = [f"{len(mail.changes)} changes seen from {tag} since the last mail:"]
        head += [f"  - {n.headline()}" for n in mail.notices]
        sections.insert(0, head)
    text = ("\n\n" + "-" * 72 + "\n\n").join("\n".join(s) for s in sections)
    return f"{text}\n\n-- \nspdu {__version__} notify on {tag}\n"
