"""Rewrite a BatchNormalization that could not be folded as a per-channel Mul and Add."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs
from nirc.passes._rewrite import Namer, detach, has_any_op, static_shape
from nirc.passes.fuse_batchnorm import batchnorm_affine, is_inference_batchnorm

from nirc.ir import IRModel
from nirc.pass_base import Pass, PassContext


@dataclass(frozen=True)
class DecomposeBatchnormPass(Pass):
    """Rewrite inference BatchNormalization as Mul(x, s) then Add(., t) with (C, 1, ..., 1) constants.

    Identity: ``BN(x) = (x - mean) / sqrt(var + eps) * gamma + beta = x * s + t``
    with ``s = gamma / sqrt(var + eps)`` and ``t = beta - mean * s``, per channel
    (axis 1); the constants are shaped (C,) followed by one 1 per spatial axis so
    they broadcast over N and the spatial dims only. Exact up to float rounding.

    Run after ``fuse-batchnorm``: it is for BNs with no foldable producer (e.g.
    a conv whose output has a second reader, or a BN on a graph input). The NPU
    runs the pair as two elementwise ops, and ``fuse-affine`` may still fold it
    into the next conv. Training-mode BNs, or BNs whose running statistics are
    read, are kept.
    """

    name = "decompose-batchnorm"
    exact = True

    def run(self, model: IRModel, ctx: PassContext) -> bool:
        graph = model.graph
        if not has_any_op(graph, ["BatchNormalization"]):
            return False
        namer = Namer(graph)
        changed = False
        for bn in list(graph.nodes):
            if bn.op == "BatchNormalization" and is_inference_batchnorm(bn) and _decompose(graph, bn, namer):
                ctx.count("decomposed")
                changed = True
        if changed:
            graph.cleanup()
        return changed


def _decompose(graph: gs.Graph, bn: gs.Node, namer: Namer) -> bool:
    affine = batchnorm_affine(bn)
    x, y = bn.inputs[0], bn.outputs[0]
    shape = static_shape(x)
    if affine is None or shape is None or len(shape) < 2 or x.dtype is None:
        return False
    scale, shift = affine
    if shape[1] != scale.size or shift.size != scale.size:
        return False
    dtype = np.dtype(x.dtype)
    bshape = (scale.size,) + (1,) * (len(shape) - 2)
    s = namer.constant(f"{bn.name}_scale", scale.reshape(bshape).astype(dtype))
    t = namer.constant(f"{bn.name}_shift", shift.reshape(bshape).astype(dtype))
    mid = gs.Variable(namer.fresh(f"{bn.name}_scaled"), dtype=dtype, shape=list(shape))
    detach(bn)
    graph.nodes.append(gs.Node("Mul", namer.fresh(f"{bn.name}_mul"), inputs=[x, s], outputs=[mid]))
    graph.nodes.append(gs.Node("Add", namer.fresh(f"{bn.name}_add"), inputs=[mid, t], outputs=[y]))
    return True
