"""Live local demo of spdu's main job, on loopback, in about fifteen seconds.

* Knot DNS on 127.0.0.1 (a free port) serves pool.domain.tld; the pool is
  api.pool.domain.tld, and Knot takes unsigned updates from 127.0.0.1 (as the
  original spdu's setup does). At first it holds only this site, 192.0.2.1.
* Two peer "sites", beta and gamma: HTTP status servers on 127.0.0.21 and
  127.0.0.22 answering /status.
* An SMTP sink (aiosmtpd, in this process) that keeps every mail spdu sends;
  the demo prints them.
* A configuration in the original spdu's format, and the cron loop running in
  the background as cron would run it: `spdu -c CONF -v cron`.

Then gamma's status server stops and starts again; each time the pool answer
of the real client (`kdig`) is printed, with how long the change took, and the
mails that went out. Everything is stopped and removed at the end, also on
Ctrl-C or an error. Exit 0 when every stage happened; 1 (with the stage and
the loop's log) when one did not within STAGE_TIMEOUT seconds.
"""

from __future__ import annotations

import email
import email.policy
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.dnsservers import KnotServer, ServerError, require_binary  # noqa: E402

STAGE_TIMEOUT = 20.0  # seconds; a stage that takes longer fails the demo
LOOP_SECONDS = 300  # `cron --for`: longer than the demo, which stops the loop itself
SELF = "192.0.2.1"
SITES = {"beta": "127.0.0.21", "gamma": "127.0.0.22"}
POOL = "api.pool.domain.tld"
LOST = "gamma"  # the site that dies and comes back

_out = threading.Lock()


class DemoFailed(Exception):
    pass


def say(text: str) -> None:
    with _out:
        print(f"\n== {text}", flush=True)


def show(text: str, indent: str = "  ") -> None:
    with _out:
        print(textwrap.indent(text.rstrip("\n"), indent, lambda _: True), flush=True)


def spdu_argv() -> list[str]:
    """The venv's `spdu` script when there is one, else the module."""
    script = Path(sys.executable).parent / "spdu"
    return [str(script)] if script.exists() else [sys.executable, "-m", "spdu_cli"]


