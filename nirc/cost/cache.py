"""Persistent on-disk cache of oracle results: one small JSON file per key.

Why files and not a database: many processes (the oracle's pool, parallel
test runs, two shells) read and write at once. With one file per entry,
written to a temporary name and ``os.replace``-d into place, a reader sees
either no entry or a complete one, with no locking. An unreadable entry is a
miss, never an error: the cache can only make things faster.

Location (platformdirs' convention, without the dependency): ``$NIRC_CACHE_DIR``
if set, else ``$XDG_CACHE_HOME/nirc``, else ``~/.cache/nirc``; entries live in
its ``cost/`` subdirectory, sharded by the first two hex digits of the key.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

ENTRY_FORMAT = 1
_SUBDIR = "cost"


def cache_root() -> Path:
    """nirc's cache directory (may not exist yet)."""
    explicit = os.environ.get("NIRC_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "nirc"


def cost_dir(root: Path | None = None) -> Path:
    return (root if root is not None else cache_root()) / _SUBDIR


def entry_path(key: str, root: Path | None = None) -> Path:
    return cost_dir(root) / key[:2] / f"{key}.json"


def load(key: str, root: Path | None = None) -> dict[str, Any] | None:
    """The cached cost record for ``key``, or None (missing, corrupt or of another format)."""
    path = entry_path(key, root)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        logger.warning("ignoring unreadable cost cache entry %s (%s)", path, exc)
        return None
    if not isinstance(data, dict) or data.get("format") != ENTRY_FORMAT or data.get("key") != key:
        return None
    cost = data.get("cost")
    return cost if isinstance(cost, dict) else None


def store(key: str, cost: dict[str, Any], root: Path | None = None, *, label: str = "") -> None:
    """Write an entry atomically; a failure (read-only disk, ...) is logged, not raised."""
    path = entry_path(key, root)
    record = {"format": ENTRY_FORMAT, "key": key, "label": label, "cost": cost}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{key[:16]}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(record, f, separators=(",", ":"))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        logger.warning("cannot write cost cache entry %s (%s)", path, exc)


@dataclass(frozen=True)
class CacheInfo:
    """Where the cost cache is and how much it holds."""

    path: Path
    entries: int
    bytes: int


def cache_info(root: Path | None = None) -> CacheInfo:
    directory = cost_dir(root)
    entries = 0
    size = 0
    if directory.is_dir():
        for file in directory.glob("*/*.json"):
            try:
                size += file.stat().st_size
            except OSError:
                continue
            entries += 1
    return CacheInfo(path=directory, entries=entries, bytes=size)


def clear_cache(root: Path | None = None) -> int:
    """Delete every cost entry; returns how many there were. Other nirc caches are left alone."""
    directory = cost_dir(root)
    count = cache_info(root).entries
    if directory.is_dir():
        shutil.rmtree(directory, ignore_errors=True)
    return count
