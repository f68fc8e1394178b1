"""The other design the issue asked to measure: a dedicated I/O thread per shared connection (as redis-rs'
MultiplexedConnection runs a driver task, and StackExchange.Redis a reader loop).

Callers write their packed command under a lock (appending themselves to the in-flight order in the same step) and
block; one reader thread reads the replies in order and wakes each caller. It is a measurement sketch, not a client:
no reconnect, no timeout, no error handling. ``benchmarks.threads`` times it beside the store's flat combining
(:mod:`fmredis.multiplex`), where a single caller reads its own reply and pays no thread switch.
"""

from __future__ import annotations

import collections
import contextlib
import socket
import threading
from typing import Any

import hiredis


class IOThreadConnection:
    """One socket to ``127.0.0.1:port``; :meth:`execute` is thread-safe."""

    def __init__(self, port: int) -> None:
        self._sock = socket.create_connection(("127.0.0.1", port))
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._write_lock = threading.Lock()
        self._in_flight: collections.deque[list[Any]] = collections.deque()
        self._reader = threading.Thread(target=self._read_loop, name="io-thread-sketch", daemon=True)
        self._reader.start()

    def execute(self, *args: Any) -> Any:
        waiter = threading.Lock()
        waiter.acquire()
        slot: list[Any] = [waiter, None]
        with self._write_lock:
            self._in_flight.append(slot)
            self._sock.sendall(hiredis.pack_command(args))
        waiter.acquire()  # released by the reader thread once the reply is in slot[1]
        return slot[1]

    def _read_loop(self) -> None:
        reader = hiredis.Reader()
        buffer = bytearray(65536)
        while True:
            try:
                count = self._sock.recv_into(buffer)
            except OSError:
                return
            if count == 0:
                return
            reader.feed(buffer, 0, count)
            reply = reader.gets()
            while reply is not False:
                slot = self._in_flight.popleft()
                slot[1] = reply
                slot[0].release()
                reply = reader.gets()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._reader.join(timeout=5)
