"""Run by benchmarks/failover.py inside one site's network namespace: ask each
DNS server for the pool name's A RRset every POLL seconds and print a line each
time an answer changes: `MONOTONIC LABEL ADDRESSES` (comma-separated, `-` for
an empty answer, `?` for no or a bad answer). CLOCK_MONOTONIC is one clock for
every network namespace, so the parent can compare the times with its own.

    python _dnswatch.py POLL NAME LABEL=HOST:PORT [LABEL=HOST:PORT ...]
"""

from __future__ import annotations

import sys
import time

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype


def ask(name: str, host: str, port: int) -> str:
    q = dns.message.make_query(name, "A")
    q.flags &= ~dns.flags.RD
    try:
        r = dns.query.udp(q, host, port=port, timeout=0.5)
    except (dns.exception.DNSException, OSError):
        return "?"
    if r.rcode() != dns.rcode.NOERROR:
        return "?"
    got = sorted(rd.address for rrset in r.answer if rrset.rdtype == dns.rdatatype.A
                 for rd in rrset)
    return ",".join(got) or "-"


def main() -> None:
    poll, name = float(sys.argv[1]), sys.argv[2]
    servers = []
    for arg in sys.argv[3:]:
        label, _, where = arg.partition("=")
        host, _, port = where.rpartition(":")
        servers.append((label, host, int(port)))
    last: dict[str, str] = {}
    while True:
        due = time.monotonic() + poll
        for label, host, port in servers:
            got = ask(name, host, port)
            if last.get(label) != got:
                last[label] = got
                print(f"{time.monotonic():.4f} {label} {got}", flush=True)
        time.sleep(max(0.0, due - time.monotonic()))


if __name__ == "__main__":
    try:
        main()
    except (BrokenPipeError, KeyboardInterrupt):
        pass
