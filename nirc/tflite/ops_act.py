"""Activations and pass-throughs: Relu, Clip, LeakyRelu, Sigmoid, Tanh, HardSwish,
HardSigmoid, Elu, Exp, Log, Softplus, Mish, Softmax, LogSoftmax, Identity, Dropout.

Only activations that could not be fused into their producer reach these
lowerings (see :mod:`nirc.tflite.fusion`).  Clip bounds that match a TFLite builtin
(RELU, RELU6, RELU_N1_TO_1, RELU_0_TO_1) use it; Vela turns those into the NPU's
output clamp.  Other bounds become MINIMUM/MAXIMUM with a scalar constant.
HardSigmoid has no builtin and is decomposed exactly: MUL, ADD, RELU_0_TO_1.
"""

from __future__ import annotations

import math

import numpy as np
import onnx

from nirc.errors import BackendError
from nirc.tflite.builder import BuiltinOperator as Op
from nirc.tflite.builder import Options, QParams
from nirc.tflite.context import Emitter
from nirc.tflite.fusion import STANDALONE_ACTIVATION, Activation, activation_kind, clip_bounds
from nirc.tflite.graph import GraphInfo, attr_float, attr_int
from nirc.tflite.layout import stored_axis
from nirc.tflite.quantize import SIGMOID_QPARAMS, TANH_QPARAMS


def _unary(em: Emitter, node: onnx.NodeProto, builtin: int, options: Options | None = None) -> None:
    x = em.value(node.input[0])
    y = em.define(node.output[0], perm=x.perm)
    em.op(builtin, [x.tensor], [y.tensor], options)


def _bounds(info: GraphInfo, node: onnx.NodeProto) -> tuple[float | None, float | None]:
    b = clip_bounds(info, node)
    lo, hi = b if b is not None else (None, None)
    lo = None if lo is not None and math.isinf(lo) and lo < 0 else lo
    hi = None if hi is not None and math.isinf(hi) and hi > 0 else hi
    return lo, hi


def check_clip(info: GraphInfo, node: onnx.NodeProto) -> str | None:
    if clip_bounds(info, node) is None:
        return "min/max are not constants"
    return None


def clip_is_minmax(info: GraphInfo, node: onnx.NodeProto) -> bool:
    """Whether a Clip is lowered to MINIMUM/MAXIMUM (which need equal int8 params)."""
    if activation_kind(info, node) is not None:
        return False
    lo, hi = _bounds(info, node)
    return not (lo == 0.0 and hi == 1.0) and (lo is not None or hi is not None)


def clip_ties(info: GraphInfo, node: onnx.NodeProto) -> list[str]:
    return [node.input[0], node.output[0]] if clip_is_minmax(info, node) else []


def lower_relu(em: Emitter, node: onnx.NodeProto) -> None:
    if em.wide:  # LiteRT's standalone RELU kernels are 8-bit only
        _clamp(em, node, 0.0, None)
    else:
        _unary(em, node, Op.RELU)


def lower_clip(em: Emitter, node: onnx.NodeProto) -> None:
    kind = activation_kind(em.info, node)
    if kind is not None and not em.wide:
        _unary(em, node, STANDALONE_ACTIVATION[kind])
        return
    lo, hi = _bounds(em.info, node)
    if lo == 0.0 and hi == 1.0 and not em.wide:
        _unary(em, node, Op.RELU_0_TO_1)
        return
    _clamp(em, node, lo, hi)


def _clamp(em: Emitter, node: onnx.NodeProto, lo: float | None, hi: float | None) -> None:
    """MINIMUM/MAXIMUM with scalar bounds: NPU ops with int8 and int16 kernels alike."""
    x = em.value(node.input[0])
    if lo is None and hi is None:
        em.alias(node.output[0], x)
        return
    out_q = em.qparams(node.output[0])
    x = em.requant(x, out_q, node.output[0])
    steps = [(Op.MINIMUM, hi), (Op.MAXIMUM, lo)]
    steps = [(op, bound) for op, bound in steps if bound is not None]
    current = x.tensor
    for i, (op, bound) in enumerate(steps):
        const = em.float_const(f"{node.output[0]}/bound{i}", np.asarray([bound], np.float32), out_q)
        if i == len(steps) - 1:
            out = em.define(node.output[0], perm=x.perm).tensor
        else:
            out = em.new_tensor(f"{node.output[0]}/min", x.stored_shape, out_q)
        em.op(op, [current, const], [out])
        current = out


def leaky_ties(info: GraphInfo, node: onnx.NodeProto) -> list[str]:
    """``LeakyRelu(alpha=1)`` is the identity (stage-inputs' copy): one set of int8 parameters, an identity LUT."""
    return [node.input[0], node.output[0]] if attr_float(node, "alpha", 0.01) == 1.0 else []


def lower_leaky_relu(em: Emitter, node: onnx.NodeProto) -> None:
    alpha = attr_float(node, "alpha", 0.01)
    _unary(em, node, Op.LEAKY_RELU, Options("LeakyReluOptions", (("Alpha", alpha),)))


