"""`TcpProxy`: a threaded TCP proxy on 127.0.0.1 between a client and a server, which tests switch at runtime between
passing traffic through, resetting every connection (RST) and black-holing it (accepting but never forwarding)."""

from __future__ import annotations

import contextlib
import enum
import selectors
import socket
import struct
import threading
import time
from types import TracebackType

from tests.harness.servers import LOOPBACK, TICK


class _Mode(enum.Enum):
    PASS = "pass_through"
    RESET = "reset_all"
    BLACKHOLE = "blackhole"


def _reset(sock: socket.socket) -> None:
    """Close with an RST instead of a FIN (SO_LINGER on, timeout 0)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class _Pair:
    """One proxied connection; only its own pump thread touches (and closes) the two sockets."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.done = threading.Event()


class TcpProxy:
    """A threaded TCP proxy from 127.0.0.1:<ephemeral port> to 127.0.0.1:target_port whose behaviour tests switch.

    pass_through(): forward bytes both ways (the initial mode).
    reset_all(): RST every open connection pair now (returns once they are closed) and RST every new connection
        right after accept, until pass_through().
    blackhole(): accept new connections but forward nothing, in either direction, on new and existing connections;
        bytes arriving meanwhile are dropped (as on a dead network), never delivered later.
    """

    def __init__(self, target_port: int, *, connect_timeout: float = 1.0) -> None:
        self.target_port = target_port
        self.connect_timeout = connect_timeout
        self._mode = _Mode.PASS
        self._lock = threading.Lock()
        self._pairs: set[_Pair] = set()
        self._threads: list[threading.Thread] = []
        self._accepted = 0
        self._dropped = 0
        self._stop = threading.Event()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((LOOPBACK, 0))
        self._listener.listen(64)
        self._listener.settimeout(TICK)
        self.port: int = self._listener.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept_loop, name=f"TcpProxy-accept-{self.port}", daemon=True)
        self._acceptor.start()

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    @property
    def mode(self) -> str:
        return self._mode.value

    @property
    def connections_accepted(self) -> int:
        with self._lock:
            return self._accepted

    @property
    def bytes_dropped(self) -> int:
        """Bytes read and dropped while black-holed, in either direction: a test that waits for a reply to be lost
        waits for this to grow, since the pump thread may read the reply only after the test has switched back."""
        with self._lock:
            return self._dropped

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._pairs)

    def pass_through(self) -> None:
        self._mode = _Mode.PASS

    def blackhole(self) -> None:
        self._mode = _Mode.BLACKHOLE

    def reset_all(self, timeout: float = 2.0) -> None:
        with self._lock:
            self._mode = _Mode.RESET
            pairs = list(self._pairs)
        deadline = time.monotonic() + timeout
        for pair in pairs:  # each pump notices the mode within one tick and resets its own sockets
            pair.done.wait(max(0.0, deadline - time.monotonic()))

    def _resetting(self) -> bool:
        return self._mode is _Mode.RESET

    def _accept_loop(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    client, _ = self._listener.accept()
                except TimeoutError:
                    continue
                except OSError:
                    if self._stop.is_set():
                        return
                    raise
                with self._lock:
                    self._accepted += 1
                self._serve(client)
        finally:
            self._listener.close()

    def _serve(self, client: socket.socket) -> None:
        if self._resetting():
            _reset(client)
            return
        try:
            upstream = socket.create_connection((LOOPBACK, self.target_port), timeout=self.connect_timeout)
        except OSError:
            _reset(client)  # upstream down: the client sees the connection refused/reset, like the real thing
            return
        client.settimeout(1.0)  # bounds sendall() to a peer that stopped reading
        upstream.settimeout(1.0)
        pair = _Pair(client, upstream)
        with self._lock:  # same lock as reset_all(): a pair is either reset here or seen (and waited for) there
            if self._resetting():
                _reset(client)
                _reset(upstream)
                return
            self._pairs.add(pair)
            thread = threading.Thread(target=self._pump, args=(pair,), name=f"TcpProxy-pump-{self.port}", daemon=True)
            thread.start()
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)

    def _pump(self, pair: _Pair) -> None:
        reset = False
        selector = selectors.DefaultSelector()
        try:
            selector.register(pair.client, selectors.EVENT_READ, pair.upstream)
            selector.register(pair.upstream, selectors.EVENT_READ, pair.client)
            while not self._stop.is_set():
                for key, _ in selector.select(TICK):
                    if self._resetting():  # checked before forwarding anything
                        break
                    source: socket.socket = key.fileobj  # type: ignore[assignment]
                    data = source.recv(65536)
                    if not data:
                        return
                    if self._mode is _Mode.PASS:
                        key.data.sendall(data)
                    else:  # blackhole: read and drop
                        with self._lock:
                            self._dropped += len(data)
                if self._resetting():
                    reset = True
                    return
        except OSError:
            return
        finally:
            selector.close()
            for sock in (pair.client, pair.upstream):
                if reset:
                    _reset(sock)
                else:
                    sock.close()
            with self._lock:
                self._pairs.discard(pair)
            pair.done.set()

    def close(self, timeout: float = 2.0) -> None:
        """Stop accepting, close every connection and join the threads; safe to call twice."""
        self._stop.set()
        if self._acceptor.is_alive():
            self._acceptor.join(timeout)
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout)

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
