"""The cost oracle: what Vela says a (sub)graph costs on a target, cached by structure.

Why Vela itself rather than a formula: Vela's scheduler decides block
configurations, cascading, weight buffering and SRAM placement, and that is
what the deployed network gets. Compiling a block costs tens of milliseconds
to a second; the on-disk cache (:mod:`nirc.cost.cache`) makes the second query
of an equal block cost well under a millisecond, and :mod:`nirc.cost.analytical`
is there for loops that cannot afford even the first.

The model is emitted as int8 TFLite with synthetic calibration (seeded normal
inputs): cycles and traffic do not depend on activation values. Weights are
kept as given, because Vela's weight compression (hence weight traffic) does
depend on them.
"""

from __future__ import annotations

import csv
import functools
import logging
import tempfile
import time
from pathlib import Path

import onnx

from nirc import progress, timing
from nirc.cost import cache
from nirc.cost.signature import CALIBRATION_SAMPLES, CALIBRATION_SEED, signature, tensor_ids
from nirc.cost.types import Cost, LayerRow
from nirc.errors import BackendError, TargetError
from nirc.ir import IRModel
from nirc.target import Target
from nirc.targets.ethos_u.vela_driver import LayerPerf, VelaResult

logger = logging.getLogger(__name__)

ModelLike = onnx.ModelProto | IRModel


def as_proto(model: ModelLike) -> onnx.ModelProto:
    """The ModelProto of a model given either way (an IRModel is exported without the checker)."""
    if isinstance(model, IRModel):
        return model.to_proto(check=False)
    if isinstance(model, onnx.ModelProto):
        return model
    raise TypeError(f"expected an onnx.ModelProto or IRModel, got {type(model).__name__}")


def resolve_target(target: Target | str) -> Target:
    """A Target, looking a name up in the plugin registry (once per name and process)."""
    if isinstance(target, Target):
        return target
    if isinstance(target, str):
        return _target_named(target)
    raise TargetError(f"expected a Target or a target name, got {type(target).__name__}")


@functools.lru_cache(maxsize=64)
def _target_named(name: str) -> Target:
    # Loading the registry scans entry points (milliseconds): twenty times a cache hit.
    from nirc.plugin import load_registry

    return load_registry().get_target(name)


def estimate(
    model: ModelLike,
    target: Target | str,
    *,
    use_cache: bool = True,
    cache_root: Path | None = None,
    label: str = "",
) -> Cost:
    """Vela's cost of ``model`` on ``target``, from the cache when an equal model was costed before.

    Args:
        model: a whole model or a subgraph made standalone with :func:`~nirc.cost.subgraph.extract_subgraph`.
        target: a Target or a registered target name.
        use_cache: read and write the on-disk cache.
        cache_root: cache directory instead of the environment's (the pool passes its own).
        label: names the model in messages and in the cache entry.

    Raises:
        UnsupportedOperatorError: the emitter cannot lower an op.
        BackendError: emission or Vela failed.
    """
    proto = as_proto(model)
    resolved = resolve_target(target)
    key = signature(proto, resolved)
    if use_cache and (hit := cached(key, cache_root)) is not None:
        return hit
    cost = compile_cost(proto, resolved, label=label or proto.graph.name or "<model>")
    if use_cache:
        cache.store(key, cost.to_json(), cache_root, label=label or proto.graph.name)
    return cost


def cached(key: str, cache_root: Path | None = None) -> Cost | None:
    """The cached Cost for ``key``, or None; an entry that does not parse is a miss."""
    record = cache.load(key, cache_root)
    if record is None:
        timing.count("cost.cache_miss")
        return None
    try:
        hit = Cost.from_json(record)
    except (BackendError, KeyError, TypeError, ValueError) as exc:
        logger.warning("ignoring malformed cost cache entry %s (%s)", key, exc)
        timing.count("cost.cache_miss")
        return None
    timing.count("cost.cache_hit")
    return hit


