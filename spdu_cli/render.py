"""Turn results into text for people (plain lines, or a table on a terminal)
and JSON for scripts. Nothing here decides anything; rich is imported only when
a table goes to a terminal."""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterable, Iterator
from datetime import UTC
from typing import Any

from spdu_cli import health, peerwait
from spdu_cli.config import TargetConfig
from spdu_cli.journal import state_word
from spdu_cli.settings import KEYS, check_value

MASK = "********"


def json_line(obj: Any) -> str:
    return json.dumps(obj, sort_keys=False, separators=(",", ":"), default=str)


# -- config show -----------------------------------------------------------------


def _addresses(cfg: TargetConfig) -> str:
    if cfg.target_ips:
        return " ".join(str(ip) for ip in cfg.target_ips) + (
            " (selfIP)" if cfg.is_self else " (targetIP)")
    return f"every A/AAAA address of {cfg.target_name}, resolved at each probe"


def derived(cfg: TargetConfig, low: peerwait.Floor | None = None) -> dict[str, Any]:
    """The values an operator wants to see spelled out, secrets left out. `low`:
    peerWait's minimum (peerwait.site_floor), None with the quorum off."""
    mail = cfg.mail
    return {
        "target": cfg.target,
        "files": list(cfg.files),
        "probe_type": cfg.probe_type,
        "probe_url": cfg.probe_url,
        "host_header": cfg.api_name if cfg.probe_type == "http" else None,
        "connect_to": [str(ip) for ip in cfg.target_ips] or None,
        "resolve": None if cfg.target_ips else cfg.target_name,
        "pool_name": cfg.pool_name,
        "pool_zone": cfg.pool_zone,
        "name_server": str(cfg.name_server),
        "name_port": cfg.name_port,
        "name_ttl": cfg.name_ttl,
        "tsig": cfg.tsig.to_json() if cfg.tsig else None,
        "tsig_key": cfg.tsig.describe() if cfg.tsig else None,  # deprecated: removed next release
        "self_ip": [str(ip) for ip in cfg.self_ips],
        "mail_to": list(mail.to) if mail else [],
        "smtp": f"{'smtps' if mail.ssl else 'smtp'}://{mail.relay}:{mail.port}" if mail else None,
        "spool_dir": cfg.spool_dir,
        "failover": failover(cfg).to_json(),
        "peer_wait_min": low.seconds if low else None,
    }


def failover(cfg: TargetConfig) -> health.Failover:
    return peerwait.failover_of(cfg)


def failover_text(cfg: TargetConfig) -> Iterator[str]:
    f = failover(cfg)
    probe = f"probeTimeout {cfg.probe_timeout:g} s x probeRetries {cfg.probe_retries}"
    yield (f"#   out of DNS within {f.out_refused:g} s if it refuses connections, "
           f"{f.out_hang:g} s if it hangs ({probe}), after probeFall={cfg.probe_fall};"
           f" {f.out_closed:g} s if its server process dies and closes the connection kept"
           f" from the last good probe")
    yield (f"#   back in DNS within {f.back:g} s after it answers again,"
           f" after probeRise={cfg.probe_rise}")
    yield (f"#   clients may keep the old answer nameTTL={cfg.name_ttl} s longer:"
           f" {f.out_refused + f.ttl:g} s / {f.out_hang + f.ttl:g} s out,"
           f" {f.back + f.ttl:g} s back (cron loop, interval {cfg.interval:g} s)")
    measured = health.CLIENTS_LINK_P95
    yield (f"#   measured through Unbound, BIND and PowerDNS Recursor, spdu's defaults and"
           f" nameTTL=5: a site whose link went down left every client's answers within"
           f" {measured['out']:g} s (p95) and was back in them within {measured['back']:g} s"
           f" of its repair; each second more of nameTTL may add a second to both")
    yield (f"#   keep the pool zone's SOA minimum, or its SOA record's TTL if that is lower,"
           f" at or below nameTTL={cfg.name_ttl}: resolvers cache a NODATA or NXDOMAIN"
           f" answer for the lesser of the two")
    if cfg.self_ips and not check_value("selfCheck", cfg.settings["selfCheck"]):
        yield ("#   selfCheck=no: a site whose service refuses or hangs while its DNS server"
               " answers stays in its own server's answers (selfIP), and resolvers that ask"
               " that server pass them on")


