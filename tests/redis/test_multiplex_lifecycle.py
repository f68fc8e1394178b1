"""fmredis.multiplex and its pool, fork and error replies: the one connection it borrows (and gives back), stores
sharing it, small pools, os.fork() with and without calls in flight, and error replies in a shared batch; real
redis-server processes on 127.0.0.1 and real threads.
"""

from __future__ import annotations

import gc
import os
import random
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from redis.exceptions import ResponseError

from fmredis import RedisSessionStore, create_redis_client
from fmredis import multiplex as multiplex_module
from fmredis.multiplex import Multiplexer
from tests.harness.servers import RedisServer
from tests.redis.test_multiplex import MUX_NAME, Recording, in_use, make_pool, named_clients, new_server

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with new_server() as process:
        yield process


def client_on(server: RedisServer, **options: Any) -> redis.Redis:
    """An fmredis client (a BlockingConnectionPool) whose connections are named MUX_NAME."""
    settings: dict[str, Any] = {"socket_timeout": 5, "client_name": MUX_NAME, "environ": {}}
    settings.update(options)
    return create_redis_client(url=server.url, **settings)  # type: ignore[return-value]


def hammer(calls: Callable[[int, random.Random], None], threads: int, seconds: float) -> list[BaseException]:
    """`threads` threads run `calls(n, rng)` over and over for `seconds`; returns what they raised."""
    stop = time.monotonic() + seconds
    errors: list[BaseException] = []

    def work(n: int) -> None:
        rng = random.Random(n)
        try:
            while time.monotonic() < stop:
                calls(n, rng)
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(seconds + 30)
    assert not any(worker.is_alive() for worker in workers), "deadlock: a caller never returned"
    return errors


class Peak:
    """Samples `measure()` every millisecond in a thread of its own, while in a `with` block."""

    def __init__(self, measure: Callable[[], int]) -> None:
        self.measure = measure
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.measure())
            self._stop.wait(0.001)

    def __enter__(self) -> Peak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def echo_own(mux: Multiplexer) -> Callable[[int, random.Random], None]:
    def call(n: int, rng: random.Random) -> None:
        token = f"{n}:{rng.getrandbits(48)}".encode()
        reply = mux.execute("ECHO", token)
        assert reply == token, (reply, token)

    return call


# --- 5. the pool -----------------------------------------------------------------------------------------------------


def test_the_multiplexer_borrows_exactly_one_connection_and_release_returns_it(server: RedisServer) -> None:
    pool = make_pool(server, max_connections=8)
    mux = Multiplexer.of(pool)
    assert in_use(pool) == 0  # nothing borrowed before the first call
    mux.execute("PING")
    assert in_use(pool) == 1
    with Peak(lambda: in_use(pool)) as peak:
        assert hammer(echo_own(mux), threads=32, seconds=0.6) == []
    assert peak.peak == 1
    assert len(pool._connections) == 1 and len(named_clients(server)) == 1

    mux.release()
    assert in_use(pool) == 0
    assert named_clients(server) == []  # returned closed
    assert mux.execute("ECHO", "again") == b"again"  # and borrowed again
    assert in_use(pool) == 1
    mux.release()
    assert in_use(pool) == 0


def test_multiplexer_of_is_one_object_per_pool_even_when_threads_race_for_it(server: RedisServer) -> None:
    pool, other = make_pool(server), make_pool(server)
    made: list[Multiplexer] = []
    start = threading.Barrier(32)

    def get() -> None:
        start.wait()
        made.append(Multiplexer.of(pool))

    threads = [threading.Thread(target=get) for _ in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(mux) for mux in made}) == 1
    assert Multiplexer.of(other) is not made[0]


def test_release_while_calls_run_returns_the_connection_when_they_end(server: RedisServer) -> None:
    pool = make_pool(server, max_connections=8)
    mux = Multiplexer.of(pool)
    done = threading.Event()

    def release_often() -> None:
        while not done.is_set():
            mux.release()
            time.sleep(0.005)

    releaser = threading.Thread(target=release_often)
    with Peak(lambda: in_use(pool)) as peak:
        releaser.start()
        try:
            assert hammer(echo_own(mux), threads=16, seconds=0.6) == []
        finally:
            done.set()
            releaser.join()
    # One in use, and for a moment two: the retired one is given back just after the lead is, and a new leader may
    # borrow meanwhile.
    assert 1 <= peak.peak <= 2
    mux.release()
    assert in_use(pool) == 0 and named_clients(server) == []


