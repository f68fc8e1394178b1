"""hiredis (what fmredis uses) against redis-py's pure-Python RESP2 parser on large replies, same server and data."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import redis
from redis._parsers import _HiredisParser, _RESP2Parser

from benchmarks.sessions import SEED_SESSION
from fmredis import diagnostics

SESSIONS = 1000
FIELDS = 10_000


@pytest.fixture(scope="module")
def data(bench_client: redis.Redis, bench_prefix: str) -> Iterator[dict[str, Any]]:
    keys = [f"{bench_prefix}parse:{i}" for i in range(SESSIONS)]
    bench_client.mset({key: orjson.dumps({**SEED_SESSION, "n": i}) for i, key in enumerate(keys)})
    hash_key = f"{bench_prefix}parse:hash"
    bench_client.hset(hash_key, mapping={f"field:{i}": f"value-{i}" for i in range(FIELDS)})
    yield {"keys": keys, "hash": hash_key}
    bench_client.unlink(*keys, hash_key)


def client_with(parser: type, bench_client: redis.Redis) -> redis.Redis:
    kwargs = dict(bench_client.connection_pool.connection_kwargs, parser_class=parser)
    pool = redis.BlockingConnectionPool(connection_class=bench_client.connection_pool.connection_class, **kwargs)
    return redis.Redis(connection_pool=pool)


PARSERS = [("baseline", _RESP2Parser), ("candidate", _HiredisParser)]


@pytest.mark.parametrize(("role", "parser"), PARSERS, ids=["python-parser", "hiredis"])
def test_mget_1000_sessions(
    benchmark: Any, bench_client: redis.Redis, data: dict[str, Any], role: str, parser: type
) -> None:
    client = client_with(parser, bench_client)
    assert diagnostics(client)["parser"].endswith(parser.__name__)
    benchmark.group, benchmark.extra_info["role"] = f"parse MGET {SESSIONS} sessions", role
    replies = benchmark(client.mget, data["keys"])
    assert len(replies) == SESSIONS and all(replies)
    client.close()


@pytest.mark.parametrize(("role", "parser"), PARSERS, ids=["python-parser", "hiredis"])
def test_hgetall_10000_fields(
    benchmark: Any, bench_client: redis.Redis, data: dict[str, Any], role: str, parser: type
) -> None:
    client = client_with(parser, bench_client)
    benchmark.group, benchmark.extra_info["role"] = f"parse HGETALL {FIELDS} fields", role
    assert len(benchmark(client.hgetall, data["hash"])) == FIELDS
    client.close()
