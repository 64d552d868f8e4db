"""Rewrite ReduceSum as a ReduceMean times the number of summed elements, which the NPU runs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs
from nirc.passes._legalize import Emit
from nirc.passes._rewrite import Namer, detach, has_any_op, reduce_axes, static_shape

from nirc.ir import IRModel
from nirc.pass_base import Pass, PassContext


@dataclass(frozen=True)
class LegalizeReduceSumPass(Pass):
    """Legalize ``ReduceSum(x, axes)`` as ``ReduceMean(x, axes) * n``, ``n`` the count of summed elements.

    TFLite's SUM has no NPU form in Vela 5.2 and nirc's emitter has none; MEAN
    runs on the NPU. Identity: the sum over ``n`` elements is ``n`` times their
    mean, exact up to float rounding (the mean divides by ``n``, the MUL
    multiplies back). The mean over channels and space of a 4-D map is taken in
    two stages (space, then channels), as Vela needs. With ``keepdims=0`` a
    Reshape drops the reduced axes afterwards.

    Kept: non-constant axes, an empty axes list with ``noop_with_empty_axes``
    (the op is then the identity, not a sum), non-float data, unknown shapes.
    """

    name = "legalize-reduce-sum"
    exact = True
    legalizes = frozenset({"ReduceSum"})

    def run(self, model: IRModel, ctx: PassContext) -> bool:
        graph = model.graph
        if not has_any_op(graph, ["ReduceSum"]):
            return False
        namer = Namer(graph)
        changed = False
        for node in list(graph.nodes):
            if node.op == "ReduceSum" and _rewrite(graph, node, namer):
                ctx.count("reduce_sum")
                changed = True
        if changed:
            graph.cleanup()
        return changed



def _rewrite(graph: gs.Graph, node: gs.Node, namer: Namer) -> bool:
    x, out = node.inputs[0], node.outputs[0]
    shape, out_shape = static_shape(x), static_shape(out)
    if shape is None or out_shape is None or x.dtype is None or not np.issubdtype(np.dtype(x.dtype), np.floating):
        return False
    axes = reduce_axes(node, len(shape))
    if axes is None:
        return False
    count = int(np.prod([shape[a] for a in axes], dtype=np.int64))
    emit = Emit(graph, namer, node.name, x.dtype)
    detach(node)
    mean = emit.reduce_mean(x, shape, axes, "mean")
    kept = [1 if i in axes else d for i, d in enumerate(shape)]
    if int(node.attrs.get("keepdims", 1)):
        emit.node("Mul", "times_count", [mean, emit.const("count", count)], kept, output=out)
    else:
        scaled = emit.node("Mul", "times_count", [mean, emit.const("count", count)], kept)
        emit.node("Reshape", "drop_axes", [scaled, emit.ints("shape", out_shape)], out_shape, output=out)
    return True