def effective_settings(cfg: TargetConfig) -> dict[str, dict[str, str]]:
    """Every key with its value as used (names completed) and its source."""
    completed = {
        "apiName": cfg.api_name,
        "poolName": cfg.pool_name,
        "poolZone": cfg.pool_zone,
        "targetName": cfg.target_name,
    }
    out: dict[str, dict[str, str]] = {}
    for key, spec in KEYS.items():
        s = cfg.settings.get(key)
        value = completed.get(key, s.value if s else "")
        source = s.source if s else "unset (no default here)"
        if s and value != s.value:
            dotted_pool = key == "poolZone" and "." in cfg.settings["poolName"].value
            source = "from poolName" if dotted_pool else f"{source}, completed"
        if spec.secret and value:
            value = MASK
        out[key] = {"value": value, "source": source}
    return out


def config_json(cfg: TargetConfig, low: peerwait.Floor | None = None) -> dict[str, Any]:
    return {**derived(cfg, low), "settings": effective_settings(cfg)}


def _probe_words(cfg: TargetConfig) -> str:
    if cfg.probe_type == "http":
        return f"GET {cfg.probe_url} (Host: {cfg.api_name})"
    words = f"TCP connect to port {cfg.probe_port}"
    if cfg.probe_ssl:
        words += f", TLS with {cfg.api_name} as SNI and certificate name"
    if cfg.probe_match:
        words += f", banner must contain {cfg.probe_match!r}"
    return words + " (probeType=tcp: probePath and probeCodes do not apply)"


def config_text(cfg: TargetConfig, low: peerwait.Floor | None = None) -> Iterator[str]:
    """The effective configuration, in the config file's own syntax."""
    d = derived(cfg, low)
    yield f"# target {cfg.target}: {', '.join(cfg.files)}"
    yield f"#   probe: {_probe_words(cfg)} at {_addresses(cfg)}"
    signed = f"signed with {d['tsig_key']}" if cfg.tsig else "unsigned"
    yield (
        f"#   pool:  {d['pool_name']} in zone {d['pool_zone']} on "
        f"{d['name_server']} port {d['name_port']}, TTL {d['name_ttl']}, {signed}"
    )
    if cfg.is_self:
        yield ("#   self: this site's own service (selfCheck=yes); while it is down and a peer"
               " is up, selfIP leaves the pool")
    elif cfg.self_ips and not check_value("selfCheck", cfg.settings["selfCheck"]):
        yield f"#   always in the pool: {' '.join(d['self_ip'])} (selfIP, selfCheck=no)"
    elif cfg.self_ips:
        yield (f"#   in the pool while target self answers (selfCheck=yes):"
               f" {' '.join(d['self_ip'])} (selfIP)")
    if cfg.mail:
        yield f"#   mail:  {' '.join(cfg.mail.to)} via {d['smtp']} from {cfg.mail.sender}"
    else:
        yield "#   mail:  none (mailTo is empty)"
    yield from failover_text(cfg)
    if low is not None:
        wait = check_value("peerWait", cfg.settings["peerWait"])
        if not cfg.settings["peerWait"].file and wait < low.seconds:
            yield (f"#   peerWait not set: its default {wait:g} s is raised to its minimum,"
                   f" {low.seconds:g} s")
            wait = low.seconds
        yield (f"#   peerWait={wait:g}: at least {low.seconds:g} s ({low.why()}), or a peer"
               f" dead for every site is taken back into every pool (peerQuorum=yes)")
    rows = effective_settings(cfg)
    width = max(len(k) + len(shlex.quote(v["value"] or "''")) for k, v in rows.items()) + 3
    for key, row in rows.items():
        assignment = f"{key}={shlex.quote(row['value']) if row['value'] else chr(39) * 2}"
        yield f"{assignment:<{width}}# {row['source']}"


