"""``@pytest.mark.store_options(**kwargs)``: the options a test's store fixtures build their stores with."""

from __future__ import annotations

from typing import Any

import pytest


def store_options(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The keyword arguments of the closest ``store_options`` marker (``{}`` without one)."""
    marker = request.node.get_closest_marker("store_options")
    return dict(marker.kwargs) if marker is not None else {}