def test_a_stores_close_returns_the_shared_connection(server: RedisServer) -> None:
    owning = RedisSessionStore.from_url(server.url)
    assert owning.pipelined
    owning.set("t", {"n": 2})
    pool = owning.client.connection_pool  # type: ignore[union-attr]
    assert in_use(pool) == 1
    owning.close()
    assert in_use(pool) == 0
    assert owning.get("t")["n"] == 2  # type: ignore[index]  # a store used after close connects again
    assert in_use(pool) == 1
    owning.close()
    assert in_use(pool) == 0


def test_rebuild_returns_the_shared_connection_and_other_stores_carry_on(server: RedisServer) -> None:
    client = client_on(server, max_connections=4)
    pool = client.connection_pool
    first, second = RedisSessionStore(client), RedisSessionStore(client)
    first.set("s", {"n": 1})
    assert in_use(pool) == 1
    assert first.rebuild() is first  # a client passed in: the same store, its pool's connections released
    assert in_use(pool) == 0 and named_clients(server) == []
    assert second.get("s")["n"] == 1  # type: ignore[index]
    first.close()  # a client passed in stays its owner's; the other store keeps working whatever close returns
    assert second.get("s")["n"] == 1  # type: ignore[index]
    assert first.get("s")["n"] == 1  # type: ignore[index]
    assert in_use(pool) <= 1
    client.close()


def test_many_stores_on_one_client_share_one_multiplexer_and_one_connection(server: RedisServer) -> None:
    client = client_on(server, max_connections=4)
    pool = client.connection_pool
    mux = Recording.on(pool)  # the one Multiplexer.of(pool) every store on this client gets
    stores = [RedisSessionStore(client, prefix=f"p{n}:") for n in range(10)]
    for n, store in enumerate(stores):
        assert store.pipelined
        store.set("s", {"n": n})
        assert store.get("s")["n"] == n  # type: ignore[index]
    assert Multiplexer.of(pool) is mux
    assert mux.times_sent(b"p7:s") == 2  # its SET and its GET went through the shared multiplexer
    assert in_use(pool) == 1 and len(named_clients(server)) == 1
    client.close()


def test_a_pool_of_one_connection_is_not_pipelined_and_update_still_works(server: RedisServer) -> None:
    client = client_on(server, max_connections=1, pool_timeout=2)
    store = RedisSessionStore(client)
    assert not store.pipelined
    store.set("s", {"n": 1})
    assert store.update("s", lambda session: {**session, "n": session["n"] + 1})["n"] == 2
    assert store.get("s")["n"] == 2  # type: ignore[index]
    assert store.get_many(["s", "missing"]).keys() == {"s"}
    assert store.delete("s") is True
    assert in_use(client.connection_pool) == 0  # nothing kept
    client.close()


def test_32_threads_on_a_pool_of_4_get_set_and_update_without_deadlock(server: RedisServer) -> None:
    client = client_on(server, max_connections=4, pool_timeout=30)
    pool: Any = client.connection_pool
    store = RedisSessionStore(client)
    assert store.pipelined
    counts = [0] * 32
    for n in range(32):
        store.set(f"s{n}", {"count": 0})

    def calls(n: int, rng: random.Random) -> None:
        key = f"s{n}"
        op = rng.random()
        if op < 0.4:
            assert store.get(key)["count"] == counts[n]  # type: ignore[index]
        elif op < 0.6:
            store.set(key, {"count": counts[n]})
        else:
            updated = store.update(key, lambda session: {**session, "count": session["count"] + 1})
            counts[n] += 1
            assert updated["count"] == counts[n]

    with Peak(lambda: in_use(pool)) as peak, Peak(lambda: len(pool._connections)) as made:
        assert hammer(calls, threads=32, seconds=1.0) == []
    assert peak.peak <= 4 and made.peak <= 4
    assert len(named_clients(server)) <= 4
    assert sum(counts) > 32  # the updates really ran, next to the shared connection
    assert [store.get(f"s{n}")["count"] for n in range(32)] == counts  # type: ignore[index]
    client.close()