def check_json(path: str, targets: list[str], warnings: list[str],
               error: str | None = None) -> dict[str, Any]:
    """config check --json: valid or not, what was checked, the warnings."""
    return {"file": path, "valid": error is None, "targets": targets,
            "warnings": warnings, "error": error}


def keygen_json(made, servers, snippets: dict[str, str], configured: bool) -> dict[str, Any]:
    """keygen --json: the key (never its secret), the files written, the snippets."""
    return {"tsig": {**made.key.to_json(), "source": made.key_file},
            "server_files": {s: made.server_files[s] for s in servers},
            "snippets": snippets, "configured": configured}


def tally_json(tally) -> dict[str, Any]:
    """cron --json: what the loop did, its summary line as an object."""
    return {"ticks": tally.ticks, "probes": tally.probes, "reconciles": tally.reconciles,
            "notifies": tally.notifies, "failures": dict(tally.failures),
            "status": tally.last_error or 0}


def lines(rows: Iterable[str]) -> str:
    return "\n".join(rows)


# -- probe ---------------------------------------------------------------------------


def probe_lines(reports) -> Iterator[str]:
    """One aligned line per target: state, latency, reason, and any change."""
    width = max((len(r.result.target) for r in reports), default=0)
    for rep in reports:
        r = rep.result
        latency = f"{r.latency_ms:>8.1f} ms" if r.latency_ms is not None else f"{'-':>11}"
        line = f"{r.target:<{width}}  {rep.health.state.value:<7} {latency}  {r.summary}"
        if r.ok is None:
            line += " (inconclusive: state unchanged)"
        elif rep.transition:
            line += f"  [was {rep.transition['from']}]"
        elif not r.ok and rep.health.state.value == "up":
            line += f"  [failing {rep.health.bad}x, still up]"
        elif r.ok and rep.health.state.value == "down":
            line += f"  [good {rep.health.good}x, still down]"
        if rep.spool_error:
            line += f"  (spool not written: {rep.spool_error})"
        yield line


# -- reconcile -----------------------------------------------------------------------


def reconcile_lines(plans) -> Iterator[str]:
    for p in plans:
        head = f"{p.pool.name} on {p.pool.where}:"
        if p.error and p.sent:  # made, but its DNSSEC signatures are not good
            yield f"{head} {', '.join(_changes(p))}; error: {p.error}"
        elif p.error:
            yield f"{head} error: {p.error}"
        elif p.decision.blocked:
            yield f"{head} withheld: {p.decision.blocked}"
        elif p.in_sync:
            yield f"{head} {_in_sync(p)}{_left(p)}"
        else:
            done = "" if p.sent else " (not sent)"
            yield f"{head} {', '.join(_changes(p))}{done}"


def _changes(plan) -> list[str]:
    return [f"{'added' if c.action == 'add' else 'removed'} {c.address}"
            f" ({c.target or ('of no target' if c.pruned else 'selfIP')})"
            for c in plan.changes]


def reconcile_script(plans) -> Iterator[str]:
    """--dry-run: what would be sent, as input for nsupdate/knsupdate: one block
    (one UPDATE) per zone and server."""
    from spdu_cli.plan import zone_script

    blocks: dict[tuple, list] = {}
    for p in plans:
        if p.error:
            yield f"; {p.pool.name} on {p.pool.where}: error: {p.error}"
        elif p.decision.blocked:
            yield f"; {p.pool.name} on {p.pool.where}: withheld: {p.decision.blocked}"
        elif p.in_sync:
            yield f"; {p.pool.name} on {p.pool.where}: {_in_sync(p)}"  # the notes follow
        else:
            key = (p.pool.zone, p.pool.server, p.pool.port, p.signed_with)
            blocks.setdefault(key, []).append(p)
        for target, why in p.decision.left.items():
            yield f"; {target}: {why}"
    for group in blocks.values():
        yield zone_script(group).rstrip("\n")


def _in_sync(plan) -> str:
    """"in sync" only when every target could be judged: else what it is."""
    n = len(plan.decision.left)
    if not n:
        return "in sync, nothing to send"
    return (f"nothing to send for the targets it can judge; {n} target{'s' * (n > 1)}"
            " left as they are, DNS not checked for them")


