"""One redis-server (or Sentinel) process for tests: `RedisServer`, and the small helpers every harness module shares.

A server runs on 127.0.0.1 only, on a free port (never a fixed one), from a config file in its own temp directory,
with its output in a log file there. mirakuru starts it (in a session of its own, marked so that mirakuru's own
``atexit`` hook can still find it) and waits until it is ready; port-for picks the ports, outside the ephemeral range,
so that no client socket on this machine is handed a port a killed server is about to be restarted on.

Ready means: INFO answers with this process's pid, so another server holding the port is never mistaken for ours.
A process that exits because the port is still in use ("Address already in use") is started again until the deadline;
any other early exit fails at once with the tail of its log. Every pid ever started is kept in ``pids`` (tests check
that none is left running), and ``close()`` (also registered with ``atexit``) stops the process and removes the
directory. Only plain redis-py is used (never fmredis), so the harness stays valid while the package changes.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, TypeVar

import port_for
import redis
from mirakuru import ProcessExitedWithError, TCPExecutor, TimeoutExpired
from redis.backoff import NoBackoff
from redis.retry import Retry

LOOPBACK = "127.0.0.1"
Address = tuple[str, int]
T = TypeVar("T")

TICK = 0.05  # polling interval of every wait loop
_PROBE_TIMEOUT = 1.0  # socket timeouts of the harness's own probe clients
_READY_PROBE_TIMEOUT = 0.25  # ... and of the startup probe: a foreign listener must not hold up noticing our exit
_LOG_TAIL_LINES = 15
_PORT_BUSY = "Address already in use"


class TopologyError(RuntimeError):
    """A harness process or topology did not come up (or settle) in time; the message says what was last seen."""


class NotReady(Exception):
    """Raised by a readiness check: not there yet, and why (the reason ends up in the timeout message)."""


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1, outside the ephemeral range (port-for)."""
    return port_for.select_random()


def free_ports(count: int) -> list[int]:
    """`count` distinct currently free ports (see `free_port`)."""
    ports: list[int] = []
    while len(ports) < count:
        ports.append(port_for.select_random(exclude_ports=ports))
    return ports


def gone(pid: int) -> bool:
    """Whether no process `pid` exists any more (the harness reaps what it started, so no zombie is left)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def wait_until(
    check: Callable[[], T], deadline: float, what: str, *, diagnostics: Callable[[], str] | None = None
) -> T:
    """Call `check` every tick until it returns without raising `NotReady` / a redis or socket error; return its value.

    `deadline` is a `time.monotonic()` instant. On timeout: `TopologyError` naming `what`, the last reason and, if
    given, `diagnostics()` (typically log tails).
    """
    while True:
        try:
            return check()
        except (NotReady, redis.RedisError, OSError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
        if time.monotonic() >= deadline:
            extra = f"\n{diagnostics()}" if diagnostics is not None else ""
            raise TopologyError(f"timed out waiting for {what}; last: {reason}{extra}")
        time.sleep(TICK)


def make_client(
    address: Address, *, password: str | None = None, username: str | None = None, **kwargs: Any
) -> redis.Redis:
    """A plain redis-py client for probing/arranging: RESP2, decoded strings, 1 s timeouts, no retries."""
    options: dict[str, Any] = {
        "protocol": 2,
        "decode_responses": True,
        "socket_timeout": _PROBE_TIMEOUT,
        "socket_connect_timeout": _PROBE_TIMEOUT,
        "retry": Retry(NoBackoff(), 0),
    }
    options.update(kwargs)
    return redis.Redis(host=address[0], port=address[1], password=password, username=username, **options)


def _quote(word: str) -> str:
    """One config-file argument, double-quoted as redis' config parser (sdssplitargs) reads it."""
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


class _Launch(TCPExecutor):
    """mirakuru's executor for one launch of a server: started once `answers(pid)` holds for its process."""

    def __init__(self, command: list[str], port: int, answers: Callable[[int], bool], **kwargs: Any) -> None:
        super().__init__(command, LOOPBACK, port, sleep=TICK, **kwargs)
        self._answers = answers
        self.pid: int | None = None  # kept after mirakuru drops the process object (exit, timeout, kill)

    def pre_start_check(self) -> bool:
        # Not "is the port taken?": a foreign listener is told apart by its pid below, and RedisServer.start retries
        # while redis-server itself reports the port busy.
        return False

    def check_subprocess(self) -> bool:
        if self.pid is None and self.process is not None:
            self.pid = self.process.pid
        return super().check_subprocess()

    def after_start_check(self) -> bool:
        return self.process is not None and self._answers(self.process.pid)


