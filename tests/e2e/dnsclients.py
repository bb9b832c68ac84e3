"""Run by tests/e2e/clientlab.py inside the lab's client namespace: clients
that ask names through recursive resolvers, as many independent stub
resolvers would. Each client is a thread of its own that asks its name of its
resolver every POLL seconds (with recursion desired, from a new socket and so
a new source port each time, as a stub resolver does), waits TIMEOUT seconds
at most for the answer, and prints a line when its answer changes, and every
failed answer:

    MONOTONIC RESOLVER KEY CLIENT ANSWER MILLISECONDS

ANSWER is the answer's A addresses comma-separated, `-` for a NOERROR answer
without any, `!RCODE` for another rcode, `?` for no answer within TIMEOUT.
CLOCK_MONOTONIC is one clock for every network namespace, so the parent can
compare the times with its own. The clients of one resolver and name start
POLL/CLIENTS apart, so the resolver is asked every POLL/CLIENTS seconds.

    python dnsclients.py POLL TIMEOUT CLIENTS RESOLVER=HOST:PORT... -- KEY=NAME...
"""

from __future__ import annotations

import sys
import threading
import time

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

_out = threading.Lock()


def ask(name: str, host: str, port: int, timeout: float) -> str:
    q = dns.message.make_query(name, "A")  # recursion desired: a stub's question
    try:
        r = dns.query.udp(q, host, port=port, timeout=timeout)
    except (dns.exception.DNSException, OSError):
        return "?"
    if r.rcode() != dns.rcode.NOERROR:
        return "!" + dns.rcode.to_text(r.rcode())
    got = sorted(rd.address for rrset in r.answer if rrset.rdtype == dns.rdatatype.A
                 for rd in rrset)
    return ",".join(got) or "-"


def client(label: str, host: str, port: int, key: str, name: str, n: int,
           poll: float, timeout: float, start: float) -> None:
    last = None
    due = start
    while True:
        time.sleep(max(0.0, due - time.monotonic()))
        t = time.monotonic()
        got = ask(name, host, port, timeout)
        now = time.monotonic()
        if got != last or got[0] in "!?":
            last = got
            with _out:
                print(f"{now:.4f} {label} {key} {n} {got} {(now - t) * 1000:.0f}", flush=True)
        due += poll * max(1, int((now - due) // poll) + 1)  # the next tick after the answer


def main() -> None:
    poll, timeout, clients = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
    rest = sys.argv[4:]
    split = rest.index("--")
    resolvers = []
    for arg in rest[:split]:
        label, _, where = arg.partition("=")
        host, _, port = where.rpartition(":")
        resolvers.append((label, host, int(port)))
    names = [arg.partition("=")[::2] for arg in rest[split + 1:]]
    start = time.monotonic() + 0.1
    for label, host, port in resolvers:
        for key, name in names:
            for n in range(clients):
                threading.Thread(target=client, daemon=True, args=(
                    label, host, port, key, name, n, poll, timeout,
                    start + n * poll / clients)).start()
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    try:
        main()
    except (BrokenPipeError, KeyboardInterrupt):
        pass
