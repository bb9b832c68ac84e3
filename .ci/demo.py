"""Live local demo: two peer "sites" (HTTP status servers on 127.0.0.21 and
127.0.0.22), a configuration in the original spdu's format, and `spdu probe`
run every second while one site dies and comes back."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SPDU = str(Path(sys.executable).parent / "spdu")
SITES = {"beta": "127.0.0.21", "gamma": "127.0.0.22"}


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_site(root: Path, name: str, port: int) -> subprocess.Popen:
    docroot = root / f"www-{name}"
    docroot.mkdir(exist_ok=True)
    (docroot / "status").write_text("ok\n")
    return subprocess.Popen(
        [sys.executable, "-m", "http.server", "--bind", SITES[name], str(port)],
        cwd=docroot, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def wait_listening(address: str, port: int) -> None:
    for _ in range(100):
        try:
            socket.create_connection((address, port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"demo: the status server on {address}:{port} did not start")


def spdu(conf: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([SPDU, "-c", str(conf), *args], capture_output=True, text=True)


def tick(conf: Path, n: int) -> dict[str, str]:
    p = spdu(conf, "probe", "--json")
    if p.returncode not in (0, 1):
        raise SystemExit(f"demo: spdu probe failed ({p.returncode}): {p.stderr}")
    line = []
    states = {}
    for obj in map(json.loads, p.stdout.splitlines()):
        states[obj["target"]] = obj["state"]
        what = f"HTTP {obj['status']}" if obj["ok"] else obj["error"]
        change = f" <- {obj['transition']['from']}" if obj["transition"] else ""
        line.append(f"{obj['target']}={obj['state']}{change} ({what})")
    print(f"  t={n:>2}s  exit {p.returncode}  " + "  ".join(line), flush=True)
    return states


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="spdu-demo-") as tmp:
        root = Path(tmp)
        port = free_port()
        conf = root / "spdu.conf"
        conf.write_text(
            "#!/bin/sh\n# written the way the original spdu's users write theirs\n"
            'domain="domain.tld"\nmyTag="alpha"\n'
            f'probePort="{port}"\nprobeTimeout="1.0"\n'
            f'targets="beta gamma"\nspoolDir="{root}/spool"\n'
        )
        (root / "spdu").mkdir()
        for name, address in SITES.items():
            (root / "spdu" / name).write_text(f'targetIP="{address}"\n')
        for path in [conf, *(root / "spdu").iterdir()]:
            os.chmod(path, 0o644)

        servers = {name: start_site(root, name, port) for name in SITES}
        try:
            for name in SITES:
                wait_listening(SITES[name], port)
            say(f"configuration {conf} (spdu config show gamma, first lines)")
            print("\n".join(spdu(conf, "config", "show", "gamma").stdout.splitlines()[:4]))

            say("both sites up: spdu probe every second")
            n = 0
            for _ in range(2):
                tick(conf, n)
                n += 1
                time.sleep(1)

            say(f"gamma's status server ({SITES['gamma']}) stops")
            servers["gamma"].terminate()
            servers["gamma"].wait()
            while tick(conf, n).get("gamma") != "down":
                n += 1
                time.sleep(1)
            n += 1

            say("gamma comes back")
            servers["gamma"] = start_site(root, "gamma", port)
            wait_listening(SITES["gamma"], port)
            while tick(conf, n).get("gamma") != "up":
                n += 1
                time.sleep(1)

            say("gamma's journal of transitions, from the spool (what notify will mail)")
            data = json.loads((root / "spool" / "gamma.json").read_text())
            for j in data["journal"]:
                print(f"  #{j['id']} {j['at']}  {j['from']:>7} -> {j['to']:<5} {j['reason']}")
            say("done: a dead site is marked down after probeFall=2 failed probes, "
                "and up again after probeRise=2 good ones")
        finally:
            for p in servers.values():
                p.terminate()
                p.wait()


if __name__ == "__main__":
    main()
