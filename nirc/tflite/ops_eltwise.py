"""Broadcasting arithmetic: Add/Sub/Mul/Div, BatchNormalization, PRelu.

Operands are brought to the output's rank and layout.  Constant operands are
re-laid out in numpy (a per-channel [C,1,1] vector becomes a plain [C] vector that
broadcasts over NHWC's last axis), so no runtime op is spent on them; that is also
the one broadcast form Vela's elementwise kernels take from the second operand.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx

from nirc.tflite.builder import BuiltinOperator as Op
from nirc.tflite.builder import Options, QParams
from nirc.tflite.context import Emitter, Value
from nirc.tflite.graph import GraphInfo, attr_float, attr_int
from nirc.tflite.layout import broadcast_const, permute_shape, standard_perm, stored_axis
from nirc.tflite.ops_cpu import float_in, float_out, quantize_out

_BUILTIN = {"Add": Op.ADD, "Sub": Op.SUB, "Mul": Op.MUL, "Div": Op.MUL}
_OPTIONS = {"Add": "AddOptions", "Sub": "SubOptions", "Mul": "MulOptions", "Div": "MulOptions"}


def _operand(
    em: Emitter, name: str, rank: int, perm: tuple[int, ...], array: np.ndarray | None = None
) -> int:
    const = array if array is not None else em.const(name)
    if const is not None:
        return em.float_const(name, broadcast_const(np.asarray(const, np.float32), rank, perm))
    if len(em.shape(name)) == rank:
        return em.value(name, perm).tensor
    v = em.value(name)
    v = em.reshaped(v, (1,) * (rank - len(v.onnx_shape)) + v.onnx_shape, name)
    return em.value_of(v, perm, name).tensor


def _shared_layout(em: Emitter, names: Sequence[str], rank: int) -> tuple[int, ...]:
    """The layout the computed operands share (e.g. attention scores kept in ONNX order), else standard.

    Elementwise ops are layout-agnostic, so following the operands' layout costs nothing
    here and spares a relayout now (and often a second one back later).
    """
    perms = set()
    for name in names:
        if not name or em.info.is_const(name):
            continue
        v = em.values.get(name)
        if v is None or v.col_order is not None or len(v.onnx_shape) != rank:
            return standard_perm(rank)
        perms.add(v.perm)
    return perms.pop() if len(perms) == 1 else standard_perm(rank)


def lower_minmax(em: Emitter, node: onnx.NodeProto) -> None:
    """Max/Min of n inputs: a chain of MAXIMUM/MINIMUM (NPU ops), broadcasting like Add.

    int8 MAXIMUM/MINIMUM compare raw values, so every input and the output share one set
    of parameters (the planner ties them; constants are quantized with them).
    """
    name = node.output[0]
    out_shape = em.shape(name)
    rank = len(out_shape)
    perm = _shared_layout(em, node.input, rank)
    out_q = em.qparams(name)
    builtin = Op.MAXIMUM if node.op_type == "Max" else Op.MINIMUM
    inputs = [n for n in node.input if n]
    if len(inputs) == 1:
        em.alias(name, em.requant(em.stored(inputs[0]), out_q, name))
        return
    current = _tied_operand(em, inputs[0], rank, perm, out_q)
    for i, src in enumerate(inputs[1:], start=1):
        other = _tied_operand(em, src, rank, perm, out_q)
        if i == len(inputs) - 1:
            out = em.define(name, perm=perm, shape=out_shape).tensor
        else:
            out = em.new_tensor(f"{name}/step{i}", permute_shape(out_shape, perm), out_q)
        em.op(builtin, [current, other], [out])
        current = out


def _tied_operand(em: Emitter, name: str, rank: int, perm: tuple[int, ...], quant: QParams | None) -> int:
    const = em.const(name)
    if const is not None:
        return em.float_const(name, broadcast_const(np.asarray(const, np.float32), rank, perm), quant)
    tensor = _operand(em, name, rank, perm)
    shape = em.mb.shape_of(tensor)
    if quant is None or em.mb.quant_of(tensor) == quant:
        return tensor
    out = em.new_tensor(f"{name}/requant", shape, quant)
    em.op(Op.QUANTIZE, [tensor], [out])
    return out


def minmax_ties(info: GraphInfo, node: onnx.NodeProto) -> list[str]:
    return [*[n for n in node.input if n], node.output[0]]


def check_div(info: GraphInfo, node: onnx.NodeProto) -> str | None:
    """Division by a constant is a MUL by its reciprocal (NPU); by an activation, TFLite DIV (CPU)."""
    return None


def _float_division(
    em: Emitter, node: onnx.NodeProto, act: int, out_name: str, divisor: str, eps: float | None = None
) -> None:
    """``x / y`` of two activations: TFLite DIV, which Vela leaves to the Cortex-M on U55/U65.

    TFLite's DIV has no int8 kernel in TFLite Micro, so an int8 model divides in a float
    island (DEQUANTIZE both operands, DIV, QUANTIZE); exact in float, one rounding in int8.
    Linear-attention normalisers (EfficientViT) and ``F.normalize`` (EdgeNeXt) end here.
    With ``eps`` the divisor is ``divisor + eps``, added inside the island so ``eps``
    survives int8 (the guarded division of :mod:`~nirc.tflite.patterns`).
    """
    out_shape = em.shape(node.output[0])
    rank = len(out_shape)
    perm = _shared_layout(em, [node.input[0], divisor], rank)
    a = _operand(em, node.input[0], rank, perm)
    b = _operand(em, divisor, rank, perm)
    y = em.define(out_name, perm=perm, shape=out_shape)
    if eps is None:
        inputs = [float_in(em, a, f"{out_name}/float_a"), float_in(em, b, f"{out_name}/float_b")]
    else:
        guard = em.mb.add_constant(f"{out_name}/eps", np.full((1,) * rank, eps, np.float32))
        fd = float_in(em, b, f"{out_name}/float_d")
        fsum = em.mb.add_tensor(f"{out_name}/float_guarded", em.mb.shape_of(fd), "float32")
        em.op(Op.ADD, [fd, guard], [fsum], Options("AddOptions", (("FusedActivationFunction", 0),)))
        inputs = [float_in(em, a, f"{out_name}/float_a"), fsum]
    result = float_out(em, y.tensor, f"{out_name}/float_out")
    em.op(Op.DIV, inputs, [result], Options("DivOptions", (("FusedActivationFunction", act),)))
    quantize_out(em, result, y.tensor)


def emit_guarded_div(em: Emitter, node: onnx.NodeProto, d_name: str, eps: float) -> None:
    """``n / (d + eps)`` with the ADD inside the float island, so ``eps`` survives int8 (see patterns)."""
    act, out_name = em.activation(node)
    _float_division(em, node, act, out_name, d_name, eps)


def lower_binary(em: Emitter, node: onnx.NodeProto) -> None:
    act, out_name = em.activation(node)
    if node.op_type == "Div" and not em.info.is_const(node.input[1]):
        _float_division(em, node, act, out_name, node.input[1])
        return
    out_shape = em.shape(node.output[0])
    rank = len(out_shape)
    perm = _shared_layout(em, node.input, rank)
    second = None
    if node.op_type == "Div":
        second = 1.0 / np.asarray(em.const(node.input[1]), np.float64)
    a = _operand(em, node.input[0], rank, perm)
    b = _operand(em, node.input[1], rank, perm, second)
    y = em.define(out_name, perm=perm, shape=out_shape)
    options = Options(_OPTIONS[node.op_type], (("FusedActivationFunction", act),))
    em.op(_BUILTIN[node.op_type], [a, b], [y.tensor], options)


def check_batchnorm(info: GraphInfo, node: onnx.NodeProto) -> str | None:
    if attr_int(node, "training_mode", 0):
        return "training_mode=1 is not supported"
    if len([o for o in node.output if o]) > 1:
        return "running mean/var outputs are not supported"
    if not all(info.is_const(n) for n in node.input[1:5]):
        return "scale, B, mean and var must be constants"
    if not info.has_shape(node.input[0]) or len(info.shape(node.input[0])) < 2:
        return "input must be at least 2-D"
    return None


def _channel_vector(values: np.ndarray, v: Value) -> np.ndarray:
    axis = stored_axis(1, v.perm)
    trailing = len(v.perm) - 1 - axis
    return values.reshape((-1,) + (1,) * trailing).astype(np.float32)


def lower_batchnorm(em: Emitter, node: onnx.NodeProto) -> None:
    eps = attr_float(node, "epsilon", 1e-5)
    scale, bias, mean, var = (np.asarray(em.const(n), np.float64).reshape(-1) for n in node.input[1:5])
    mul = scale / np.sqrt(var + eps)
    add = bias - mean * mul
    act, out_name = em.activation(node)
    x = em.value(node.input[0])
    mid_q = None
    in_q = em.quant_of(x)
    if in_q is not None:
        lo, hi = em.real_range(in_q)
        corners = np.concatenate([mul * lo, mul * hi])
        mid_q = em.range_qparams(float(corners.min()), float(corners.max()))
    mid = em.new_tensor(f"{out_name}/scale", x.stored_shape, mid_q)
    mul_t = em.float_const(f"{out_name}/mul", _channel_vector(mul, x))
    em.op(Op.MUL, [x.tensor, mul_t], [mid], Options("MulOptions", (("FusedActivationFunction", 0),)))
    y = em.define(out_name, perm=x.perm, shape=em.shape(node.output[0]))
    add_t = em.float_const(f"{out_name}/add", _channel_vector(add, x))
    em.op(Op.ADD, [mid, add_t], [y.tensor], Options("AddOptions", (("FusedActivationFunction", act),)))


def check_prelu(info: GraphInfo, node: onnx.NodeProto) -> str | None:
    if not info.is_const(node.input[1]):
        return "slope must be a constant"
    return None


def lower_prelu(em: Emitter, node: onnx.NodeProto) -> None:
    out_shape = em.shape(node.output[0])
    perm = standard_perm(len(out_shape))
    x = _operand(em, node.input[0], len(out_shape), perm)
    slope = np.asarray(em.const(node.input[1]), np.float32)
    alpha = broadcast_const(slope, len(out_shape), perm)
    y = em.define(node.output[0], perm=perm, shape=out_shape)
    em.op(Op.PRELU, [x, em.float_const(f"{node.output[0]}/alpha", alpha)], [y.tensor])