def free_port(*addresses: str) -> int:
    """A TCP port free on every one of ``addresses`` (then released)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind((addresses[0], 0))
            port = s.getsockname()[1]
            try:
                for address in addresses[1:]:
                    with socket.socket() as t:
                        t.bind((address, port))
            except OSError:
                continue
            return port
    raise DemoFailed(f"no free TCP port on {', '.join(addresses)}")


def wait_for(what: str, predicate, check=None, timeout: float = STAGE_TIMEOUT,
              step: float = 0.1) -> float:
    """Seconds until predicate() held; DemoFailed after ``timeout``. ``check``
    is called on every round (it raises when something it watches died)."""
    t0 = time.monotonic()
    while True:
        if check is not None:
            check()
        if predicate():
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise DemoFailed(f"{what}: did not happen within {timeout:g} s")
        time.sleep(step)


# -- the pieces --------------------------------------------------------------------------


class Site:
    """A peer site's status server: `python -m http.server` serving /status."""

    def __init__(self, root: Path, name: str, port: int):
        self.name, self.address, self.port = name, SITES[name], port
        self.docroot = root / f"www-{name}"
        self.docroot.mkdir(exist_ok=True)
        (self.docroot / "status").write_text("ok\n")
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "http.server", "--bind", self.address,
             "--directory", str(self.docroot), str(self.port)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(f"{self.name}'s status server on {self.address}:{self.port} to start",
                 self.listening, self.check, timeout=10, step=0.05)

    def listening(self) -> bool:
        try:
            socket.create_connection((self.address, self.port), timeout=0.2).close()
            return True
        except OSError:
            return False

    def check(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise DemoFailed(f"{self.name}'s status server exited ({self.proc.returncode})")

    def stop(self) -> None:
        p, self.proc = self.proc, None
        if p is not None and p.poll() is None:
            p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


class Sink:
    """An SMTP server that accepts every mail and keeps it (aiosmtpd)."""

    def __init__(self, port: int):
        from aiosmtpd.controller import Controller

        self.port = port
        self.mails: list[email.message.EmailMessage] = []
        self.shown = 0
        self._lock = threading.Lock()
        self.controller = Controller(self, hostname="127.0.0.1", port=port, ready_timeout=10)
        self.controller.start()

    async def handle_DATA(self, server, session, envelope):
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self._lock:
            self.mails.append(msg)
        return "250 2.0.0 queued"

    def subjects(self, start: int = 0) -> list[str]:
        with self._lock:
            return [str(m["Subject"]) for m in self.mails[start:]]

    def print_new(self) -> None:
        """Print the mails received since the last call, as a mail reader would."""
        with self._lock:
            new, self.shown = self.mails[self.shown:], len(self.mails)
        for i, m in enumerate(new):
            body = m.get_body(("plain",))
            text = body.get_content() if body is not None else ""
            if i:
                show("")
            show(f"From: {m['From']}\nTo: {m['To']}\nSubject: {m['Subject']}\n\n{text}",
                 "  | ")

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None


class Loop:
    """`spdu -c CONF -v cron --for N` in the background; its stderr to a log file."""

    def __init__(self, conf: Path, log: Path):
        self.argv = [*spdu_argv(), "-c", str(conf), "-v", "cron", "--for", str(LOOP_SECONDS)]
        self.log = log
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "ab") as err:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                         stdout=err, stderr=subprocess.STDOUT)

    def check(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise DemoFailed(f"the cron loop exited early (status {self.proc.returncode})")

    def stop(self) -> int | None:
        """SIGTERM: the loop ends after its current tick."""
        p = self.proc
        if p is None:
            return None
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        self.proc = None
        return p.returncode

    def tail(self, n: int = 25) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return ""


class Dig:
    """The pool as a client sees it: `kdig @127.0.0.1 -p PORT +short POOL A`."""

    def __init__(self, port: int):
        self.argv = [require_binary("kdig"), "@127.0.0.1", "-p", str(port), "+short", POOL, "A"]
        self.command = f"kdig @127.0.0.1 -p {port} +short {POOL} A"
        self.last = ""

    def answer(self) -> set[str]:
        p = subprocess.run(self.argv, capture_output=True, text=True, timeout=10)
        self.last = p.stdout if p.returncode == 0 else f"(kdig exit {p.returncode}) {p.stderr}"
        return set(self.last.split()) if p.returncode == 0 else set()

    def print(self) -> None:
        show(f"$ {self.command}")
        show("\n".join(sorted(self.last.split(), key=socket.inet_aton)) or "(empty)")


def write_config(root: Path, dns_port: int, site_port: int, smtp_port: int) -> Path:
    """spdu.conf and spdu/TARGET the way the original spdu's users write them."""
    conf = root / "spdu.conf"
    conf.write_text(
        "#!/bin/sh\n"
        "# /usr/local/etc/spdu.conf, the original spdu's format (read as data, never run)\n"
        'domain="domain.tld"\n'
        'myTag="alpha"\n'
        f'selfIP="{SELF}"            # this site: always in the pool\n'
        'selfCheck="no"              # (a real site probes its own service at selfIP too)\n'
        f'targets="{" ".join(SITES)}"\n'
        f'probePort="{site_port}"\n'
        'probeTimeout="1"\n'
        'interval="1"                # probe every second...\n'
        'fastInterval="0.3"          # ...and a suspect again after 0.3 s\n'
        f'nameServer="127.0.0.1"\nnamePort="{dns_port}"\n'
        'mailTo="ops@domain.tld"\n'
        f'smtpRelay="127.0.0.1"\nsmtpPort="{smtp_port}"\nsmtpSSL="no"\nsmtpStartTLS="no"\n'
        'syslogSocket="none"\n'
        f'spoolDir="{root}/spool"\n')
    (root / "spdu").mkdir()
    for name, address in SITES.items():
        (root / "spdu" / name).write_text(f'targetIP="{address}"\n')
    for path in [conf, *(root / "spdu").iterdir()]:
        os.chmod(path, 0o644)
    return conf


def spdu_has(command: str) -> bool:
    """Whether this spdu offers ``command`` (`spdu --help` lists it)."""
    p = subprocess.run([*spdu_argv(), "--help"], capture_output=True, text=True, timeout=30)
    in_list = False
    for line in p.stdout.splitlines():
        if line.strip() == "Commands:":
            in_list = True
        elif in_list and line.split()[:1] == [command]:
            return True
    return False


# -- the demo ----------------------------------------------------------------------------


def demo(root: Path, pieces: dict) -> None:
    t_start = time.monotonic()
    knot = pieces["knot"] = KnotServer(root / "knot", records=(("api", "A", SELF),))
    dig = pieces["dig"] = Dig(knot.port)
    say(f"Knot DNS on 127.0.0.1 port {knot.port} serves pool.domain.tld; "
        f"the pool before spdu runs (only this site, {SELF})")
    wait_for("kdig to answer", lambda: dig.answer() == {SELF}, timeout=10)
    dig.print()

    site_port = free_port(*SITES.values())
    for name in SITES:
        pieces[name] = Site(root, name, site_port)
        pieces[name].start()
    say("two peer sites answer /status: "
        + ", ".join(f"{n} http://{a}:{site_port}/status" for n, a in SITES.items()))
    sink = pieces["sink"] = Sink(free_port("127.0.0.1"))
    show(f"and an SMTP sink on 127.0.0.1:{sink.port} keeps the mails spdu sends")

    conf = write_config(root, knot.port, site_port, sink.port)
    say(f"the configuration, {conf} (+ spdu/beta, spdu/gamma: targetIP=...)")
    show(conf.read_text().split("\n", 2)[2])

    loop = pieces["loop"] = Loop(conf, root / "cron.log")
    say("the cron loop starts in the background, as cron runs it every minute:")
    show("$ spdu -c " + str(conf) + f" -v cron --for {LOOP_SECONDS}")
    loop.start()

    def check() -> None:
        loop.check()
        for name in SITES:
            pieces[name].check()

    everyone = {SELF, *SITES.values()}
    took = wait_for("both sites to join the pool", lambda: dig.answer() == everyone, check)
    say(f"both sites joined the pool after {took:.1f} s")
    dig.print()
    wait_for("the mail that both sites are up",
             lambda: all(any(f"{n} is up" in s for s in sink.subjects()) for n in SITES),
             check)
    show("mail:")
    sink.print_new()

    lost = pieces[LOST]
    say(f"{LOST}'s status server ({lost.address}) stops")
    seen = len(sink.subjects())
    lost.stop()
    t0 = time.monotonic()
    took = wait_for(f"{LOST} to leave the pool", lambda: lost.address not in dig.answer(), check)
    say(f"{LOST} left the pool {took:.1f} s after its status server stopped")
    dig.print()
    wait_for(f"the mail that {LOST} is DOWN",
             lambda: any(f"{LOST} is DOWN" in s for s in sink.subjects(seen)), check)
    show(f"mail, {time.monotonic() - t0:.1f} s after the stop:")
    sink.print_new()

    say(f"{LOST}'s status server starts again")
    seen = len(sink.subjects())
    lost.start()
    t0 = time.monotonic()
    took = wait_for(f"{LOST} to rejoin the pool", lambda: dig.answer() == everyone, check)
    say(f"{LOST} rejoined the pool {took:.1f} s after its status server came back")
    dig.print()
    wait_for(f"the mail that {LOST} is up",
             lambda: any(f"{LOST} is up" in s for s in sink.subjects(seen)), check)
    show(f"mail, {time.monotonic() - t0:.1f} s after the start:")
    sink.print_new()

    status = loop.stop()
    say(f"the cron loop stops (SIGTERM: it ends after the current tick), exit {status}")
    show("what it logged (-v, on stderr; spdu-cron logs to syslog instead):")
    show(loop.tail(), "  ")
    if status != 0:
        raise DemoFailed(f"the cron loop exited {status}")
    for command, args in (("status", ["status"]), ("history", ["history", LOST])):
        if not spdu_has(command):
            say(f"(spdu {command}: not in this version of spdu, skipped)")
            continue
        say(f"spdu {' '.join(args)}")
        p = subprocess.run([*spdu_argv(), "-c", str(conf), *args],
                           capture_output=True, text=True, timeout=30)
        show(f"$ spdu -c {conf} {' '.join(args)}")
        show(p.stdout + p.stderr or "(no output)")
        if p.returncode != 0:
            raise DemoFailed(f"spdu {' '.join(args)} exited {p.returncode}")

    subjects = sink.subjects()
    say(f"the SMTP sink received {len(subjects)} mails:")
    show("\n".join(subjects))
    say(f"done in {time.monotonic() - t_start:.0f} s")
    show("A dead site leaves the pool after probeFall=2 failed probes (the second one\n"
         "0.05 s after a refused connection, fastInterval after a silence) and comes\n"
         "back after probeRise=2 good ones, both in the cycle that saw the change;\n"
         f"this site ({SELF}) stays; each change is mailed once. On a real site, cron\n"
         "runs `spdu-cron` every minute: see spdu(1), COMMANDS, spdu cron.")


def cleanup(pieces: dict) -> None:
    """Stop everything that was started, newest first; never raises."""
    for key in ("loop", *SITES, "sink", "knot"):
        piece = pieces.get(key)
        if piece is None or not hasattr(piece, "stop"):
            continue
        try:
            piece.stop()
        except Exception as e:  # noqa: BLE001 - whatever one piece raises, stop the others
            print(f"demo: stopping {key}: {e}", file=sys.stderr)


def _terminated(signum, frame):
    raise KeyboardInterrupt


def main() -> int:
    signal.signal(signal.SIGTERM, _terminated)
    signal.signal(signal.SIGHUP, _terminated)
    pieces: dict = {}
    root = Path(tempfile.mkdtemp(prefix="spdu-demo-"))
    try:
        demo(root, pieces)
        return 0
    except KeyboardInterrupt:
        print("\ndemo: interrupted; stopping everything", file=sys.stderr)
        return 130
    except (DemoFailed, ServerError) as e:
        print(f"\ndemo: FAILED: {e}", file=sys.stderr)
        if "dig" in pieces:
            print(f"demo: the last answer of {pieces['dig'].command}: "
                  f"{' '.join(pieces['dig'].last.split()) or '(empty)'}", file=sys.stderr)
        loop = pieces.get("loop")
        if loop is not None and loop.tail():
            print("demo: the cron loop's last log lines:", file=sys.stderr)
            print(textwrap.indent(loop.tail(), "  "), file=sys.stderr)
        return 1
    finally:
        cleanup(pieces)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
