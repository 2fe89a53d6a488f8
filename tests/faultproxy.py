"""A TCP proxy on 127.0.0.1 in front of a real server, for injecting network faults in tests.

The real PostgreSQL and Redis are shared by everyone running tests, so they are never stopped;
instead the app is pointed at this proxy and the proxy misbehaves on demand:

- pass: bytes flow both ways (the default);
- freeze: connections are accepted but no byte is read or forwarded either way, as with a
  SIGSTOPped server (the kernel still completes the handshake and buffers what clients send);
- reset: every current connection is dropped with a TCP reset, as a server restart does;
- down: current connections are reset and new ones are reset as soon as they are accepted.
"""

from __future__ import annotations

import select
import socket
import struct
import threading
from contextlib import suppress

# SO_LINGER on, 0 s: close() sends a RST instead of a FIN, as a killed server's kernel does.
_LINGER_RST = struct.pack("ii", 1, 0)
_TICK = 0.02


def _close_with_reset(sock: socket.socket) -> None:
    with suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    with suppress(OSError):
        sock.close()


def _close(sock: socket.socket) -> None:
    with suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with suppress(OSError):
        sock.close()


class _Link:
    """One client connection and its upstream connection, pumped by one thread."""

    def __init__(self, proxy: FaultProxy, client: socket.socket, upstream: socket.socket):
        self.proxy = proxy
        self.client = client
        self.upstream = upstream
        self.drop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"faultproxy-link-{proxy.port}")

    def _run(self) -> None:
        peer = {self.client: self.upstream, self.upstream: self.client}
        try:
            while not self.drop.is_set():
                if self.proxy.mode == "freeze":
                    # Hold everything: what either side sends stays in the kernel's buffers.
                    self.proxy.thawed.wait(_TICK)
                    continue
                readable, _, _ = select.select(list(peer), [], [], _TICK)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    peer[sock].sendall(data)
        except OSError:
            return
        finally:
            # A drop resets both sides; an end of stream is passed on as one (a reset could discard
            # the last bytes forwarded, such as a server's goodbye).
            close = _close_with_reset if self.drop.is_set() else _close
            close(self.client)
            close(self.upstream)
            self.proxy._forget(self)


class FaultProxy:
    """Listens on 127.0.0.1 at a free port and forwards to target_host:target_port."""

    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self.mode = "pass"
        self.thawed = threading.Event()
        self.thawed.set()
        self._links: set[_Link] = set()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(_TICK)
        self.host, self.port = self._listener.getsockname()[:2]
        self._acceptor = threading.Thread(target=self._accept, daemon=True, name=f"faultproxy-{self.port}")
        self._acceptor.start()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @property
    def connection_count(self) -> int:
        with self._lock:
            return len(self._links)

    def pass_through(self) -> None:
        """Forward again; bytes held while frozen flow on."""
        self.mode = "pass"
        self.thawed.set()

    def freeze(self) -> None:
        self.thawed.clear()
        self.mode = "freeze"

    def reset(self) -> None:
        """Drop every current connection with a reset (a restart); new ones are served."""
        self.pass_through()
        self._drop_all()

    def down(self) -> None:
        """Drop every current connection and reset each new one at once (the server is down)."""
        self.thawed.set()
        self.mode = "down"
        self._drop_all()

    def close(self) -> None:
        self._closed.set()
        self._acceptor.join(timeout=5)
        self._listener.close()
        self.thawed.set()
        self._drop_all()

    def _drop_all(self) -> None:
        with self._lock:
            links = list(self._links)
        for link in links:
            link.drop.set()
        for link in links:
            link.thread.join(timeout=5)

    def _forget(self, link: _Link) -> None:
        with self._lock:
            self._links.discard(link)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self.mode == "down":
                _close_with_reset(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _close_with_reset(client)
                continue
            client.settimeout(None)
            upstream.settimeout(None)
            link = _Link(self, client, upstream)
            with self._lock:
                self._links.add(link)
            link.thread.start()
