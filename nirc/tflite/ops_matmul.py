"""Activation x activation MatMul (attention's Q.K^T and A.V) -> BATCH_MATMUL.

A MatMul whose B is a constant is a layer with weights and becomes FULLY_CONNECTED
(:mod:`~nirc.tflite.ops_fc`).  When B is computed, there is no weight to encode and
TFLite's BATCH_MATMUL is the op Vela 5.2 places on U55/U65 (int8 inputs, reduced
axis and output depth up to 2^16); it multiplies the last two axes of each operand
and broadcasts the leading (batch) axes.

Layout: exporters spell the head split as Reshape -> Transpose and ``K^T`` as a
Transpose of the last two axes.  nirc's Transpose only relabels how a tensor is
stored (:mod:`~nirc.tflite.ops_shape`), so an operand whose stored order is the
ONNX order with the last two axes swapped is passed as is with ``adj_x``/``adj_y``
set: BATCH_MATMUL transposes it while reading, exactly, and no TRANSPOSE is
emitted.  Any other stored order gets the one relayout that the emitter picks
(a RESHAPE when no data moves).

int8: both operands and the output are per-tensor int8 with their calibrated
parameters; the kernel accumulates in int32 and rescales once, as TFLite's
reference kernel and Vela's MATMUL both do.  BATCH_MATMUL has no fused activation,
so such a MatMul never absorbs a following Relu.
"""

from __future__ import annotations

import numpy as np
import onnx

from nirc.tflite.builder import BuiltinOperator as Op
from nirc.tflite.builder import Options
from nirc.tflite.context import Emitter, Value
from nirc.tflite.graph import GraphInfo
from nirc.tflite.layout import compose, invert, is_memory_noop

#: TFLite's BATCH_MATMUL kernels take operands up to rank 5.
MAX_RANK = 5


def is_batch_matmul(info: GraphInfo, node: onnx.NodeProto) -> bool:
    """Whether a MatMul multiplies two activations (B not a constant): a BATCH_MATMUL."""
    return node.op_type == "MatMul" and not info.is_const(node.input[1])


def check_batch_matmul(info: GraphInfo, node: onnx.NodeProto) -> str | None:
    if not all(info.has_shape(n) for n in (*node.input[:2], node.output[0])):
        return "operand shapes unknown"
    a, b = info.shape(node.input[0]), info.shape(node.input[1])
    if len(a) < 2 or len(b) < 2:
        return "a 1-D operand of an activation x activation MatMul is not supported"
    out = info.shape(node.output[0])
    if len(out) > MAX_RANK and (a[:-2] != b[:-2]):
        return f"rank {len(out)} with broadcast batch axes (BATCH_MATMUL takes rank <= {MAX_RANK})"
    return None


def _stored(em: Emitter, name: str) -> Value:
    """The operand as already stored (any layout), or a constant in ONNX order."""
    v = em.values.get(name)
    if v is not None and v.col_order is None:
        return v
    return em.value(name, tuple(range(len(em.shape(name)))))


def _operand(em: Emitter, name: str, label: str) -> tuple[Value, bool]:
    """The operand in a layout BATCH_MATMUL reads, and whether it is read transposed (adj)."""
    v = _stored(em, name)
    rank = len(v.onnx_shape)
    batch = tuple(range(rank - 2))
    plain = (*batch, rank - 2, rank - 1)
    swapped = (*batch, rank - 1, rank - 2)
    if v.perm == plain:
        return v, False
    if v.perm == swapped:
        return v, True
    # A relayout is needed; prefer one that moves no data, then one that keeps the
    # innermost stored axis innermost (the cheaper transposes on Ethos-U).
    for want, adj in ((plain, False), (swapped, True)):
        if is_memory_noop(v.stored_shape, compose(invert(v.perm), want)):
            return em.value_of(v, want, label), adj
    for want, adj in ((plain, False), (swapped, True)):
        if compose(invert(v.perm), want)[-1] == rank - 1:
            return em.value_of(v, want, label), adj
    return em.value_of(v, plain, label), False


def _to_rank(em: Emitter, v: Value, rank: int, label: str) -> Value:
    """Prepend unit batch axes (a RESHAPE of the stored tensor, which moves no data)."""
    extra = rank - len(v.onnx_shape)
    if extra <= 0:
        return v
    shape = (1,) * extra + v.onnx_shape
    perm = (*range(extra), *(p + extra for p in v.perm))
    out = em.new_tensor(f"{label}/rank{rank}", (1,) * extra + v.stored_shape, em.quant_of(v))
    em.reshape(v.tensor, out)
    return Value(out, perm, shape)


def _collapse(em: Emitter, v: Value, label: str) -> Value:
    """[b1, ..., bk, M, K] stored batch-first -> [b1*...*bk, M, K] (a RESHAPE)."""
    stored = v.stored_shape
    shape3 = (int(np.prod(stored[:-2])), *stored[-2:])
    out = em.new_tensor(f"{label}/batch", shape3, em.quant_of(v))
    em.reshape(v.tensor, out)
    onnx3 = (shape3[0], *(v.onnx_shape[p] for p in v.perm[-2:]))
    perm3 = (0, 1, 2) if v.perm[-1] == len(v.perm) - 1 else (0, 2, 1)
    return Value(out, perm3, onnx3 if perm3 == (0, 1, 2) else (onnx3[0], onnx3[2], onnx3[1]))


def lower_batch_matmul(em: Emitter, node: onnx.NodeProto) -> None:
    name = node.output[0]
    out_shape = em.shape(name)
    rank = len(out_shape)
    a, adj_x = _operand(em, node.input[0], f"{name}/a")
    b, adj_y = _operand(em, node.input[1], f"{name}/b")
    a, b = _to_rank(em, a, rank, f"{name}/a"), _to_rank(em, b, rank, f"{name}/b")
    opts = Options("BatchMatMulOptions", (("AdjX", adj_x), ("AdjY", adj_y)))
    if rank > MAX_RANK:  # equal batch axes (check_batch_matmul): fold them into one
        a, b = _collapse(em, a, f"{name}/a"), _collapse(em, b, f"{name}/b")
        flat = (a.stored_shape[0], out_shape[-2], out_shape[-1])
        mid = em.new_tensor(f"{name}/bmm", flat, em.qparams(name))
        em.op(Op.BATCH_MATMUL, [a.tensor, b.tensor], [mid], opts)
        y = em.define(name, perm=tuple(range(rank)))
        em.reshape(mid, y.tensor)
        return
    y = em.define(name, perm=tuple(range(rank)))
    em.op(Op.BATCH_MATMUL, [a.tensor, b.tensor], [y.tensor], opts)
