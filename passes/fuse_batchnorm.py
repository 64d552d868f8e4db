"""Fold inference BatchNormalization into the Conv that produces its input."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from nirc.ir import IRModel
from nirc.pass_base import Pass, PassContext


@dataclass(frozen=True)
class FuseBatchnormPass(Pass):
    """Fold BatchNormalization into the preceding Conv's weights and bias.

    Identity: BN(conv(x, W) + b) = conv(x, W * s) + (b - mean) * s + beta with
    s = gamma / sqrt(var + eps), per output channel. Exact up to float rounding.
    Kept when the conv output has another reader (folding would change what that
    reader sees) or the conv's weights are not constants.
    """

    name = "fuse-batchnorm"
    exact = True

    def run(self, model: IRModel, ctx: PassContext) -> bool:
        view = model.view()
        changed = False
        for conv, bn in view.chains(["Conv", "BatchNormalization"]):
            if _fold(conv, bn):
                ctx.count("folded_into_conv")
                changed = True
        if changed:
            model.graph.cleanup()
        return changed


def _fold(conv: gs.Node, bn: gs.Node) -> bool:
    weight = conv.inputs[1]
    bias = conv.inputs[2] if len(conv.inputs) > 2 else None
    params = bn.inputs[1:5]
    if len(bn.outputs) != 1 or bn.attrs.get("training_mode", 0):
        return False
    if not isinstance(weight, gs.Constant) or not all(isinstance(p, gs.Constant) for p in params):
        return False
    if bias is not None and not isinstance(bias, gs.Constant):
        return False
    gamma, beta, mean, var = (np.asarray(p.values, dtype=np.float64) for p in params)
    eps = float(bn.attrs.get("epsilon", 1e-5))
    scale = gamma / np.sqrt(var + eps)
    w = np.asarray(weight.values, dtype=np.float64)
    b = np.asarray(bias.values, dtype=np.float64) if bias is not None else np.zeros(w.shape[0])
    new_w = (w * scale.reshape(-1, *([1] * (w.ndim - 1)))).astype(np.float32)
    new_b = ((b - mean) * scale + beta).astype(np.float32)
    conv.inputs[1] = gs.Constant(f"{weight.name}_bnfold", new_w)
    new_bias = gs.Constant(f"{conv.name}_bias_bnfold", new_b)
    if bias is None:
        conv.inputs.append(new_bias)
    else:
        conv.inputs[2] = new_bias
    conv.outputs[0] = bn.outputs[0]
    bn.inputs.clear()
    bn.outputs.clear()
    return True
