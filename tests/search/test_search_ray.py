"""Ray and the serial path agree: a local Ray cluster of 2 workers compiles the same candidates to the same rows.

Skipped without Ray (the optional ``search`` extra). Kept to three small candidates: Ray's start-up
dominates the run time on a 2-core machine.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from nirc.cost.cache import cache_info
from nirc.search import Budget, search

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'nirc[search]')")

SPACE = {"target": "ethos-u65", "input_size": 64, "families": ["mobilenetv2", "resnet"],
         "variants": ["w0.35", "w0.5", "d10-w0.5"], "resolutions": [64], "classes": 10,
         "budget": Budget(latency_ms=10.0)}  # fmt: skip


@pytest.fixture(scope="module")
def local_cluster() -> Iterator[None]:
    """A local Ray instance with 2 worker CPUs, shared by the tests of this module."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_ray_equals_serial_and_shares_the_cache(local_cluster: None, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setenv("NIRC_CACHE_DIR", str(tmp_path / "serial"))
    serial = search(executor="serial", **SPACE)  # type: ignore[arg-type]
    monkeypatch.setenv("NIRC_CACHE_DIR", str(tmp_path / "ray"))
    distributed = search(executor="ray", jobs=2, **SPACE)  # type: ignore[arg-type]
    assert distributed.rows == serial.rows
    assert len(distributed.rows) == 3 and all(r.latency_ms for r in distributed.rows)
    # the workers wrote the driver's cache directory: a serial rerun compiles nothing
    entries = cache_info(tmp_path / "ray").entries
    assert entries >= 3
    again = search(executor="serial", **SPACE)  # type: ignore[arg-type]
    assert again.rows == serial.rows and cache_info(tmp_path / "ray").entries == entries


def test_cluster_results_are_merged_into_the_drivers_cache(local_cluster: None, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """With an address, workers keep their own caches and the driver stores what they return."""
    monkeypatch.setenv("NIRC_CACHE_DIR", str(tmp_path / "driver"))
    space = {**SPACE, "variants": ["d10-w0.5"]}
    result = search(executor="ray", ray_address="auto", **space)  # type: ignore[arg-type]
    assert result.rows[0].latency_ms
    assert cache_info(tmp_path / "driver").entries >= 1
    assert os.environ["NIRC_CACHE_DIR"] == str(tmp_path / "driver")
