"""Helpers for the benchmark scripts: run a command N times in a real child
process and report wall time, CPU time and peak memory (from wait4)."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

VENV_BIN = Path(sys.executable).parent


GNU_TIME = "/usr/bin/time"  # Debian's package `time`


def installed_env() -> dict[str, str]:
    """The environment of a measured run: spdu's modules byte-compiled once, as
    pip does at install, and read from their .pyc. (With PYTHONDONTWRITEBYTECODE
    set, as on some CI machines, every run would compile spdu from source: a
    cost no installed spdu pays.)"""
    import compileall

    import spdu_cli

    compileall.compile_dir(os.path.dirname(spdu_cli.__file__), quiet=1)
    return {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def measure(cmd: list[str], runs: int = 10, ok_codes=(0,)) -> dict[str, float]:
    """Median wall and CPU time, and the peak resident memory, of `cmd`.

    The peak comes from GNU time when it is installed: a child forked from
    this (large) Python process would count this process's pages in its own
    ru_maxrss before it execs, so wait4's figure is a floor of ~20 MiB, not
    the command's own peak. Without GNU time, that floor is what is printed.
    """
    walls, cpus, rss = [], [], []
    gnu_time = os.access(GNU_TIME, os.X_OK)
    env = installed_env()
    for _ in range(runs):
        argv = [GNU_TIME, "-f", "%M", *cmd] if gnu_time else cmd
        t = time.perf_counter()
        p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        err = p.stderr.read()
        _, status, usage = os.wait4(p.pid, 0)
        walls.append(time.perf_counter() - t)
        code = os.waitstatus_to_exitcode(status)
        if code not in ok_codes:
            raise SystemExit(f"{' '.join(cmd)} exited {code}: {err.decode()}")
        p.stderr.close()
        p.returncode = code
        cpus.append(usage.ru_utime + usage.ru_stime)
        if gnu_time:
            rss.append(int(err.decode().strip().splitlines()[-1]) / 1024)  # KiB -> MiB
        else:
            rss.append(usage.ru_maxrss / 1024)
    return {
        "wall_ms": statistics.median(walls) * 1000,
        "cpu_ms": statistics.median(cpus) * 1000,
        "peak_mib": max(rss),
        "runs": runs,
    }


def machine() -> str:
    """What the figures were measured on, for the heading of each script's output."""
    return f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}"


def row(name: str, m: dict[str, float]) -> str:
    return (f"{name:<44} wall {m['wall_ms']:7.1f} ms   cpu {m['cpu_ms']:7.1f} ms   "
            f"peak {m['peak_mib']:5.1f} MiB   (median of {m['runs']})")


MEMORY_LIMIT_MIB = 50  # one spdu process with 100 targets must stay under this


def memory_verdict(what: str, m: dict[str, float]) -> str:
    verdict = "ok" if m["peak_mib"] < MEMORY_LIMIT_MIB else "OVER"
    return f"{what} peak memory {m['peak_mib']:.1f} MiB (limit {MEMORY_LIMIT_MIB} MiB): {verdict}"
