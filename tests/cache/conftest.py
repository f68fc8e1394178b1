"""The fixtures of the in-process ContextCache tests: ``caches`` builds caches on the test server and closes them all
afterwards; ``cache`` is one with the default settings."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from fmredis import ContextCache
from tests.cache.context_support import Caches


@pytest.fixture
def caches(client: redis.Redis) -> Iterator[Caches]:
    made = Caches(client)
    yield made
    made.close()


@pytest.fixture
def cache(caches: Caches) -> ContextCache:
    return caches.make()
