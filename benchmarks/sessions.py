"""Session documents the benchmarks share: the design document's session, and a ~50 KB conversation context."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

# The design document's session shape. created_at is an hour before the run (in the document's "Z" form), so that a
# store built with a lifetime cap (max_lifetime: off by default, typically 86,400 s) keeps it too. last_activity is
# the document's: every set() replaces it with the time of the write (set(..., stamp=False) keeps it).
SEED_SESSION: dict[str, Any] = {
    "user_id": "user_123",
    "created_at": (datetime.now(timezone.utc) - timedelta(hours=1)).isoformat(timespec="milliseconds")[:-6] + "Z",
    "last_activity": "2025-01-15T10:35:22.456Z",
    "investigation_id": "inv_789",
    "context": {
        "current_phase": "analysis",
        "uploaded_files": ["log1.txt", "metrics.json"],
        "preferences": {"detail_level": "verbose", "auto_execute": False},
    },
}


def conversation_context(target_bytes: int = 50_000) -> dict[str, Any]:
    """A session carrying a conversation history (text, numbers, flags), about ``target_bytes`` as JSON."""
    messages = []
    i = 0
    while sum(len(m["content"]) + 160 for m in messages) < target_bytes:
        messages.append(
            {
                "id": f"msg_{i:05d}",
                "role": "user" if i % 2 else "assistant",
                "content": f"Step {i}: checked the pod logs for service-{i % 7}; error rate {i * 0.37:.2f}% "
                "after the deploy, correlating with connection resets on the cache tier. ",
                "timestamp": f"2025-01-15T10:{i % 60:02d}:{(i * 7) % 60:02d}.000Z",
                "tokens": 40 + i % 90,
                "confidence": round(0.5 + (i % 50) / 100, 2),
                "tool_calls": [{"name": "query_logs", "ok": i % 3 != 0}],
            }
        )
        i += 1
    return {**SEED_SESSION, "conversation": messages}


def written_by_set(found: dict[str, Any] | None, sent: dict[str, Any]) -> bool:
    """Whether ``found`` is ``sent`` as a store's set() wrote it: the same document but for last_activity, which the
    store stamped with the time of the write."""
    if found is None or found.get("last_activity") in (None, sent.get("last_activity")):
        return False
    return {**found, "last_activity": None} == {**sent, "last_activity": None}