def _left(plan) -> str:
    """Name the targets left alone."""
    left = plan.decision.left
    if not left:
        return ""
    alone = "; ".join(f"{t}: {w}" for t, w in left.items())
    return f": {alone}"


# -- notify --------------------------------------------------------------------------


def notify_lines(outcome) -> Iterator[str]:
    """One line per mail (sent, or why not), per held flapping target, per silent mark."""
    for d in outcome.deliveries:
        subject = d.message["Subject"]
        targets = ", ".join(dict.fromkeys(t for t, _ in d.mail.changes))
        if d.error:
            yield f"not sent: {subject!r} ({targets}): {d.error}"
            continue
        to = [a for a in d.mail.config.to if a not in d.refused]
        line = f"sent {subject!r} to {', '.join(to)}"
        if d.refused:
            line += f" (refused: {', '.join(d.refused)})"
        yield line
    for x in outcome.posts:
        targets = ", ".join(dict.fromkeys(t for t, _ in x.post.changes))
        if x.error:
            yield f"not posted ({targets}): {x.error}"
        else:
            yield f"posted {len(x.post.changes)} change(s) ({targets}) to {x.post.config.where}"
    for n in outcome.notices:
        took = [ch for ch, e in n.sent.items() if e is None]
        line = f"sent {n.subject!r} ({', '.join(took)})" if took else f"not sent: {n.subject!r}"
        yield line + (f": {n.error}" if n.error else "")
    yield from notify_held(outcome)
    silent = [v.target for v, _ in outcome.plan.silent]
    for target in dict.fromkeys(silent):
        yield (f"{target}: {silent.count(target)} change(s) marked without mail or webhook"
               " (mailTo and webhookURL are empty)")


def notify_held(outcome) -> Iterator[str]:
    """What a flapping target's summary holds back, and when it is due."""
    for h in outcome.plan.held:
        where = "" if h.channel == "mail" else " (webhook)"
        yield (f"held: {h.view.target} is {state_word(h.changes[-1].new)}, flapping;"
               f" {len(h.changes)} change(s) held{where} for the summary due at"
               f" {stamp(h.until)}")


def notify_unmailed(outcome) -> Iterator[str]:
    """--dry-run: the pending changes no mail will carry, and why."""
    for v, c in outcome.plan.silent:
        yield (f"; {v.target}: {c.old} -> {c.new} at {stamp(c.at)} is not mailed: mailTo is"
               " empty (it is logged to syslog only)")
    for h in outcome.plan.held:
        yield (f"; {h.view.target}: flapping; {len(h.changes)} change(s) held for the summary"
               f" due at {stamp(h.until)}")


def notify_messages(outcome) -> Iterator[str]:
    """--dry-run: each mail as it would be sent, headers and body; then each webhook
    POST (its URL's path and the token left out); then each certificate notice."""
    for d in outcome.deliveries:
        yield d.message.as_string().rstrip("\n") + "\n"
    for x in outcome.posts:
        yield x.sending.request.shown(x.post.config)
    for n in outcome.notices:
        yield f"Subject: {n.subject}\n\n{n.text}\n"


# -- tables: rich on a terminal, aligned plain lines elsewhere ---------------------------


CUT = ("LAST PROBE", "MAINT", "DNS", "REASON")  # free text: what a narrow terminal cuts


