"""What one no-op `spdu reconcile` costs, next to the bare import of dnspython.

Starts a real knotd on 127.0.0.1 (the tests' fixture code), writes a spool in
which every target is up and already in the pool, and prints wall, CPU and
peak memory of `spdu reconcile` (which reads the RRsets and sends nothing)
against `python -c "import dns.message, dns.query, dns.update"`.

Run: .venv/bin/python benchmarks/reconcile_cost.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(ROOT))
from _common import VENV_BIN, machine, measure, memory_verdict, row  # noqa: E402

from spdu_cli.entry import SpoolEntry  # noqa: E402
from spdu_cli.health import Health, State  # noqa: E402
from spdu_cli.spool import Spool  # noqa: E402
from tests.dnsservers import KnotServer  # noqa: E402


def setup(tmp: Path, n: int) -> tuple[KnotServer, Path]:
    addrs = [f"10.0.{i // 250}.{i % 250 + 1}" for i in range(n)]
    knot = KnotServer(tmp / "knot", records=[("api", "A", a) for a in addrs])
    spool = Spool(str(tmp / "spool"))
    spool.ensure_dir()
    now = time.time() + 3600  # fresh for the whole benchmark (staleAfter)
    conf = tmp / "spdu.conf"
    names = [f"t{i}" for i in range(n)]
    conf.write_text(
        f"domain=domain.tld\ntargets='{' '.join(names)}'\nspoolDir={spool.dir}\n"
        f"nameServer=127.0.0.1\nnamePort={knot.port}\nstaleAfter=86400\n")
    os.chmod(conf, 0o644)
    (tmp / "spdu").mkdir()
    for name, a in zip(names, addrs):
        (tmp / "spdu" / name).write_text(f"targetIP={a}\n")
        spool.write(SpoolEntry(name, Health(State.UP, now), checked=now, addresses=[a]))
    return knot, conf


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    spdu = str(VENV_BIN / "spdu")
    with tempfile.TemporaryDirectory() as tmp:
        knot1, conf1 = setup(Path(tmp) / "one", 1)
        knot100, conf100 = setup(Path(tmp) / "hundred", 100)
        try:
            serials = (knot1.serial(), knot100.serial())
            bare = measure([sys.executable, "-c", "pass"], args.runs)
            base = measure([sys.executable, "-c", "import dns.message, dns.query, dns.update"],
                           args.runs)
            one = measure([spdu, "-c", str(conf1), "reconcile"], args.runs)
            hundred = measure([spdu, "-c", str(conf100), "reconcile"], max(3, args.runs // 3))
            unchanged = serials == (knot1.serial(), knot100.serial())
        finally:
            knot1.stop()
            knot100.stop()

    print(f"spdu reconcile cost, nothing to change ({machine()})")
    print(row("python -c pass", bare))
    print(row("python -c 'import dns.message, dns.query, dns.update'", base))
    print(row("spdu reconcile (1 target, in sync)", one))
    print(row("spdu reconcile (100 targets, in sync)", hundred))
    print(f"ratio spdu reconcile / import dnspython: wall {one['wall_ms'] / base['wall_ms']:.2f}"
          f"  cpu {one['cpu_ms'] / base['cpu_ms']:.2f}")
    print(f"zone serials unchanged (nothing sent): {'yes' if unchanged else 'NO'}")
    print(memory_verdict("100 targets", hundred))


if __name__ == "__main__":
    main()
