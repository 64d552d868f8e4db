"""Test-session settings shared by every test directory."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True, scope="session")
def _private_cost_cache() -> Iterator[None]:
    """Keep the cost oracle's on-disk cache out of the user's home during tests."""
    previous = os.environ.get("NIRC_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="nirc-test-cache-") as cache:
        os.environ["NIRC_CACHE_DIR"] = cache
        yield
    if previous is None:
        os.environ.pop("NIRC_CACHE_DIR", None)
    else:
        os.environ["NIRC_CACHE_DIR"] = previous
