"""Metrics: the spool as a Prometheus text exposition file (node_exporter's
textfile collector format), written atomically to `metricsFile`.

Counters live in the spool (each target's `counters` and `next_id`, and
spoolDir/.reconcile.json per pool), so they keep counting across processes.
`write` is called after each probe, reconcile and notify run, and by the cron
loop; it reads the spool without the lock (its files are replaced atomically).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from pathlib import Path

from spdu_cli.entry import epoch
from spdu_cli.errors import SpduError
from spdu_cli.spool import Spool, atomic_write

log = logging.getLogger(__name__)

FILE_MODE = 0o644  # node_exporter runs as another user


def _labels(labels: dict[str, str]) -> str:
    def esc(v: str) -> str:
        return str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{esc(v)}"' for k, v in labels.items()) + "}"


def _value(v: float) -> str:
    return str(int(v)) if float(v).is_integer() and abs(v) < 1 << 53 else repr(float(v))


class Exposition:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help: str,
               samples: Iterable[tuple[dict[str, str], float | None]]) -> None:
        self.lines += [f"# HELP {name} {help}", f"# TYPE {name} {kind}"]
        self.lines += [f"{name}{_labels(labels)} {_value(v)}" for labels, v in samples
                       if v is not None]

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def exposition(site, now: float | None = None, lag: float | None = None) -> str:
    """Every metric, from the spool of the configured targets; `lag`: the cron
    loop's (spdu_cli.lag), which only it knows."""
    now = time.time() if now is None else now
    store = Spool(site.spool_dir)
    entries = [store.read(t) for t in site.targets]
    pools = store.read_reconcile()
    out = Exposition()

    def per_target(name, kind, help, value):
        out.family(name, kind, help, [({"target": e.target}, value(e)) for e in entries])

    per_target("spdu_target_up", "gauge",
               "1 when the target's probed state is up, else 0 (down or unknown).",
               lambda e: int(e.health.state.value == "up"))
    per_target("spdu_target_maintenance", "gauge",
               "1 while the target is in maintenance (spdu maint), else 0.",
               lambda e: int(e.maint is not None and e.maint.active(now)))
    out.family("spdu_target_state", "gauge", "1 for the target's probed state.",
               [({"target": e.target, "state": s}, int(e.health.state.value == s))
                for e in entries for s in ("up", "down", "unknown")])
    per_target("spdu_probe_latency_seconds", "gauge",
               "Time to the answer of the last probe that got one.",
               lambda e: e.results[-1].latency_ms / 1000
               if e.results and e.results[-1].latency_ms is not None else None)
    per_target("spdu_probe_last_timestamp_seconds", "gauge", "When the target was last probed.",
               lambda e: e.results[-1].at if e.results else None)
    per_target("spdu_probes_total", "counter", "Probes of the target.",
               lambda e: e.counters["probes"])
    per_target("spdu_probe_failures_total", "counter",
               "Failed probes (not counting inconclusive ones).",
               lambda e: e.counters["probe_failures"])
    per_target("spdu_transitions_total", "counter",
               "Changes of state journaled (to and from maintenance included).",
               lambda e: e.next_id - 1)
    per_target("spdu_notifications_pending", "gauge", "Transitions not mailed yet.",
               lambda e: len(e.pending()))
    tls = [e for e in entries if e.cert is not None and e.cert.not_after is not None]
    out.family("spdu_ssl_earliest_cert_expiry", "gauge",
               "When the certificate the target's TLS peer last sent expires (Unix time; of"
               " its addresses', the first), as blackbox_exporter's"
               " probe_ssl_earliest_cert_expiry.",
               [({"target": e.target}, e.cert.not_after) for e in tls])
    out.family("spdu_ssl_cert_seconds_to_expiry", "gauge",
               "Seconds until that certificate expires (negative: expired).",
               [({"target": e.target}, round(e.cert.not_after - now)) for e in tls])
    recs = sorted(pools.values(), key=lambda p: (str(p.get("pool")), str(p.get("server"))))

    def pool_label(p):
        return {"pool": str(p.get("pool")), "server": str(p.get("server"))}

    out.family("spdu_dns_updates_total", "counter", "DNS UPDATEs the server accepted.",
               [(pool_label(p), p.get("updates", 0)) for p in recs])
    out.family("spdu_reconcile_last_success_timestamp_seconds", "gauge",
               "When reconcile last read the pool and made it agree (or found it did).",
               [(pool_label(p), epoch(p.get("last_success"))) for p in recs])
    from spdu_cli import peerreport  # the peers' views, as the loop last read them

    peerreport.metrics(out, site, {e.target: e for e in entries}, now)
    if lag is not None:
        out.family("spdu_probe_lag_seconds", "gauge",
                   "How late the cron loop's latest probe run started against the schedule"
                   " of its most overdue target (0: on time).", [({}, lag)])
    return out.text()


def write_after_run(site, lag: float | None = None) -> None:
    """write(), after a command or a tick: a failure is a warning, it does not
    change the run's exit status."""
    try:
        write(site, lag=lag)
    except SpduError as e:
        log.warning("metrics: %s", e)


def write(site, now: float | None = None, lag: float | None = None) -> str | None:
    """Write the metrics to `metricsFile` (nothing when it is empty); the path
    written, or None. A failed write raises TemporaryFailure and keeps the old file."""
    path = site.metrics_file
    if not path:
        return None
    atomic_write(Path(path), exposition(site, now, lag).encode(), FILE_MODE, "metrics file")
    return path
