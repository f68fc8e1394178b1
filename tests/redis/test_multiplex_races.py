"""Races, interruptions and timing bounds of fmredis.multiplex, on real redis-servers on 127.0.0.1: each test
reproduces a defect found in review of the first version (each failed against it), and the guards close gaps
around them.

Interruptions are injected with ``sys.settrace``: a trace function that raises at a given line raises that exception
in the traced frame at that line, which is exactly what a signal handler (``KeyboardInterrupt``, a ``SystemExit`` from
a SIGTERM handler) does when CPython runs it at the eval-breaker check that follows a call (here: right after a
``Lock.acquire()`` returned, or right after a call that precedes the line).
"""

from __future__ import annotations

import contextlib
import inspect
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from types import CodeType, FrameType
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from fmredis import RedisSessionStore, multiplex
from fmredis.multiplex import _QUEUED, Multiplexer, _Call
from tests.harness.proxy import TcpProxy
from tests.harness.servers import RedisServer

pytestmark = [pytest.mark.timeout(120), pytest.mark.fault]

NAME = "mux-review"


# --- helpers ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer("mux-review") as process:
        yield process


@pytest.fixture
def raw(server: RedisServer) -> Iterator[redis.Redis]:
    probe = server.client()
    yield probe
    probe.close()


def make_pool(
    port: int, *, socket_timeout: float = 1.0, retries: int = 1, **options: Any
) -> redis.BlockingConnectionPool:
    """RESP2 + hiredis (the lean wire, as create_redis_client builds it), bounded, blocking."""
    kwargs: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "protocol": 2,  # redis-py 8 defaults to RESP3, which would take the connection's own read_response path
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": 1.0,
        "retry": Retry(NoBackoff(), retries),
        "max_connections": 8,
        "timeout": 2.0,
        "client_name": NAME,
    }
    kwargs.update(options)
    return redis.BlockingConnectionPool(**kwargs)  # type: ignore[no-untyped-call]


def lean(mux: Multiplexer) -> bool:
    return bool(mux._wire is not None and mux._wire.read == mux._wire._read_lean)


def line_of(function: Callable[..., Any], text: str) -> int:
    """The line number of the (first) line of ``function`` whose stripped source is ``text``."""
    lines, start = inspect.getsourcelines(function)
    for offset, line in enumerate(lines):
        if line.strip() == text:
            return start + offset
    raise AssertionError(f"{text!r} not found in {function.__qualname__}: the code under review changed")


@contextlib.contextmanager
def raising_at(code: CodeType, lineno: int, exc: type[BaseException] = KeyboardInterrupt) -> Iterator[list[int]]:
    """In the current thread, raise ``exc`` once when a frame running ``code`` reaches ``lineno``."""
    fired: list[int] = []
    previous = sys.gettrace()

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "line" and frame.f_lineno == lineno and not fired:
            fired.append(lineno)
            raise exc()
        return local

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        return local if frame.f_code is code and not fired else None

    sys.settrace(tracer)
    try:
        yield fired
    finally:
        sys.settrace(previous)


def in_thread(fn: Callable[[], Any], timeout: float) -> tuple[bool, Any]:
    """Run ``fn`` in a daemon thread: (finished within ``timeout``, its result or exception)."""
    box: list[Any] = []

    def run() -> None:
        try:
            box.append(fn())
        except BaseException as exc:
            box.append(exc)

    thread = threading.Thread(target=run, daemon=True, name="mux-review-probe")
    thread.start()
    thread.join(timeout)
    return (not thread.is_alive(), box[0] if box else None)


def wait_for(check: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.001)


class Hooked(Multiplexer):
    """Calls ``on_serve(batch)`` when a leader starts serving a batch (not for the inline fast path)."""

    def __init__(self, pool: Any) -> None:
        super().__init__(pool)
        self.on_serve: Callable[[list[_Call]], None] | None = None

    def _serve(self, batch: list[_Call]) -> BaseException | None:
        if self.on_serve is not None:
            self.on_serve(batch)
        return super()._serve(batch)


def feed_one_caller_per_round(mux: Hooked, commands: list[tuple[Any, ...]], delay: float) -> Callable[[], None]:
    """Helper threads that each queue one command, the next one ``delay`` s after each round starts: the leader always
    finds exactly one caller waiting when its round ends (as under steady load). Returns the function that lets the
    first helper go."""
    gates = [threading.Event() for _ in commands]
    opened = iter(gates)

    def helper(gate: threading.Event, command: tuple[Any, ...]) -> None:
        if gate.wait(20):
            with contextlib.suppress(redis.RedisError):
                mux.execute(*command)

    for gate, command in zip(gates, commands, strict=True):
        threading.Thread(target=helper, args=(gate, command), daemon=True).start()

    def open_next(_batch: Any = None) -> None:
        gate = next(opened, None)
        if gate is not None:
            threading.Timer(delay, gate.set).start()

    mux.on_serve = open_next
    return open_next


