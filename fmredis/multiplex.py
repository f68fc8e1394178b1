"""Multiplexer: the store's simple commands on one redis-py connection shared by every thread, pipelined automatically.

Why: ``Redis.execute_command`` spends about two thirds of a ``GET``'s CPU outside the socket and the parser (pool
checkout with its liveness poll, observability recorders, event dispatch, argument filtering), and a thread that
waits for its own round trip leaves the connection idle. Here a command is packed once by hiredis, written and read
on a redis-py ``Connection`` (its connect, handshake, AUTH, TLS, RESP version, parser and Sentinel master lookup), and
threads that call at the same time share one write and one read.

How (flat combining, as in rueidis and redis-rs' multiplexed connection, without an I/O thread): a caller that finds
the connection free takes the *lead*. It sends its own command and every command queued meanwhile in one write,
reads their replies in order and hands each to its caller; while commands keep arriving it serves a few more batches
(at most ``_ROUNDS``, for ``_BUDGET`` seconds, none after a failure), then gives the lead up and nudges the oldest
queued caller to take it. A thread alone pays no thread switch at all, and under load one write and one read carry a
whole batch. Replies are matched by position only: a batch is taken off the queue under the mutex and sent and read
by the one thread that leads, so no reply can reach another caller, even when a caller gives up waiting (its reply
is read and dropped). The lead is a token: whatever is raised in a leader (``KeyboardInterrupt``, a signal
handler's exception), the ``finally`` that took it gives it up; a connection written to but not fully read
(``_dirty``) is dropped by the next leader; and waiters wake every ``_SLICE`` seconds to take a lead nobody holds.
A dedicated I/O thread was measured too (``python -m benchmarks.threads``).

What a caller can rely on (timeouts, lost connections and re-sends, idle connections, the pool, fork, interrupts)
is documented once, in ``docs/pipelining.md``; the comments below say how each rule is kept.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import weakref
from collections.abc import Sequence
from typing import Any

import hiredis
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from fmredis.mux_calls import _ABANDONED, _DONE, _FAILED, _QUEUED, _TAKEN, IDEMPOTENT, copy_error
from fmredis.mux_calls import Call as _Call
from fmredis.wire import Wire

__all__ = ["IDEMPOTENT", "Multiplexer"]

# A leader serves at most this many batches, within this many seconds, before passing the lead on: enough to keep a
# busy connection full without making its own caller wait for everybody else's replies for long.
_ROUNDS = 8
_BUDGET = 0.005
# A connection idle for longer is checked before use (one poll): the server may have closed it meanwhile (a restart,
# its idle timeout), and a command that is not idempotent must not be the one to find out.
_IDLE = 1.0
# A waiter wakes at least this often to check that someone leads (a wake-up lost to an interrupt heals within it).
_SLICE = 0.05

_pack = hiredis.pack_command
_BUSY = object()  # _alone's answer when another thread leads


class Multiplexer:
    """Sends commands for many threads over one connection of ``pool`` (a redis-py connection pool).

    :meth:`execute` runs one command, :meth:`execute_many` several in one round trip; both return what redis-py's
    parser returns (bytes, ints, lists; no decoding) and raise redis-py's exceptions: ``ResponseError`` for an error
    reply, ``ConnectionError`` and ``TimeoutError`` as described in the module's documentation. Thread-safe.
    """

    def __init__(self, pool: Any) -> None:
        self._pool = pool
        self._sentinel_master = bool(getattr(pool, "is_master", False))
        timeout = pool.connection_kwargs.get("socket_timeout")
        self._timeout: float | None = None if timeout is None else float(timeout)
        # retry_attempts=0 (a Retry with no retries) means no re-send either.
        retry = pool.connection_kwargs.get("retry")
        self._resend = retry is None or not callable(getattr(retry, "get_retries", None)) or retry.get_retries() > 0
        self._reset()
        _LIVE.add(self)

    @classmethod
    def of(cls, pool: Any) -> Multiplexer:
        """The multiplexer of ``pool``, made on first use: every store on one client shares it, and so one borrowed
        connection (stores made and dropped per request do not each keep one)."""
        with _REGISTRY_LOCK:
            # Kept on the pool itself: the two live and die together (a registry keyed by the pool would be kept
            # alive by the value, since a Sentinel connection refers to its pool).
            multiplexer: Multiplexer | None = getattr(pool, _ATTRIBUTE, None)
            if multiplexer is None:
                multiplexer = cls(pool)
                setattr(pool, _ATTRIBUTE, multiplexer)
            return multiplexer

    def _reset(self) -> None:
        self._mutex = threading.Lock()
        self._pending: list[_Call] = []
        self._busy = False  # a leader is running; it alone touches self._connection
        self._connection: Any = None
        self._wire: Any = None
        self._retire = False  # release() came while busy: the leader returns the connection when it stops
        self._token = 0  # which lead is the current one: settling a lead twice (or a stale one) does nothing
        self._used = 0.0  # time.monotonic() of the connection's last round trip
        # Set before a write, cleared once every reply of it is read: a leader cut short between the two (an interrupt)
        # leaves unread replies behind, and the next leader must not read them as its own.
        self._dirty = False

    @property
    def pool(self) -> Any:
        """The pool this multiplexer borrows its connection from."""
        return self._pool

    def execute(self, *args: Any) -> Any:
        """Run one command (``execute("GET", key)``) and return its reply."""
        payload = _pack(args)
        reply = self._alone(payload, args[0] in IDEMPOTENT)
        if reply is _BUSY:
            call = _Call(payload, 1)
            self._run(call, args[0] in IDEMPOTENT)
            reply = call.replies
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    def execute_many(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Run ``commands`` back to back on the connection (not a transaction) and return their replies. The first
        error reply is raised, after all of them have been read."""
        payload = b"".join([_pack(tuple(command)) for command in commands])
        call = _Call(payload, len(commands))
        self._run(call, all(command[0] in IDEMPOTENT for command in commands))
        replies: list[Any] = call.replies if len(commands) > 1 else [call.replies]
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise reply
        return replies

    def release(self) -> None:
        """Return the connection to the pool (closed), now if no call is running, else when the last one ends. The next
        call borrows a connection again."""
        with self._mutex:
            if self._busy:
                self._retire = True
                return
            connection, self._connection, self._wire = self._connection, None, None
        self._give_back(connection)

    # --- one call ----------------------------------------------------------------------------------------------------

    def _alone(self, payload: bytes, idempotent: bool) -> Any:
        """If the connection is free and made (a thread alone, or a quiet moment), lead a batch of this one command,
        inline; else ``_BUSY``. A thread alone pays no thread switch and allocates nothing."""
        token = 0
        failed: _Call | None = None
        later: BaseException | None = None
        try:
            with self._mutex:
                wire, now = self._wire, time.monotonic()
                if self._busy or wire is None or self._dirty or now - self._used > _IDLE:
                    return _BUSY  # (an idle or dirty connection is checked on the general path)
                self._busy, token = True, self._claim()
            try:
                self._dirty = True
                wire.send(payload)
                reply = wire.read()
                self._dirty, self._used = False, now
            except BaseException as exc:
                failed = _Call(payload, 1)
                failed.state, failed.sent = _TAKEN, True
                self._fail([failed], self._connection, exc)
                if not isinstance(exc, Exception):
                    raise
            else:
                with self._mutex:
                    if not self._pending and not self._retire:
                        self._busy, token = False, 0  # settled here: no one to nudge, nothing to return
                if token:
                    later = self._rounds(1, None)
        finally:
            late = self._settled(token) if token else None
        if late is not None:
            raise late
        if failed is not None:  # the next leader reconnects; this call is re-sent once if it may be
            self._recover(failed, idempotent)
            return failed.replies
        if later is not None and not isinstance(later, Exception):
            raise later
        return reply

    def _run(self, call: _Call, idempotent: bool) -> None:
        self._submit(call)
        self._recover(call, idempotent)

    def _recover(self, call: _Call, idempotent: bool) -> None:
        """Return if ``call`` is done; re-send it once if it may be, else raise its error."""
        if call.state == _DONE:
            return
        error = call.error
        assert error is not None
        if (
            call.state == _FAILED
            and call.sent
            and idempotent
            and self._resend
            and not isinstance(error, RedisTimeoutError)
        ):
            call.state, call.error, call.replies = _QUEUED, None, None  # once more, on a new connection
            self._submit(call)
            if call.state == _DONE:
                return
            error = call.error
            assert error is not None
        if call.sent and not idempotent and error.args and "outcome" not in str(error.args[0]):
            error.args = (f"{error.args[0]}; the command was sent and its outcome is unknown", *error.args[1:])
        raise error  # this caller's own copy

    def _submit(self, call: _Call) -> None:
        """Lead (the connection is free) or queue and wait; returns with ``call`` done, failed or abandoned."""
        call.wake, call.pinged = threading.Lock(), False
        call.wake.acquire()
        if not self._lead(call, queue=True):
            self._wait(call, time.monotonic())

    def _wait(self, call: _Call, queued: float) -> None:
        """Wait (``call`` is queued) until the leader has sent and answered it, or ``socket_timeout`` after
        ``queued``; lead when nudged, or when a slice of waiting ends with the call queued and no one leading (a nudge
        lost to an interrupt costs one slice, never the whole timeout)."""
        timeout = self._timeout
        nudged = False
        try:
            while True:
                left = _SLICE if timeout is None else min(_SLICE, max(0.0, queued + timeout - time.monotonic()))
                news = call.wake.acquire(timeout=left)
                nudge: Any = None
                lead = False
                with self._mutex:
                    if call.state not in (_QUEUED, _TAKEN):
                        return  # done or failed (the leader set it before waking this thread)
                    if news:
                        nudged = call.state == _QUEUED  # (before the flag is cleared: an interrupt passes it on)
                        call.pinged = False
                    if timeout is not None and time.monotonic() - queued >= timeout:
                        nudge = self._give_up(call, nudged=nudged)  # (a nudge it had goes on to the next caller)
                    elif call.state == _TAKEN or self._busy:
                        nudged = False
                        continue  # its reply is on the way, or a leader will take it
                    else:
                        lead = True  # queued, and no one leads
                if not lead:  # given up
                    if nudge is not None:
                        nudge.release()
                    return
                if self._lead(call, queue=False):
                    return
                nudged = False  # another thread took the lead first: it serves this call too
        except BaseException:  # KeyboardInterrupt in the main thread: give the call up, and pass on a nudge it had
            with self._mutex:
                nudge = self._give_up(call, nudged=nudged) if call.state in (_QUEUED, _TAKEN) else None
            if nudge is not None:
                nudge.release()
            raise

    def _give_up(self, call: _Call, *, nudged: bool) -> Any:
        """(Under the mutex) time ``call`` out: never sent if still queued, its reply dropped if sent. Returns the wake
        lock to release if a nudge to lead was meant for it (``nudged``, or one on its way): the next queued caller
        gets it."""
        nudge = None
        if call.state == _QUEUED:
            if call in self._pending:
                self._pending.remove(call)
            outcome = "it was not sent"
            if (nudged or call.pinged) and not self._busy:  # (a queued call is only ever pinged to lead)
                nudge = self._nudge()
        else:
            outcome = "its outcome is unknown"  # the leader reads its reply, if it comes, and drops it
        call.state = _ABANDONED
        call.error = RedisTimeoutError(f"no reply within {self._timeout} s (socket_timeout); {outcome}")
        return nudge

    # --- the leader --------------------------------------------------------------------------------------------------

    def _claim(self) -> int:
        """(Under the mutex, with ``_busy`` just set) a new lead's token."""
        self._token += 1
        return self._token

    def _lead(self, own: _Call, *, queue: bool) -> bool:
        """Take the lead if no one holds it, serve ``own`` and what is queued, and settle the lead (``True``); else
        leave ``own`` queued (``queue``: queue it now) and return ``False``. Whatever is raised, a lead taken here is
        settled here."""
        token = 0
        failure: BaseException | None = None
        batch: list[_Call] = []
        try:
            with self._mutex:
                if self._busy or (not queue and own.state != _QUEUED):
                    if queue:
                        self._pending.append(own)
                    return False
                self._busy, token = True, self._claim()
                if not queue:
                    self._pending.remove(own)
                batch, self._pending = [own, *self._pending], []
                for call in batch:
                    call.state, call.sent = _TAKEN, True
            failure = self._serve(batch)
            failure = self._rounds(1, failure)
        except BaseException as exc:
            self._orphaned(batch, exc)
            raise
        finally:
            late = self._settled(token)
        if late is not None:
            raise late
        if failure is not None and not isinstance(failure, Exception):
            raise failure
        return True

    def _rounds(self, rounds: int, failure: BaseException | None) -> BaseException | None:
        """After ``rounds`` batches, serve the next ones while callers queue up: at most ``_ROUNDS`` in all and for
        ``_BUDGET`` seconds, and none after a failure or when a connection must be made (the next leader does that):
        the leader's own caller waits for others no longer than one round. Returns the last failure."""
        until = time.monotonic() + _BUDGET
        batch: list[_Call] = []
        try:
            while failure is None and rounds < _ROUNDS:
                with self._mutex:
                    if not self._pending or self._wire is None or time.monotonic() > until:
                        break
                    batch, self._pending = self._pending, []
                    for call in batch:
                        call.state, call.sent = _TAKEN, True
                failure = self._serve(batch)
                batch = []
                rounds += 1
        except BaseException as exc:
            self._orphaned(batch, exc)
            raise
        return failure

    def _orphaned(self, batch: list[_Call], exc: BaseException) -> None:
        """A leader interrupted (``KeyboardInterrupt``) between taking ``batch`` and finishing it: fail what is not
        done (its replies may be unread: the connection goes too), so that no caller waits for a reply nobody reads."""
        if any(call.state in (_QUEUED, _TAKEN) for call in batch):
            with self._mutex:
                for call in batch:
                    if call.state == _QUEUED:
                        call.state = _TAKEN  # taken off the queue already: fail it like the others
            self._fail(batch, self._connection, exc)

    def _settled(self, token: int) -> BaseException | None:
        """Settle the lead ``token`` (if any) even if interrupted meanwhile; returns the interruption to re-raise."""
        late: BaseException | None = None
        while token:
            try:
                self._settle(token)
                token = 0
            except BaseException as exc:  # _settle is idempotent per token: run it again
                late = exc
        return late

    def _settle(self, token: int) -> None:
        """End the lead ``token`` (a stale or settled one: nothing): free the connection for the next caller, nudge the
        oldest waiter to take the lead if any is queued, and return the connection if :meth:`release` asked."""
        retire: Any = None
        with self._mutex:
            if not self._busy or token != self._token:
                return
            self._busy = False
            if self._retire:
                retire, self._connection, self._wire, self._retire = self._connection, None, None, False
            wake = self._nudge()
        if wake is not None:
            wake.release()  # outside the mutex: a wake-up is a system call, and callers queue meanwhile
        self._give_back(retire)

    def _nudge(self) -> Any:
        """(Under the mutex) the wake lock to release so that the oldest queued caller takes the lead, or ``None``."""
        for call in self._pending:
            if not call.pinged:
                call.pinged = True
                return call.wake
            return None  # it has a wake-up coming already
        return None

    def _serve(self, batch: list[_Call]) -> BaseException | None:
        """Send ``batch`` in one write and read its replies in order; on a failure, fail what is left of it and
        return the exception (a ``KeyboardInterrupt`` is for the leader to re-raise once the lead is settled)."""
        connection = self._connection
        done = 0
        try:
            if connection is not None and (
                self._dirty or (time.monotonic() - self._used > _IDLE and self._wire.stale())
            ):
                # Replies left unread by an interrupted leader, or closed by the server while idle (nothing was sent
                # on it): not fit to carry this batch.
                self._give_back(connection)
                connection = self._connection = self._wire = None
                self._dirty = False
            if connection is None:
                connection = self._connection = self._pool.get_connection()
                self._wire = Wire(connection, self._sentinel_master)
            wire = self._wire
            self._dirty = True
            wire.send(batch[0].payload if len(batch) == 1 else b"".join([call.payload for call in batch]))
            read = wire.read
            for call in batch:
                call.replies = read() if call.count == 1 else [read() for _ in range(call.count)]
                done += 1
            self._dirty, self._used = False, time.monotonic()
        except BaseException as exc:
            self._fail(batch[done:], connection, exc)  # first: the connection goes before anything else can run
            self._finish(batch[:done])
            return exc
        self._finish(batch)
        return None

    def _finish(self, calls: list[_Call], failure: BaseException | None = None, *, sent: bool = True) -> None:
        """Mark each of ``calls`` still taken done (or failed with its own copy of ``failure``) and wake its caller;
        a call whose caller gave up is skipped (its reply is dropped here)."""
        if failure is None and len(calls) == 1 and calls[0].wake is None:  # the leader's own call alone
            calls[0].state = _DONE
            return
        wakes = []
        with self._mutex:
            for call in calls:
                if call.state == _TAKEN:
                    if failure is None:
                        call.state = _DONE
                    else:
                        call.error, call.state, call.sent = copy_error(failure), _FAILED, sent
                    if call.wake is not None and not call.pinged:
                        call.pinged = True
                        wakes.append(call.wake)
        for wake in wakes:  # outside the mutex: each is a system call, and callers queue meanwhile
            wake.release()

    def _fail(self, calls: list[_Call], connection: Any, exc: BaseException) -> None:
        """Close the connection and return it to the pool, then fail ``calls`` (a connection that could not be
        borrowed sent nothing)."""
        if connection is not None:
            self._connection = self._wire = None
            self._dirty = False
            self._give_back(connection)
        self._finish(calls, exc, sent=connection is not None)

    def _give_back(self, connection: Any) -> None:
        """Close ``connection`` and return it to the pool; never raises (a failure here must not cost the lead)."""
        if connection is None:
            return
        with contextlib.suppress(Exception):
            connection.disconnect()
        with contextlib.suppress(Exception):
            self._pool.release(connection)


_ATTRIBUTE = "_fmredis_multiplexer"
_REGISTRY_LOCK = threading.Lock()
# Every multiplexer, so that a forked child can reset them all (weakly).
_LIVE: weakref.WeakSet[Multiplexer] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    global _REGISTRY_LOCK
    _REGISTRY_LOCK = threading.Lock()  # another thread may have held it at the fork
    for multiplexer in list(_LIVE):
        multiplexer._reset()  # the parent's connection object is dropped, never closed or shut down from here


os.register_at_fork(after_in_child=_after_fork_in_child)
