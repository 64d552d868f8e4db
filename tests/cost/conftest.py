"""Every cost test gets its own cache directory, so no test sees another's (or the user's) entries."""

from __future__ import annotations

from pathlib import Path

import pytest

from nirc.cost.oracle import resolve_target
from nirc.target import Target


@pytest.fixture(autouse=True)
def cost_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "nirc-cache"
    monkeypatch.setenv("NIRC_CACHE_DIR", str(directory))
    return directory


@pytest.fixture(scope="session")
def u65() -> Target:
    return resolve_target("ethos-u65-256")
