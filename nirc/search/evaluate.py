"""Cost a candidate as nirc would compile it, cached; and fan many out serially, on a process pool or on Ray.

One function, :func:`evaluate_one`, does the work everywhere (in this process,
in a pool process, in a Ray task), so the three paths cannot disagree: the
candidate is lowered by the target's pipeline, emitted as int8 TFLite and
compiled by Vela (:func:`nirc.cost.estimate`), all deterministic. Results are
cached under a key of (candidate structure and weights, target, pipeline), so a
repeated search costs nothing, and any executor can fill the cache of another.

Pipelines: ``full`` is ``nirc optimize``'s default pipeline. ``fast`` (the
search default) skips the passes that run Vela in their own loop over the
model (``schedule-memory``, ``tile-activations``): they take minutes on a
ResNet-50 and change a candidate's ranking far less than its architecture
does, so the search ranks with ``fast`` and ``nirc optimize`` then compiles
the chosen model with everything.

Ray: tasks through Ray's ordinary API (``ray.remote`` + ``ray.get``). On a
local Ray instance the workers share the driver's on-disk cache directory; on
a cluster (``address``) each node keeps its own and the driver merges every
result into its cache, so the next search on the driver hits.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import onnx

from nirc.cost import cache
from nirc.cost.oracle import cached, estimate, resolve_target
from nirc.cost.signature import signature
from nirc.cost.types import Cost
from nirc.errors import NircError
from nirc.target import Target

logger = logging.getLogger(__name__)

Pipeline = Literal["fast", "full"]
Executor = Literal["serial", "pool", "ray"]
VELA_LOOP_PASSES = ("schedule-memory", "tile-activations")
"""Passes that compile with Vela inside their own search: skipped by the ``fast`` pipeline."""


@dataclass(frozen=True)
class Outcome:
    """A candidate's cost, or why it could not be costed (the search goes on without it)."""

    cost: Cost | None
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"cost": None if self.cost is None else self.cost.to_json(), "error": self.error}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Outcome:
        cost = data.get("cost")
        return cls(None if cost is None else Cost.from_json(cost), str(data.get("error", "")))


def search_key(proto: onnx.ModelProto, target: Target, pipeline: Pipeline) -> str:
    """Cache key of a candidate before lowering: the oracle's key plus the pipeline that lowers it."""
    return hashlib.sha256(f"search/{pipeline}/{signature(proto, target)}".encode()).hexdigest()


def evaluate_one(data: bytes, target: Target, pipeline: Pipeline, cache_root: str | None, label: str) -> Outcome:
    """Lower, emit and compile one serialized candidate; the unit of work of every executor.

    ``cache_root`` None uses this process's default cache (a Ray node of a cluster).
    A NircError (an op the emitter cannot lower, a Vela failure) becomes the outcome's error.
    """
    from nirc.ir import IRModel
    from nirc.lowering import run_passes, select_passes
    from nirc.plugin import load_registry

    root = Path(cache_root) if cache_root is not None else None
    proto = onnx.ModelProto()
    proto.ParseFromString(data)
    key = search_key(proto, target, pipeline)
    if (hit := cached(key, root)) is not None:
        return Outcome(hit)
    try:
        registry = load_registry()
        skip = VELA_LOOP_PASSES if pipeline == "fast" else ()
        passes = select_passes(registry, target, skip=[s for s in skip if s in registry.pipeline(target).names])
        model = IRModel.load(proto)
        run_passes(model, target, passes)
        cost = estimate(model.to_proto(check=False), target, cache_root=root, label=label)
    except NircError as exc:
        logger.warning("%s: %s", label, exc)
        return Outcome(None, str(exc))
    cache.store(key, cost.to_json(), root, label=label)
    return Outcome(cost)


def _evaluate_serialized(data: bytes, target: Target, pipeline: Pipeline, cache_root: str | None,
                         label: str) -> dict[str, Any]:  # fmt: skip
    """:func:`evaluate_one` with a JSON-shaped result: what crosses process and node boundaries."""
    return evaluate_one(data, target, pipeline, cache_root, label).to_json()


