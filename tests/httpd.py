"""A real HTTP(S) status server for the tests, on any loopback address, whose
behaviour can be switched at run time: ok, an HTTP status, redirect, hang,
trickle, endless body, garbage. It records the Host header of every request."""

from __future__ import annotations

import socket
import socketserver
import ssl
import threading
import time


class StatusServer:
    def __init__(self, host: str = "127.0.0.1", expect_host: str | None = None,
                 tls: ssl.SSLContext | None = None, port: int = 0):
        self.behaviour = "ok"
        self.queue: list[str] = []  # behaviours for the next requests, then `behaviour`
        self.sni: list[str | None] = []
        self.body = b"status: ok\n"
        self.expect_host = expect_host
        self.hosts: list[str] = []
        self.requests = 0
        self.tls = tls
        self._stop = threading.Event()
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                outer._handle(self.request)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            request_queue_size = 256
            allow_reuse_address = True
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

            def get_request(self):
                conn, addr = super().get_request()
                if outer.tls is not None:
                    outer.tls.sni_callback = lambda sock, name, ctx: outer.sni.append(name)
                    conn.settimeout(5)
                    try:
                        conn = outer.tls.wrap_socket(conn, server_side=True)
                    except (ssl.SSLError, OSError):
                        conn.close()
                        raise OSError("handshake failed") from None
                return conn, addr

            def handle_error(self, request, client_address):
                pass  # clients that hang up early are the point of several tests

        self.server = Server((host, port), Handler)  # port 0: any free one
        self.host = host
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,),
                                       daemon=True)  # (its poll: what stop() waits)
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()

    # -- behaviours ------------------------------------------------------------

    def _read_request(self, conn) -> bytes:
        conn.settimeout(5)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
        return data

    def _handle(self, conn) -> None:
        behaviour = self.queue.pop(0) if self.queue else self.behaviour
        if behaviour == "hang-accept":  # not even reading the request
            self._stop.wait(30)
            return
        request = self._read_request(conn)
        self.requests += 1
        host = ""
        for line in request.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"host":
                host = value.strip().decode()
        self.hosts.append(host)
        if self.expect_host and host != self.expect_host:
            self._respond(conn, 421, b"wrong host\n")
            return
        try:
            self._act(conn, behaviour)
        except OSError:
            pass

    def _respond(self, conn, status: int, body: bytes, extra: str = "") -> None:
        conn.sendall(
            f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n{extra}"
            "Connection: close\r\n\r\n".encode() + body
        )

    def _act(self, conn, behaviour: str) -> None:
        if behaviour == "ok":
            self._respond(conn, 200, self.body)
        elif behaviour.isdigit():
            self._respond(conn, int(behaviour), b"not ok\n")
        elif behaviour == "redirect":
            self._respond(conn, 302, b"", "Location: http://elsewhere.example/status\r\n")
        elif behaviour == "hang":
            self._stop.wait(30)
        elif behaviour == "trickle-headers":
            for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n":
                conn.sendall(bytes([byte]))
                if self._stop.wait(0.2):
                    return
        elif behaviour == "trickle-body":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
            for _ in range(100):
                conn.sendall(b".")
                if self._stop.wait(0.2):
                    return
        elif behaviour == "endless":
            conn.sendall(b"HTTP/1.1 200 OK\r\n\r\n")
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not self._stop.is_set():
                conn.sendall(b"x" * 65536)
        elif behaviour == "endless-headers":
            conn.sendall(b"HTTP/1.1 200 OK\r\n")
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not self._stop.is_set():
                conn.sendall(b"X-Junk: " + b"y" * 1000 + b"\r\n")
        elif behaviour == "chunked":
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"7\r\nstatus:\r\n4\r\n ok\n\r\n0\r\n\r\n"
            )
        elif behaviour == "garbage":
            conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
        elif behaviour == "close":
            pass
        else:
            raise ValueError(behaviour)
