"""How `spdu probe` scales: 1, 10, 100, 500 targets, half of them hostile.

The hostile half (--mix hostile, the default) takes turns among four peers:
a negative chunk size, a flood of one-byte chunks, a status line trickled a
byte at a time, and a server that accepts and never answers; with --mix hang
they all hang (the kernel's backlog accepts, nobody reads). The others are the
HTTP status server of probe_cost.py. probeMatch=ok is set, so the body of every
answer is read. Every target is probed at once, so the wall time should stay
about one probeTimeout (default 2 s) plus start-up, whatever the number of
targets; the script prints wall, CPU and peak memory (median of --runs) for
each size. With one target, that target is hostile.

Run: .venv/bin/python benchmarks/probe_scaling.py [--runs 3] [--sizes 1 10 100 500]
     [--mix hostile|hang]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import VENV_BIN, machine, measure, row
from probe_cost import Quiet, Server

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.rawserver import RawServer

CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


def _flood():
    yield CHUNKED
    for _ in range(500):
        yield b"1\r\nx\r\n" * 100


def _trickle():
    for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n":
        yield bytes([byte])
        yield 0.2


HOSTILE = {  # name -> the script of a tests/rawserver.py peer
    "negative chunk": lambda: [CHUNKED + b"-6\r\nstatus\r\n", "hang"],
    "chunk flood": _flood,
    "trickle": _trickle,
    "hang": lambda: ["hang"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 10, 100, 500])
    ap.add_argument("--timeout", default="2.0", help="probeTimeout (default: spdu's, 2.0)")
    ap.add_argument("--mix", choices=["hostile", "hang"], default="hostile",
                    help="what the bad half does (default: hostile, four kinds in turn)")
    args = ap.parse_args()

    up = Server(("127.0.0.1", 0), Quiet)
    threading.Thread(target=up.serve_forever, daemon=True).start()
    hang = socket.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen(4096)  # accepts (the kernel does), never reads
    peers = [RawServer("127.0.0.1", script) for script in HOSTILE.values()]
    bad_ports = ([p.port for p in peers] if args.mix == "hostile"
                 else [hang.getsockname()[1]])
    spdu = str(VENV_BIN / "spdu")
    results = []
    for n in args.sizes:
        hanging = (n + 1) // 2
        tmp = tempfile.mkdtemp(prefix="spdu-scale-")
        try:
            conf = Path(tmp) / "spdu.conf"
            names = [f"t{i}" for i in range(n)]
            conf.write_text(f"domain=bench.example\ntargets='{' '.join(names)}'\n"
                            f"spoolDir={tmp}/spool\ntargetIP=127.0.0.1\n"
                            f"probeTimeout={args.timeout}\nprobeMatch=ok\nsyslogSocket=none\n")
            os.chmod(conf, 0o644)
            (Path(tmp) / "spdu").mkdir()
            for i, name in enumerate(names):
                port = bad_ports[i % len(bad_ports)] if i < hanging else up.server_address[1]
                (Path(tmp) / "spdu" / name).write_text(f"probePort={port}\n")
            m = measure([spdu, "-c", str(conf), "probe"], args.runs, ok_codes=(1,))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        results.append((n, hanging, m))
        print(row(f"spdu probe: {n} targets, {hanging} {args.mix}", m), file=sys.stderr)
    up.shutdown()
    hang.close()
    for p in peers:
        p.stop()

    kinds = ", ".join(HOSTILE) if args.mix == "hostile" else "hang"
    print(f"spdu probe scaling, half the targets {args.mix} ({kinds}), probeTimeout"
          f" {args.timeout} s, probeMatch set ({machine()})")
    print(f"{'targets':>7} {'bad':>7} {'wall':>9} {'CPU':>9} {'peak memory':>12}")
    for n, hanging, m in results:
        print(f"{n:7d} {hanging:7d} {m['wall_ms']:7.0f}ms {m['cpu_ms']:7.0f}ms"
              f" {m['peak_mib']:8.1f} MiB   (median of {m['runs']})")


if __name__ == "__main__":
    main()