def lower_sigmoid(em: Emitter, node: onnx.NodeProto) -> None:
    _unary(em, node, Op.LOGISTIC)


def lower_tanh(em: Emitter, node: onnx.NodeProto) -> None:
    _unary(em, node, Op.TANH)


def lower_hard_swish(em: Emitter, node: onnx.NodeProto) -> None:
    if em.wide:
        _hard_swish_int16(em, node)
    else:
        _unary(em, node, Op.HARD_SWISH)


def _hard_swish_int16(em: Emitter, node: onnx.NodeProto) -> None:
    """``x * relu6(x + 3) / 6`` (the definition) as ADD+RELU6, MUL, MUL: three NPU elementwise ops.

    Why: TFLite has no int16 HARD_SWISH kernel (LiteRT, TFLite Micro), and Vela's HardSwish LUT is
    int8; the elementwise ops all take int16. The product lies in ``6 * [lo, hi]`` of ``x``.
    """
    x = em.value(node.input[0])
    name = node.output[0]
    q = em.quant_of(x)
    lo, hi = em.real_range(q) if q is not None else (-1.0, 1.0)
    gate = em.new_tensor(f"{name}/gate", x.stored_shape, em.range_qparams(0.0, 6.0))
    three = em.float_const(f"{name}/three", np.asarray([3.0], np.float32))
    relu6 = Options("AddOptions", (("FusedActivationFunction", int(Activation.RELU6)),))
    em.op(Op.ADD, [x.tensor, three], [gate], relu6)
    prod = em.new_tensor(f"{name}/product", x.stored_shape, em.range_qparams(6.0 * lo, 6.0 * hi))
    em.op(Op.MUL, [x.tensor, gate], [prod], Options("MulOptions", (("FusedActivationFunction", 0),)))
    y = em.define(name, perm=x.perm)
    sixth = em.float_const(f"{name}/sixth", np.asarray([1.0 / 6.0], np.float32))
    em.op(Op.MUL, [prod, sixth], [y.tensor], Options("MulOptions", (("FusedActivationFunction", 0),)))


def sigmoid_fixed(info: GraphInfo, node: onnx.NodeProto) -> QParams | None:
    return SIGMOID_QPARAMS


def tanh_fixed(info: GraphInfo, node: onnx.NodeProto) -> QParams | None:
    return TANH_QPARAMS


def lower_hard_sigmoid(em: Emitter, node: onnx.NodeProto) -> None:
    alpha = attr_float(node, "alpha", 0.2)
    beta = attr_float(node, "beta", 0.5)
    x = em.value(node.input[0])
    name = node.output[0]
    in_q = em.quant_of(x)
    mul_q = add_q = None
    if in_q is not None:
        lo, hi = em.real_range(in_q)
        mlo, mhi = sorted((alpha * lo, alpha * hi))
        mul_q = em.range_qparams(mlo, mhi)
        add_q = em.range_qparams(mlo + beta, mhi + beta)
    scaled = em.new_tensor(f"{name}/scaled", x.stored_shape, mul_q)
    alpha_t = em.float_const(f"{name}/alpha", np.asarray([alpha], np.float32))
    em.op(Op.MUL, [x.tensor, alpha_t], [scaled], Options("MulOptions", (("FusedActivationFunction", 0),)))
    shifted = em.new_tensor(f"{name}/shifted", x.stored_shape, add_q)
    beta_t = em.float_const(f"{name}/beta", np.asarray([beta], np.float32))
    em.op(Op.ADD, [scaled, beta_t], [shifted], Options("AddOptions", (("FusedActivationFunction", 0),)))
    y = em.define(name, perm=x.perm)
    em.op(Op.RELU_0_TO_1, [shifted], [y.tensor])


def check_elu(info: GraphInfo, node: onnx.NodeProto) -> str | None:
    return None if attr_float(node, "alpha", 1.0) == 1.0 else "alpha is not 1 (TFLite ELU's only alpha)"


def lower_elu(em: Emitter, node: onnx.NodeProto) -> None:
    _unary(em, node, Op.ELU)


def lower_exp(em: Emitter, node: onnx.NodeProto) -> None:
    _unary(em, node, Op.EXP)


def lower_log(em: Emitter, node: onnx.NodeProto) -> None:
    _unary(em, node, Op.LOG)


def _softplus(em: Emitter, x_tensor: int, shape: tuple[int, ...], in_q: QParams | None, name: str,
              out: int | None) -> int:  # fmt: skip
    """``log(1 + exp(x))`` as EXP, ADD 1, LOG: three LUT ops for Vela, one TABLE once lifted to TOSA."""
    exp_q = one_q = log_q = None
    if in_q is not None:
        lo, hi = em.real_range(in_q)
        e_lo, e_hi = math.exp(min(lo, 80.0)), math.exp(min(hi, 80.0))
        exp_q, one_q = em.range_qparams(0.0, e_hi), em.range_qparams(0.0, 1.0 + e_hi)
        log_q = em.range_qparams(0.0, math.log1p(e_hi)) if e_lo >= 0 else None
    e = em.new_tensor(f"{name}/exp", shape, exp_q)
    em.op(Op.EXP, [x_tensor], [e])
    p = em.new_tensor(f"{name}/one_plus", shape, one_q)
    one = em.float_const(f"{name}/one", np.asarray([1.0], np.float32))
    em.op(Op.ADD, [e, one], [p], Options("AddOptions", (("FusedActivationFunction", 0),)))
    y = out if out is not None else em.new_tensor(f"{name}/softplus", shape, log_q)
    em.op(Op.LOG, [p], [y])
    return y


