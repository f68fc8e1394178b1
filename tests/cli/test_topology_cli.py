"""The CLI on a Redis Cluster and through Sentinel (the shared topologies of tests/harness/fixtures.py): the doctor
reports the mode it found, and ``sessions count`` scans every master of a cluster."""

from __future__ import annotations

import pytest

from fmredis.client import RedisClient
from tests.cli.conftest import run_cli

pytestmark = [pytest.mark.topology, pytest.mark.timeout(120)]


def _hosts(nodes: list[tuple[str, int]]) -> str:
    return ",".join(f"{host}:{port}" for host, port in nodes)


def test_doctor_and_count_on_a_cluster(cluster_client: RedisClient, cluster_nodes: list[tuple[str, int]]) -> None:
    with cluster_client.pipeline() as pipe:  # keys spread over the slots, so over all three masters
        for number in range(2500):
            pipe.set(f"session:{number}", b"{}", ex=600)
        for number in range(100):
            pipe.set(f"other:{number}", b"{}", ex=600)
        pipe.execute()
    env = {"REDIS_URL": f"redis+cluster://{_hosts(cluster_nodes)}"}
    doctor = run_cli("doctor", "--count", "5", env=env)
    assert doctor.code == 0, doctor
    assert f"cluster client ({len(cluster_nodes)} nodes), server redis_mode cluster" in doctor.stdout
    count = run_cli("sessions", "count", env=env)
    assert count.code == 0 and count.stdout == "2500\n", count


def test_doctor_through_sentinel(sentinels: tuple[list[tuple[str, int]], str]) -> None:
    addresses, master = sentinels
    run = run_cli("doctor", "--count", "5", env={"REDIS_URL": f"redis+sentinel://{_hosts(addresses)}/{master}/0"})
    assert run.code == 0, run
    assert f"mode:     sentinel client (master {master} at 127.0.0.1:" in run.stdout and "role master" in run.stdout
