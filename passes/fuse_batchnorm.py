"""Fold inference BatchNormalization into the Conv, ConvTranspose or Gemm that produces its input."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs
from nirc.passes._affine import can_fold_output_affine, fold_output_affine, output_channels
from nirc.passes._rewrite import Namer, const_value, detach, has_any_op, producer, single_use

from nirc.ir import IRModel
from nirc.pass_base import Pass, PassContext

_COUNT_KEYS = {"Conv": "folded_into_conv", "ConvTranspose": "folded_into_conv_transpose", "Gemm": "folded_into_gemm"}


@dataclass(frozen=True)
class FuseBatchnormPass(Pass):
    """Fold BatchNormalization into the preceding Conv, ConvTranspose or Gemm's weights and bias.

    Identity: inference BN is the per-channel affine map ``x * s + t`` with
    ``s = gamma / sqrt(var + eps)`` and ``t = beta - mean * s``, and a linear
    node followed by a per-output-channel affine is the same linear node with
    ``W[o] *= s[o]`` and ``b = b * s + t``. For ConvTranspose the output channel
    sits on axis 1 of its (Cin, Cout/group, k...) weight, group by group; for
    Gemm it is a column of ``B'`` (a row of B when ``transB=1``) and ``C``
    absorbs ``beta`` and the shift. Exact up to float rounding.

    Kept when the producer's output has another reader (that reader would see
    the scaled values) or its weights are not constants; ``decompose-batchnorm``
    then rewrites the BN as Mul+Add. A BN in training mode, or whose running
    mean/var outputs are read, is never touched.
    """

    name = "fuse-batchnorm"
    exact = True

    def run(self, model: IRModel, ctx: PassContext) -> bool:
        graph = model.graph
        if not has_any_op(graph, ["BatchNormalization"]):
            return False
        namer = Namer(graph)
        changed = False
        for bn in list(graph.nodes):
            if bn.op != "BatchNormalization" or not is_inference_batchnorm(bn):
                continue
            affine = batchnorm_affine(bn)
            src = producer(bn.inputs[0])
            if affine is None or src is None or not _can_fold(graph, src, bn, affine[0].size):
                continue
            fold_output_affine(src, *affine, namer)
            src.outputs[0] = bn.outputs[0]
            detach(bn)
            ctx.count(_COUNT_KEYS[src.op])
            changed = True
        if changed:
            graph.cleanup()
        return changed


def is_inference_batchnorm(bn: gs.Node) -> bool:
    """Not in training mode, and only the normalised output is read."""
    if bn.attrs.get("training_mode", 0) or not bn.outputs:
        return False
    return all(not out.outputs for out in bn.outputs[1:])


def batchnorm_affine(bn: gs.Node) -> tuple[np.ndarray, np.ndarray] | None:
    """``(s, t)`` with ``BN(x) = x * s + t`` per channel (float64), or None when params are not constant."""
    params = [const_value(t) for t in bn.inputs[1:5]]
    if len(params) != 4 or any(p is None for p in params):
        return None
    gamma, beta, mean, var = (np.asarray(p, dtype=np.float64).reshape(-1) for p in params)
    eps = float(bn.attrs.get("epsilon", 1e-5))
    scale = gamma / np.sqrt(var + eps)
    return scale, beta - mean * scale


def _can_fold(graph: gs.Graph, src: gs.Node, bn: gs.Node, channels: int) -> bool:
    return (
        src.op in _COUNT_KEYS
        and len(src.outputs) == 1
        and single_use(graph, bn.inputs[0])
        and can_fold_output_affine(src)
        and output_channels(src) == channels
    )