# --- the leader's caller is held for up to _ROUNDS rounds -------------------------------------------------------


def test_the_leaders_caller_gets_its_reply_within_socket_timeout_under_steady_load(server: RedisServer) -> None:
    """A leader whose own reply is in keeps serving whoever queued meanwhile, for up to _ROUNDS (8) batches,
    before execute() returns. Each batch here takes 0.25 s (well within socket_timeout=1 for every waiter), and the
    leader's caller, whose own 0.25 s command was answered first, returns after about 2 s."""
    mux = Hooked(make_pool(server.port, socket_timeout=1.0))
    mux.execute("PING")
    release_first = feed_one_caller_per_round(mux, [("BLPOP", f"review:h{i}", "0.25") for i in range(7)], 0.05)
    done: list[float] = []

    def leader() -> None:
        start = time.monotonic()
        mux.execute("BLPOP", "review:leader", "0.25")
        done.append(time.monotonic() - start)

    thread = threading.Thread(target=leader, daemon=True)
    thread.start()
    wait_for(lambda: mux._busy, what="the leader to start")
    release_first()
    thread.join(20)
    assert done and done[0] < 1.0, f"the leader's own 0.25 s call returned after {done[0]:.2f} s (socket_timeout 1 s)"


def test_the_leaders_call_fails_within_about_socket_timeout_on_a_frozen_server(server: RedisServer) -> None:
    """docs/outages.md: "one attempt against a frozen server lasts socket_timeout ... for the store's pipelined
    commands". The leader's own read times out after socket_timeout, but it then leads up to 7 more batches, each
    paying a reconnect whose handshake times out too, before its caller sees the error: about 8 x socket_timeout."""
    mux = Hooked(make_pool(server.port, socket_timeout=0.8, retries=0))  # (a handshake is not retried either)
    mux.execute("PING")
    release_first = feed_one_caller_per_round(mux, [("GET", f"review:h{i}") for i in range(7)], 0.3)
    outcome: list[Any] = []

    def leader() -> None:
        start = time.monotonic()
        try:
            mux.execute("GET", "review:leader")
        except redis.RedisError as exc:
            outcome.append(exc)
        outcome.append(time.monotonic() - start)

    server.freeze()
    try:
        thread = threading.Thread(target=leader, daemon=True)
        thread.start()
        wait_for(lambda: mux._busy, what="the leader to start")
        release_first()
        thread.join(30)
    finally:
        server.thaw()
    assert isinstance(outcome[0], redis.TimeoutError), outcome
    assert outcome[1] < 1.6, f"the leader's call failed after {outcome[1]:.2f} s, socket_timeout is 0.8 s"


# --- asynchronous exceptions (KeyboardInterrupt, SystemExit from a signal handler) ------------------------------


def test_an_interrupt_right_after_the_fast_path_takes_the_mutex_does_not_deadlock(server: RedisServer) -> None:
    """execute() takes self._mutex with a bare acquire() (not ``with``): a KeyboardInterrupt delivered at the
    eval-breaker check right after acquire() returns leaves the mutex held for good, and every later call of every
    thread blocks forever in an acquire() without timeout (socket_timeout does not help)."""
    mux = Multiplexer(make_pool(server.port))
    mux.execute("PING")  # the connection is there: the next call takes the fast path
    line = line_of(Multiplexer._alone, "wire, now = self._wire, time.monotonic()")
    with raising_at(Multiplexer._alone.__code__, line) as fired, pytest.raises(KeyboardInterrupt):
        mux.execute("GET", "review:k")
    assert fired
    finished, result = in_thread(lambda: mux.execute("PING"), 4.0)
    assert finished and result == b"PONG", "the next call is blocked forever on the multiplexer's mutex"