# --- 6. fork ---------------------------------------------------------------------------------------------------------


def fork() -> int:
    """os.fork() without Python 3.12's DeprecationWarning about forking a process with threads (the warning filter
    would make it an error in the parent, after the child exists)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return os.fork()


def exit_code(pid: int, timeout: float = 15.0) -> int:
    """The child's exit code (negative: the signal that ended it); a child still running after `timeout` is killed."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return -signal.SIGKILL
        time.sleep(0.01)


def in_child(work: Callable[[], int], *, alarm: int = 5) -> int:
    """Fork; the child runs `work()` (its return value is the exit code; SIGALRM ends it after `alarm` s, as a hung
    child) and never returns into pytest. Returns the child's exit code."""
    pid = fork()
    if pid == 0:
        code = 99
        try:
            signal.signal(signal.SIGALRM, signal.SIG_DFL)  # not pytest-timeout's handler, inherited from the parent
            signal.alarm(alarm)
            code = work()
        finally:
            os._exit(code)
    return exit_code(pid)


@pytest.mark.parametrize("wire", ["resp2-hiredis", "resp3"])
def test_after_fork_the_child_uses_a_connection_of_its_own(server: RedisServer, wire: str) -> None:
    pool = make_pool(server, wire)
    mux = Multiplexer.of(pool)
    store = RedisSessionStore(redis.Redis(connection_pool=pool))
    store.set("parent", {"n": 1})
    parent_id = mux.execute("CLIENT", "ID")
    read_end, write_end = os.pipe()

    def child() -> int:
        child_id = mux.execute("CLIENT", "ID")
        store.set("child", {"n": 2})
        parent = store.get("parent")
        ok = mux.execute("ECHO", "child") == b"child" and parent is not None and parent["n"] == 1
        os.write(write_end, str(child_id).encode())
        mux.release()  # gives back the child's own connection, never the parent's
        gc.collect()  # the parent's connection objects, dropped in the child, are collected here
        return 0 if ok else 3

    assert in_child(child) == 0
    os.close(write_end)
    child_id = int(os.read(read_end, 100))
    os.close(read_end)
    assert child_id != parent_id
    assert mux.execute("CLIENT", "ID") == parent_id  # the parent's connection still works, still the same
    assert store.get("child")["n"] == 2  # type: ignore[index]
    assert named_clients(server) == [parent_id]


def test_a_fork_while_other_threads_are_mid_call_does_not_hang_the_child(server: RedisServer) -> None:
    pool = make_pool(server)
    mux = Multiplexer.of(pool)
    store = RedisSessionStore(redis.Redis(connection_pool=pool))
    store.set("s", {"n": 1})
    stop = threading.Event()
    errors: list[BaseException] = []

    def busy(n: int) -> None:
        rng = random.Random(n)
        try:
            while not stop.is_set():
                echo_own(mux)(n, rng)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=busy, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()

    def child() -> int:
        if mux.execute("ECHO", "child") != b"child":
            return 3
        session = store.get("s")
        if session is None or session["n"] != 1:
            return 4
        return 0

    try:
        codes = []
        for _ in range(12):
            time.sleep(random.uniform(0.005, 0.03))
            codes.append(in_child(child))
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert codes == [0] * 12  # -14 (SIGALRM): a child hung
    assert errors == []
    assert mux.execute("ECHO", "parent") == b"parent"


def test_a_fork_while_another_thread_is_in_multiplexer_of_does_not_hang_the_child(server: RedisServer) -> None:
    """Regression: the at-fork hook once reset every multiplexer but not _REGISTRY_LOCK, and a child forked while
    another thread was inside Multiplexer.of hung in its own next Multiplexer.of."""
    holding, done = threading.Event(), threading.Event()

    def inside_of() -> None:  # a thread caught inside Multiplexer.of at the moment of the fork (white-box)
        with multiplex_module._REGISTRY_LOCK:
            holding.set()
            done.wait(10)

    holder = threading.Thread(target=inside_of)
    holder.start()
    assert holding.wait(5)
    try:

        def child() -> int:
            store = RedisSessionStore(redis.Redis(connection_pool=make_pool(server)))  # -> Multiplexer.of
            return 0 if store.exists("nothing") is False else 3

        code = in_child(child, alarm=2)
    finally:
        done.set()
        holder.join()
    assert code == 0, f"the child exited with {code} (-14: SIGALRM, it hung)"


