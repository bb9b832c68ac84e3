"""A real TCP server on a loopback address that answers every connection with a
script of raw bytes: what a broken or hostile peer sends, byte for byte.

A script is a callable returning an iterable of steps:
  bytes          sent as they are (one send, so usually one TCP segment)
  float          a pause of that many seconds (cut short when the server stops)
  "hang"         keep the connection open and send nothing more
  "until-closed" send nothing more, until the client closes the connection
  "rst"          close with SO_LINGER 0: the peer sees a reset
The connection is closed after the last step. By default the request is read
first (up to its blank line); `read_request=False` answers before reading it,
and `handshake_hang=True` accepts and never reads or sends anything.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable, Iterable

Step = bytes | float | str


class RawServer:
    def __init__(self, host: str, script: Callable[[], Iterable[Step]],
                 read_request: bool = True, port: int = 0):
        self.host = host
        self.script = script
        self.read_request = read_request
        self.requests: list[bytes] = []
        self._stop = threading.Event()
        self._conns: list[socket.socket] = []
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(512)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(5)
            if self.read_request:
                data = b""
                while b"\r\n\r\n" not in data and len(data) < 65536:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                self.requests.append(data)
            for step in self.script():
                if isinstance(step, bytes):
                    conn.sendall(step)
                elif isinstance(step, float):
                    if self._stop.wait(step):
                        return
                elif step == "hang":
                    self._stop.wait(30)
                    return
                elif step == "until-closed":
                    conn.settimeout(0.02)
                    while not self._stop.is_set():
                        try:
                            if not conn.recv(4096):
                                return
                        except TimeoutError:
                            continue
                    return
                elif step == "rst":
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                else:
                    raise ValueError(step)
        except OSError:
            pass  # the probe hung up first: the point of most cases
        finally:
            conn.close()

    def stop(self) -> None:
        self._stop.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept at once (Linux)
        except OSError:
            pass
        self.sock.close()
        for c in self._conns:
            try:
                c.close()
            except OSError:
                pass
        self._thread.join(2)
