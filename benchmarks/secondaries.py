"""From spdu's UPDATE to the last secondary's new answer (NOTIFY, then IXFR).

Starts a Knot primary on 127.0.0.1 that NOTIFYs a BIND and a Knot secondary
(the tests' fixture code, each with its packaged defaults for NOTIFY and
transfers), then, run after run, has `spdu reconcile` remove a down site
from the pool or add it back, and polls each secondary (every 5 ms) until it
answers with the new pool. Prints min / median / max per secondary and for
the last of them.

Run: .venv/bin/python benchmarks/secondaries.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(ROOT))
from _common import VENV_BIN, machine  # noqa: E402

from spdu_cli.entry import SpoolEntry  # noqa: E402
from spdu_cli.health import Health, State  # noqa: E402
from spdu_cli.spool import Spool  # noqa: E402
from tests.dnsservers import BindServer, KnotServer, free_port  # noqa: E402

SELF, BETA = "192.0.2.1", "192.0.2.2"


def answer(server) -> list[str]:
    return server.query("api", "A", timeout=0.5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        ports = (free_port(), free_port())
        primary = KnotServer(tmp / "primary", notify=[("127.0.0.1", p) for p in ports])
        secs = []
        try:
            for cls, name, port in ((BindServer, "BIND 9 secondary", ports[0]),
                                    (KnotServer, "Knot secondary", ports[1])):
                s = cls(tmp / name.split()[0], primary=("127.0.0.1", primary.port), start=False)
                s.want_port = port
                secs.append((name, s.start(attempts=1)))
            spool = Spool(str(tmp / "spool"))
            spool.ensure_dir()
            conf = tmp / "spdu.conf"
            conf.write_text(f"domain=domain.tld\ntargets=beta\nspoolDir={spool.dir}\n"
                            f"nameServer=127.0.0.1\nnamePort={primary.port}\nselfCheck=no\nselfIP={SELF}\n"
                            "staleAfter=86400\n")
            os.chmod(conf, 0o644)
            (tmp / "spdu").mkdir()
            (tmp / "spdu" / "beta").write_text(f"targetIP={BETA}\n")
            times: dict[str, list[float]] = {name: [] for name, _ in secs}
            last = []
            for i in range(args.runs):
                state = State.DOWN if i % 2 == 0 else State.UP
                want = [SELF] if state is State.DOWN else [SELF, BETA]
                now = time.time() + 3600
                spool.write(SpoolEntry("beta", Health(state, now), checked=now, addresses=[BETA]))
                subprocess.run([str(VENV_BIN / "spdu"), "--config", str(conf), "reconcile"],
                               check=True, stdout=subprocess.DEVNULL)
                sent = time.monotonic()  # the UPDATE is answered before spdu exits
                pending = dict(secs)
                while pending and time.monotonic() - sent < 30:
                    for name, s in list(pending.items()):
                        if answer(s) == want:
                            times[name].append(time.monotonic() - sent)
                            del pending[name]
                    time.sleep(0.005)
                if pending:
                    raise SystemExit(f"run {i}: {', '.join(pending)} never answered {want}")
                last.append(max(t[-1] for t in times.values()))
        finally:
            for _, s in secs:
                s.stop()
            primary.stop()
    print(machine())
    print(f"UPDATE to the secondaries' new answer, {args.runs} runs (min / median / max):")
    for name, t in list(times.items()) + [("last secondary", last)]:
        print(f"  {name:18} {min(t):.3f} / {statistics.median(t):.3f} / {max(t):.3f} s")


if __name__ == "__main__":
    main()
