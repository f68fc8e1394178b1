"""Django configured once per test process, on import of this module, for the Django tests only (other test files
never import it).

`configure()` (idempotent) fetches Django's own session tests (tests/contrib/django_suite.py) so their app
(``sessions_tests``, with its custom session model) can be installed, then ``settings.configure`` + ``django.setup``.
A failed fetch does not stop Django from being configured: `SUITE_ERROR` holds the reason, and only the mixin test
fails with it. The session engine's store is left pointing nowhere (`unconfigured_store` raises) until a test points
it at a server of its own with `fmredis_on`, so no test can reach a Redis it did not start.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import django
from django.conf import settings
from django.test import override_settings

from fmredis.store import ISessionStore
from tests.contrib import django_suite

_state: dict[str, str | None] = {}


def unconfigured_store() -> ISessionStore:
    raise RuntimeError("the Django tests' session store is not pointed at a test server (use fmredis_on)")


def configure() -> str | None:
    """Configure Django (once); returns why Django's session tests are unavailable, or None when they are there."""
    if "suite_error" in _state:
        return _state["suite_error"]
    if settings.configured:
        raise RuntimeError("Django was configured before tests/contrib/django_settings.py could configure it")
    apps = ["django.contrib.contenttypes", "django.contrib.auth", "django.contrib.sessions"]
    try:
        django_suite.install()
    except django_suite.SuiteUnavailable as exc:
        _state["suite_error"] = str(exc)
    else:
        _state["suite_error"] = None
        apps.append(django_suite.PACKAGE)
    settings.configure(
        DEBUG=False,
        SECRET_KEY="fmredis-tests-only",
        ALLOWED_HOSTS=["testserver"],
        INSTALLED_APPS=apps,
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        DEFAULT_AUTO_FIELD="django.db.models.AutoField",
        MIDDLEWARE=["django.contrib.sessions.middleware.SessionMiddleware"],
        ROOT_URLCONF="tests.contrib.django_app",
        SESSION_ENGINE="fmredis.contrib.django",
        FMREDIS_SESSION_STORE="tests.contrib.django_settings.unconfigured_store",
        USE_TZ=True,
        LOGGING_CONFIG=None,  # leave the process's logging (which other tests inspect) alone
    )
    django.setup()
    return _state["suite_error"]


#: Why Django's session tests are unavailable (None: importable as ``sessions_tests``).
SUITE_ERROR = configure()


@contextlib.contextmanager
def fmredis_on(url: str, client_options: dict[str, Any] | None = None, **more: Any) -> Iterator[None]:
    """The session engine's store on the Redis at `url` (environment ignored; `client_options` for
    ``create_redis_client``), plus any other settings in `more`; the store is closed on the way out."""
    from fmredis.contrib.django import reset_store  # imported once Django is configured

    options = {"url": url, "environ": {}, **(client_options or {})}
    try:
        with override_settings(FMREDIS_SESSION_STORE=None, FMREDIS_REDIS=options, **more):
            yield
    finally:
        reset_store()
