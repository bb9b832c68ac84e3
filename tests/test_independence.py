"""One peer never holds up another, in the cron loop too (issue 23): each
target's probes run on their own schedule in one event loop, the DNS step in
a thread of its own. Real `spdu cron` processes, real HTTP servers on loopback
addresses, real Knot; and a DNS server that never answers."""

from __future__ import annotations

import itertools
import math
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

import pytest

from spdu_cli.probe.engine import Engine
from spdu_cli.probe.rounds import Confirmer, Rounds
from spdu_cli.probe.spec import ProbeSpec
from tests.test_kept import wait_for

SPDU = [sys.executable, "-m", "spdu_cli"]
SELF = "192.0.2.1"


def spec(target: str, address: str, port: int = 80, timeout: float = 1.0) -> ProbeSpec:
    return ProbeSpec(target, "api.example", (address,), "", port, "status", False, True, None,
                     timeout, 1, ((200, 299),), "")


def test_a_probe_that_fails_as_it_starts_is_confirmed_at_once_not_at_the_callers_moment():
    """An unreachable network fails in connect() itself; its confirmation
    (CERTAIN_GAP later) must not wait for the moment the caller gave step()."""
    settled = []
    engine = Engine()
    c = Confirmer(engine, settled.append)
    outcomes = []

    def after(r):
        outcomes.append(r.error)
        return 0.05 if len(outcomes) < 2 else None

    c.begin(spec("t", "224.0.0.1"), ("224.0.0.1",), Rounds(after, lambda: None, lambda: 1, 4))
    t0 = time.monotonic()
    try:
        while not settled and time.monotonic() - t0 < 5:
            far = time.monotonic() + 10  # the loop's next tick
            wake = c.poll(time.monotonic())  # as pacer.Pacer.wait does
            engine.step(far if wake is None else min(wake, far))
    finally:
        engine.close()
    assert [s.target for s in settled] == ["t"] and len(settled[0].results) == 2
    assert outcomes == ["network unreachable"] * 2
    assert time.monotonic() - t0 < 1.0


# -- the loop, against many peers ------------------------------------------------------



def timed_server(http_server, host: str):
    """A status server that notes when each request came (monotonic)."""
    srv = http_server(host)
    srv.seen = []
    handle = srv._handle

    def noted(conn):
        srv.seen.append(time.monotonic())
        handle(conn)

    srv._handle = noted
    return srv


def in_pool(knot) -> set[str]:
    return set(knot.query("api", "A"))