def test_an_interrupt_right_after_the_lead_is_handed_over_does_not_lose_the_lead(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """_submit: between _wait() returning True (this caller was made leader) and _lead() there is a call
    (self._take()); an interrupt there escapes with _busy still True. No thread is leader any more: every later call
    queues and times out, forever (release() only sets _retire)."""
    monkeypatch.setattr(multiplex, "_ROUNDS", 1)  # hand the lead over after every batch
    mux = Multiplexer(make_pool(server.port, socket_timeout=1.0))
    mux.execute("PING")
    leader = threading.Thread(target=mux.execute, args=("BLPOP", "review:leader", "0.4"), daemon=True)
    leader.start()
    wait_for(lambda: mux._busy, what="the leader to start")
    line = line_of(Multiplexer._wait, "if self._lead(call, queue=False):")
    with raising_at(Multiplexer._wait.__code__, line) as fired, pytest.raises(KeyboardInterrupt):
        mux.execute("GET", "review:k")
    assert fired, "this caller was not handed the lead: the scenario did not happen"
    leader.join(5)
    finished, result = in_thread(lambda: mux.execute("PING"), 4.0)
    assert finished and result == b"PONG", f"after the interrupted handover: {result!r}"


def test_an_interrupt_while_the_leader_fails_a_lost_connection_does_not_lose_the_lead(
    server: RedisServer, raw: redis.Redis
) -> None:
    """Same defect, another window: _serve's except clause (and the fast path's) runs _finish/_fail, which
    call into redis-py (disconnect, pool.release) and release wake locks; an interrupt there escapes the leader with
    _busy still True. Here: the connection was killed, the next call's read fails, and the interrupt arrives while
    _fail wakes the waiters. Every later call times out."""
    mux = Multiplexer(make_pool(server.port, socket_timeout=1.0))
    mux.execute("PING")
    raw.client_kill_filter(_type="normal", skipme=True)
    line = line_of(
        Multiplexer._finish,
        "for wake in wakes:  # outside the mutex: each is a system call, and callers queue meanwhile",
    )
    with raising_at(Multiplexer._finish.__code__, line) as fired, pytest.raises(KeyboardInterrupt):
        mux.execute("GET", "review:k")
    assert fired
    finished, result = in_thread(lambda: mux.execute("PING"), 4.0)
    assert finished and result == b"PONG", f"after the interrupted failure handling: {result!r}"


# --- the timeout message ------------------------------------------------------------------------------------------


def _quietly(fn: Callable[..., Any], *args: Any) -> None:
    with contextlib.suppress(redis.RedisError):
        fn(*args)


class SlowToGiveUp(Multiplexer):
    """A waiter whose timed wait ran out, descheduled before it takes the mutex (as under GIL contention) until the
    leader has taken its call for sending."""

    def _wait(self, call: _Call, queued: float) -> None:
        real = call.wake

        class Late:
            def acquire(self, timeout: float = -1) -> bool:
                got = real.acquire(timeout=timeout)
                if not got:  # descheduled after the timed wait ran out, until the leader took the call
                    deadline = time.monotonic() + 3
                    while call.state == _QUEUED and time.monotonic() < deadline:
                        time.sleep(0.001)
                return got

            def release(self) -> None:
                real.release()

        call.wake = Late()
        super()._wait(call, queued)


def test_a_timed_out_call_that_was_sent_never_says_it_was_not_sent(server: RedisServer, raw: redis.Redis) -> None:
    """_wait() reads call.sent for the message *before* _abandon() takes the mutex; if the leader takes the call
    in between, the caller is told "it was not sent" about a SET that Redis then runs (the docs: "The message says
    whether the command was sent (outcome unknown) or never left the queue")."""
    mux = SlowToGiveUp(make_pool(server.port, socket_timeout=5.0))
    mux._timeout = 0.3  # the waiters' timeout; the leader's reads keep 5 s
    mux.execute("PING")
    leader = threading.Thread(target=mux.execute, args=("BLPOP", "review:leader", "1"), daemon=True)
    leader.start()
    wait_for(lambda: mux._busy, what="the leader to start")
    # A slow command queued first: the SET is sent behind it, so it stays taken (not yet done) for 0.5 s.
    ahead = threading.Thread(target=_quietly, args=(mux.execute, "BLPOP", "review:ahead", "0.5"), daemon=True)
    ahead.start()
    wait_for(lambda: len(mux._pending) == 1, what="the command ahead to queue")
    with pytest.raises(redis.TimeoutError) as caught:
        mux.execute("SET", "review:sent", "1")
    leader.join(5)
    ahead.join(5)
    assert raw.get("review:sent") == "1"  # it was sent, and ran
    assert "not sent" not in str(caught.value), str(caught.value)


# --- closing one store drops the connection every store on the client shares ------------------------------------


def test_closing_one_store_does_not_cut_the_connection_other_stores_on_the_client_use(server: RedisServer) -> None:
    """Every store on a pool shares one Multiplexer (Multiplexer.of), and _close() calls release() even when
    the store does not own its client ("a client passed in is left to its owner"). A store made and closed per request
    on a shared client thus disconnects the shared connection each time: every other store's next call reconnects
    (TCP + handshake; with TLS a full handshake), where redis-py's path kept its pooled connections."""
    with TcpProxy(server.port) as proxy:
        client = redis.Redis(connection_pool=make_pool(proxy.port))
        long_lived = RedisSessionStore(client)
        long_lived.set("a", {"n": 1})
        connections = proxy.connections_accepted
        for _ in range(3):
            with RedisSessionStore(client) as per_request:
                per_request.get("a")
            long_lived.get("a")
        assert proxy.connections_accepted == connections, (
            f"{proxy.connections_accepted - connections} reconnects for 3 short-lived stores on a shared client"
        )
        client.connection_pool.disconnect()


# --- signals and the socket timeout ------------------------------------------------------------------------------


def test_periodic_signals_do_not_stretch_the_socket_timeout(server: RedisServer) -> None:
    """wire.kernel_timeouts makes the socket blocking with SO_RCVTIMEO. A signal interrupts recv() with EINTR,
    CPython (PEP 475) calls it again, and the kernel starts the full timeout over: with a signal every 20 ms (a
    sampling profiler, an itimer, SIGCHLDs) a read from a dead peer never times out. Python's own socket timeout
    (redis-py's path) retries against a deadline and times out as configured."""
    assert threading.current_thread() is threading.main_thread()
    with TcpProxy(server.port) as proxy:
        mux = Multiplexer(make_pool(proxy.port, socket_timeout=0.5, retries=0))
        mux.execute("PING")
        assert lean(mux)
        proxy.blackhole()
        previous = signal.signal(signal.SIGUSR1, lambda *_: None)
        stop = threading.Event()
        main = threading.main_thread().ident
        assert main is not None

        def ticking() -> None:
            while not stop.wait(0.02):
                signal.pthread_kill(main, signal.SIGUSR1)

        ticker = threading.Thread(target=ticking, daemon=True)
        rescue = threading.Timer(4.0, proxy.reset_all)  # ends the read if it never times out
        ticker.start()
        rescue.start()
        start = time.monotonic()
        try:
            with pytest.raises(redis.RedisError) as caught:
                mux.execute("GET", "review:k")
        finally:
            elapsed = time.monotonic() - start
            stop.set()
            rescue.cancel()
            ticker.join(2)
            signal.signal(signal.SIGUSR1, previous)
        assert isinstance(caught.value, redis.TimeoutError) and elapsed < 2.0, (
            f"{type(caught.value).__name__} after {elapsed:.2f} s with socket_timeout 0.5 s"
        )


# --- interrupts that must not cost a reply, a batch or a wake-up -------------------------------------------------


@pytest.mark.parametrize("where", ["alone", "batch"])
def test_an_interrupt_after_a_timed_out_read_never_hands_the_late_reply_to_the_next_caller(where: str) -> None:
    """A read times out (the server is stalled), and an interrupt lands in the failure handling before the connection
    is dropped. The late reply of ``GET a`` is then waiting on the connection: the next caller's ``GET b`` must get
    b's value, never a's. (The first version kept the connection and handed a's value to the ``GET b``.)"""
    config = [("enable-debug-command", "yes")]
    with RedisServer("mux-review-late", config=config) as server:
        probe = server.client()
        probe.set("a", "value-of-a")
        probe.set("b", "value-of-b")
        mux = Multiplexer(make_pool(server.port, socket_timeout=0.2))
        mux.execute("PING")
        mux.execute("PING")  # connected and just used: the next call takes the inline path
        stall = threading.Thread(
            target=lambda: server.client(socket_timeout=5).execute_command("DEBUG", "SLEEP", "0.5")
        )
        stall.start()
        time.sleep(0.05)
        if where == "alone":
            function, text, first = Multiplexer._alone, "failed = _Call(payload, 1)", lambda: mux.execute("GET", "a")
        else:
            function, text, first = Multiplexer._finish, "wakes = []", lambda: mux.execute_many([("GET", "a")])
        with raising_at(function.__code__, line_of(function, text)) as fired, pytest.raises(KeyboardInterrupt):
            first()
        assert fired
        stall.join()
        time.sleep(0.05)  # the late reply to GET a has arrived, if the connection is still there
        assert mux.execute("GET", "b") == b"value-of-b"
        probe.close()


def test_an_interrupt_while_a_batch_is_taken_fails_the_rest_of_it_instead_of_losing_it(
    server: RedisServer, raw: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An interrupt in the loop that marks a taken batch: the calls behind the interrupted one are off the queue. They
    must end (sent by a later leader or failed), not wait for a reply nobody reads or raise ValueError at their
    timeout (the first version did both)."""
    monkeypatch.setattr(multiplex, "_ROUNDS", 1)
    mux = Multiplexer(make_pool(server.port, socket_timeout=5.0))
    mux.execute("PING")
    # The leader blocks until the helper below has queued both calls and ends its BLPOP with a push: the batch then
    # holds all three calls however slow the machine (a fixed 0.3 s BLPOP could end with one of them not queued yet).
    leader = threading.Thread(target=mux.execute, args=("BLPOP", "review:nothing", "4"), daemon=True)
    leader.start()
    wait_for(lambda: mux._busy, what="the leader to start")
    outcomes: list[str] = []

    def queue_two() -> None:
        wait_for(lambda: len(mux._pending) == 1, what="the main thread to queue")
        for _ in range(2):
            count = len(mux._pending)

            def call() -> None:
                try:
                    outcomes.append(f"ok {mux.execute('SET', 'review:sent', 'yes')!r}")
                except redis.RedisError as exc:
                    outcomes.append(type(exc).__name__)
                except Exception as exc:  # ValueError from the queue: the defect
                    outcomes.append(f"BUG {type(exc).__name__}")

            threading.Thread(target=call, daemon=True).start()
            wait_for(lambda count=count: len(mux._pending) == count + 1, what="a caller to queue")
        raw.rpush("review:nothing", "go")  # all three are queued: the leader's BLPOP returns

    helper = threading.Thread(target=queue_two, daemon=True)
    helper.start()
    line = line_of(Multiplexer._lead, "call.state, call.sent = _TAKEN, True")
    hits = [0]
    previous = sys.gettrace()

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "line" and frame.f_lineno == line:
            hits[0] += 1
            if hits[0] == 2:  # the second call of the batch: the first is marked, the rest are not
                raise KeyboardInterrupt
        return local

    sys.settrace(lambda frame, event, arg: local if frame.f_code is Multiplexer._lead.__code__ else None)
    try:
        with pytest.raises(KeyboardInterrupt):
            mux.execute("GET", "review:k")  # queues, is nudged, leads: interrupted while marking its batch
    finally:
        sys.settrace(previous)
    assert hits[0] >= 2
    wait_for(lambda: len(outcomes) == 2, 5, "both queued callers to end")
    assert not any(outcome.startswith("BUG") for outcome in outcomes), outcomes
    assert not mux._pending and mux.execute("PING") == b"PONG"
    leader.join(5)


def test_execute_many_of_one_command_returns_a_list_of_one(server: RedisServer, raw: redis.Redis) -> None:
    raw.set("review:one", "1")
    mux = Multiplexer(make_pool(server.port))
    assert mux.execute_many([("GET", "review:one")]) == [b"1"]
    assert mux.execute_many([("GET", "review:missing")]) == [None]


# --- guards ----------------------------------------------------------------------------------------------------


def test_guard_an_abandoned_reply_is_dropped_and_the_next_caller_gets_its_own(server: RedisServer) -> None:
    """Guard (passes). A waiter that timed out with its command taken: its reply is read and dropped, never handed to
    the next call on the connection."""
    mux = Multiplexer(make_pool(server.port, socket_timeout=5.0))
    mux._timeout = 0.3
    mux.execute("SET", "review:mine", "mine")
    leader = threading.Thread(target=mux.execute, args=("BLPOP", "review:leader", "0.6"), daemon=True)
    leader.start()
    wait_for(lambda: mux._busy, what="the leader to start")
    with pytest.raises(redis.TimeoutError):
        mux.execute("BLPOP", "review:slow", "0.5")  # taken at 0.6 s, answered (nil) at 1.1 s, long after its 0.3 s
    leader.join(5)
    assert mux.execute("GET", "review:mine") == b"mine"


def test_guard_no_connection_is_leaked_through_failures_and_release(server: RedisServer, raw: redis.Redis) -> None:
    """Guard (passes). Connections killed under load, then release(): the pool gets every connection back."""
    pool = make_pool(server.port, socket_timeout=1.0, max_connections=3)
    mux = Multiplexer(pool)
    stop = threading.Event()

    def hammer(index: int) -> None:
        while not stop.is_set():
            with contextlib.suppress(redis.RedisError):
                mux.execute("SET", f"review:{index}", "v")

    threads = [threading.Thread(target=hammer, args=(i,), daemon=True) for i in range(8)]
    for thread in threads:
        thread.start()
    for _ in range(10):
        time.sleep(0.05)
        raw.client_kill_filter(_type="normal", skipme=True)
    stop.set()
    for thread in threads:
        thread.join(5)
    mux.release()
    idle = sum(1 for connection in list(pool.pool.queue) if connection is not None)
    assert len(pool._connections) - idle == 0
