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

from dataclasses import dataclass

import numpy as np
import onnx

from nirc.errors import BackendError
from nirc.tflite.builder import BuiltinOperator as Op
from nirc.tflite.builder import Options
from nirc.tflite.context import Emitter, Value
from nirc.tflite.graph import GraphInfo, attr_str
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


def _operand(em: Emitter, v: Value, label: str) -> tuple[Value, bool]:
    """The operand in a layout BATCH_MATMUL reads, and whether it is read transposed (adj)."""
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
    a, b = em.stored(node.input[0]), em.stored(node.input[1])
    em.alias(name, emit_batch_matmul(em, a, b, name, em.shape(name)))


def emit_batch_matmul(em: Emitter, a: Value, b: Value, name: str, out_shape: tuple[int, ...]) -> Value:
    """BATCH_MATMUL of ``a`` [..., M, K] and ``b`` [..., K, N] (any stored layout) -> ``name``, ONNX order."""
    rank = len(out_shape)
    a, adj_x = _operand(em, a, f"{name}/a")
    b, adj_y = _operand(em, b, f"{name}/b")
    a, b = _to_rank(em, a, rank, f"{name}/a"), _to_rank(em, b, rank, f"{name}/b")
    opts = Options("BatchMatMulOptions", (("AdjX", adj_x), ("AdjY", adj_y)))
    y = em.define(name, perm=tuple(range(rank)), shape=out_shape)
    if rank > MAX_RANK:  # equal batch axes (check_batch_matmul): fold them into one
        a, b = _collapse(em, a, f"{name}/a"), _collapse(em, b, f"{name}/b")
        flat = (a.stored_shape[0], out_shape[-2], out_shape[-1])
        mid = em.new_tensor(f"{name}/bmm", flat, em.qparams(name))
        em.op(Op.BATCH_MATMUL, [a.tensor, b.tensor], [mid], opts)
        em.reshape(mid, y.tensor)
        return y
    em.op(Op.BATCH_MATMUL, [a.tensor, b.tensor], [y.tensor], opts)
    return y


# --------------------------------------------------------------------------- Einsum


@dataclass(frozen=True)
class EinsumPlan:
    """An Einsum that is one (batched) matrix product, or a pure transpose.

    ``a_order``/``b_order`` list each operand's letters in the order BATCH_MATMUL reads
    them (batch..., M, K) and (batch..., K, N); ``out_order`` is (batch..., M, N).
    """

    inputs: tuple[str, ...]
    output: str
    a_order: str = ""
    b_order: str = ""
    out_order: str = ""


def einsum_plan(info: GraphInfo, node: onnx.NodeProto) -> EinsumPlan | str:
    """The plan, or why the equation is not a matrix product nirc lowers."""
    eq = attr_str(node, "equation", "").replace(" ", "")
    if "->" not in eq:
        return "implicit-output equations are not supported (write the '->' output)"
    lhs, out = eq.split("->")
    ins = tuple(lhs.split(","))
    if "." in eq:
        return "ellipsis ('...') equations are not supported"
    if any(len(set(t)) != len(t) for t in (*ins, out)):
        return "a repeated index (trace or diagonal) is not supported"
    if len(ins) != len(node.input) or not all(info.has_shape(n) for n in node.input):
        return "operand count or shapes do not match the equation"
    if len(ins) == 1:
        if sorted(ins[0]) != sorted(out):
            return "a one-operand Einsum that reduces is not supported (only transposes)"
        return EinsumPlan(ins, out)
    if len(ins) != 2:
        return "only one- or two-operand equations are supported"
    a, b = ins
    batch = [c for c in out if c in a and c in b]
    m = [c for c in a if c not in b and c in out]
    n = [c for c in b if c not in a and c in out]
    k = [c for c in a if c in b and c not in out]
    if any(c not in a and c not in b for c in out) or any(c not in out and c not in k for c in a + b):
        return "an index summed over one operand only is not supported"
    if len(m) != 1 or len(n) != 1 or len(k) != 1:
        return "only equations with one row, one column and one contracted index map to BATCH_MATMUL"
    sa, sb = info.shape(node.input[0]), info.shape(node.input[1])
    if any(sa[a.index(c)] != sb[b.index(c)] for c in (*batch, *k)):
        return "shared indices have different sizes (broadcasting is not supported)"
    prefix = "".join(batch)
    return EinsumPlan(ins, out, prefix + m[0] + k[0], prefix + k[0] + n[0], prefix + m[0] + n[0])


def einsum_ties(info: GraphInfo, node: onnx.NodeProto) -> list[str]:
    """A one-operand Einsum is a transpose: its output is its input's tensor."""
    return [node.input[0], node.output[0]] if len(node.input) == 1 else []


def check_einsum(info: GraphInfo, node: onnx.NodeProto) -> str | None:
    plan = einsum_plan(info, node)
    return plan if isinstance(plan, str) else None


def _relabel(v: Value, letters: str, order: str) -> Value:
    """``v`` (axes named by ``letters``) seen with its axes in ``order``: a relabelling, no op."""
    p = tuple(letters.index(c) for c in order)
    return Value(v.tensor, compose(invert(p), v.perm), tuple(v.onnx_shape[i] for i in p))


def lower_einsum(em: Emitter, node: onnx.NodeProto) -> None:
    """Einsum as a relabelling of each operand's axes around one BATCH_MATMUL.

    ``einsum("bhqd,bhkd->bhqk", q, k)`` is ``q @ k.transpose(0, 1, 3, 2)``: the operands are
    relabelled (like ONNX Transpose, free), so a K^T again becomes ``adj_y``.
    """
    plan = einsum_plan(em.info, node)
    if isinstance(plan, str):
        raise BackendError(f"Einsum '{node.name}': {plan}")
    name = node.output[0]
    first = em.stored(node.input[0])
    if len(plan.inputs) == 1:
        em.alias(name, _relabel(first, plan.inputs[0], plan.output))
        return
    a = _relabel(first, plan.inputs[0], plan.a_order)
    b = _relabel(em.stored(node.input[1]), plan.inputs[1], plan.b_order)
    out_shape = em.shape(name)
    bmn_shape = tuple(out_shape[plan.output.index(c)] for c in plan.out_order)
    y = emit_batch_matmul(em, a, b, name, bmn_shape)
    em.alias(name, _relabel(y, plan.out_order, plan.output))
