"""Fault-injection helpers for tests: a disposable redis-server process and a TCP proxy that can break connections.

Everything binds and connects to 127.0.0.1 only.

* `RedisProcess` runs its own redis-server (own port, own temp dir) that a test can kill -9, restart on the same port,
  freeze (SIGSTOP) and thaw (SIGCONT).
* `TcpProxy` sits between a client and a server and can switch at runtime between passing traffic through,
  resetting every connection (RST) and black-holing it (accepting but never forwarding or answering).
"""

from __future__ import annotations

import atexit
import contextlib
import enum
import os
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from types import TracebackType

LOOPBACK = "127.0.0.1"

_TICK = 0.05  # how long any helper loop blocks before re-checking its stop condition
_PROBE_TIMEOUT = 0.5


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (bind-to-0 trick; only ever binds the loopback address)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def _server_pid(port: int) -> int | None:
    """The process id of the redis-server answering PING on 127.0.0.1:port, or None (not up, loading, not redis)."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=_PROBE_TIMEOUT) as sock:
            sock.sendall(b"PING\r\nINFO server\r\n")
            data = b""
            while True:
                if data.startswith(b"-"):  # e.g. -LOADING while the AOF is replayed
                    return None
                marker = data.find(b"process_id:")
                end = data.find(b"\r\n", marker)
                if marker >= 0 and end >= 0:
                    if not data.startswith(b"+PONG\r\n"):
                        return None
                    return int(data[marker + len(b"process_id:") : end])
                chunk = sock.recv(65536)
                if not chunk:
                    return None
                data += chunk
    except (OSError, ValueError):
        return None


class RedisProcess:
    """A redis-server on 127.0.0.1 that tests may kill, restart, freeze and thaw.

    persistent=False: no RDB, no AOF, so a kill loses everything.
    persistent=True: AOF with fsync on every write, so acknowledged writes survive kill -9 and restart().
    The server's output goes to `log_path` in its own temp directory, which `close()` (and the context manager) removes.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        persistent: bool = False,
        executable: str = "redis-server",
        start_timeout: float = 10.0,
    ) -> None:
        self.port = port if port is not None else free_port()
        self.persistent = persistent
        self.executable = executable
        self.start_timeout = start_timeout
        self.directory = tempfile.mkdtemp(prefix="fmredis-redis-")
        self.log_path = os.path.join(self.directory, "redis.log")
        self._proc: subprocess.Popen[bytes] | None = None
        atexit.register(self.close)

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _command(self) -> list[str]:
        command = [self.executable, "--bind", LOOPBACK, "--port", str(self.port), "--dir", self.directory]
        command += ["--save", "", "--daemonize", "no", "--protected-mode", "yes"]
        if self.persistent:
            command += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            command += ["--appendonly", "no"]
        return command

    def start(self) -> RedisProcess:
        """Start the server and wait until it answers PING; retries while the port cannot be bound yet."""
        if self.running:
            raise RuntimeError(f"redis-server already running on port {self.port}")
        deadline = time.monotonic() + self.start_timeout
        while True:
            with open(self.log_path, "ab") as log:
                self._proc = subprocess.Popen(self._command(), stdout=log, stderr=subprocess.STDOUT)
            if self._wait_ready(self._proc, deadline):
                return self
            self.kill()  # exited early (typically: port still busy) or never answered
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"redis-server did not answer on {LOOPBACK}:{self.port} within {self.start_timeout} s;"
                    f" see {self.log_path}"
                )
            time.sleep(0.1)

    def _wait_ready(self, proc: subprocess.Popen[bytes], deadline: float) -> bool:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            if _server_pid(self.port) == proc.pid:  # our process, not another server that holds the port
                return True
            time.sleep(_TICK)
        return False

    def kill(self) -> None:
        """SIGKILL the server (no shutdown, no final save) and reap it. No-op when not running."""
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait()

    def restart(self) -> RedisProcess:
        """Start again on the same port with the same directory (kills the current process first if still up)."""
        self.kill()
        return self.start()

    def freeze(self) -> None:
        """SIGSTOP: the server keeps its sockets (connects still succeed via the backlog) but answers nothing."""
        self._signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT: undo freeze()."""
        self._signal(signal.SIGCONT)

    def _signal(self, signum: signal.Signals) -> None:
        if self._proc is None or self._proc.poll() is not None:
            raise RuntimeError("redis-server is not running")
        self._proc.send_signal(signum)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM (graceful), SIGKILL after `timeout`; works on a frozen server; safe to call any number of times."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            proc.send_signal(signal.SIGCONT)  # a stopped process only acts on SIGTERM once continued
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
        proc.wait()

    def close(self) -> None:
        """stop() and remove the temp directory; registered with atexit as a last-resort guard."""
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)
        atexit.unregister(self.close)

    def __enter__(self) -> RedisProcess:
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
        self._stop = threading.Event()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((LOOPBACK, 0))
        self._listener.listen(64)
        self._listener.settimeout(_TICK)
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
                for key, _ in selector.select(_TICK):
                    if self._resetting():  # checked before forwarding anything
                        break
                    source: socket.socket = key.fileobj  # type: ignore[assignment]
                    data = source.recv(65536)
                    if not data:
                        return
                    if self._mode is _Mode.PASS:  # blackhole: read and drop
                        key.data.sendall(data)
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