_ServerT = TypeVar("_ServerT", bound="RedisServer")


class RedisServer:
    """One redis-server (or, with sentinel=True, a Sentinel) on 127.0.0.1:`port` (default: a free port).

    `config` holds (directive, arg, ...) tuples, written after the ones added here: ``bind``, ``port`` (with
    tls_only=True ``port 0`` and ``tls-port``: the TLS directives themselves come in `config`), ``dir``,
    ``daemonize no``, ``logfile ""`` and, except for a sentinel, persistence: none (``save ""``, ``appendonly no``), or
    with persistent=True an AOF fsynced on every write, so that acknowledged writes survive kill -9 and `restart`.
    `client_kwargs` are what a redis-py client needs to talk to it (password, TLS files); the readiness probe uses them.

    Not thread-safe: one test drives it.
    """

    def __init__(
        self,
        name: str = "redis",
        port: int | None = None,
        config: Iterable[tuple[str, ...]] = (),
        *,
        persistent: bool = False,
        sentinel: bool = False,
        tls_only: bool = False,
        client_kwargs: dict[str, Any] | None = None,
        executable: str = "redis-server",
        start_timeout: float = 10.0,
    ) -> None:
        self.name = name
        self.port = port if port is not None else free_port()
        self.config: list[tuple[str, ...]] = list(config)
        self.persistent = persistent
        self.sentinel = sentinel
        self.tls_only = tls_only
        self.client_kwargs = dict(client_kwargs or {})
        self.executable = executable
        self.start_timeout = start_timeout
        self.directory = tempfile.mkdtemp(prefix=f"fmredis-{name}-")
        self.config_path = os.path.join(self.directory, "redis.conf")
        self.log_path = os.path.join(self.directory, "redis.log")
        self.pids: list[int] = []  # every process ever started, for the tests' "nothing left running" checks
        self._launch: _Launch | None = None
        atexit.register(self.close)

    # -- where and how to reach it -----------------------------------------------------------------------------------

    @property
    def address(self) -> Address:
        return (LOOPBACK, self.port)

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls_only else 'redis'}://{LOOPBACK}:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._launch is not None and self._launch.running()

    @property
    def pid(self) -> int | None:
        return self._launch.pid if self.running and self._launch is not None else None

    def client(self, **kwargs: Any) -> redis.Redis:
        """A probe-style client (see `make_client`) with this server's credentials/TLS options; caller closes it."""
        return make_client(self.address, **{**self.client_kwargs, **kwargs})

    # -- config and start --------------------------------------------------------------------------------------------

    def _directives(self) -> list[tuple[str, ...]]:
        ports = [("port", "0"), ("tls-port", str(self.port))] if self.tls_only else [("port", str(self.port))]
        lines = [("bind", LOOPBACK), *ports, ("dir", self.directory), ("daemonize", "no"), ("logfile", "")]
        if not self.sentinel:
            aof = [("appendonly", "yes"), ("appendfsync", "always")] if self.persistent else [("appendonly", "no")]
            lines += [("save", ""), *aof]
        return [*lines, *self.config]

    def write_config(self) -> None:
        """(Re)write the config file; a sentinel or CONFIG REWRITE may change it while the server runs."""
        with open(self.config_path, "w", encoding="utf-8") as handle:
            for words in self._directives():
                handle.write(" ".join([words[0], *(_quote(word) for word in words[1:])]) + "\n")

    def start(self: _ServerT, *, rewrite_config: bool = True) -> _ServerT:
        """Start and wait until it answers INFO with its own pid; retries only while the port is still in use.

        Raises TopologyError (with the log's tail) when it exits for another reason or does not answer in
        `start_timeout` seconds.
        """
        if self.running:
            raise TopologyError(f"{self.name} already running on port {self.port}")
        if shutil.which(self.executable) is None:
            raise TopologyError(f"{self.executable} is not installed (Debian: apt-get install redis-server)")
        if rewrite_config or not os.path.exists(self.config_path):
            self.write_config()
        deadline = time.monotonic() + self.start_timeout
        while True:
            offset = os.path.getsize(self.log_path) if os.path.exists(self.log_path) else 0
            failure = self._start_once(deadline)
            if failure is None:
                return self
            if _PORT_BUSY not in self._log_since(offset) or time.monotonic() >= deadline:
                raise TopologyError(
                    f"{self.name} did not answer on {LOOPBACK}:{self.port} within {self.start_timeout} s"
                    f" ({failure})\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def _start_once(self, deadline: float) -> str | None:
        """One launch: None once it answers, else why not (its process is gone by then)."""
        command = [self.executable, self.config_path, *(["--sentinel"] if self.sentinel else [])]
        probe = self.client(socket_timeout=_READY_PROBE_TIMEOUT, socket_connect_timeout=_READY_PROBE_TIMEOUT)
        try:
            with open(self.log_path, "ab") as log:  # the child keeps its own copy of the descriptor
                launch = _Launch(
                    command,
                    self.port,
                    lambda pid: _answers_as(probe, pid),
                    cwd=self.directory,
                    timeout=max(deadline - time.monotonic(), 2 * TICK),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
                try:
                    launch.start()
                except ProcessExitedWithError as exc:
                    return f"exit code {exc.exit_code}"
                except TimeoutExpired:
                    return "no answer, killed"
                finally:
                    if launch.pid is not None:
                        self.pids.append(launch.pid)
        finally:
            probe.close()
        self._launch = launch
        return None

    def restart(self: _ServerT) -> _ServerT:
        """Kill the current process (if any) and start again on the same port, directory and config file."""
        self.kill()
        return self.start(rewrite_config=False)

    # -- faults and stop ---------------------------------------------------------------------------------------------

    def kill(self) -> None:
        """SIGKILL (no shutdown, no final save) and reap; no-op when not running."""
        if self._launch is not None:
            self._launch.kill()  # mirakuru: SIGKILL to the process group, reap, then any marked leftovers
            self._launch = None

    def freeze(self) -> None:
        """SIGSTOP: the server keeps its sockets (connects still succeed via the backlog) but answers nothing."""
        self._signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT: undo `freeze`."""
        self._signal(signal.SIGCONT)

    def _signal(self, signum: signal.Signals) -> None:
        pid = self.pid
        if pid is None:
            raise TopologyError(f"{self.name} is not running")
        os.kill(pid, signum)

    def terminate(self) -> None:
        """SIGTERM (and SIGCONT, for a frozen process) without waiting; see `wait_stopped`."""
        pid = self.pid
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            os.kill(pid, signal.SIGCONT)  # a stopped process only acts on SIGTERM once continued

    def wait_stopped(self, timeout: float = 5.0) -> None:
        """Wait for the process to exit, SIGKILL after `timeout`; always reaps."""
        # Not mirakuru's stop(): it waits the launch's start timeout and cannot continue a frozen process first.
        if self._launch is not None and self._launch.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._launch.process.wait(timeout)
        self.kill()

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM (graceful), SIGKILL after `timeout`; works on a frozen server; safe to call any number of times."""
        self.terminate()
        self.wait_stopped(timeout)

    def close(self) -> None:
        """`stop` and remove the temp directory; safe to call any number of times."""
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)
        atexit.unregister(self.close)

    def __enter__(self: _ServerT) -> _ServerT:
        if not self.running:
            try:
                self.start()
            except BaseException:
                self.close()
                raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- log ---------------------------------------------------------------------------------------------------------

    def _log_since(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as handle:
                handle.seek(offset)
                return handle.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last `lines` lines of the server's log, with a header naming the server and the file."""
        tail = self._log_since(0).splitlines()[-lines:]
        return f"--- {self.name} ({self.log_path}), last {len(tail)} lines:\n" + "\n".join(tail)


def _answers_as(probe: redis.Redis, pid: int) -> bool:
    """Whether the server behind `probe` is process `pid` (False while it is not up, still loading, or someone else)."""
    try:
        return int(probe.info("server")["process_id"]) == pid
    except (redis.RedisError, OSError, KeyError, ValueError):
        return False


def stop_all(servers: Iterable[RedisServer], timeout: float = 5.0) -> None:
    """SIGTERM all first, then wait for each (so their shutdowns overlap), then remove every temp dir."""
    servers = list(servers)
    for server in servers:
        server.terminate()
    for server in servers:
        server.wait_stopped(timeout)
    for server in servers:
        server.close()
