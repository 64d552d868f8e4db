"""Pow by a constant exponent: MUL(x, x), RSQRT, or the input itself.

Why only these exponents: they are the ones normalizations need once decomposed
(``Pow(d, 2)`` for the variance, ``Pow(var + eps, -0.5)`` for the reciprocal
standard deviation), and each has an NPU implementation in Vela (MUL; RSQRT, a
lookup table in int8).  POW itself has no int8 TFLite kernel and no NPU
implementation, so other exponents are reported as unsupported rather than
emitted as an op that could only fail later.
"""

from __future__ import annotations

import onnx

from nirc.tflite.builder import BuiltinOperator as Op
from nirc.tflite.builder import Options
from nirc.tflite.context import Emitter
from nirc.tflite.graph import GraphInfo

#: Exponent -> what it lowers to.
POW_EXPONENTS = {2.0: "MUL", -0.5: "RSQRT", 1.0: "identity"}


def pow_exponent(info: GraphInfo, node: onnx.NodeProto) -> float | None:
    """The exponent when it is one constant value, else None."""
    value = info.const(node.input[1]) if len(node.input) > 1 else None
    if value is None or value.size != 1:
        return None
    return float(value.reshape(-1)[0])


def check_pow(info: GraphInfo, node: onnx.NodeProto) -> str | None:
    exponent = pow_exponent(info, node)
    if exponent is None:
        return "the exponent is not one constant value"
    if exponent not in POW_EXPONENTS:
        supported = ", ".join(f"{e:g}" for e in POW_EXPONENTS)
        return f"exponent {exponent:g} has no NPU form (supported: {supported})"
    if not info.has_shape(node.input[0]) or info.shape(node.input[0]) != info.shape(node.output[0]):
        return "the exponent broadcasts the input to a larger shape"
    return None


def lower_pow(em: Emitter, node: onnx.NodeProto) -> None:
    exponent = pow_exponent(em.info, node)
    x = em.value(node.input[0])
    if exponent == 1.0:
        em.alias(node.output[0], x)
        return
    y = em.define(node.output[0], perm=x.perm)
    if exponent == 2.0:
        opts = Options("MulOptions", (("FusedActivationFunction", 0),))
        em.op(Op.MUL, [x.tensor, x.tensor], [y.tensor], opts)
    else:
        em.op(Op.RSQRT, [x.tensor], [y.tensor])
