"""Split a ReduceMean over one very long axis into two means Vela places on the NPU."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs
from nirc.passes._legalize import Emit
from nirc.passes._rewrite import Namer, detach, has_any_op, reduce_axes, static_shape

from nirc.ir import IRModel
from nirc.pass_base import Pass, PassContext

VELA_MAX_REDUCED_AXIS = 4095
"""Vela 5.2 refuses MEAN with "Reduced axis must be less than 4096" (checked on ethos-u65-256)."""


@dataclass(frozen=True)
class LegalizeReduceMeanPass(Pass):
    """Legalize a ``ReduceMean`` whose reduced elements lie on an axis longer than Vela accepts.

    PyTorch's GroupNorm on a token tensor (MobileViTv2's ``GroupNorm(1, C)`` over
    ``[B, C, P, N]``) exports as ``Reshape`` to ``[B, 1, C*P*N]`` then a mean over
    that one axis of, e.g., 65,536 elements; Vela sends such a MEAN to the CPU
    ("Reduced axis must be less than 4096"). Identity: with ``R = a * b`` reduced
    elements in row-major order, the mean of ``a`` equal-sized chunk means of
    ``b`` elements each is the mean of all ``R``, exact up to float rounding. The
    rewrite views ``x`` as ``[P, R, Q]`` (``P``/``Q`` the products of the axes before
    and after the contiguous reduced ones), takes the mean over ``b`` on
    ``[P*a, b, Q]``, then over ``a`` on ``[P, a, Q]``, and reshapes to the original
    result shape; Reshapes of these 3-D views move no data.

    Kept: means whose reduced axes all fit (most of them), reduced axes that are
    not contiguous, ``R`` with no factorisation into two parts that both fit,
    non-constant axes, non-float data, unknown shapes.
    """

    name = "legalize-reduce-mean"
    exact = True
    max_axis: int = VELA_MAX_REDUCED_AXIS

    def run(self, model: IRModel, ctx: PassContext) -> bool:
        graph = model.graph
        if not has_any_op(graph, ["ReduceMean"]):
            return False
        namer = Namer(graph)
        changed = False
        for node in list(graph.nodes):
            if node.op == "ReduceMean" and _rewrite(graph, node, namer, self.max_axis):
                ctx.count("reduce_mean_split")
                changed = True
        if changed:
            graph.cleanup()
        return changed



def split(count: int, limit: int) -> tuple[int, int] | None:
    """``(a, b)`` with ``a * b == count``, both at most ``limit``, ``b`` as large as possible."""
    for b in range(min(limit, count), 0, -1):
        if count % b == 0 and count // b <= limit:
            return count // b, b
    return None


def _rewrite(graph: gs.Graph, node: gs.Node, namer: Namer, limit: int) -> bool:
    x, out = node.inputs[0], node.outputs[0]
    shape, out_shape = static_shape(x), static_shape(out)
    if shape is None or out_shape is None or x.dtype is None or not np.issubdtype(np.dtype(x.dtype), np.floating):
        return False
    axes = reduce_axes(node, len(shape))
    if not axes or all(shape[a] <= limit for a in axes) or axes != list(range(axes[0], axes[-1] + 1)):
        return False
    outer = int(np.prod(shape[: axes[0]], dtype=np.int64))
    inner = int(np.prod(shape[axes[-1] + 1 :], dtype=np.int64))
    count = int(np.prod([shape[a] for a in axes], dtype=np.int64))
    parts = split(count, limit)
    if parts is None:
        return False
    a, b = parts
    emit = Emit(graph, namer, node.name, x.dtype)
    detach(node)
    view = [outer * a, b, inner]
    chunks = emit.node("Reshape", "chunks", [x, emit.ints("chunks_shape", view)], view)
    first = emit.node("ReduceMean", "chunk_mean", [chunks, emit.ints("axis", [1])], [outer * a, 1, inner],
                      {"keepdims": 1})  # fmt: skip
    means = emit.node("Reshape", "means", [first, emit.ints("means_shape", [outer, a, inner])], [outer, a, inner])
    second = emit.node("ReduceMean", "mean", [means, emit.ints("axis2", [1])], [outer, 1, inner], {"keepdims": 1})
    emit.node("Reshape", "result", [second, emit.ints("result_shape", out_shape)], out_shape, output=out)
    return True
