"""`SentinelSetup`: a master, a replica and three sentinels on 127.0.0.1, with planned failover and master kill."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import redis

from tests.harness.servers import (
    LOOPBACK,
    Address,
    NotReady,
    RedisServer,
    TopologyError,
    free_ports,
    make_client,
    wait_until,
)
from tests.harness.topology import Topology, data_node_config


def _pairs(reply: Sequence[Any]) -> dict[str, Any]:
    """A flat RESP2 field/value list (SENTINEL MASTER, SENTINEL REPLICAS entries) as a dict."""
    return dict(zip(reply[::2], reply[1::2], strict=True))


class SentinelSetup(Topology):
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
            RedisServer(name, port, data_node_config(password), client_kwargs=data_kwargs, executable=executable)
            for name, port in (("master", master_port), ("replica", replica_port))
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
            RedisServer(
                f"sentinel{index + 1}",
                port,
                sentinel_config,
                sentinel=True,
                client_kwargs=sentinel_kwargs,
                executable=executable,
            )
            for index, port in enumerate(sentinel_ports)
        ]
        self._servers = [*self._data, *self._sentinels]
        self._killed: RedisServer | None = None

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

    def _server_at(self, address: Address) -> RedisServer:
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

    def _stop_order(self) -> list[RedisServer]:
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
