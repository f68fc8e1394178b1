"""orjson (fmredis) against stdlib json: encode + decode of the seed session and of a ~50 KB conversation context."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from benchmarks.sessions import SEED_SESSION, conversation_context

DOCUMENTS = {"seed-session": SEED_SESSION, "conversation-50KB": conversation_context()}


def stdlib_round_trip(document: dict[str, Any]) -> Any:
    return json.loads(json.dumps(document))


def orjson_round_trip(document: dict[str, Any]) -> Any:
    return orjson.loads(orjson.dumps(document))


@pytest.mark.parametrize("name", DOCUMENTS)
@pytest.mark.parametrize(
    ("role", "round_trip"), [("baseline", stdlib_round_trip), ("candidate", orjson_round_trip)], ids=["json", "orjson"]
)
def test_encode_decode(benchmark: Any, name: str, role: str, round_trip: Any) -> None:
    benchmark.group, benchmark.extra_info["role"] = f"json {name}", role
    assert benchmark(round_trip, DOCUMENTS[name]) == DOCUMENTS[name]
