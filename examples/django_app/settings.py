"""Settings of the example Django project: sessions in Redis through fmredis, nothing else (no database).

Redis: ``REDIS_URL`` if set, else redis://127.0.0.1:6379/0. ``DJANGO_SECRET_KEY``: without it a key is drawn at each
start (fine here: the session cookie holds only the random session key, and the data stays in Redis).
"""

from __future__ import annotations

import os
import secrets

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or secrets.token_urlsafe(50)
DEBUG = os.environ.get("DJANGO_DEBUG") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
ROOT_URLCONF = "urls"
INSTALLED_APPS: list[str] = []  # the session engine needs no app and no database
DATABASES: dict[str, dict[str, str]] = {}
# fmredis's SessionMiddleware: Django's, answering 503 (Retry-After) instead of a 500 while Redis is unreachable.
# A real project keeps django.middleware.csrf.CsrfViewMiddleware too; the example's views are driven by curl.
MIDDLEWARE = ["fmredis.contrib.django.SessionMiddleware"]
USE_TZ = True

SESSION_ENGINE = "fmredis.contrib.django"
FMREDIS_REDIS = {"url": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")}
FMREDIS_SESSION_KEY_PREFIX = "django-session:"  # the default, spelled out
SESSION_COOKIE_AGE = 14 * 86_400  # Django's default (two weeks): the Redis TTL, restarted by every read
