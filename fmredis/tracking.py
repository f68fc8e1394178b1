"""The invalidation listener: one connection per cache that hears, from Redis itself, every write to the cache's keys.

It runs ``CLIENT TRACKING ON REDIRECT <its own id> BCAST PREFIX ...`` and then ``SUBSCRIBE __redis__:invalidate``, the
RESP2 form of server-assisted client-side caching: in broadcasting mode Redis tells it of every change to a key under
the prefixes, whoever wrote it and whichever connection read it, so the connections that read and write (the client's
pool, RESP2, no tracking of their own) need nothing. Redis 6.0 or later.

What it cannot know is what it missed. So the tier serves nothing while the listener is not subscribed, and when it
subscribes again (a killed connection, a restarted server, a failover) it flushes the tier first. A connection that is
silently dead (a partition, a stopped server) is found by a ``PING`` after ``ping_interval`` seconds without traffic,
unanswered within the next ``ping_interval``: that bounds how long a stale copy can be served in that case.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
import threading
import weakref
from collections.abc import Callable
from typing import Any

import hiredis
from redis._parsers import BaseParser
from redis.exceptions import InvalidResponse

from fmredis.local_tier import LocalTier
from fmredis.redis_errors import server_reason

__all__ = ["InvalidationListener"]

_CHANNEL = b"__redis__:invalidate"
_RETRY_FIRST, _RETRY_MAX = 0.05, 1.0
events = logging.getLogger("fmredis.events")
_listeners: weakref.WeakSet[InvalidationListener] = weakref.WeakSet()


class InvalidationListener:
    """Keeps ``tier`` coherent with the keys under ``prefixes``; ``notify()(keys)`` is also told (``None``: all keys;
    ``notify`` is a weak reference: it gives ``None`` once its owner is gone)."""

    def __init__(
        self,
        pool: Any,
        prefixes: tuple[str, ...],
        tier: LocalTier,
        notify: Callable[[], Callable[[list[str] | None], None] | None],
        *,
        ping_interval: float = 1.0,
    ) -> None:
        self._pool = pool
        self._prefixes = prefixes
        self._tier = tier
        self._notify = notify
        self._ping_interval = ping_interval
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._mutex = threading.Lock()
        self._connection: Any = None
        self._thread: threading.Thread | None = None
        self.subscriptions = 0  # how many times it (re)subscribed: each one flushed the tier
        self.messages = 0
        _listeners.add(self)

    @property
    def connected(self) -> bool:
        return self._tier.serving

    def start(self, wait: float) -> bool:
        """Start the thread if it is not running (or died with a fork) and wait up to ``wait`` seconds for it to
        subscribe; whether it is subscribed."""
        with self._mutex:
            if self._stop.is_set():
                return False
            if self._thread is None or not self._thread.is_alive():
                self._ready.clear()
                self._thread = threading.Thread(target=self._run, name="fmredis-cache-invalidations", daemon=True)
                self._thread.start()
        return self._ready.wait(wait)

    def stop(self, join: bool = True) -> None:
        """Stop the thread (and wait for it, if ``join``), which gives its connection back; the tier stops serving."""
        self._stop.set()
        self._tier.serving = False
        self._abort()
        thread = self._thread
        if join and thread is not None and thread is not threading.current_thread():
            thread.join(5)

    def _run(self) -> None:
        delay = _RETRY_FIRST
        warned = False  # one warning per run of failures: a listener that cannot subscribe must not go unnoticed
        while not self._stop.is_set():
            subscribed = self.subscriptions
            try:
                self._listen()
            except Exception as exc:  # any failure means the same: unsubscribed, so stop serving and start again
                if self._stop.is_set():
                    break
                if self._tier.serving:
                    events.warning(
                        "Context cache invalidations lost (%s); local copies not served until resubscribed",
                        type(exc).__name__,
                    )
                    warned = False
                elif not warned:
                    events.warning(
                        "Context cache cannot subscribe to invalidations (%s: %s); every read goes to Redis until "
                        "it can",
                        type(exc).__name__,
                        server_reason(exc),
                    )
                warned = True
            finally:
                self._tier.serving = False
                self._ready.clear()
                self._close()
            if self.subscriptions != subscribed:  # it was subscribed: a new outage starts from the shortest delay
                delay = _RETRY_FIRST
            if self._stop.wait(delay):
                break
            delay = min(delay * 2, _RETRY_MAX)

    def _listen(self) -> None:
        connection = self._connection = self._pool.get_connection()
        sock: Any = getattr(connection, "_sock", None)
        if sock is None or getattr(connection, "protocol", None) not in (None, 2, "2"):
            raise RuntimeError("the invalidation listener needs a RESP2 socket connection")
        reader = hiredis.Reader(protocolError=InvalidResponse, replyError=BaseParser.parse_error)
        buffer = bytearray(65536)
        timeout = self._ping_interval

        def call(*args: Any) -> Any:
            sock.sendall(b"".join(connection.pack_command(*args)))
            return read()

        def read() -> Any:
            reply = reader.gets()
            while reply is False:
                try:
                    count = sock.recv_into(buffer)
                except BlockingIOError:  # SO_RCVTIMEO ran out (see below)
                    raise TimeoutError from None
                if count == 0:
                    raise ConnectionError("connection closed by the server")
                reader.feed(buffer, 0, count)  # type: ignore[arg-type]  # hiredis takes any buffer
                reply = reader.gets()
            if isinstance(reply, Exception):
                raise reply
            return reply

        sock.settimeout(max(timeout, 1.0))
        client_id = call("CLIENT", "ID")
        prefixes = [part for prefix in self._prefixes for part in ("PREFIX", prefix)]
        call("CLIENT", "TRACKING", "ON", "REDIRECT", client_id, "BCAST", *prefixes)
        call("SUBSCRIBE", _CHANNEL)
        # Subscribed: from here on every change is heard. What changed before is unknown, so none of it is served.
        self._tier.flush()
        self._tell(None)
        self.subscriptions += 1
        if self._stop.is_set():
            return
        self._tier.serving = True
        self._ready.set()
        if self.subscriptions > 1:
            events.info("Context cache invalidations resubscribed; local copies flushed")
        if type(sock) is socket.socket:
            # A blocking socket with the timeout kept by the kernel (SO_RCVTIMEO): each message then costs one wait
            # for the GIL, not two (a Python socket timeout polls first, and a thread returning from each of the two
            # system calls waits up to the switch interval, 5 ms, behind a busy thread). TLS keeps Python's timeout.
            sock.settimeout(None)
            seconds = int(timeout)
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", seconds, int((timeout - seconds) * 1e6))
            )
        else:
            sock.settimeout(timeout)
        pinged = False
        while not self._stop.is_set():
            try:
                message = read()
            except TimeoutError:
                if pinged:
                    raise ConnectionError("no answer to PING") from None
                sock.sendall(b"*1\r\n$4\r\nPING\r\n")
                pinged = True
                continue
            pinged = False
            if type(message) is list and len(message) == 3 and message[0] == b"message":
                self.messages += 1
                keys = message[2]
                if keys is None:  # FLUSHDB / FLUSHALL
                    self._tier.flush()
                    self._tell(None)
                else:
                    names = [key.decode("utf-8", "replace") for key in keys]
                    self._tier.invalidate(names)
                    self._tell(names)

    def _tell(self, names: list[str] | None) -> None:
        notify = self._notify()
        if notify is not None:
            notify(names)

    def _abort(self) -> None:
        """Unblock the thread's read (from another thread): shut its socket down."""
        connection = self._connection
        sock = getattr(connection, "_sock", None) if connection is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            connection.disconnect()  # its tracking and subscription end with it; never back into the pool as is
        finally:
            self._pool.release(connection)

    def _forked(self) -> None:
        # In a child the thread is gone and the connection is the parent's: forget both (the pool makes new ones).
        self._tier.reset()
        self._connection = None
        self._thread = None
        self._ready = threading.Event()  # new ones: another thread of the parent may have held their locks
        stopped, self._stop = self._stop.is_set(), threading.Event()
        if stopped:  # closed before the fork: stays closed
            self._stop.set()
        self._mutex = threading.Lock()


def _after_fork_in_child() -> None:
    for listener in list(_listeners):
        listener._forked()


os.register_at_fork(after_in_child=_after_fork_in_child)
