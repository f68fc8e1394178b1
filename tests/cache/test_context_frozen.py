"""The values ContextCache hits return are frozen: every mutator of FrozenDict/FrozenList, at any depth, raises
TypeError and leaves the shared copy as it was; thaw(), copy.deepcopy and pickle give plain mutable copies whose
changes no other reader sees; and a hit serializes (orjson, json) like the original. On a real redis-server."""

from __future__ import annotations

import copy
import json
import operator
import pickle
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
import redis

from fmredis import ContextCache, FrozenDict, FrozenList, thaw
from tests.cache.context_support import Caches, settle

pytestmark = pytest.mark.timeout(60)

CONTEXT = {"user": "u-1", "turns": [{"role": "user", "text": "héllo"}, {"role": "bot", "text": "hi", "n": 2.5}]}


@pytest.fixture
def cache(client: redis.Redis) -> Iterator[ContextCache]:
    made = Caches(client)
    yield made.make()
    made.close()


# --- frozen values --------------------------------------------------------------------------------------------------

DICT_MUTATORS: list[Callable[[Any], Any]] = [
    lambda d: operator.setitem(d, "new", 1),
    lambda d: operator.delitem(d, next(iter(d))),
    lambda d: operator.ior(d, {"new": 1}),
    lambda d: d.clear(),
    lambda d: d.pop(next(iter(d))),
    lambda d: d.popitem(),
    lambda d: d.setdefault("new", 1),
    lambda d: d.update(new=1),
]
LIST_MUTATORS: list[Callable[[Any], Any]] = [
    lambda s: operator.setitem(s, 0, "new"),
    lambda s: operator.setitem(s, slice(0, 1), ["new"]),
    lambda s: operator.delitem(s, 0),
    lambda s: operator.delitem(s, slice(None)),
    lambda s: operator.iadd(s, ["new"]),
    lambda s: operator.imul(s, 2),
    lambda s: s.append("new"),
    lambda s: s.extend(["new"]),
    lambda s: s.insert(0, "new"),
    lambda s: s.pop(),
    lambda s: s.remove(s[0]),
    lambda s: s.reverse(),
    lambda s: s.sort(key=str),
    lambda s: s.clear(),
]
NESTED = {"a": {"b": [3, 1, {"c": 3}], "d": "x"}, "list": [2, 1], "n": 1}


@pytest.mark.parametrize("where", ["top", "nested dict", "deep dict"])
@pytest.mark.parametrize("mutate", DICT_MUTATORS)
def test_every_dict_mutator_of_a_hit_raises_type_error(
    cache: ContextCache, where: str, mutate: Callable[[Any], Any]
) -> None:
    cache.set("conv-1", NESTED)
    value = settle(cache, lambda: cache.get("conv-1"))
    target = {"top": value, "nested dict": value["a"], "deep dict": value["a"]["b"][2]}[where]
    assert type(target) is FrozenDict
    with pytest.raises(TypeError, match=r"read-only.*thaw"):
        mutate(target)
    assert value == NESTED and cache.get("conv-1") is value


@pytest.mark.parametrize("where", ["nested list", "list in list"])
@pytest.mark.parametrize("mutate", LIST_MUTATORS)
def test_every_list_mutator_of_a_hit_raises_type_error(
    cache: ContextCache, where: str, mutate: Callable[[Any], Any]
) -> None:
    cache.set("conv-1", {"wrap": NESTED, "top": [[5, 4], 3]})
    value = settle(cache, lambda: cache.get("conv-1"))
    target = {"nested list": value["wrap"]["a"]["b"], "list in list": value["top"][0]}[where]
    assert type(target) is FrozenList
    with pytest.raises(TypeError, match=r"read-only.*thaw"):
        mutate(target)
    assert value == {"wrap": NESTED, "top": [[5, 4], 3]}


def _plain_types(value: Any) -> bool:
    if isinstance(value, dict):
        return type(value) is dict and all(_plain_types(item) for item in value.values())
    if isinstance(value, list):
        return type(value) is list and all(_plain_types(item) for item in value)
    return True


@pytest.mark.parametrize("copier", [thaw, copy.deepcopy, lambda v: pickle.loads(pickle.dumps(v))])
def test_thawed_copies_are_plain_and_mutable_and_changing_one_affects_no_other_reader(
    cache: ContextCache, copier: Callable[[Any], Any]
) -> None:
    cache.set("conv-1", NESTED)
    value = settle(cache, lambda: cache.get("conv-1"))
    mine = copier(value)
    assert mine == NESTED and _plain_types(mine)
    mine["a"]["b"][2]["c"] = "changed"
    mine["list"].append(0)
    mine["new"] = True
    assert cache.get("conv-1") == NESTED and value == NESTED  # the shared copy and other readers' view unchanged
    assert copier(cache.get("conv-1")) == NESTED


def test_a_hit_serializes_like_the_original(cache: ContextCache) -> None:
    cache.set("conv-1", CONTEXT)
    value = settle(cache, lambda: cache.get("conv-1"))
    assert orjson.loads(orjson.dumps(value)) == CONTEXT
    assert json.loads(json.dumps(value)) == CONTEXT
    assert json.dumps(value, sort_keys=True) == json.dumps(CONTEXT, sort_keys=True)
