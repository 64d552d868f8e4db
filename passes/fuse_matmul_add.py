"""Fuse MatMul by a constant weight followed by Add of a constant bias into one Gemm."""

from __future__ import annotations

from dataclasses import dataclass

import onnx_graphsurgeon as gs
from nirc.passes._rewrite import (
    broadcasts_without_growing,
    const_value,
    consumers,
    detach,
    has_any_op,
    single_use,
    split_const,
    static_shape,
)

from nirc.ir import IRModel
from nirc.pass_base import Pass, PassContext


@dataclass(frozen=True)
class FuseMatmulAddPass(Pass):
    """Fuse MatMul(x, W) + b into Gemm(x, W, b) when x is 2-D and W, b are constants.

    Identity: Gemm computes ``alpha * A @ B + beta * C`` and with the defaults
    (``alpha = beta = 1``, no transposes) that is ``x @ W + b``, the same
    products summed in the same order. Exact. Gemm needs a 2-D A and B and a
    C that broadcasts to the (M, N) result, so the pass requires a 2-D ``x``,
    a 2-D float ``W`` and a bias that does not broadcast the result larger; the
    MatMul output must be read only by the Add. Batched (3-D+) MatMuls, and a
    MatMul without an Add, are kept (the emitter lowers a MatMul by a constant
    directly).
    """

    name = "fuse-matmul-add"
    exact = True

    def run(self, model: IRModel, ctx: PassContext) -> bool:
        graph = model.graph
        if not has_any_op(graph, ["MatMul"]) or not has_any_op(graph, ["Add"]):
            return False
        changed = False
        for matmul in list(graph.nodes):
            if matmul.op != "MatMul" or len(matmul.outputs) != 1 or not single_use(graph, matmul.outputs[0]):
                continue
            (add,) = consumers(matmul.outputs[0])
            if add.op == "Add" and _fuse(graph, matmul, add):
                ctx.count("fused")
                changed = True
        if changed:
            graph.cleanup()
        return changed


def _fuse(graph: gs.Graph, matmul: gs.Node, add: gs.Node) -> bool:
    x, w_t = matmul.inputs
    weight = const_value(w_t)
    split = split_const(add)
    x_shape, out_shape = static_shape(x), static_shape(matmul.outputs[0])
    if weight is None or weight.ndim != 2 or weight.dtype.kind != "f" or const_value(x) is not None:
        return False
    if split is None or split[0] is not matmul.outputs[0] or x_shape is None or len(x_shape) != 2:
        return False
    bias = split[1]
    if out_shape is None or bias.dtype != weight.dtype or not broadcasts_without_growing(bias.shape, out_shape):
        return False
    bias_t = next(t for t in add.inputs if t is not matmul.outputs[0])
    out = add.outputs[0]
    detach(matmul, add)
    graph.nodes.append(gs.Node("Gemm", matmul.name, inputs=[x, w_t, bias_t], outputs=[out]))
    return True