def lower_softplus(em: Emitter, node: onnx.NodeProto) -> None:
    x = em.value(node.input[0])
    y = em.define(node.output[0], perm=x.perm)
    _softplus(em, x.tensor, x.stored_shape, em.quant_of(x), node.output[0], y.tensor)


def lower_mish(em: Emitter, node: onnx.NodeProto) -> None:
    """``x * tanh(softplus(x))``: softplus's three LUT ops, TANH, MUL by x (one TABLE in TOSA)."""
    x = em.value(node.input[0])
    name = node.output[0]
    sp = _softplus(em, x.tensor, x.stored_shape, em.quant_of(x), name, None)
    t = em.new_tensor(f"{name}/tanh", x.stored_shape, TANH_QPARAMS if em.int8 else None)
    em.op(Op.TANH, [sp], [t])
    y = em.define(name, perm=x.perm)
    em.op(Op.MUL, [x.tensor, t], [y.tensor], Options("MulOptions", (("FusedActivationFunction", 0),)))


def check_softmax(info: GraphInfo, node: onnx.NodeProto) -> str | None:
    if not info.has_shape(node.input[0]) or not info.shape(node.input[0]):
        return "scalar or unknown input shape"
    return None


def lower_softmax(em: Emitter, node: onnx.NodeProto) -> None:
    emit_softmax(em, node, node.input[0], 1.0)


def emit_softmax(em: Emitter, node: onnx.NodeProto, x_name: str, beta: float) -> None:
    """``softmax(beta * x)`` over the node's axis, written to the node's output.

    SOFTMAX runs over the last stored axis; other axes go last first.  When every
    stored axis after the softmax axis has size 1 the data is already contiguous
    along it, so a RESHAPE (free) replaces the TRANSPOSE pair.
    """
    name = node.output[0]
    x = em.stored(x_name)
    rank = len(x.onnx_shape)
    axis = attr_int(node, "axis", -1)
    axis = axis + rank if axis < 0 else axis
    pos = stored_axis(axis, x.perm)
    opts = Options("SoftmaxOptions", (("Beta", beta),))
    if pos == rank - 1:
        y = em.define(name, perm=x.perm)
        em.op(Op.SOFTMAX, [x.tensor], [y.tensor], opts)
        return
    # Move the softmax axis last in ONNX terms, run, and let the emitter relayout.
    want = (*(p for p in x.perm if p != axis), axis)
    moved = em.value_of(x, want, x_name)
    y = em.define(name, perm=want)
    em.op(Op.SOFTMAX, [moved.tensor], [y.tensor], opts)


def lower_log_softmax(em: Emitter, node: onnx.NodeProto) -> None:
    """LogSoftmax as SOFTMAX then LOG: Vela has no LOG_SOFTMAX on the NPU, but runs both of these.

    ``log(softmax(x))`` is the definition, so in float32 it is exact up to rounding.  In
    int8 SOFTMAX's output step is fixed at 1/256, so log-probabilities below about
    ``log(1/512) = -6.2`` saturate: fine for the top classes, not for tiny ones.
    """
    name = node.output[0]
    x = em.value(node.input[0])
    rank = len(x.onnx_shape)
    axis = attr_int(node, "axis", -1)
    axis = axis + rank if axis < 0 else axis
    perm = x.perm if stored_axis(axis, x.perm) == rank - 1 else (*(p for p in x.perm if p != axis), axis)
    src = em.value(node.input[0], perm)
    probs = em.new_tensor(f"{name}/softmax", src.stored_shape, SIGMOID_QPARAMS if em.int8 else None)
    em.op(Op.SOFTMAX, [src.tensor], [probs], Options("SoftmaxOptions", (("Beta", 1.0),)))
    y = em.define(name, perm=perm)
    em.op(Op.LOG, [probs], [y.tensor])


def lower_identity(em: Emitter, node: onnx.NodeProto) -> None:
    """No op: the output names the input's tensor (copied only if a graph output needs it)."""
    src = node.input[0]
    if src not in em.values:
        raise BackendError(f"{node.op_type} '{node.name}': input '{src}' was not emitted")
    em.alias(node.output[0], em.values[src])


def check_dropout(info: GraphInfo, node: onnx.NodeProto) -> str | None:
    if (
        len(node.output) > 1
        and node.output[1]
        and (info.users(node.output[1]) or info.is_graph_output(node.output[1]))
    ):
        return "the mask output is used"
    if len(node.input) > 2 and node.input[2]:
        mode = info.const(node.input[2])
        if mode is None or bool(mode.reshape(-1)[0]):
            return "training_mode is set"
    return None
