"""What one `spdu probe` costs, next to the bare import of requests.

Starts a real HTTP status server on 127.0.0.1, writes a config for one target
and for 100 targets (on 127.0.0.1-100... all answering), and prints wall, CPU
and peak memory of `spdu probe` against `python -c "import requests"`.

Run: .venv/bin/python benchmarks/probe_cost.py [--runs N]
"""

from __future__ import annotations

import argparse
import http.server
import os
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import VENV_BIN, machine, measure, memory_verdict, row


class Quiet(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Server(http.server.ThreadingHTTPServer):
    request_queue_size = 1024  # 100 probes connect at once
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()

    srv = Server(("127.0.0.1", 0), Quiet)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    port = srv.server_address[1]
    spdu = str(VENV_BIN / "spdu")

    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "spdu.conf"
        many = " ".join(f"t{i}" for i in range(100))
        conf.write_text(
            f"domain=bench.example\ntargets='{many}'\nspoolDir={tmp}/spool\n"
            f"targetIP=127.0.0.1\nprobePort={port}\n"
        )
        os.chmod(conf, 0o644)
        (Path(tmp) / "spdu").mkdir()
        base = measure([sys.executable, "-c", "import requests"], args.runs)
        bare = measure([sys.executable, "-c", "pass"], args.runs)
        one = measure([spdu, "-c", str(conf), "probe", "t0"], args.runs)
        hundred = measure([spdu, "-c", str(conf), "probe"], max(3, args.runs // 3))

    print(f"spdu probe cost ({machine()})")
    print(row("python -c pass", bare))
    print(row('python -c "import requests"', base))
    print(row("spdu probe t0 (1 target, up)", one))
    print(row("spdu probe (100 targets, up)", hundred))
    print(f"ratio spdu probe t0 / import requests: wall {one['wall_ms'] / base['wall_ms']:.2f}"
          f"  cpu {one['cpu_ms'] / base['cpu_ms']:.2f}")
    print(memory_verdict("100 targets", hundred))
    srv.shutdown()


if __name__ == "__main__":
    main()
