"""Gather with constant indices: a SLICE when the indices are one contiguous run, else GATHER.

Exporters emit ``Gather(x, 0|1|2, axis=0)`` to unpack a fused q/k/v projection
(``qkv[0], qkv[1], qkv[2]``): one scalar index, which selects a contiguous block.
``x.take(i, axis)`` equals ``x[..., i:i+1, ...]`` with that axis dropped, so a SLICE
(placed on the NPU) followed by a RESHAPE that drops the unit axis (no data moves)
is exact; a 1-D ascending run ``[i, i+1, ..., j]`` is the SLICE alone.  Any other
index set becomes TFLite's GATHER, which Vela leaves to the CPU on U55/U65 and the
report lists with Vela's reason.  Indices computed at run time are not supported.
"""

from __future__ import annotations

import numpy as np
import onnx

from nirc.errors import BackendError
from nirc.tflite.builder import BuiltinOperator as Op
from nirc.tflite.builder import Options
from nirc.tflite.context import Emitter, Value
from nirc.tflite.graph import GraphInfo, attr_int
from nirc.tflite.layout import stored_axis


def _indices(info: GraphInfo, node: onnx.NodeProto) -> np.ndarray | None:
    idx = info.const(node.input[1])
    if idx is None or not info.has_shape(node.input[0]):
        return None
    axis = attr_int(node, "axis", 0)
    dim = info.shape(node.input[0])[axis]
    arr = np.asarray(idx, np.int64)
    return np.where(arr < 0, arr + dim, arr)


def check_gather(info: GraphInfo, node: onnx.NodeProto) -> str | None:
    if not info.is_const(node.input[1]):
        return "indices computed at run time are not supported (only constant indices)"
    idx = _indices(info, node)
    if idx is None:
        return "input shape unknown"
    dim = info.shape(node.input[0])[attr_int(node, "axis", 0)]
    if idx.size and (idx.min() < 0 or idx.max() >= dim):
        return "an index is out of range"
    if idx.size == 0:
        return "empty indices"
    return None


def _run(idx: np.ndarray) -> tuple[int, int] | None:
    """(start, count) when the indices are a scalar or a 1-D ascending contiguous run."""
    flat = idx.reshape(-1)
    if idx.ndim > 1 or not np.array_equal(flat, np.arange(flat[0], flat[0] + flat.size)):
        return None
    return int(flat[0]), int(flat.size)


def lower_gather(em: Emitter, node: onnx.NodeProto) -> None:
    name = node.output[0]
    idx = _indices(em.info, node)
    if idx is None:
        raise BackendError(f"Gather '{node.name}': indices are not constant")
    x = em.requant(em.stored(node.input[0]), em.qparams(name), name)
    rank = len(x.onnx_shape)
    axis = attr_int(node, "axis", 0) % rank
    run = _run(idx)
    if run is None:
        _gather(em, node, x, idx, axis)
        return
    start, count = run
    pos = stored_axis(axis, x.perm)
    begin = [0] * rank
    size = list(x.stored_shape)
    begin[pos], size[pos] = start, count
    if idx.ndim == 1:
        y = em.define(name, perm=x.perm)
        em.op(Op.SLICE, [x.tensor, em.int_const(f"{name}/begin", begin), em.int_const(f"{name}/size", size)],
              [y.tensor])  # fmt: skip
        return
    sliced = em.new_tensor(f"{name}/slice", size, em.quant_of(x))
    em.op(Op.SLICE, [x.tensor, em.int_const(f"{name}/begin", begin), em.int_const(f"{name}/size", size)],
          [sliced])  # fmt: skip
    perm = tuple(p - (p > axis) for p in x.perm if p != axis)
    y = em.define(name, perm=perm)
    em.reshape(sliced, y.tensor)


def _gather(em: Emitter, node: onnx.NodeProto, x: Value, idx: np.ndarray, axis: int) -> None:
    """GATHER (a CPU op on U55/U65): out = x.take(idx, axis).

    1-D indices keep the rank, so the gather runs on the stored axis in place (no
    relayout of an NHWC map); multi-dimensional indices gather in ONNX order.
    """
    name = node.output[0]
    if idx.ndim != 1:
        x = em.value_of(x, tuple(range(len(x.onnx_shape))), name)
    pos = stored_axis(axis, x.perm)
    perm = x.perm if idx.ndim == 1 else tuple(range(len(em.shape(name))))
    y = em.define(name, perm=perm)
    indices = em.int_const(f"{name}/indices", idx.astype(np.int32))
    em.op(Op.GATHER, [x.tensor, indices], [y.tensor], Options("GatherOptions", (("Axis", pos),)))
