"""Wire: one redis-py connection's bytes in and out, for :mod:`fmredis.multiplex` (which alone calls it, from one
thread at a time)."""

from __future__ import annotations

import select
import ssl
from typing import Any

import hiredis
from redis._parsers import BaseParser
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, ReadOnlyError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["Wire"]


class Wire:
    """Reads and writes on a connected redis-py connection (error replies are returned, not raised).

    On a RESP2 connection with redis-py's hiredis parser: ``sendall`` on its socket and a hiredis reader of our own
    fed by ``recv_into`` (the bytes redis-py's parser would read, without its per-reply bookkeeping); the error
    replies are redis-py's exception classes (its ``parse_error``). Anything else (RESP3 with its push messages, the
    pure-Python parser) goes through the connection's own ``send_packed_command``/``read_response``.
    """

    __slots__ = ("_broken", "_buffer", "_connection", "_reader", "_sentinel_master", "_sock", "read", "send")

    def __init__(self, connection: Any, sentinel_master: bool) -> None:
        self._connection = connection
        self._sentinel_master = sentinel_master
        self._broken: RedisConnectionError | None = None
        # Any: redis-py's connection attributes are untyped (and private: read once here, checked below).
        self._sock: Any = getattr(connection, "_sock", None)
        sock = self._sock
        parser: Any = getattr(connection, "_parser", None)
        lean = (
            sock is not None
            and type(parser).__name__ == "_HiredisParser"
            and getattr(connection, "protocol", None) in (None, 2, "2")
            and getattr(parser, "_reader", None) is not None
            and not parser._reader.has_data()
        )
        if lean:
            self._reader = hiredis.Reader(protocolError=InvalidResponse, replyError=BaseParser.parse_error)
            self._buffer = bytearray(65536)
            self.send, self.read = self._send_lean, self._read_lean
        else:
            self.send, self.read = self._send_connection, self._read_connection

    def stale(self) -> bool:
        """Whether the connection, idle with nothing in flight, has something to read: the server's EOF (it closed
        the connection) or bytes nobody asked for. Either way it is not fit to carry replies in order. Not checked on
        TLS, where a readable socket may only hold the server's session tickets."""
        try:
            if isinstance(self._sock, ssl.SSLSocket):
                return False
            if self.read == self._read_connection:
                return bool(self._connection.can_read(timeout=0))
            return _readable(self._sock) or self._reader.has_data()
        except (OSError, ValueError, RedisError):
            return True

    def _send_connection(self, payload: bytes) -> None:
        # No health check: its PING would read a reply that belongs to a command in flight.
        self._connection.send_packed_command((payload,), check_health=False)

    def _send_lean(self, payload: bytes) -> None:
        try:
            self._sock.sendall(payload)
        except TimeoutError:
            raise RedisTimeoutError("Timeout writing to socket") from None
        except OSError as exc:
            error = RedisConnectionError(f"Error {exc.errno} while writing to socket: {exc.strerror}")
            if not self._salvage():
                raise error from None
            # The server answered part of the write before it closed the connection, typically an error reply
            # such as "Protocol error: invalid bulk length" for a value over proto-max-bulk-len, then reset the
            # connection on the bytes it had not read. Those replies are read as usual; the calls after them fail
            # with this error (the connection is gone) once the reader runs dry.
            self._broken = error

    def _salvage(self) -> bool:
        """Feed the reader what the server sent before the write failed, without blocking; whether it held a
        reply. (A poll before each read: with a socket timeout, CPython waits for data before ``recv``.)"""
        try:
            while _readable(self._sock):
                count = self._sock.recv_into(self._buffer)
                if count == 0:
                    break
                self._reader.feed(self._buffer, 0, count)  # type: ignore[arg-type]  # hiredis takes any buffer
        except OSError:
            pass  # the reset itself, once the bytes before it are read
        return bool(self._reader.has_data())

    def _read_lean(self) -> Any:
        reader = self._reader
        reply = reader.gets()
        while reply is False:
            if self._broken is not None:
                raise self._broken
            try:
                count = self._sock.recv_into(self._buffer)
            except TimeoutError:  # the socket's own timeout: socket_timeout per read
                raise RedisTimeoutError("Timeout reading from socket") from None
            except OSError as exc:
                raise RedisConnectionError(f"Error {exc.errno} while reading from socket: {exc.strerror}") from None
            if count == 0:
                raise RedisConnectionError("Connection closed by server.")
            reader.feed(self._buffer, 0, count)  # type: ignore[arg-type]  # hiredis takes any buffer
            reply = reader.gets()
        if isinstance(reply, RedisError):
            if isinstance(reply, RedisConnectionError):
                # LOADING, NOAUTH, "max number of clients": redis-py's parser raises these error replies as an outage.
                raise reply
            if self._sentinel_master and isinstance(reply, ReadOnlyError):
                # As redis-py's SentinelManagedConnection: a master that turned replica; the pool finds the new one.
                raise RedisConnectionError("The previous master is now a replica")
        elif type(reply) is list and reply and isinstance(reply[0], RedisConnectionError):
            raise reply[0]  # as redis-py's parser does
        return reply

    def _read_connection(self) -> Any:
        try:
            return self._connection.read_response()
        except ResponseError as error:
            return error


def _readable(sock: Any) -> bool:
    """Whether ``sock`` has something to read now (poll, not select: a descriptor number may exceed select's 1024)."""
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    return bool(select.select([sock], [], [], 0)[0])
