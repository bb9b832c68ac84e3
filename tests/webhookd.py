"""A real webhook receiver for the tests: Python's HTTP server on a loopback
address, plain or HTTPS (trustme), recording every POST; its answer can be
switched at run time: a status, a redirect, or a hang; and hooks run before
the answer (to hold it) and once it is sent (to kill the sender)."""

from __future__ import annotations

import json
import ssl
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)


class WebhookReceiver:
    def __init__(self, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None):
        # a status, "redirect", "hang" (reads the POST, never answers) or "trickle"
        # (answers one byte at a time, each well within any timeout, for 30 s)
        self.answer = "200"
        self.received: list[Received] = []
        self.tried = 0  # POSTs that arrived, answered or not
        self.before_answer = None  # called with the Received before the answer is sent
        self.after_answer = None  # called with it once the answer is on the wire
        self._stop = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                outer.tried += 1
                if outer.answer == "hang":
                    outer._stop.wait(30)
                    return
                if outer.answer == "trickle":
                    for byte in b"HTTP/1.1 200 OK\r\n" + b"X" * 300:
                        if outer._stop.wait(0.1):
                            return
                        self.wfile.write(bytes([byte]))
                    return
                if outer.answer == "redirect":
                    self.send_response(302)
                    self.send_header("Location", f"http://{host}:1/elsewhere")
                got = Received(self.path, dict(self.headers), body)
                if outer.answer != "redirect":
                    status = int(outer.answer)
                    if 200 <= status < 300:
                        outer.received.append(got)
                    if outer.before_answer is not None:
                        outer.before_answer(got)
                    self.send_response(status)
                self.send_header("Content-Length", "0")
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.flush()
                if outer.after_answer is not None:
                    outer.after_answer(got)

            def log_message(self, *args):
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass  # clients that give up are the point of several tests

        self.server = Server((host, 0), Handler)
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        scheme = "https" if tls is not None else "http"
        self.url = f"{scheme}://{host}:{self.port}/hooks/T0/B0/s3cretpath"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,),
                                       daemon=True)  # (its poll: what stop() waits)
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()
