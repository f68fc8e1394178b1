"""ACL users for tests: `acl_user` and `temporary_acl_user`, restricted to key patterns, on any server the tests
started (plain redis-py)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence

import redis


def acl_user(
    client: redis.Redis,
    name: str,
    password: str,
    key_patterns: Iterable[str],
    *,
    rules: Sequence[str] = ("+@all",),
) -> None:
    """Create or redefine ACL user `name`: enabled, `password`, access to `key_patterns` only (``~pattern`` each), and
    `rules` (default ``+@all``: every command, FLUSHALL included, but only on matching keys; a key outside the patterns
    gets NOPERM). ``reset`` first, so a second call replaces the user instead of adding to it.

    Use it only on servers the tests started (ACL users outlive FLUSHALL): see `temporary_acl_user`.
    """
    patterns = [f"~{pattern}" for pattern in key_patterns]
    client.execute_command("ACL", "SETUSER", name, "reset", "on", f">{password}", *patterns, *rules)


@contextlib.contextmanager
def temporary_acl_user(
    client: redis.Redis,
    name: str,
    password: str,
    key_patterns: Iterable[str],
    *,
    rules: Sequence[str] = ("+@all",),
) -> Iterator[str]:
    """`acl_user`, deleted again (ACL DELUSER) on exit, so a shared test server keeps no extra users; yields `name`."""
    acl_user(client, name, password, key_patterns, rules=rules)
    try:
        yield name
    finally:
        client.execute_command("ACL", "DELUSER", name)
