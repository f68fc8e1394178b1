"""Test harness for Redis topologies: a 3-master Cluster, a Sentinel setup, TLS servers and ACL users.

Everything runs as real redis-server processes that the tests start and stop themselves, on 127.0.0.1 only, on free
ports (never a fixed one), each in its own temp directory with its own config file and log. Only plain redis-py is used
here (never fmredis), so the harness stays valid while the package changes.

* `RedisCluster3`: three cluster masters joined with ``redis-cli --cluster create``; ``.nodes``, ``.flush()``.
* `SentinelSetup`: a master, a replica and three sentinels (quorum 2), optionally password-protected (data nodes and/or
  sentinels); ``.failover()`` (SENTINEL FAILOVER, timed), ``.kill_master()`` + ``.wait_for_new_master()``,
  ``.restart_killed_master()``.
* `TLSCerts`: a throwaway CA (trustme) with server and client certificates as PEM files, plus an unrelated second CA.
* `TLSRedis`: a TLS-only redis-server (``port 0``) using those certificates; ``tls_auth_clients`` yes/no/optional.
* `acl_user` / `temporary_acl_user`: an ACL user restricted to key patterns, on any server the tests started.
* `WriteLoad`: writer threads doing ``set`` + ``get`` against any session store (anything with ``set``/``get``),
  recording every call; `unreadable`: which acknowledged writes a master does not hold (for failover tests and
  benchmarks/failover.py).

Every class is a context manager whose ``__exit__`` (and ``stop()``, safe to call any number of times) stops every
process it started, the killed ones included, and removes the temp directories; ``atexit`` is the last-resort guard.
Readiness is always polled against a deadline (no fixed sleeps); a timeout raises `TopologyError` with the reason of
the last failed check and the tail of the relevant logs.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any, Protocol, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.harness.faults import LOOPBACK

Address = tuple[str, int]
T = TypeVar("T")

_TICK = 0.05  # polling interval of every wait loop
_PROBE_TIMEOUT = 1.0  # socket timeouts of the harness's own probe clients
_READY_PROBE_TIMEOUT = 0.25  # ... and of the startup probe
_LOG_TAIL_LINES = 15
CLUSTER_SLOTS = 16384


class TopologyError(RuntimeError):
    """A harness process or topology did not come up (or settle) in time; the message says what was last seen."""


class NotReady(Exception):
    """Raised by a readiness check: not there yet, and why (the reason ends up in the timeout message)."""


def free_ports(count: int) -> list[int]:
    """`count` distinct currently free TCP ports on 127.0.0.1 (all held open together, so they cannot repeat)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(sock)
            sock.bind((LOOPBACK, 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


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
        time.sleep(_TICK)


def _quote(word: str) -> str:
    """One config-file argument, double-quoted as redis' config parser (sdssplitargs) reads it."""
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _pairs(reply: Sequence[Any]) -> dict[str, Any]:
    """A flat RESP2 field/value list (SENTINEL MASTER, SENTINEL REPLICAS entries) as a dict."""
    return dict(zip(reply[::2], reply[1::2], strict=True))


def _info_fields(text: str) -> dict[str, str]:
    """`CLUSTER INFO`-style text (``key:value`` lines) as a dict."""
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


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


class ServerProcess:
    """One redis-server (or, with sentinel=True, a Sentinel) on 127.0.0.1, run from a config file in its own temp dir.

    `config` holds (directive, arg, ...) tuples; ``bind``, ``port``, ``dir``, ``daemonize`` and ``logfile`` are added
    here. The process runs with its temp dir as working directory and its output in `log_path`. `client_kwargs` are
    what a redis-py client needs to talk to it (password, TLS files), used by the readiness probe: INFO must answer
    with this process's pid (so another server holding the port is never mistaken for ours).
    """

    def __init__(
        self,
        name: str,
        port: int,
        config: Iterable[tuple[str, ...]] = (),
        *,
        sentinel: bool = False,
        plain_port: bool = True,
        client_kwargs: dict[str, Any] | None = None,
        executable: str = "redis-server",
        start_timeout: float = 10.0,
    ) -> None:
        self.name = name
        self.port = port
        self.config: list[tuple[str, ...]] = list(config)
        self.sentinel = sentinel
        self.plain_port = plain_port  # False: the port is a tls-port given in `config` (and "port 0" is written)
        self.client_kwargs = dict(client_kwargs or {})
        self.executable = executable
        self.start_timeout = start_timeout
        self.directory = tempfile.mkdtemp(prefix=f"fmredis-topo-{name}-")
        self.config_path = os.path.join(self.directory, "redis.conf")
        self.log_path = os.path.join(self.directory, "redis.log")
        self._proc: subprocess.Popen[bytes] | None = None
        self.pids: list[int] = []  # every process ever started, for the tests' "nothing left running" checks
        atexit.register(self.close)

    @property
    def address(self) -> Address:
        return (LOOPBACK, self.port)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc is not None else None

    def client(self, **kwargs: Any) -> redis.Redis:
        """A probe-style client (see `make_client`) with this server's credentials/TLS options; caller closes it."""
        return make_client(self.address, **{**self.client_kwargs, **kwargs})

    def write_config(self) -> None:
        """(Re)write the config file from `config`; a sentinel or CONFIG REWRITE may change it while running."""
        lines = [
            ("bind", LOOPBACK),
            ("port", str(self.port) if self.plain_port else "0"),
            ("dir", self.directory),
            ("daemonize", "no"),
            ("logfile", ""),
            *self.config,
        ]
        with open(self.config_path, "w", encoding="utf-8") as handle:
            for words in lines:
                handle.write(" ".join([words[0], *(_quote(word) for word in words[1:])]) + "\n")

    def start(self, *, rewrite_config: bool = True) -> ServerProcess:
        """Start and wait until it answers INFO with its own pid; retries only while the port is still in use."""
        if self.running:
            raise TopologyError(f"{self.name} already running on port {self.port}")
        if rewrite_config or not os.path.exists(self.config_path):
            self.write_config()
        command = [self.executable, self.config_path] + (["--sentinel"] if self.sentinel else [])
        deadline = time.monotonic() + self.start_timeout
        while True:
            log_size = os.path.getsize(self.log_path) if os.path.exists(self.log_path) else 0
            with open(self.log_path, "ab") as log:
                self._proc = subprocess.Popen(
                    command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.directory
                )
            self.pids.append(self._proc.pid)
            if self._wait_ready(self._proc, deadline):
                return self
            self.kill()
            busy = "Address already in use" in self._log_since(log_size)
            if not busy or time.monotonic() >= deadline:
                raise TopologyError(
                    f"{self.name} did not answer on {LOOPBACK}:{self.port} within {self.start_timeout} s"
                    f" (exit code {self._proc.returncode})\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def _wait_ready(self, proc: subprocess.Popen[bytes], deadline: float) -> bool:
        # short timeouts: a foreign listener on the port must not hold up noticing that our process has exited
        client = self.client(socket_timeout=_READY_PROBE_TIMEOUT, socket_connect_timeout=_READY_PROBE_TIMEOUT)
        try:
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    return False
                with contextlib.suppress(redis.RedisError, OSError, KeyError, ValueError):
                    if int(client.info("server")["process_id"]) == proc.pid:
                        return True
                time.sleep(_TICK)
            return False
        finally:
            client.close()

    def _log_since(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as handle:
                handle.seek(offset)
                return handle.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        tail = self._log_since(0).splitlines()[-lines:]
        return f"--- {self.name} ({self.log_path}), last {len(tail)} lines:\n" + "\n".join(tail)

    def kill(self) -> None:
        """SIGKILL (no shutdown at all) and reap; no-op when not running. The process object is kept."""
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait()

    def terminate(self) -> None:
        """Send SIGTERM (and SIGCONT, for a frozen process) without waiting; see `wait_stopped`."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            self._proc.send_signal(signal.SIGCONT)

    def wait_stopped(self, timeout: float = 5.0) -> None:
        """Wait for the process to exit, SIGKILL after `timeout`; always reaps."""
        if self._proc is None:
            return
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, SIGKILL after `timeout`; safe to call any number of times."""
        self.terminate()
        self.wait_stopped(timeout)

    def close(self) -> None:
        """stop() and remove the temp directory."""
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)
        atexit.unregister(self.close)


def _stop_all(servers: Iterable[ServerProcess], timeout: float = 5.0) -> None:
    """SIGTERM all first, then wait for each (so shutdowns overlap), then remove every temp dir."""
    servers = list(servers)
    for server in servers:
        server.terminate()
    for server in servers:
        server.wait_stopped(timeout)
    for server in servers:
        server.close()


def _data_node_config(password: str | None) -> list[tuple[str, ...]]:
    config: list[tuple[str, ...]] = [
        ("save", ""),
        ("appendonly", "no"),
        ("shutdown-timeout", "0"),  # Redis 7: never wait for replicas to catch up on SIGTERM
        ("repl-diskless-sync-delay", "0"),  # full syncs start at once instead of after 5 s
    ]
    if password is not None:
        config += [("requirepass", password), ("masterauth", password)]
    return config


class _Topology:
    """Shared lifecycle: start() / stop() / context manager / atexit, and the "which processes" bookkeeping."""

    def __init__(self) -> None:
        self._servers: list[ServerProcess] = []
        self._started = False
        self.timings: dict[str, float] = {}  # seconds per startup phase, for reports and slow-start diagnosis
        atexit.register(self.stop)

    @contextlib.contextmanager
    def _phase(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.timings[name] = round(time.monotonic() - started, 3)

    @property
    def pids(self) -> list[int]:
        """Every process id this topology ever started (killed and restarted ones included)."""
        return [pid for server in self._servers for pid in server.pids]

    def _diagnostics(self) -> str:
        return "\n".join(server.log_tail() for server in self._servers)

    def _start(self) -> None:
        raise NotImplementedError

    def start(self: _TopologyT) -> _TopologyT:
        """Start every process and wait until the topology is usable; on failure everything is stopped again."""
        if self._started:
            raise TopologyError(f"{type(self).__name__} already started")
        self._started = True
        try:
            with self._phase("total"):
                self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _stop_order(self) -> list[ServerProcess]:
        return list(self._servers)

    def stop(self) -> None:
        """Stop every process this topology started (SIGTERM, SIGKILL after 5 s), remove its temp dirs; idempotent."""
        _stop_all(self._stop_order())
        atexit.unregister(self.stop)

    def __enter__(self: _TopologyT) -> _TopologyT:
        return self if self._started else self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


_TopologyT = TypeVar("_TopologyT", bound=_Topology)


class RedisCluster3(_Topology):
    """A Redis Cluster of three masters (no replicas) on 127.0.0.1, slots split evenly by ``redis-cli --cluster``.

    Each node has its own temp dir, no persistence, ``cluster-node-timeout`` = `node_timeout_ms` and an explicit
    cluster bus port (also a free port: the default port+10000 can fall outside the port range). start() returns once
    every node reports cluster_state:ok with all 16384 slots assigned and ok, knows all three nodes, and all nodes
    agree on the slot map.
    """

    def __init__(
        self,
        *,
        node_timeout_ms: int = 2000,
        start_timeout: float = 30.0,
        server_executable: str = "redis-server",
        cli_executable: str = "redis-cli",
    ) -> None:
        super().__init__()
        self.start_timeout = start_timeout
        self.cli_executable = cli_executable
        ports = free_ports(6)
        for index in range(3):
            config = [
                *_data_node_config(None),
                ("cluster-enabled", "yes"),
                ("cluster-config-file", "nodes.conf"),
                ("cluster-node-timeout", str(node_timeout_ms)),
                ("cluster-port", str(ports[3 + index])),
            ]
            self._servers.append(
                ServerProcess(f"cluster{index + 1}", ports[index], config, executable=server_executable)
            )
        self.create_output = ""  # what redis-cli --cluster create printed

    @property
    def nodes(self) -> list[Address]:
        """The three nodes' (host, port); use any of them as a startup node."""
        return [server.address for server in self._servers]

    def _start(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        with self._phase("servers"):
            for server in self._servers:
                server.start()
        command = [self.cli_executable, "--cluster", "create"]
        command += [f"{host}:{port}" for host, port in self.nodes] + ["--cluster-yes"]
        with self._phase("create"):
            try:
                result = subprocess.run(
                    command,
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    timeout=max(1.0, deadline - time.monotonic()),
                    check=False,
                )
            except subprocess.TimeoutExpired as exc:
                output = ((exc.stdout or b"") + (exc.stderr or b"")).decode("utf-8", "replace")
                raise TopologyError(f"{' '.join(command)} timed out:\n{output}\n{self._diagnostics()}") from exc
        self.create_output = (result.stdout + result.stderr).decode("utf-8", "replace")
        if result.returncode != 0:
            raise TopologyError(f"redis-cli --cluster create exited {result.returncode}:\n{self.create_output}")
        with self._phase("ready"):
            self.wait_ready(deadline)

    def _check_ready(self) -> None:
        slot_maps = []
        for server in self._servers:
            with server.client() as client:
                info = _info_fields(client.execute_command("CLUSTER", "INFO"))
                expected = {
                    "cluster_state": "ok",
                    "cluster_slots_assigned": str(CLUSTER_SLOTS),
                    "cluster_slots_ok": str(CLUSTER_SLOTS),
                    "cluster_known_nodes": "3",
                }
                seen = {key: info.get(key) for key in expected}
                if seen != expected:
                    raise NotReady(f"{server.name}: {seen}")
                slot_maps.append(
                    sorted(
                        (start, end, tuple(master[:2]))
                        for start, end, master, *_ in client.execute_command("CLUSTER", "SLOTS")
                    )
                )
        if any(slot_map != slot_maps[0] for slot_map in slot_maps):
            raise NotReady(f"nodes disagree on the slot map: {slot_maps}")

    def wait_ready(self, deadline: float | None = None) -> None:
        """Poll until the cluster is healthy as seen from every node (see the class doc).

        `deadline`: a `time.monotonic()` instant, default now + `start_timeout`.
        """
        if deadline is None:
            deadline = time.monotonic() + self.start_timeout
        wait_until(self._check_ready, deadline, "the cluster to be ok on all nodes", diagnostics=self._diagnostics)

    def flush(self) -> None:
        """FLUSHALL on every node that is currently a master."""
        for server in self._servers:
            with server.client() as client:
                if client.execute_command("ROLE")[0] == "master":
                    client.flushall()


class SentinelSetup(_Topology):
    """A master, one replica (``replicaof``) and three sentinels monitoring it as `master_name` with quorum 2.

    Sentinels: ``down-after-milliseconds`` 1000, ``failover-timeout`` 5000, ``parallel-syncs`` 1, each with its own
    writable config file (sentinels rewrite it). `password`: requirepass + masterauth on both data nodes and
    ``sentinel auth-pass`` on the sentinels. `sentinel_password`: requirepass on the sentinels (and
    ``sentinel sentinel-pass`` so they can still talk to each other).

    The replica is started (and its link is up) before the sentinels, so their first INFO of the master lists it.
    start() returns once `wait_ready` holds: see there.
    """

    def __init__(
        self,
        master_name: str = "fmredis",
        *,
        password: str | None = None,
        sentinel_password: str | None = None,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 5000,
        start_timeout: float = 30.0,
        executable: str = "redis-server",
    ) -> None:
        super().__init__()
        self.master_name = master_name
        self.password = password
        self.sentinel_password = sentinel_password
        self.start_timeout = start_timeout
        self.executable = executable
        master_port, replica_port, *sentinel_ports = free_ports(5)
        data_kwargs = {"password": password} if password is not None else {}
        self._data = [
            ServerProcess("master", master_port, _data_node_config(password), client_kwargs=data_kwargs),
            ServerProcess("replica", replica_port, _data_node_config(password), client_kwargs=data_kwargs),
        ]
        self._base_config = list(self._data[0].config)  # for restarts: without any replicaof
        self._data[1].config.append(("replicaof", LOOPBACK, str(master_port)))
        sentinel_config: list[tuple[str, ...]] = [
            ("sentinel", "monitor", master_name, LOOPBACK, str(master_port), "2"),
            ("sentinel", "down-after-milliseconds", master_name, str(down_after_ms)),
            ("sentinel", "failover-timeout", master_name, str(failover_timeout_ms)),
            ("sentinel", "parallel-syncs", master_name, "1"),
        ]
        if password is not None:
            sentinel_config.append(("sentinel", "auth-pass", master_name, password))
        sentinel_kwargs: dict[str, Any] = {}
        if sentinel_password is not None:
            sentinel_config += [("requirepass", sentinel_password), ("sentinel", "sentinel-pass", sentinel_password)]
            sentinel_kwargs["password"] = sentinel_password
        self._sentinels = [
            ServerProcess(
                f"sentinel{index + 1}",
                port,
                sentinel_config,
                sentinel=True,
                client_kwargs=sentinel_kwargs,
                executable=executable,
            )
            for index, port in enumerate(sentinel_ports)
        ]
        for server in self._data:
            server.executable = executable
        self._servers = [*self._data, *self._sentinels]
        self._killed: ServerProcess | None = None

    # -- addresses and clients ---------------------------------------------------------------------------------------

    @property
    def sentinels(self) -> list[Address]:
        """The three sentinels' (host, port)."""
        return [server.address for server in self._sentinels]

    @property
    def data_nodes(self) -> list[Address]:
        """Both data nodes' (host, port), whatever their current role."""
        return [server.address for server in self._data]

    def sentinel_kwargs(self) -> dict[str, Any]:
        """Connection options for the sentinels (``redis.sentinel.Sentinel(..., sentinel_kwargs=...)``)."""
        return {"password": self.sentinel_password} if self.sentinel_password is not None else {}

    def sentinel_client(self, index: int = 0) -> redis.Redis:
        """A probe client on sentinel `index` (decoded RESP2, no retries); the caller closes it."""
        return self._sentinels[index].client()

    def data_client(self, address: Address) -> redis.Redis:
        """A probe client on a data node (with `password`); the caller closes it."""
        return make_client(address, password=self.password)

    def _server_at(self, address: Address) -> ServerProcess:
        for server in self._data:
            if server.address == address:
                return server
        raise TopologyError(f"{address} is none of this setup's data nodes {self.data_nodes}")

    def _ask(self, index: int, *args: Any) -> Any:
        with self.sentinel_client(index) as client:
            return client.execute_command("SENTINEL", *args)

    def master_address(self) -> Address:
        """The master's address as the first answering sentinel reports it (SENTINEL GET-MASTER-ADDR-BY-NAME)."""
        errors = []
        for index in range(len(self._sentinels)):
            try:
                host, port = self._ask(index, "GET-MASTER-ADDR-BY-NAME", self.master_name)
                return (host, int(port))
            except (redis.RedisError, OSError, TypeError, ValueError) as exc:
                errors.append(f"{self._sentinels[index].name}: {exc!r}")
        raise TopologyError(f"no sentinel reported the master: {errors}")

    def replica_address(self) -> Address:
        """The data node that is not the current master."""
        master = self.master_address()
        (replica,) = [address for address in self.data_nodes if address != master]
        return replica

    # -- lifecycle ---------------------------------------------------------------------------------------------------

    def _start(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        master, replica = self._data
        with self._phase("data_nodes"):
            master.start()
            replica.start()
            wait_until(
                lambda: self._check_replica(replica.address, master.address),
                deadline,
                "the replica's link to the master",
                diagnostics=self._diagnostics,
            )
        with self._phase("sentinels"):
            for server in self._sentinels:
                server.start()
        with self._phase("ready"):  # mostly the sentinels discovering each other (hello messages every 2 s)
            self.wait_ready(deadline)

    def _stop_order(self) -> list[ServerProcess]:
        return [*self._sentinels, *self._data]  # sentinels first: no failover is started while the nodes go down

    def _check_replica(self, replica: Address, master: Address) -> None:
        with self.data_client(replica) as client:
            info = client.info("replication")
        seen = (info.get("role"), info.get("master_port"), info.get("master_link_status"))
        if seen != ("slave", master[1], "up"):
            raise NotReady(
                f"replica {replica}: role/master_port/master_link_status = {seen}, want slave/{master[1]}/up"
            )

    def _check_writable(self, address: Address) -> None:
        with self.data_client(address) as client:
            role = client.execute_command("ROLE")[0]
            if role != "master":
                raise NotReady(f"{address} has role {role}")
            client.set("fmredis:topology:probe", "1")  # raises READONLY and the like
            client.delete("fmredis:topology:probe")  # leaves nothing behind for the tests to trip over

    def _check_ready(self) -> Address:
        master: Address | None = None
        for index, server in enumerate(self._sentinels):
            state = _pairs(self._ask(index, "MASTER", self.master_name))
            seen = (state["ip"], int(state["port"]))
            if master is None:
                master = seen
            elif seen != master:
                raise NotReady(f"sentinels disagree on the master: {master} vs {seen} ({server.name})")
            if state["flags"] != "master" or int(state["num-slaves"]) != 1 or int(state["num-other-sentinels"]) != 2:
                fields = {key: state[key] for key in ("flags", "num-slaves", "num-other-sentinels")}
                raise NotReady(f"{server.name} sees master {seen} with {fields}")
            replicas = [_pairs(entry) for entry in self._ask(index, "REPLICAS", self.master_name)]
            if [entry["flags"] for entry in replicas] != ["slave"]:
                raise NotReady(f"{server.name} sees replicas {[(r['name'], r['flags']) for r in replicas]}")
        assert master is not None
        self._server_at(master)
        (replica,) = [address for address in self.data_nodes if address != master]
        self._check_writable(master)
        self._check_replica(replica, master)
        return master

    def wait_ready(self, deadline: float | None = None) -> Address:
        """Poll until the setup is healthy and return the master's address.

        Healthy: every sentinel names the same master, with flags exactly ``master``, 1 replica (flags ``slave``) and
        2 other sentinels; the master (one of ours) accepts writes; the replica replicates from it with its link up.
        `deadline`: a `time.monotonic()` instant, default now + `start_timeout`.
        """
        if deadline is None:
            deadline = time.monotonic() + self.start_timeout
        return wait_until(self._check_ready, deadline, "a healthy sentinel setup", diagnostics=self._diagnostics)

    def flush(self) -> None:
        """FLUSHALL on the current master, then WAIT (at most 1 s) until the replica has applied it too."""
        with self.data_client(self.master_address()) as client:
            client.flushall()
            client.execute_command("WAIT", 1, 1000)

    # -- failures ----------------------------------------------------------------------------------------------------

    def _check_new_master(self, old: Address) -> Address:
        seen = set()
        for index in range(len(self._sentinels)):
            host, port = self._ask(index, "GET-MASTER-ADDR-BY-NAME", self.master_name)
            seen.add((host, int(port)))
        if len(seen) != 1 or old in seen:
            raise NotReady(f"sentinels report {sorted(seen)} (old master {old})")
        (new,) = seen
        self._check_writable(new)
        return new

    def wait_for_new_master(self, old: Address, deadline: float) -> Address:
        """Poll until all sentinels report the same master other than `old` and it accepts writes; return it.

        `deadline` is a `time.monotonic()` instant (e.g. ``time.monotonic() + 15``); TopologyError after it.
        """
        return wait_until(
            lambda: self._check_new_master(old),
            deadline,
            f"a new master instead of {old}",
            diagnostics=self._diagnostics,
        )

    def failover(self, *, timeout: float = 30.0, settle: bool = True) -> float:
        """SENTINEL FAILOVER on the first sentinel; return the seconds until all sentinels report the new master and it
        accepts writes.

        settle=True (then not timed): also demote the old master right away (REPLICAOF the new one: what the sentinels
        would do themselves only after ``failover-timeout``) and wait until the setup is healthy again (`wait_ready`),
        so the next test finds a clean setup.
        """
        deadline = time.monotonic() + timeout
        old = self.wait_ready(deadline)
        started = time.monotonic()

        def trigger() -> None:
            try:
                self._ask(0, "FAILOVER", self.master_name)
            except redis.ResponseError as exc:  # NOGOODSLAVE while a sentinel's view is not fresh yet: retry
                raise NotReady(str(exc)) from exc

        wait_until(trigger, deadline, "SENTINEL FAILOVER to be accepted", diagnostics=self._diagnostics)
        new = self.wait_for_new_master(old, deadline)
        elapsed = time.monotonic() - started
        if settle:
            self._demote(old, new, deadline)
            self.wait_ready(deadline)
        return elapsed

    def _demote(self, old: Address, new: Address, deadline: float) -> None:
        def demote() -> None:
            with self.data_client(old) as client:
                if client.execute_command("ROLE")[0] == "master":
                    client.execute_command("REPLICAOF", new[0], str(new[1]))
            self._check_replica(old, new)

        wait_until(demote, deadline, f"the old master {old} to replicate from {new}", diagnostics=self._diagnostics)

    def kill_master(self) -> Address:
        """SIGKILL the current master's process (found via the sentinels) and return its address; the caller times
        the failover (`wait_for_new_master`). The process object is kept: stop() reaps it, `restart_killed_master`
        brings it back."""
        old = self.master_address()
        server = self._server_at(old)
        server.kill()
        self._killed = server
        return old

    def restart_killed_master(self, *, timeout: float = 30.0, wait: bool = True) -> Address:
        """Start the killed master again on its port, as a replica of the current master (its data is gone anyway),
        and with wait=True wait until the whole setup is healthy again; return the current master's address."""
        if self._killed is None:
            raise TopologyError("no master was killed")
        deadline = time.monotonic() + timeout
        master = self.master_address()
        server, self._killed = self._killed, None
        server.config = [*self._base_config, ("replicaof", master[0], str(master[1]))]
        server.start()
        if wait:
            return self.wait_ready(deadline)
        return master


class TLSCerts:
    """A throwaway CA (trustme) with a server certificate for 127.0.0.1 and localhost and a client certificate, written
    as PEM files into a temp dir, plus the certificate of a second, unrelated CA (`other_ca_file`) for "does not trust"
    tests. Attributes: ca_file, server_cert, server_key, client_cert, client_key, other_ca_file (all paths)."""

    def __init__(self) -> None:
        import trustme  # a test dependency; imported here so the other helpers work without it

        self.directory = tempfile.mkdtemp(prefix="fmredis-topo-tls-")
        atexit.register(self.close)
        ca = trustme.CA(organization_name="fmredis tests")
        server = ca.issue_cert(LOOPBACK, "localhost")
        client = ca.issue_cert("fmredis-test-client", common_name="fmredis-test-client")
        other = trustme.CA(organization_name="unrelated CA")
        self.ca_file = self._path("ca.pem")
        self.server_cert = self._path("server.crt")
        self.server_key = self._path("server.key")
        self.client_cert = self._path("client.crt")
        self.client_key = self._path("client.key")
        self.other_ca_file = self._path("other-ca.pem")
        ca.cert_pem.write_to_path(self.ca_file)
        other.cert_pem.write_to_path(self.other_ca_file)
        for leaf, cert_path, key_path in (
            (server, self.server_cert, self.server_key),
            (client, self.client_cert, self.client_key),
        ):
            leaf.private_key_pem.write_to_path(key_path)
            with open(cert_path, "wb") as handle:
                for blob in leaf.cert_chain_pems:
                    handle.write(blob.bytes())

    def _path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def client_kwargs(self, *, ca_file: str | None = None, client_cert: bool = True) -> dict[str, Any]:
        """redis-py options for a TLS client trusting `ca_file` (default: our CA), presenting our client certificate
        unless client_cert=False."""
        options: dict[str, Any] = {"ssl": True, "ssl_ca_certs": ca_file or self.ca_file}
        if client_cert:
            options.update(ssl_certfile=self.client_cert, ssl_keyfile=self.client_key)
        return options

    def close(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
        atexit.unregister(self.close)

    def __enter__(self) -> TLSCerts:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class TLSRedis(_Topology):
    """A redis-server that speaks TLS only (``port 0``, ``tls-port`` free) with `certs`' server certificate and CA.

    tls_auth_clients: "yes" (a client certificate signed by the CA is required), "no", or "optional" (checked if
    presented). `password`: requirepass. Readiness is checked with a TLS client that trusts the CA and presents the
    client certificate.
    """

    def __init__(
        self,
        certs: TLSCerts,
        *,
        tls_auth_clients: str = "optional",
        password: str | None = None,
        start_timeout: float = 10.0,
        executable: str = "redis-server",
    ) -> None:
        if tls_auth_clients not in ("yes", "no", "optional"):
            raise ValueError(f"tls_auth_clients must be yes, no or optional, not {tls_auth_clients!r}")
        super().__init__()
        self.certs = certs
        self.password = password
        (port,) = free_ports(1)
        config = [
            *_data_node_config(password),
            ("tls-port", str(port)),
            ("tls-cert-file", certs.server_cert),
            ("tls-key-file", certs.server_key),
            ("tls-ca-cert-file", certs.ca_file),
            ("tls-auth-clients", tls_auth_clients),
        ]
        client_kwargs: dict[str, Any] = certs.client_kwargs()
        if password is not None:
            client_kwargs["password"] = password
        self.server = ServerProcess(
            "tls",
            port,
            config,
            plain_port=False,
            client_kwargs=client_kwargs,
            start_timeout=start_timeout,
            executable=executable,
        )
        self._servers = [self.server]

    @property
    def host(self) -> str:
        return LOOPBACK

    @property
    def port(self) -> int:
        """The TLS port (there is no plain-text port)."""
        return self.server.port

    @property
    def address(self) -> Address:
        return self.server.address

    @property
    def url(self) -> str:
        return f"rediss://{LOOPBACK}:{self.port}/0"

    def client_kwargs(self, *, ca_file: str | None = None, client_cert: bool = True) -> dict[str, Any]:
        """redis-py options for this server (see `TLSCerts.client_kwargs`), password included if set."""
        options = self.certs.client_kwargs(ca_file=ca_file, client_cert=client_cert)
        if self.password is not None:
            options["password"] = self.password
        return options

    def _start(self) -> None:
        self.server.start()

    def flush(self) -> None:
        with self.server.client() as client:
            client.flushall()


def acl_user(
    client: redis.Redis,
    name: str,
    password: str,
    key_patterns: Iterable[str],
    *,
    rules: Sequence[str] = ("+@all",),
) -> None:
    """Create or redefine ACL user `name`: enabled, `password`, access to `key_patterns` only (``~pattern`` each), and
    `rules` (default ``+@all``: every command, FLUSHALL included, but only on matching keys; a key outside the patterns
    gets NOPERM). ``reset`` first, so a second call replaces the user instead of adding to it.

    Use it only on servers the tests started (ACL users outlive FLUSHALL): see `temporary_acl_user`.
    """
    patterns = [f"~{pattern}" for pattern in key_patterns]
    client.execute_command("ACL", "SETUSER", name, "reset", "on", f">{password}", *patterns, *rules)


@contextlib.contextmanager
def temporary_acl_user(
    client: redis.Redis,
    name: str,
    password: str,
    key_patterns: Iterable[str],
    *,
    rules: Sequence[str] = ("+@all",),
) -> Iterator[str]:
    """`acl_user`, deleted again (ACL DELUSER) on exit, so a shared test server keeps no extra users; yields `name`."""
    acl_user(client, name, password, key_patterns, rules=rules)
    try:
        yield name
    finally:
        client.execute_command("ACL", "DELUSER", name)


# --- a writer workload: every write a caller saw succeed is remembered, to be read back afterwards -------------------

SESSION_PREFIX = "session:"  # RedisSessionStore's default key prefix, for reading what it wrote with a plain client


class SessionStoreLike(Protocol):
    """What `WriteLoad` needs of a store (fmredis' ISessionStore, without importing fmredis here)."""

    def set(self, key: str, value: dict[str, Any], /) -> object: ...

    def get(self, key: str, /) -> dict[str, Any] | None: ...


class WriteLoad:
    """`threads` writers, each looping: ``set`` a new key ``w<thread>-<i>`` to ``{"thread", "i"}``, ``get`` it back,
    pause `pause` s. Every call's start, end and outcome is recorded; an exception never ends a writer.

    Use as a context manager: the writers run inside the ``with`` block and are joined when it ends.
    """

    def __init__(self, store: SessionStoreLike, *, threads: int = 4, pause: float = 0.005) -> None:
        self.store = store
        self.pause = pause
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.acked: dict[str, tuple[int, float]] = {}  # key -> (i, when the set returned)
        self.writes: list[tuple[float, float, bool]] = []  # (started, ended, succeeded) of every set
        self.calls: list[tuple[float, float]] = []  # (started, ended) of every call, set and get
        self.errors: list[tuple[float, str, str]] = []  # (when, exception type, message) of every failed call
        self.mismatches: list[str] = []  # a get right after an acknowledged set did not return it
        self._threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(threads)]

    def __enter__(self) -> WriteLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _call(self, operation: str, key: str, i: int) -> bool:
        started = time.monotonic()
        try:
            if operation == "set":
                self.store.set(key, {"thread": key, "i": i})
            else:
                found = self.store.get(key)
        except Exception as exc:  # every error reaching a caller is recorded, whatever its type
            ended = time.monotonic()
            with self._lock:
                self.errors.append((ended, type(exc).__name__, str(exc)))
                self.calls.append((started, ended))
                if operation == "set":
                    self.writes.append((started, ended, False))
            return False
        ended = time.monotonic()
        with self._lock:
            self.calls.append((started, ended))
            if operation == "set":
                self.writes.append((started, ended, True))
                self.acked[key] = (i, ended)
            elif found is None or found.get("i") != i:
                self.mismatches.append(f"{key}: read back {found!r}")
        return True

    def _run(self, n: int) -> None:
        i = 0
        while not self._stop.is_set():
            key = f"w{n}-{i}"
            if self._call("set", key, i):
                self._call("get", key, i)
            i += 1
            time.sleep(self.pause)

    def wait_for_writes(self, count: int, timeout: float = 10.0) -> None:
        """Until `count` writes have succeeded (the workload is running against a healthy store)."""
        deadline = time.monotonic() + timeout
        while len(self.acked) < count:
            assert time.monotonic() < deadline, f"only {len(self.acked)} writes succeeded in {timeout} s"
            time.sleep(0.01)

    def first_success_started_after(self, instant: float) -> float | None:
        """When the first successful write that started at or after `instant` returned, or None."""
        with self._lock:
            ends = [end for start, end, ok in self.writes if ok and start >= instant]
        return min(ends) if ends else None

    def wait_for_success_after(self, instant: float, deadline: float) -> float | None:
        """Until a write started at or after `instant` has succeeded (then return when it returned), or `deadline`."""
        while time.monotonic() < deadline:
            found = self.first_success_started_after(instant)
            if found is not None:
                return found
            time.sleep(0.01)
        return self.first_success_started_after(instant)

    def longest_gap(self, since: float) -> float:
        """The longest time between two consecutive successful writes (by return time), counted from the last one
        before `since`; the tail after the last one counts too (the workload has stopped by then)."""
        ends = sorted(end for _start, end, ok in self.writes if ok)
        before = [end for end in ends if end < since]
        previous = before[-1] if before else since
        last = max((end for _start, end in self.calls), default=since)
        gap = 0.0
        for end in [*(end for end in ends if end >= since), last]:
            gap = max(gap, end - previous)
            previous = end
        return gap

    def errors_by_type(self) -> tuple[dict[str, int], dict[str, str]]:
        """Errors seen by callers, counted by "Type (redis-py error | breaker open)" (the redis-py error named in the
        message when there is one), and the first message (up to 200 characters) of each."""
        counts: collections.Counter[str] = collections.Counter()
        samples: dict[str, str] = {}
        for _when, kind, message in self.errors:
            if "circuit breaker" in message:
                detail = "breaker open"
            else:
                detail = message.split("failed: ", 1)[1].split(":", 1)[0] if "failed: " in message else ""
            label = f"{kind} ({detail})" if detail else kind
            counts[label] += 1
            samples.setdefault(label, message[:200])
        return dict(counts), samples

    def error_summary(self) -> dict[str, int]:
        """The counts of `errors_by_type`."""
        return self.errors_by_type()[0]

    def acknowledged_between(self, keys: Iterable[str], since: float) -> tuple[float, float] | None:
        """The first and last time, in seconds from `since`, at which a write of `keys` was acknowledged (None when
        there are no keys)."""
        when = sorted(self.acked[key][1] - since for key in keys)
        return (when[0], when[-1]) if when else None


def unreadable(
    master: Address, acked: dict[str, tuple[int, float]], *, password: str | None = None, prefix: str = SESSION_PREFIX
) -> list[str]:
    """The acknowledged keys (`WriteLoad.acked`) whose last acknowledged value the master does not hold."""
    missing: list[str] = []
    keys = list(acked)
    with make_client(master, password=password) as client:
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            for key, payload in zip(chunk, client.mget([prefix + key for key in chunk]), strict=True):
                if payload is None or json.loads(payload).get("i") != acked[key][0]:
                    missing.append(key)
    return missing
