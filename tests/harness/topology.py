"""What every multi-process Redis topology of the harness shares: `Topology` (start, stop, context manager, atexit,
pids, startup timings) and the config of a data node.

The topologies, one module each, all made of `tests.harness.servers.RedisServer` processes:

* `tests.harness.cluster.RedisCluster3`: three cluster masters joined with ``redis-cli --cluster create``.
* `tests.harness.sentinel.SentinelSetup`: a master, a replica and three sentinels (quorum 2), optionally with
  passwords; planned failover, kill of the master, restart of the killed master.
* `tests.harness.tls.TLSRedis`: a TLS-only redis-server, with `tests.harness.tls.TLSCerts` (a throwaway CA).

Every topology is a context manager whose ``__exit__`` (and ``stop()``, safe to call any number of times) stops every
process it started, the killed ones included, and removes the temp directories; ``atexit`` is the last-resort guard.
Readiness is always polled against a deadline (no fixed sleeps); a timeout raises `TopologyError` with the reason of
the last failed check and the tail of the relevant logs.
"""

from __future__ import annotations

import atexit
import contextlib
import time
from collections.abc import Iterator
from types import TracebackType
from typing import TypeVar

from tests.harness.servers import RedisServer, TopologyError, stop_all

_TopologyT = TypeVar("_TopologyT", bound="Topology")


def data_node_config(password: str | None = None) -> list[tuple[str, ...]]:
    """Directives of a data node that may have replicas: quick shutdowns and syncs; `password` for clients and for
    replicas logging in to their master."""
    config: list[tuple[str, ...]] = [
        ("shutdown-timeout", "0"),  # Redis 7: never wait for replicas to catch up on SIGTERM
        ("repl-diskless-sync-delay", "0"),  # full syncs start at once instead of after 5 s
    ]
    if password is not None:
        config += [("requirepass", password), ("masterauth", password)]
    return config


class Topology:
    """Shared lifecycle: start() / stop() / context manager / atexit, and the "which processes" bookkeeping.

    Subclasses fill `_servers` in their constructor and implement `_start` (start them, wait until usable).
    """

    def __init__(self) -> None:
        self._servers: list[RedisServer] = []
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

    def _stop_order(self) -> list[RedisServer]:
        return list(self._servers)

    def stop(self) -> None:
        """Stop every process this topology started (SIGTERM, SIGKILL after 5 s), remove its temp dirs; idempotent."""
        stop_all(self._stop_order())
        atexit.unregister(self.stop)

    def __enter__(self: _TopologyT) -> _TopologyT:
        return self if self._started else self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