# --- 7. error replies ------------------------------------------------------------------------------------------------


def outcome(function: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return ("reply", function())
    except ResponseError as exc:
        return ("error", str(exc))


@pytest.mark.parametrize("wire", ["resp2-hiredis", "resp3", "resp2-python"])
def test_an_error_reply_goes_to_its_own_caller_only(server: RedisServer, wire: str) -> None:
    mux = Recording(make_pool(server, wire))
    mux.execute_many([("SET", "text", "abc"), ("RPUSH", "list", "x"), ("SET", "ok", "v")])
    connection_id = mux.execute("CLIENT", "ID")
    not_integer = "value is not an integer or out of range"
    wrongtype = "WRONGTYPE Operation against a key holding the wrong kind of value"
    callers: list[tuple[Callable[[], Any], tuple[str, Any]]] = [
        (lambda: mux.execute("GET", "list"), ("error", wrongtype)),
        (lambda: mux.execute("INCR", "text"), ("error", not_integer)),
        (lambda: mux.execute("GET", "ok"), ("reply", b"v")),
        (lambda: mux.execute("ECHO", "one"), ("reply", b"one")),
        (lambda: mux.execute_many([("ECHO", "m1"), ("LPUSH", "text", "x"), ("ECHO", "m2")]), ("error", wrongtype)),
        (lambda: mux.execute("INCR", "counter"), ("reply", 1)),
        (lambda: mux.execute_many([("INCR", "text"), ("GET", "list")]), ("error", not_integer)),
        (lambda: mux.execute_many([("ECHO", "p1"), ("ECHO", "p2")]), ("reply", [b"p1", b"p2"])),
        (lambda: mux.execute("ECHO", "two"), ("reply", b"two")),
    ]
    results: list[tuple[str, Any] | None] = [None] * len(callers)
    probe = server.client(socket_timeout=5)
    probe.client_pause(400, all=True)  # the server holds the first call, so the others queue up behind it
    blocker = threading.Thread(target=lambda: mux.execute("ECHO", "blocker"))
    blocker.start()
    time.sleep(0.05)

    def run(index: int) -> None:
        results[index] = outcome(callers[index][0])

    threads = [threading.Thread(target=run, args=(index,)) for index in range(len(callers))]
    for thread in threads:
        thread.start()
    for thread in [blocker, *threads]:
        thread.join(10)
    probe.close()
    assert results == [expected for _, expected in callers]
    assert mux.largest_batch() == 13  # they all shared one write (9 callers, 13 commands)
    assert mux.execute("CLIENT", "ID") == connection_id  # error replies leave the connection in use
    assert mux.execute("ECHO", "after") == b"after"


@pytest.mark.parametrize("wire", ["resp2-hiredis", "resp3", "resp2-python"])
def test_execute_many_raises_the_first_error_after_reading_every_reply(server: RedisServer, wire: str) -> None:
    mux = Multiplexer(make_pool(server, wire))
    mux.execute("SET", "text", "abc")
    connection_id = mux.execute("CLIENT", "ID")
    with pytest.raises(ResponseError) as raised:
        mux.execute_many(
            [("SET", "first", "1"), ("LPUSH", "text", "x"), ("INCR", "text"), ("SET", "last", "2"), ("ECHO", "end")]
        )
    assert str(raised.value).startswith("WRONGTYPE")  # the first of the two errors
    assert mux.execute("MGET", "first", "last") == [b"1", b"2"]  # every command ran
    assert mux.execute_many([("ECHO", "a"), ("ECHO", "b")]) == [b"a", b"b"]  # no reply left over
    assert mux.execute("CLIENT", "ID") == connection_id
