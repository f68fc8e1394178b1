"""`RedisCluster3`: a Redis Cluster of three masters (no replicas) on 127.0.0.1, for topology tests and benchmarks."""

from __future__ import annotations

import subprocess
import time

from tests.harness.servers import Address, NotReady, RedisServer, TopologyError, free_ports, wait_until
from tests.harness.topology import Topology, data_node_config

CLUSTER_SLOTS = 16384


def info_fields(text: str) -> dict[str, str]:
    """`CLUSTER INFO`-style text (``key:value`` lines) as a dict."""
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


class RedisCluster3(Topology):
    """Three cluster masters (no replicas) on 127.0.0.1, slots split evenly by ``redis-cli --cluster create``.

    Each node has its own temp dir, no persistence, ``cluster-node-timeout`` = `node_timeout_ms` and an explicit
    cluster bus port (also a free port: the default port+10000 can fall outside the port range). start() returns once
    every node reports cluster_state:ok with all 16384 slots assigned and ok, knows all three nodes, and all nodes
    agree on the slot map. ``.nodes``: their addresses; ``.flush()``: FLUSHALL on every master.
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
                *data_node_config(),
                ("cluster-enabled", "yes"),
                ("cluster-config-file", "nodes.conf"),
                ("cluster-node-timeout", str(node_timeout_ms)),
                ("cluster-port", str(ports[3 + index])),
            ]
            self._servers.append(RedisServer(f"cluster{index + 1}", ports[index], config, executable=server_executable))
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
                info = info_fields(client.execute_command("CLUSTER", "INFO"))
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
