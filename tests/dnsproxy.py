"""A DNS proxy for the tests: UDP and TCP on one loopback port, forwarding to
a real server (knotd) and lying on demand (`lie`):

  "forward"   nothing: every message forwarded, every answer passed back
  "noupdate"  an UPDATE is answered NOERROR and never forwarded
  "tc"        every answer (UDP and TCP) has TC=1 set
  "foreign"   an answer's records are another name's (other.NAME)
  "question"  an answer's question is another name (other.NAME)
  "othertype" an answer's records are another type's under the same name (AAAA for A)

Unsigned messages only (the lies would break a TSIG signature anyway).
"""

from __future__ import annotations

import socket
import socketserver
import struct
import threading

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdatatype
import dns.rrset


class DnsProxy:
    def __init__(self, upstream_port: int, host: str = "127.0.0.1"):
        self.upstream = (host, upstream_port)
        self.lie = "forward"
        self.updates = 0  # UPDATEs that arrived (forwarded or not)
        outer = self

        class Udp(socketserver.BaseRequestHandler):
            def handle(self):
                data, sock = self.request
                answer = outer._answer(data, tcp=False)
                if answer is not None:
                    sock.sendto(answer, self.client_address)

        class Tcp(socketserver.BaseRequestHandler):
            def handle(self):
                conn = self.request
                conn.settimeout(5)
                while True:
                    head = _read(conn, 2)
                    if head is None:
                        return
                    data = _read(conn, struct.unpack("!H", head)[0])
                    if data is None:
                        return
                    answer = outer._answer(data, tcp=True)
                    if answer is None:
                        return
                    conn.sendall(struct.pack("!H", len(answer)) + answer)

        class UdpServer(socketserver.ThreadingUDPServer):
            daemon_threads = True

        class TcpServer(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

            def handle_error(self, request, client_address):
                pass

        for _ in range(20):  # one free port for both
            self.udp = UdpServer((host, 0), Udp)
            self.port = self.udp.server_address[1]
            try:
                self.tcp = TcpServer((host, self.port), Tcp)
                break
            except OSError:
                self.udp.server_close()
        else:
            raise RuntimeError("no free port for UDP and TCP")
        self.threads = [threading.Thread(target=s.serve_forever, args=(0.02,), daemon=True)
                        for s in (self.udp, self.tcp)]
        for t in self.threads:
            t.start()

    def _forward(self, data: bytes, tcp: bool) -> bytes:
        if not tcp:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(5)
                s.sendto(data, self.upstream)
                return s.recv(65535)
        with socket.create_connection(self.upstream, timeout=5) as s:
            s.sendall(struct.pack("!H", len(data)) + data)
            head = _read(s, 2)
            return _read(s, struct.unpack("!H", head)[0])

    def _answer(self, data: bytes, tcp: bool) -> bytes | None:
        query = dns.message.from_wire(data)
        lie = self.lie
        if dns.opcode.is_update(query.flags):
            self.updates += 1
            if lie == "swallow":  # applied, and its answer lost (spdu killed meanwhile)
                try:
                    self._forward(data, tcp)
                except OSError:
                    pass
                return None
            if lie == "noupdate":
                r = dns.message.make_response(query)
                r.set_rcode(dns.rcode.NOERROR)
                return r.to_wire()
        try:
            wire = self._forward(data, tcp)
        except OSError:
            return None
        if (lie not in ("tc", "foreign", "question", "othertype")
                or dns.opcode.is_update(query.flags)):
            return wire
        answer = dns.message.from_wire(wire)
        if lie == "tc":
            answer.flags |= dns.flags.TC
        elif lie == "othertype":
            answer.answer = [dns.rrset.from_text(rrset.name, rrset.ttl, "IN", "AAAA",
                                                 "2001:db8::99")
                             for rrset in answer.answer if rrset.rdtype == dns.rdatatype.A]
        elif lie == "question":
            answer.question = [dns.rrset.RRset(dns.name.from_text("other", q.name), q.rdclass,
                                               q.rdtype) for q in answer.question]
        else:
            renamed = []
            for rrset in answer.answer:
                other = dns.name.from_text("other", rrset.name)
                renamed.append(dns.rrset.from_rdata_list(other, rrset.ttl, list(rrset)))
            answer.answer = renamed
        return answer.to_wire()

    def stop(self) -> None:
        for s in (self.udp, self.tcp):
            s.shutdown()
            s.server_close()


def _read(conn: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        try:
            chunk = conn.recv(n - len(buf))
        except OSError:
            return None
        if not chunk:
            return None
        buf += chunk
    return buf
