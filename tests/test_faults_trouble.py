"""The fault matrix of issue 27, what the cron loop says of a step that keeps
failing: logged again every REPEAT while it lasts, and a notice that no channel
took tried again later, the same mail each try; against a real spdu-cron,
knotd and aiosmtpd (test_faults' fixtures, test_faults_loop's loop).
"""

from __future__ import annotations

import itertools
import signal
import socket
import subprocess
import time

from tests import test_faults as faults
from tests.test_faults_loop import start_loop, stop, wait_for

world, knot, site = faults.world, faults.knot, faults.site  # the fixtures of the first matrix


def syslog_lines(sock: socket.socket, seconds: float) -> list[str]:
    """What arrives at a syslog socket in the next `seconds`."""
    lines, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            lines.append(sock.recv(65536).decode())
        except TimeoutError:
            pass
    return lines


def test_a_step_failing_for_long_is_logged_again_every_repeat_not_every_tick(site, world):
    """DNS unreachable for longer than REPEAT (2 s here; a minute for real): the
    loop logs it to syslog when it has lasted alertAfter, then again every
    REPEAT, each time with how long it has lasted; not at each of its ticks."""
    path = world / "log.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.1)
    try:
        site.write(f"syslogSocket={path}\nalertAfter=1\nnameTimeout=0.2\n")
        assert site.run("probe").returncode == 0
        site.knot.stop()  # reconcile has something to do, and cannot
        loop = start_loop(site, "30", patch={"spdu_cli.trouble.REPEAT": 2.0})
        try:
            lines = syslog_lines(sock, 8.5)
        finally:
            stop(loop)
    finally:
        sock.close()
    said = [int(ln.split("has kept failing for ")[1].split(" s")[0]) for ln in lines
            if "reconcile has kept failing for" in ln]
    assert 3 <= len(said) <= 5, lines  # at 1 s, then every 2 s; ticks come every 0.4 s
    assert said[0] <= 2 and all(1 <= b - a <= 3 for a, b in itertools.pairwise(said)), said
    assert all("alertAfter=1" in ln and "127.0.0.1" in ln for ln in lines
               if "has kept failing" in ln), lines


class Lines:
    """The stderr of a running process, line by line as it comes."""

    def __init__(self, p: subprocess.Popen):
        import threading

        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(p.stderr), daemon=True)
        self.reader.start()

    def count(self, words: str) -> int:
        return sum(words in ln for ln in list(self.lines))

    def text(self) -> str:
        self.reader.join(20)
        return "".join(self.lines)


def test_a_notice_no_channel_took_is_tried_again_and_so_is_its_end(site, smtp_relay):
    """The relay (the only channel) is down when reconcile's trouble is to be
    said, and again when it is over: each notice is tried again later, not at
    every tick, and goes out once the relay is back, the same mail each try."""
    from tests.conftest import free_port

    port = free_port()
    site.write(f"mailTo=ops@domain.tld\nsmtpRelay=127.0.0.1\nsmtpPort={port}\nsmtpSSL=no\n"
               f"smtpTimeout=2\nalertAfter=1\nmyTag=alpha\nnameTimeout=0.3\n")
    assert site.run("probe").returncode == 0
    site.knot.want_port = site.knot.port  # back on the same port
    site.knot.stop()
    knobs = {"spdu_cli.trouble.RETRY": 1.0, "spdu_cli.trouble.RETRY_MAX": 1.0}
    loop = start_loop(site, "60", patch=knobs)  # one loop for it all
    err = Lines(loop)
    subject = "spdu on alpha: reconcile keeps failing"

    def notices(relay) -> list[str]:
        return [str(m.message["Subject"]) for m in relay.received
                if subject in str(m.message["Subject"])]

    def down_for_two_tries(level: str) -> None:
        wait_for(lambda: err.count(f"the notice '{level}: {subject}' could not be") >= 2, 15)

    try:
        down_for_two_tries("WARNING")
        relay = smtp_relay(port=port)
        wait_for(lambda: notices(relay), 10)
        assert notices(relay) == [f"WARNING: {subject}"]
        relay.stop()
        site.knot.start()  # over: said to no relay again
        down_for_two_tries("NOTICE")
        relay = smtp_relay(port=port)
        wait_for(lambda: notices(relay), 10)
        assert notices(relay) == [f"NOTICE: {subject}"]
        time.sleep(1.5)
        assert notices(relay) == [f"NOTICE: {subject}"]  # once
    finally:
        loop.send_signal(signal.SIGTERM)  # its stderr is Lines'
        loop.wait(timeout=20)
    text = err.text()
    assert "Traceback" not in text
    for level in ("WARNING", "NOTICE"):
        again = f"the notice '{level}: reconcile keeps failing' went out through no channel;"
        assert f"{again} tried again in 1 s" in text, text
        tries = err.count(f"the notice '{level}: {subject}' could not be mailed")
        assert 2 <= tries <= 8, text  # a try a second while the relay was down, not a tick


def test_each_try_of_a_notice_is_the_same_mail():
    """Tried again, a notice keeps its Message-ID, so a relay that took it after
    all (its answer lost) lets the receiver drop the repeat."""
    from spdu_cli.config import MailConfig
    from spdu_cli.notify.notices import _mail

    cfg = MailConfig(("ops@domain.tld",), "spdu@domain.tld", "127.0.0.1", 25, False, "", "",
                     tag="alpha")
    tries = [_mail(cfg, "WARNING: x", "text\n", 1e9) for _ in range(2)]
    assert tries[0]["Message-ID"] == tries[1]["Message-ID"]
    assert tries[0]["Message-ID"].endswith("@domain.tld>")
    later = _mail(cfg, "WARNING: x", "text\n", 1e9 + 60)  # the same problem, again
    assert later["Message-ID"] != tries[0]["Message-ID"]