def compile_cost(proto: onnx.ModelProto, target: Target, *, label: str = "<model>") -> Cost:
    """Emit int8 TFLite and compile it with Vela in-process; no cache involved."""
    from nirc.backend import emit, input_shapes
    from nirc.quant import load_calibration
    from nirc.targets.ethos_u.vela_driver import compile_with_vela

    progress.tick("Vela calls")
    start = time.perf_counter()
    with timing.timed("cost.emit"):
        canonical = IRModel.load(proto).to_proto(check=False)
        calib = load_calibration(None, input_shapes(canonical), count=CALIBRATION_SAMPLES, seed=CALIBRATION_SEED)
        emitted = emit(canonical, dtype="int8", calib=calib, method="minmax", label=label)
    emitted_at = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="nirc-cost-") as tmp:
        path = Path(tmp) / "model.tflite"
        path.write_bytes(emitted.tflite.data)
        try:
            with timing.timed("vela"):
                result = compile_with_vela(path, target, Path(tmp) / "vela")
        except BackendError as exc:
            raise BackendError(f"{label}: {exc}") from None
        traffic = _summary_traffic(result.summary_csv)
    seconds = (emitted_at - start, time.perf_counter() - emitted_at)
    timing.oracle_call(timing.OracleCall(label, len(proto.graph.node), *seconds))
    return _to_cost(result, traffic, _layer_rows(result.layers, tensor_ids(proto)))


def _summary_traffic(summary_csv: Path) -> dict[str, int]:
    """SRAM/DRAM byte totals, which the driver's VelaResult does not carry."""
    with summary_csv.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if len(rows) != 1:
        raise BackendError(f"{summary_csv}: expected one summary row, got {len(rows)}")
    out: dict[str, int] = {}
    for column in ("sram_total_bytes", "dram_total_bytes"):
        try:
            out[column] = round(float(rows[0][column]))
        except (KeyError, ValueError):
            raise BackendError(f"{summary_csv}: Vela summary has no numeric {column!r}") from None
    return out


def match_tensor(name: str, known: dict[str, int]) -> int:
    """The number of the ONNX tensor a TFLite/Vela op name refers to, -1 if none.

    The emitter names each op's output after the ONNX tensor it computes and
    helper tensors ``<onnx name>/<role>`` (``x/pad``, ``x/group0_out``); Vela adds
    suffixes of its own (``x_intermediate``). ONNX names may contain ``/``
    themselves (PyTorch exports), so the longest known prefix that ends at a
    separator wins.
    """
    if name in known:
        return known[name]
    for end in range(len(name) - 1, 0, -1):
        if name[end] in "/_:" and name[:end] in known:
            return known[name[:end]]
    return -1


def _layer_rows(layers: tuple[LayerPerf, ...], ids: dict[str, int]) -> tuple[LayerRow, ...]:
    """NPU rows numbered against the caller's model: canonicalization keeps tensor names, not
    necessarily the node order, so rows are matched by name and stored by the caller's numbers.
    A tensor only canonicalization created (opset conversion) matches nothing and gets -1."""
    return tuple(
        LayerRow(match_tensor(layer.name, ids), layer.vela_op, layer.op_cycles, layer.mac_count)
        for layer in layers
        if layer.target == "NPU"
    )


def _to_cost(result: VelaResult, traffic: dict[str, int], rows: tuple[LayerRow, ...]) -> Cost:
    return Cost(
        cycles=result.cycles_total,
        npu_cycles=result.cycles_npu,
        clock_hz=result.core_clock_hz,
        macs=result.nn_macs,
        sram_used_bytes=round(result.sram_used_kib * 1024),
        dram_used_bytes=round(result.dram_used_kib * 1024),
        sram_traffic_bytes=traffic["sram_total_bytes"],
        dram_traffic_bytes=traffic["dram_total_bytes"],
        dram_fm_read_bytes=result.dram_feature_map_read_bytes,
        dram_fm_write_bytes=result.dram_feature_map_write_bytes,
        dram_weight_bytes=result.dram_weight_bytes,
        weight_bytes=result.original_weight_bytes,
        encoded_weight_bytes=result.encoded_weight_bytes,
        npu_ops=result.npu_ops,
        cpu_ops=result.cpu_ops,
        layers=rows,
        vela_version=result.vela_version,
    )
