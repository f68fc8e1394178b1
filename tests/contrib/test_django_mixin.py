"""Django's own session-engine test suite, ``SessionTestsMixin`` (tests/sessions_tests/ of the installed Django's
source), run on ``fmredis.contrib.django.SessionStore`` against the test redis-server: every test of it, the async
ones included (Django's ``SimpleTestCase`` runs them in an event loop)."""

from __future__ import annotations

import inspect
from collections.abc import Iterator

import pytest
import redis
from django.test import SimpleTestCase

from tests.contrib.django_settings import SUITE_ERROR, fmredis_on


def test_djangos_session_tests_are_there() -> None:
    """Fails (never skips) when Django's session tests could not be fetched: the class below is then missing."""
    if SUITE_ERROR is not None:
        pytest.fail(SUITE_ERROR, pytrace=False)
    from sessions_tests.tests import SessionTestsMixin

    tests = [name for name in dir(SessionTestsMixin) if name.startswith("test_")]
    asynchronous = [name for name in tests if inspect.iscoroutinefunction(getattr(SessionTestsMixin, name))]
    assert len(tests) > 60 and len(asynchronous) > 25, (len(tests), len(asynchronous))
    assert set(tests) <= set(dir(FmRedisSessionTests))


if SUITE_ERROR is None:
    from sessions_tests.tests import SessionTestsMixin

    from fmredis.contrib.django import SessionStore

    class FmRedisSessionTests(SessionTestsMixin, SimpleTestCase):
        backend = SessionStore

        @pytest.fixture(autouse=True)
        def _on_test_redis(self, redis_url: str, raw: redis.Redis) -> Iterator[None]:
            with fmredis_on(redis_url):
                yield