def evaluate_all(
    models: Sequence[onnx.ModelProto],
    labels: Sequence[str],
    target: Target | str,
    *,
    pipeline: Pipeline = "fast",
    executor: Executor = "serial",
    jobs: int = 2,
    ray_address: str | None = None,
) -> list[Outcome]:
    """Outcomes of ``models`` in input order; cache hits are answered here, misses by the executor.

    Args:
        models: candidates (any ONNX models with static shapes).
        labels: one name per model, for messages and cache entries.
        target: a Target or a registered target name.
        pipeline: ``fast`` or ``full`` (see the module docstring).
        executor: ``serial`` (this process), ``pool`` (``jobs`` forkserver processes, as
            :func:`nirc.cost.evaluate_many`) or ``ray`` (``jobs`` CPUs of a local Ray instance,
            or the cluster at ``ray_address``).
    """
    if len(labels) != len(models):
        raise ValueError(f"{len(labels)} labels for {len(models)} models")
    if jobs < 1:
        raise NircError(f"--jobs must be at least 1, got {jobs}")
    resolved = resolve_target(target)
    root = cache.cache_root()
    keys = [search_key(m, resolved, pipeline) for m in models]
    results: dict[str, Outcome] = {}
    for key in keys:
        if key not in results and (hit := cached(key, root)) is not None:
            results[key] = Outcome(hit)
    todo: dict[str, int] = {}
    for index, key in enumerate(keys):
        if key not in results and key not in todo:
            todo[key] = index
    logger.info("search: %d candidates, %d cached, %d to compile (%s)", len(keys), len(results), len(todo), executor)
    order = list(todo.values())
    payload = [models[i].SerializeToString() for i in order]
    names = [labels[i] for i in order]
    if executor == "ray":
        outcomes = _run_ray(payload, names, resolved, pipeline, root, jobs, ray_address)
    elif executor == "pool" and len(order) > 1:
        outcomes = _run_pool(payload, names, resolved, pipeline, root, jobs)
    elif executor in ("serial", "pool"):
        outcomes = [evaluate_one(d, resolved, pipeline, str(root), n) for d, n in zip(payload, names, strict=True)]
    else:
        raise NircError(f"unknown executor {executor!r}; choose serial, pool or ray")
    for index, outcome in zip(order, outcomes, strict=True):
        results[keys[index]] = outcome
    return [results[key] for key in keys]


def _run_pool(payload: list[bytes], names: list[str], target: Target, pipeline: Pipeline, root: Path,
              jobs: int) -> list[Outcome]:  # fmt: skip
    """A forkserver pool, never fork: ONNX Runtime threads or a held Vela lock would deadlock a fork."""
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    count = len(payload)
    with ProcessPoolExecutor(max_workers=min(jobs, count), mp_context=context) as pool:
        records = pool.map(_evaluate_serialized, payload, [target] * count, [pipeline] * count,
                           [str(root)] * count, names)  # fmt: skip
        return [Outcome.from_json(r) for r in records]


def _run_ray(payload: list[bytes], names: list[str], target: Target, pipeline: Pipeline, root: Path, jobs: int,
             address: str | None) -> list[Outcome]:  # fmt: skip
    """One Ray task per candidate; a local instance of ``jobs`` CPUs unless ``address`` names a cluster."""
    try:
        import ray
    except ImportError:
        raise NircError("the ray executor needs Ray: pip install 'nirc[search]'") from None
    if not payload:
        return []
    started = not ray.is_initialized()
    if started:
        if address is None:
            ray.init(num_cpus=jobs, include_dashboard=False, log_to_driver=False, configure_logging=False)
        else:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
    try:
        # A cluster node's disk is not the driver's: there each worker keeps its own cache (None).
        worker_root = str(root) if address is None else None
        task = ray.remote(num_cpus=1)(_evaluate_serialized)
        target_ref = ray.put(target)
        refs = [task.remote(d, target_ref, pipeline, worker_root, n) for d, n in zip(payload, names, strict=True)]
        outcomes = [Outcome.from_json(r) for r in ray.get(refs)]
    finally:
        if started:
            ray.shutdown()
    if address is not None:  # merge the cluster's answers into the driver's cache
        for data, name, outcome in zip(payload, names, outcomes, strict=True):
            if outcome.cost is not None:
                proto = onnx.ModelProto()
                proto.ParseFromString(data)
                cache.store(search_key(proto, target, pipeline), outcome.cost.to_json(), root, label=name)
    return outcomes
