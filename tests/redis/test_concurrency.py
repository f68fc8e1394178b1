"""Many threads, one store, one bounded pool: no errors, no lost writes, never more connections than the pool allows."""

from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor

import redis

from fmredis import RedisSessionStore, create_redis_client

THREADS = 32
OPS_PER_THREAD = 400  # 12,800 operations in all
POOL = 20


def test_32_threads_share_one_store_with_a_pool_of_20(redis_url: str, raw: redis.Redis) -> None:
    client = create_redis_client(url=redis_url, max_connections=POOL, client_name="fmredis-load", environ={})
    store = RedisSessionStore(client)
    stop = threading.Event()
    peak = 0

    def watch_connections() -> None:
        nonlocal peak
        while not stop.is_set():
            named = sum(1 for entry in raw.client_list() if entry["name"] == "fmredis-load")
            peak = max(peak, named)
            stop.wait(0.005)

    def worker(n: int) -> dict[str, int]:
        rng = random.Random(n)
        written: dict[str, int] = {}
        for i in range(OPS_PER_THREAD):
            key = f"t{n}-{rng.randrange(40)}"
            op = rng.random()
            if op < 0.4:
                store.set(key, {"thread": n, "i": i})
                written[key] = i
            elif op < 0.7:
                got = store.get(key)
                assert got is None or (got["thread"] == n and got["i"] == written.get(key))
            elif op < 0.8:
                if store.delete(key):
                    written.pop(key)
                else:
                    assert key not in written
            elif op < 0.9:
                assert store.extend_ttl(key, 600) is (key in written)
            else:
                found = store.get_many(list(written)[:10])
                assert all(found[k]["i"] == written[k] for k in found) and len(found) == min(10, len(written))
        return written

    watcher = threading.Thread(target=watch_connections)
    watcher.start()
    try:
        with ThreadPoolExecutor(THREADS) as executor:
            results = list(executor.map(worker, range(THREADS)))  # re-raises any worker's error
    finally:
        stop.set()
        watcher.join()

    expected = {key: i for written in results for key, i in written.items()}
    assert expected, "the load wrote nothing"
    stored = store.get_many(list(expected))
    assert {key: doc["i"] for key, doc in stored.items()} == expected
    assert raw.dbsize() == len(expected)
    assert 1 <= peak <= POOL
    assert len(client.connection_pool._connections) <= POOL  # the pool never made more than it may
    client.close()
