"""Cost many candidates at once: cache first, then a process pool for the misses.

Why processes: Vela holds module-level state and the driver serialises it
behind a lock (it also redirects the process's stdout/stderr file
descriptors), so threads would run one compilation at a time. Workers start
with 'forkserver' (or 'spawn' where that is unavailable), never 'fork': forking
a process that has ONNX Runtime threads or a held Vela lock can deadlock.

Results are deterministic and in input order: every step (canonicalization,
seeded calibration, emission, Vela) is deterministic, and the pool's ``map``
preserves order. Equal candidates (same cache key) are compiled once.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import onnx

from nirc.cost import cache
from nirc.cost.oracle import ModelLike, as_proto, cached, estimate, resolve_target
from nirc.cost.signature import signature
from nirc.cost.types import Cost
from nirc.target import Target

logger = logging.getLogger(__name__)


def _context() -> multiprocessing.context.BaseContext:
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def _worker(data: bytes, target: Target, use_cache: bool, cache_root: str, label: str) -> Cost:
    """Runs in a pool process; the cache directory is passed in, since a forkserver
    started earlier would otherwise see a stale ``NIRC_CACHE_DIR``."""
    proto = onnx.ModelProto()
    proto.ParseFromString(data)
    return estimate(proto, target, use_cache=use_cache, cache_root=Path(cache_root), label=label)


def evaluate_many(
    candidates: Sequence[ModelLike],
    target: Target | str,
    *,
    jobs: int = 1,
    use_cache: bool = True,
    labels: Sequence[str] | None = None,
) -> list[Cost]:
    """Oracle costs of ``candidates`` on ``target``, in input order.

    Args:
        candidates: models or standalone subgraphs.
        target: a Target or a registered target name.
        jobs: worker processes; 1 compiles in this process.
        use_cache: read and write the on-disk cache.
        labels: names for messages and cache entries, one per candidate.

    Raises:
        the first failure in input order (UnsupportedOperatorError, BackendError, ...).

    With ``jobs > 1`` the workers are started with 'forkserver'/'spawn', which
    re-import the calling script: like any multiprocessing code, a script must
    call this under ``if __name__ == "__main__":``.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    resolved = resolve_target(target)
    protos = [as_proto(c) for c in candidates]
    names = list(labels) if labels is not None else [p.graph.name or f"candidate {i}" for i, p in enumerate(protos)]
    if len(names) != len(protos):
        raise ValueError(f"{len(names)} labels for {len(protos)} candidates")
    root = cache.cache_root()
    keys = [signature(p, resolved) for p in protos]
    results: dict[str, Cost] = {}
    if use_cache:
        for key in keys:
            if key not in results and (hit := cached(key, root)) is not None:
                results[key] = hit
    todo: dict[str, int] = {}
    for index, key in enumerate(keys):
        if key not in results and key not in todo:
            todo[key] = index
    logger.info("evaluate_many: %d candidates, %d cached, %d to compile", len(keys), len(results), len(todo))
    if jobs == 1 or len(todo) <= 1:
        for key, index in todo.items():
            results[key] = estimate(protos[index], resolved, use_cache=use_cache, cache_root=root, label=names[index])
    else:
        order = list(todo.values())
        with ProcessPoolExecutor(max_workers=min(jobs, len(order)), mp_context=_context()) as pool:
            costs = pool.map(
                _worker,
                [protos[i].SerializeToString() for i in order],
                [resolved] * len(order),
                [use_cache] * len(order),
                [str(root)] * len(order),
                [names[i] for i in order],
            )
            for index, cost in zip(order, costs, strict=True):
                results[keys[index]] = cost
    return [results[key] for key in keys]