def table(headers: list[str], rows: list[list[str]], width: int | None = None) -> str:
    """A rich table, with colour codes, for a terminal (imports rich only here).
    One line per row: a cell too long for the terminal is cut with an ellipsis
    (the plain lines of a pipe and --json keep it whole)."""
    import io

    from rich import box
    from rich.console import Console
    from rich.table import Column, Table

    console = Console(file=io.StringIO(), force_terminal=True, width=width)
    widest = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    cut = [h for h in headers if h in CUT]
    fixed = sum(w for h, w in zip(headers, widest) if h not in CUT)
    room = console.width - fixed - 3 * len(headers) - 1
    given: dict[str, int] = {}
    for n, (w, h) in enumerate(sorted((w, h) for h, w in zip(headers, widest) if h in CUT)):
        given[h] = max(8, min(w, room // (len(cut) - n)))  # the narrow ones first: the rest
        room -= given[h]  # is shared by the wide ones
    columns = [Column(h, no_wrap=True, overflow="ellipsis", width=given[h])
               if h in CUT else Column(h, no_wrap=True, min_width=w)
               for h, w in zip(headers, widest)]
    t = Table(*columns, box=box.SIMPLE_HEAD)
    for row in rows:
        t.add_row(*row)
    console.print(t)
    return console.file.getvalue().rstrip("\n")


def aligned(rows: list[list[str]]) -> Iterator[str]:
    """Columns padded to their widest cell, two spaces apart; no header."""
    widths = [max(len(c) for c in col) for col in zip(*rows)] if rows else []
    for row in rows:
        yield "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()


def stamp(ts: float | None) -> str:
    """The one form of a time for people: 2026-11-30 18:40:34Z (UTC)."""
    from datetime import datetime

    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


# -- status ------------------------------------------------------------------------------


STATUS_HEADERS = ["TARGET", "STATE", "FOR", "LATENCY", "LAST PROBE", "PENDING", "MAINT"]


def status_headers(statuses, dns: bool = False) -> list[str]:
    """The table's columns: CERT when a target shown has a certificate (TLS)."""
    return (STATUS_HEADERS + (["CERT"] if _certs(statuses) else [])
            + (["DNS"] if dns else []))


def _certs(statuses) -> bool:
    return any(s.cert is not None for s in statuses)


def _cert_cell(s, now: float, table: bool) -> str:
    """The certificate last seen: how long it has left (a table: that alone)."""
    from spdu_cli.entry import duration

    c = s.cert
    if c is None:
        return "-"
    if c.not_after is None:
        return "notAfter unreadable"
    left = c.not_after - now
    if table:
        words = f"{duration(left)} left" if left > 0 else "expired"
        return f"{words}: renew" if s.expiring else words
    when = (f"expires {stamp(c.not_after)} (in {duration(left)})" if left > 0
            else f"expired {stamp(c.not_after)} ({duration(-left)} ago)")
    return f"{when}, within certWarnDays {s.cert_warn_days}" if s.expiring else when


def _dns_cell(s) -> str:
    d = s.dns
    if d is None:
        return "-"
    if d.error:
        return f"error: {d.error}"
    mine = [f"would {'add' if a == 'add' else 'remove'} {addr}" for a, addr, t in d.changes
            if t == s.target]
    if d.blocked and not mine:
        return "withheld: would empty the pool"
    if mine:
        return ", ".join(mine)
    if s.target in d.left:
        return f"left as is: {d.left[s.target]}"
    return "in sync" if d.in_sync else "agrees (other changes pending)"


def status_rows(statuses, now: float, dns: bool = False, table: bool = False) -> list[list[str]]:
    """`table`: for a terminal of 80 columns: how long in the state and in
    maintenance, not since and until when. The columns: status_headers."""
    from spdu_cli.entry import duration

    rows = []
    cert = _certs(statuses)
    for s in statuses:
        spent = now - s.since if s.seconds is None and s.since is not None else s.seconds
        if s.since is None:
            since = "-"
        elif table:
            since = duration(spent)
        else:
            since = f"since {stamp(s.since)} ({duration(spent)})"
        latency = "-" if not s.last or s.last.latency_ms is None else f"{s.last.latency_ms:.1f} ms"
        m = s.maint
        if m is None:
            maint = "-"
        else:
            left = f"{duration(m.until - now)} left" if table else f"until {stamp(m.until)}"
            maint = left + (f": {m.reason}" if m.reason else "")
        row = [s.target, s.state, since, latency, s.reason or "never probed", str(s.pending), maint]
        if cert:
            row.append(_cert_cell(s, now, table))
        rows.append(row + [_dns_cell(s)] if dns else row)
    return rows


def status_lines(statuses, now: float, dns: bool = False) -> Iterator[str]:
    """Plain lines for a pipe: each field labelled where a bare value would be unclear."""
    rows = status_rows(statuses, now, dns)
    cert = _certs(statuses)
    for r in rows:
        r[5] = f"pending {r[5]}"
        r[6] = "maint -" if r[6] == "-" else f"maint {r[6]}"
        if cert:
            r[7] = f"cert {r[7]}"
        if dns:
            r[-1] = f"dns {r[-1]}"
    yield from aligned(rows)


def server_lines(statuses, now: float) -> Iterator[str]:
    """One line per authoritative server of each pool read with --dns."""
    seen = set()
    for s in statuses:
        d = s.dns
        if d is None or d.error or (d.pool, d.server) in seen:
            continue
        seen.add((d.pool, d.server))
        if d.dnssec_problem:
            from spdu_cli.entry import epoch

            p = d.dnssec_problem
            yield f"{d.pool}: bad DNSSEC signatures since {stamp(epoch(p['since']))}: {p['text']}"
        if d.servers_error:
            yield f"{d.pool}: servers not checked: {d.servers_error}"
        for v in d.servers:
            name = f" ({v.view.ns.rstrip('.')})" if v.view.ns else ""
            signing = "" if v.view.error else (
                f", signed, earliest RRSIG expiry {stamp(v.view.rrsig_expires)}"
                if v.view.signed else ", unsigned")
            yield (f"{d.pool} on {v.view.address}:{v.view.port}{name}: {v.describe(now)}"
                   f"{signing}")


# -- status --peers ----------------------------------------------------------------------


def peers_rows(rep: dict) -> tuple[list[str], list[list[str]]]:
    """One row per site's view: which sites it serves now, since when."""
    from spdu_cli.entry import epoch

    owners = rep["owners"]
    headers = ["VIEW OF", "SERVER", *[o.upper() for o in owners], "SINCE", "ERROR"]
    rows = []
    for name, v in rep["sites"].items():
        me = " (this site)" if name == rep["self"] else ""
        cells = [("yes" if o in v["serves"] else "no") if v["fresh"] else "?" for o in owners]
        rows.append([name + me, v["server"] or "-", *cells,
                     stamp(epoch(v["since"])) if v["since"] else "-", v["error"] or "-"])
    return headers, rows


def peers_notes(rep: dict) -> Iterator[str]:
    if rep["source"] == "off":
        yield "no views: peerViews=no (none is read)"
    else:
        by = "read by the cron loop" if rep["source"] == "loop" else "read now"
        yield f"views {by} at {rep['read_at']}"
    for s in rep["splits"]:
        yield f"split: {s['text']}"
    for f in rep["flipflops"]:
        yield f"flip-flop: {f['text']}"
    for target, why in sorted(rep["held"].items()):
        yield f"kept: {target}: {why}"


def peers_lines(rep: dict) -> Iterator[str]:
    """Plain lines for a pipe: each site's view labelled."""
    rows = peers_rows(rep)[1]
    owners = rep["owners"]
    out = []
    for r in rows:
        cells = [f"{o}={c}" for o, c in zip(owners, r[2:2 + len(owners)])]
        out.append([r[0], r[1], *cells, f"since {r[-2]}", f"error {r[-1]}"])
    yield from aligned(out)
    yield from peers_notes(rep)


# -- history -----------------------------------------------------------------------------


def availability_line(h) -> str:
    from spdu_cli.entry import duration

    sec = h.seconds
    if h.start is None:
        return f"{h.target}: no transitions recorded yet"
    a = h.availability
    share = "n/a (never up or down)" if a is None else f"{100 * a:.2f} %"
    return (
        f"{h.target}: availability {share} from {stamp(h.start)} to {stamp(h.end)}"
        f" (up {duration(sec['up'])}, down {duration(sec['down'])}; not counted:"
        f" maintenance {duration(sec['maint'])}, unknown {duration(sec['unknown'])})"
    )


HISTORY_HEADERS = ["AT", "CHANGE", "FOR", "REASON", "MAILED"]


def history_rows(h) -> list[list[str]]:
    from spdu_cli.entry import duration

    return [
        [stamp(p.at), f"{p.old} -> {p.new}",
         duration(p.seconds) + (" (now)" if p.current else ""), p.reason or "-",
         "yes" if p.notified else "no"]
        for p in h.periods
    ]
