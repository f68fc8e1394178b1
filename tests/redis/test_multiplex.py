"""fmredis.multiplex under torture: 64 threads share one Multiplexer, each on keys of its own, and every reply is
checked against what that thread's own commands can have produced (a reply meant for another caller would carry
another thread's value, token or type). Plain, while connections are killed, across server restarts, through the
store; and a deliberately naive shared connection shows that the checker does catch cross-talk.

The helpers here (servers, pools, the checker) are shared with test_multiplex_faults.py and
test_multiplex_lifecycle.py.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import hiredis
import pytest
import redis
from redis._parsers import _RESP2Parser
from redis.backoff import NoBackoff
from redis.retry import Retry

from fmredis import RedisSessionStore, StoreUnavailable, create_redis_client
from fmredis.multiplex import Multiplexer
from tests.harness.servers import RedisServer

pytestmark = pytest.mark.timeout(120)

THREADS = 64
MUX_NAME = "mux-torture"  # the client name of the connections the pools under test make
#: How the multiplexer talks: RESP2 with hiredis (its own lean reader), RESP3 and the pure-Python parser (the
#: connection's read_response), and RESP2 with hiredis on a unix socket.
WIRES = ["resp2-hiredis", "resp3", "resp2-python", "unix"]
Execute = Callable[..., Any]
ExecuteMany = Callable[[Sequence[Sequence[Any]]], list[Any]]


# --- servers, pools, multiplexers ------------------------------------------------------------------------------------


def socket_path(server: RedisServer) -> str:
    return os.path.join(server.directory, "redis.sock")


def new_server(**kwargs: Any) -> RedisServer:
    """A redis-server on 127.0.0.1 (free port) that also listens on a unix socket in its own directory; not started."""
    server = RedisServer("mux", **kwargs)
    server.config.append(("unixsocket", socket_path(server)))
    return server


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with new_server() as process:
        yield process


def make_pool(
    server: RedisServer, wire: str = "resp2-hiredis", *, port: int | None = None, **options: Any
) -> redis.BlockingConnectionPool:
    """A blocking pool to `server` (or to 127.0.0.1:`port`, a proxy) speaking `wire`; one immediate retry."""
    kwargs: dict[str, Any] = {
        "socket_timeout": 5.0,
        "socket_connect_timeout": 2.0,
        "retry": Retry(NoBackoff(), 1),  # at least one: with none, the multiplexer re-sends nothing either
        "max_connections": 8,
        "timeout": 5.0,
        "client_name": MUX_NAME,
        "protocol": 3 if wire == "resp3" else 2,
    }
    if wire == "resp2-python":
        kwargs["parser_class"] = _RESP2Parser
    if wire == "unix":
        kwargs.update(connection_class=redis.UnixDomainSocketConnection, path=socket_path(server))
    else:
        kwargs.update(host="127.0.0.1", port=server.port if port is None else port)
    kwargs.update(options)
    return redis.BlockingConnectionPool(**kwargs)  # type: ignore[no-untyped-call]


def lean(mux: Multiplexer) -> bool:
    """Whether `mux` reads with its own hiredis reader (else through the connection's read_response)."""
    wire = mux._wire
    return bool(wire.read == wire._read_lean)


def in_use(pool: Any) -> int:
    """Connections the pool has handed out and not got back."""
    idle = sum(1 for connection in list(pool.pool.queue) if connection is not None)
    return len(pool._connections) - idle


def named_clients(server: RedisServer, name: str = MUX_NAME) -> list[int]:
    """The ids of the server's clients called `name`."""
    probe = server.client()
    try:
        return [int(entry["id"]) for entry in probe.client_list() if entry.get("name") == name]
    finally:
        probe.close()


class Recording(Multiplexer):
    """A multiplexer that records every write it makes (each payload handed to its connection's ``Wire.send``), to show
    that calls really were batched, and how often a command went out. White-box: it wraps the ``send`` of each
    ``Wire`` the multiplexer stores in ``_wire``."""

    def __init__(self, pool: Any) -> None:
        self.writes: list[bytes] = []
        super().__init__(pool)

    @property
    def _wire(self) -> Any:
        return self.__dict__.get("recorded_wire")

    @_wire.setter
    def _wire(self, wire: Any) -> None:
        if wire is not None:
            send = wire.send

            def recorded(payload: bytes) -> None:
                self.writes.append(bytes(payload))
                send(payload)

            wire.send = recorded
        self.__dict__["recorded_wire"] = wire

    @classmethod
    def on(cls, pool: Any) -> Recording:
        """The multiplexer of `pool` (Multiplexer.of), made a Recording: the stores on that pool use it."""
        mux = cls.of(pool)
        assert isinstance(mux, cls)
        return mux

    def largest_batch(self) -> int:
        """The most commands one write carried."""
        return max((commands_in(write) for write in self.writes), default=0)

    def times_sent(self, payload: bytes) -> int:
        return sum(write.count(payload) for write in self.writes)


def commands_in(write: bytes) -> int:
    reader = hiredis.Reader()
    reader.feed(write)
    count = 0
    while reader.gets() is not False:
        count += 1
    return count


def packed(*args: Any) -> bytes:
    return bytes(hiredis.pack_command(args))


# --- the checker -----------------------------------------------------------------------------------------------------


class CrossTalk(AssertionError):
    """A reply that none of this thread's own commands can have produced."""


#: What a call may raise while connections are killed or the server restarts.
LOST = (redis.ConnectionError, redis.TimeoutError)


def outcome_unknown(exc: BaseException) -> bool:
    return "outcome is unknown" in str(exc)


def among(reply: Any, values: Any) -> bool:
    """`reply in values`, False for an unhashable reply (a list where a value was expected)."""
    try:
        return reply in values
    except TypeError:
        return False


@dataclass
class Tally:
    ok: int = 0
    ok_after_faults: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    unknown: int = 0  # non-idempotent calls that raised "... outcome is unknown"

    def failed(self, exc: BaseException) -> None:
        self.errors[type(exc).__name__] = self.errors.get(type(exc).__name__, 0) + 1


class Namespace:
    """One thread's keys and counter, with what each may hold now: every value a SET whose outcome is unknown may have
    left, and the counter as a range [low, high] widened by each INCR of unknown outcome.

    `epoch()` is bumped by a test that restarts a server without persistence, after the kill and before the start:
    a call that started before a bump may have run on the old server and been wiped, and a reply read after one may
    come from the emptied server; either way every key may then be missing and the counter back at 0.
    """

    KEYS = 6

    def __init__(self, n: int, epoch: Callable[[], int], calm: threading.Event) -> None:
        self.n = n
        self.rng = random.Random(n)
        self.keys = [f"mux:{n}:k{i}" for i in range(self.KEYS)]
        self.counter = f"mux:{n}:counter"
        self.possible: dict[str, set[bytes | None]] = {key: {None} for key in self.keys}
        self.low = self.high = 0
        self.seq = 0
        self.epoch = epoch
        self.seen = epoch()
        self.calm = calm
        self.faults = False  # set by torture() when it disturbs the run
        self.tally = Tally()

    def unique(self, kind: str) -> bytes:
        self.seq += 1
        return f"{kind}:{self.n}:{self.seq}:{self.rng.getrandbits(40)}".encode()

    # -- bookkeeping --

    def settle(self) -> None:
        """Before a reply is checked: if the server was (or is being) restarted since the last check, forget."""
        now = self.epoch()
        if now != self.seen:
            self.seen = now
            self.forget()

    def forget(self) -> None:
        for values in self.possible.values():
            values.add(None)
        self.low = 0

    def step(self, execute: Execute, execute_many: ExecuteMany) -> None:
        start = self.epoch()
        try:
            self.call(execute, execute_many)
        finally:
            if self.epoch() != start:  # what the call did may have been wiped by a restart after it
                self.forget()

    def expect(self, ok: bool, what: str, reply: Any, expected: Any) -> None:
        if not ok:
            raise CrossTalk(f"thread {self.n}: {what} replied {reply!r}, expected {expected!r}")

    def succeeded(self) -> None:
        self.tally.ok += 1
        if self.calm.is_set():
            self.tally.ok_after_faults += 1

    def lost(self, exc: BaseException, *, counted: bool = False) -> None:
        """A call raised ConnectionError/TimeoutError; `counted`: it included an INCR of the counter."""
        self.tally.failed(exc)
        if counted and outcome_unknown(exc):
            self.tally.unknown += 1
            self.high += 1  # it may have run; a message that does not say so claims it did not
        time.sleep(0.001)

    def check_value(self, key: str, reply: Any, what: str) -> None:
        self.expect(among(reply, self.possible[key]), what, reply, self.possible[key])
        self.possible[key] = {reply}

    def check_count(self, reply: Any, what: str) -> None:
        expected = range(self.low + 1, self.high + 2)
        self.expect(type(reply) is int and reply in expected, what, reply, expected)  # (bool is not int here)
        self.low = self.high = reply

    def existing(self, key: str) -> set[int]:
        values = self.possible[key]
        return {0} if values == {None} else {1} if None not in values else {0, 1}

    # -- one random call --

    def call(self, execute: Execute, execute_many: ExecuteMany) -> None:
        op = self.rng.random()
        key = self.rng.choice(self.keys)
        try:
            if op < 0.22:
                value = self.unique("v")
                try:
                    reply = execute("SET", key, value, "EX", 600)
                finally:
                    self.possible[key].add(value)  # written, or perhaps written
                self.settle()
                self.expect(reply == b"OK", f"SET {key}", reply, b"OK")
                self.possible[key] = {value}
            elif op < 0.44:
                reply = execute("GET", key)
                self.settle()
                self.check_value(key, reply, f"GET {key}")
            elif op < 0.52:
                try:
                    reply = execute("UNLINK", key)
                except LOST:
                    self.possible[key].add(None)
                    raise
                self.settle()
                # Under faults a 0 is also the reply of a retried UNLINK whose first attempt deleted the key (its reply
                # lost): UNLINK is retried though its reply is not idempotent (test_multiplex_faults.py reproduces it).
                allowed = self.existing(key) | ({0} if self.faults else set())
                self.expect(among(reply, allowed), f"UNLINK {key}", reply, allowed)
                self.possible[key] = {None}
            elif op < 0.60:
                reply = execute("EXISTS", key)
                self.settle()
                self.expect(among(reply, self.existing(key)), f"EXISTS {key}", reply, self.existing(key))
                self.possible[key] = {None} if reply == 0 else self.possible[key] - {None}
            elif op < 0.70:
                keys = self.rng.sample(self.keys, 3)
                reply = execute("MGET", *keys)
                self.settle()
                self.expect(isinstance(reply, list) and len(reply) == 3, f"MGET {keys}", reply, "3 values")
                for one, value in zip(keys, reply, strict=True):
                    self.check_value(one, value, f"MGET {keys}")
            elif op < 0.80:
                token = self.unique("echo")
                reply = execute("ECHO", token)
                self.expect(reply == token, "ECHO", reply, token)
            elif op < 0.90:
                try:
                    reply = execute("INCR", self.counter)
                except LOST as exc:
                    self.lost(exc, counted=True)
                    return
                self.settle()
                self.check_count(reply, f"INCR {self.counter}")
            elif op < 0.95:
                value = self.unique("v")
                try:
                    replies = execute_many([("SET", key, value, "EX", 600), ("GET", key)])
                finally:
                    self.possible[key].add(value)
                self.expect(replies == [b"OK", value], f"SET+GET {key}", replies, [b"OK", value])
                self.settle()
                self.possible[key] = {value}
            else:
                token = self.unique("echo")
                try:
                    replies = execute_many([("ECHO", token), ("INCR", self.counter)])
                except LOST as exc:
                    self.lost(exc, counted=True)
                    return
                self.settle()
                self.expect(isinstance(replies, list) and len(replies) == 2, "ECHO+INCR", replies, "2 replies")
                self.expect(replies[0] == token, "ECHO+INCR", replies, token)
                self.check_count(replies[1], "ECHO+INCR")
        except LOST as exc:
            self.lost(exc)
            return
        self.succeeded()

    def verify(self, execute: Execute) -> None:
        """After the run: what the server holds is what this thread's calls may have left."""
        self.settle()
        for key, value in zip(self.keys, execute("MGET", *self.keys), strict=True):
            self.check_value(key, value, f"final MGET {key}")
        count = execute("GET", self.counter)
        expected = range(self.low, self.high + 1)
        self.expect(int(count or 0) in expected, f"final GET {self.counter}", count, expected)


@dataclass
class Run:
    namespaces: list[Namespace]
    crosstalk: list[CrossTalk]
    unexpected: list[BaseException]

    def errors(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for namespace in self.namespaces:
            for name, count in namespace.tally.errors.items():
                total[name] = total.get(name, 0) + count
        return total

    def assert_clean(self) -> None:
        """No reply reached the wrong caller, nothing but ConnectionError/TimeoutError was raised, and every thread
        got replies, also after the faults stopped."""
        assert self.unexpected == [], self.unexpected[:3]
        assert self.crosstalk == [], [str(exc) for exc in self.crosstalk[:3]]
        tallies = {namespace.n: namespace.tally for namespace in self.namespaces}
        assert min(tally.ok for tally in tallies.values()) > 20, tallies
        stuck = {n: tally for n, tally in tallies.items() if tally.ok_after_faults == 0}
        assert stuck == {}, f"no reply after the faults ended: {stuck}"


Disturb = Callable[[float, threading.Event], None]


def torture(
    step: Callable[[Namespace], None],
    *,
    seconds: float,
    disturb: Disturb | None = None,
    epoch: Callable[[], int] = lambda: 0,
    namespace: type[Namespace] = Namespace,
    stop_on_crosstalk: bool = False,
) -> Run:
    """THREADS threads run `step(own namespace)` for `seconds`; `disturb(until, stop)` (faults) runs meanwhile in this
    thread and should return before `until`: the rest of the time is calm, to show that everything recovered."""
    stop, calm = threading.Event(), threading.Event()
    namespaces = [namespace(n, epoch, calm) for n in range(THREADS)]
    for mine in namespaces:
        mine.faults = disturb is not None
    crosstalk: list[CrossTalk] = []
    unexpected: list[BaseException] = []
    lock = threading.Lock()

    def work(mine: Namespace) -> None:
        try:
            while not stop.is_set():
                step(mine)
        except CrossTalk as exc:
            with lock:
                crosstalk.append(exc)
            if stop_on_crosstalk:
                stop.set()
        except BaseException as exc:
            with lock:
                unexpected.append(exc)
            stop.set()

    workers = [threading.Thread(target=work, args=(mine,), name=f"torture-{mine.n}") for mine in namespaces]
    for worker in workers:
        worker.start()
    until = time.monotonic() + seconds
    try:
        if disturb is not None:
            disturb(until, stop)
        calm.set()
        stop.wait(max(0.0, until - time.monotonic()))
    finally:
        stop.set()
        for worker in workers:
            worker.join(30)
    assert not any(worker.is_alive() for worker in workers), "a caller never returned"
    return Run(namespaces, crosstalk, unexpected)


def on(execute: Execute, execute_many: ExecuteMany) -> Callable[[Namespace], None]:
    return lambda namespace: namespace.step(execute, execute_many)


# --- faults ----------------------------------------------------------------------------------------------------------


@dataclass
class Kills:
    rounds: int = 0
    killed: int = 0


def killer(server: RedisServer, kills: Kills, *, until_before: float = 0.5) -> Disturb:
    """Every ~20 ms, from a client of its own: CLIENT KILL TYPE normal, or CLIENT KILL ID of each MUX_NAME client."""

    def disturb(until: float, stop: threading.Event) -> None:
        probe = server.client()
        try:
            while time.monotonic() < until - until_before and not stop.is_set():
                if kills.rounds % 2:
                    for client_id in [int(e["id"]) for e in probe.client_list() if e.get("name") == MUX_NAME]:
                        kills.killed += int(probe.client_kill_filter(_id=str(client_id)))
                else:
                    kills.killed += int(probe.client_kill_filter(_type="normal", skipme=True))
                kills.rounds += 1
                stop.wait(0.02)
        finally:
            probe.close()

    return disturb


class Epoch:
    """Bumped between the kill and the start of a server that restarts empty (see Namespace)."""

    def __init__(self) -> None:
        self.value = 0

    def __call__(self) -> int:
        return self.value


def restarter(server: RedisServer, epoch: Epoch, *, restarts: int = 2, pause: float = 0.3) -> Disturb:
    """kill -9 and start again on the same port, `restarts` times, `pause` s apart."""

    def disturb(until: float, stop: threading.Event) -> None:
        for _ in range(restarts):
            if stop.wait(pause):
                return
            server.kill()  # what ran on it is gone: every op that started before the bump may have been wiped
            epoch.value += 1  # an op started from now on runs on the new, empty server
            server.start(rewrite_config=False)  # (RedisServer.restart, with the bump in between)

    return disturb


# --- 1. the multiplexer --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("wire", WIRES)
def test_64_threads_never_see_each_others_replies(server: RedisServer, wire: str) -> None:
    mux = Recording(make_pool(server, wire))
    run = torture(on(mux.execute, mux.execute_many), seconds=0.8)
    run.assert_clean()
    assert run.errors() == {}
    assert lean(mux) is (wire in ("resp2-hiredis", "unix"))
    assert mux.largest_batch() > 8  # many callers shared a write, so the replies really had to be matched up
    for namespace in run.namespaces:
        namespace.verify(mux.execute)
    assert named_clients(server) == [mux.execute("CLIENT", "ID")]  # all of it on one connection


@pytest.mark.fault
@pytest.mark.parametrize("wire", ["resp2-hiredis", "resp3"])
def test_no_cross_talk_while_connections_are_killed(server: RedisServer, wire: str) -> None:
    mux = Recording(make_pool(server, wire))
    kills = Kills()
    run = torture(on(mux.execute, mux.execute_many), seconds=1.4, disturb=killer(server, kills))
    run.assert_clean()
    assert kills.killed > 10
    errors = run.errors()
    assert set(errors) <= {"ConnectionError", "TimeoutError"} and errors, errors
    assert sum(namespace.tally.unknown for namespace in run.namespaces) > 0  # INCRs were caught in flight
    for namespace in run.namespaces:
        namespace.verify(mux.execute)  # no INCR ran twice, no SET was lost or resurrected


@pytest.mark.fault
@pytest.mark.parametrize("wire", ["resp2-hiredis", "resp3"])
def test_no_cross_talk_across_server_restarts(server: RedisServer, wire: str) -> None:
    mux = Recording(make_pool(server, wire, socket_connect_timeout=0.5))
    epoch = Epoch()
    run = torture(on(mux.execute, mux.execute_many), seconds=1.6, disturb=restarter(server, epoch), epoch=epoch)
    run.assert_clean()
    assert epoch.value == 2
    assert "ConnectionError" in run.errors()
    for namespace in run.namespaces:
        namespace.verify(mux.execute)


# --- 1. the same through the store -----------------------------------------------------------------------------------


class StoreNamespace(Namespace):
    """A thread's sessions: each set writes a document with a unique token; a get must return one this thread may
    have left there (or None when none can be there), or raise StoreUnavailable."""

    def __init__(self, n: int, epoch: Callable[[], int], calm: threading.Event) -> None:
        super().__init__(n, epoch, calm)
        self.keys = [f"s{n}-{i}" for i in range(self.KEYS)]
        self.possible = {key: {None} for key in self.keys}

    def use(self, store: RedisSessionStore) -> None:
        start = self.epoch()
        try:
            self.call_store(store)
        finally:
            if self.epoch() != start:
                self.forget()

    def call_store(self, store: RedisSessionStore) -> None:
        key = self.rng.choice(self.keys)
        try:
            if self.rng.random() < 0.5:
                token = self.unique("doc").decode()
                try:
                    store.set(key, {"thread": self.n, "token": token}, ttl=600)
                finally:
                    self.possible[key].add(token.encode())
                self.settle()
                self.possible[key] = {token.encode()}
            else:
                document = store.get(key)
                self.settle()
                found = None if document is None else str(document.get("token")).encode()
                self.expect(document is None or document.get("thread") == self.n, f"get {key}", document, self.n)
                self.check_value(key, found, f"get {key}")
        except StoreUnavailable as exc:
            self.tally.failed(exc)
            time.sleep(0.001)
            return
        self.succeeded()

    def verify_store(self, store: RedisSessionStore) -> None:
        self.settle()
        for key in self.keys:
            document = store.get(key)
            self.check_value(key, None if document is None else str(document["token"]).encode(), f"final get {key}")


@pytest.mark.parametrize("fault", ["none", "kill", "restart"])
def test_64_threads_on_one_store_get_their_own_sessions(server: RedisServer, fault: str) -> None:
    client = create_redis_client(
        url=server.url,
        socket_timeout=5,
        socket_connect_timeout=0.5,
        retry_attempts=0,
        max_connections=8,
        client_name=MUX_NAME,
        environ={},
    )
    store = RedisSessionStore(client)
    assert store.pipelined
    kills, epoch = Kills(), Epoch()
    disturb = {"none": None, "kill": killer(server, kills), "restart": restarter(server, epoch)}[fault]

    def use(namespace: Namespace) -> None:
        assert isinstance(namespace, StoreNamespace)
        namespace.use(store)

    run = torture(use, seconds=0.8 if disturb is None else 1.5, disturb=disturb, epoch=epoch, namespace=StoreNamespace)
    run.assert_clean()
    errors = run.errors()
    if fault == "none":
        assert errors == {}
    else:
        assert set(errors) == {"StoreUnavailable"}, errors
        assert kills.killed > 10 if fault == "kill" else epoch.value == 2
    for namespace in run.namespaces:
        assert isinstance(namespace, StoreNamespace)
        namespace.verify_store(store)
    store.close()
    client.close()


# --- 2. the checker catches a naive shared connection ----------------------------------------------------------------


class NaiveShared:
    """One redis-py connection for every thread, a lock around each write and one around each read: every reply is read
    whole, but nothing ties it to the thread whose command it answers."""

    def __init__(self, pool: redis.BlockingConnectionPool) -> None:
        self._connection = pool.get_connection()  # type: ignore[no-untyped-call]
        self._writing, self._reading = threading.Lock(), threading.Lock()

    def execute(self, *args: Any) -> Any:
        with self._writing:
            self._connection.send_command(*args)
        with self._reading:
            return self._connection.read_response()

    def execute_many(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        with self._writing:
            self._connection.send_packed_command(self._connection.pack_commands(commands))
        with self._reading:
            return [self._connection.read_response() for _ in commands]


def test_the_checker_catches_a_naive_shared_connection(server: RedisServer) -> None:
    naive = NaiveShared(make_pool(server))
    run = torture(on(naive.execute, naive.execute_many), seconds=5.0, stop_on_crosstalk=True)
    assert run.unexpected == []
    assert run.crosstalk, "64 threads on the naive connection and no reply went astray: the checker sees nothing"
