"""Every search test gets its own cost cache, so what one compiles another cannot silently reuse."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def cost_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "nirc-cache"
    monkeypatch.setenv("NIRC_CACHE_DIR", str(directory))
    return directory