def test_a_dying_and_a_hung_peer_beside_25_healthy_and_one_hanging(confdir, tmp_path,
                                                                    http_server, knot):
    """The issue's table as a test: each leaves DNS within its own `config
    show` worst case, whatever the others do, and the healthy ones are probed
    every interval (+- 0.1 s)."""
    from spdu_cli import config
    from spdu_cli.render import failover

    healthy = {f"h{i}": timed_server(http_server, f"127.0.4.{i + 1}") for i in range(25)}
    hanging = http_server("127.0.4.100")
    hanging.behaviour = "hang"
    dying = http_server("127.0.4.101")
    hung = http_server("127.0.4.102")
    servers = {**healthy, "hanging": hanging, "dying": dying, "hung": hung}
    confdir.write(
        f"domain=domain.tld\ntargets='{' '.join(servers)}'\nspoolDir={tmp_path}/spool\n"
        f"selfCheck=no\nselfIP={SELF}\nnameServer=127.0.0.1\nnamePort={knot.port}\ninterval=1\n"
        "fastInterval=0.2\nsyslogSocket=none\n")  # probeTimeout: its default, 1.5 s
    for name, srv in servers.items():
        confdir.write(f"targetIP={srv.host}\nprobePort={srv.port}\n", target=name)
    site = config.load(str(confdir.main))
    worst = failover(site.target("hung"))
    p = subprocess.Popen([*SPDU, "-c", str(confdir.main), "cron", "--for", "14"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        everyone = {s.host for n, s in servers.items() if n != "hanging"}
        wait_for(lambda: everyone <= in_pool(knot), 5, "every answering peer in DNS")
        time.sleep(1.5)
        dying.stop()  # its server dies: connections refused from now on
        took = wait_for(lambda: dying.host not in in_pool(knot), 5, "the dying peer out")
        assert took <= worst.out_refused + 0.3, (took, worst)
        hung.behaviour = "hang"
        took = wait_for(lambda: hung.host not in in_pool(knot), 10, "the hung peer out")
        assert took <= worst.out_hang + 0.3, (took, worst)
        assert {s.host for s in healthy.values()} <= in_pool(knot)
        _out, err = p.communicate(timeout=20)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode in (0, 69), err  # the hanging peer: never up, not an error
    assert "falling behind" not in err, err  # a hung peer's lateness is its own (spdu(1))
    # Requests that come within 0.1 s of the one before are the same run of the
    # target: an overlapping probe (its usual latency exceeded, on a busy machine),
    # or the one early probe after the server closed the connection kept from the
    # last good probe (these servers close every connection).
    gaps = []
    for s in healthy.values():
        runs = [t for i, t in enumerate(s.seen) if i == 0 or t - s.seen[i - 1] >= 0.1]
        gaps += [b - a for a, b in itertools.pairwise(runs[1:])]
    assert len(gaps) >= 25 * 6
    late = [g for g in gaps if abs(g - 1.0) > 0.1]
    assert abs(statistics.median(gaps) - 1.0) < 0.02, statistics.median(gaps)
    assert len(late) <= len(gaps) // 50, sorted(late)[-10:]  # +- 0.1 s, all but a stray one


class SilentDns:
    """A DNS server that never answers: UDP read and dropped, TCP accepted, never
    answered."""

    def __init__(self):
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.port = self.udp.getsockname()[1]
        self.tcp = socket.socket()
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.tcp.bind(("127.0.0.1", self.port))
        self.tcp.listen(64)
        self.conns = []
        self.stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        self.tcp.settimeout(0.2)
        while not self.stopped.is_set():
            try:
                self.conns.append(self.tcp.accept()[0])
            except OSError:
                pass

    def close(self):
        self.stopped.set()
        for s in [self.udp, self.tcp, *self.conns]:
            s.close()


@pytest.fixture
def silent_dns():
    d = SilentDns()
    yield d
    d.close()


def test_a_dns_server_that_never_answers_holds_up_no_probe_and_sigterm_is_at_once(
        confdir, tmp_path, http_server, silent_dns):
    """nameTimeout 3 s: a down peer is probed every downInterval all the same,
    and SIGTERM in the middle of a DNS exchange ends the loop within 1 s."""
    down = timed_server(http_server, "127.0.4.110")
    down.behaviour = "503"
    up = timed_server(http_server, "127.0.4.111")
    confdir.write(
        f"domain=domain.tld\ntargets='down up'\nspoolDir={tmp_path}/spool\n"
        f"selfCheck=no\nselfIP={SELF}\nnameServer=127.0.0.1\nnamePort={silent_dns.port}\nnameTimeout=3\n"
        "interval=1\ndownInterval=1\nfastInterval=0.2\nprobeTimeout=0.5\nsyslogSocket=none\n")
    for name, srv in (("down", down), ("up", up)):
        confdir.write(f"targetIP={srv.host}\nprobePort={srv.port}\n", target=name)
    p = subprocess.Popen([*SPDU, "-c", str(confdir.main), "cron", "--for", "30"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: len(down.seen) >= 7, 10, "the down peer probed")
        t0 = time.monotonic()
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=10)
        stopped = time.monotonic() - t0
    finally:
        if p.poll() is None:
            p.kill()
    assert stopped < 1.0, stopped
    gaps = [b - a for a, b in zip(down.seen[2:], down.seen[3:])]  # once it is down
    assert gaps and max(gaps) < 1.0 + 0.15, gaps
    assert math.isclose(statistics.median(gaps), 1.0, abs_tol=0.05), gaps
