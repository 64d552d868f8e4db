"""Conv lowering: CONV_2D, DEPTHWISE_CONV_2D, or SPLIT + per-group CONV_2D + CONCATENATION.

Grouped convolutions (1 < group < Cin) have no TFLite builtin; TFLite's own
converter emits a CONV_2D whose weight has fewer input channels than the input,
which Vela rejects and LiteRT only runs on some kernels.  Splitting the channels,
running one CONV_2D per group and concatenating keeps every piece on the NPU (Vela
implements SPLIT and CONCATENATION as strided reads/writes, i.e. for free).
"""

from __future__ import annotations

import numpy as np
import onnx

from nirc.tflite.builder import BuiltinOperator as Op
from nirc.tflite.builder import Options, QParams
from nirc.tflite.context import Emitter, Value
from nirc.tflite.graph import GraphInfo, attr_int
from nirc.tflite.layout import conv_weight_ohwi, depthwise_weight_1hwc
from nirc.tflite.padding import PadPlan, onnx_pads, plan_padding, window_params
from nirc.tflite.quantize import int_bounds, quantize_bias, quantize_weights


def apply_pad(em: Emitter, x: Value, plan: PadPlan, name: str, *, fill_min: bool = False) -> Value:
    """Insert the explicit PAD of ``plan`` (NHWC input); zeros, or the dtype minimum.

    Zero padding in int8 is the zero point, which PAD writes by definition.  For
    max pooling in int8, a zero point of -128 makes PAD's fill the dtype minimum
    too, which keeps the op on the NPU; only otherwise is PADV2 needed.
    """
    if plan.explicit is None:
        return x
    (t, b), (left, r) = plan.explicit
    n, h, w, c = x.stored_shape
    paddings = em.int_const(f"{name}/paddings", [[0, 0], [t, b], [left, r], [0, 0]])
    q = em.quant_of(x)
    out = em.new_tensor(f"{name}/pad", (n, h + t + b, w + left + r, c), q)
    if not fill_min or (q is not None and q.zero_point[0] == int_bounds(q)[0]):
        em.op(Op.PAD, [x.tensor, paddings], [out])
    else:
        fill = (
            em.mb.add_constant(f"{name}/pad_value", np.asarray([int_bounds(q)[0]], dtype=q.dtype), q)
            if q is not None
            else em.mb.add_constant(f"{name}/pad_value", np.asarray([np.finfo(np.float32).min], np.float32))
        )
        em.op(Op.PADV2, [x.tensor, paddings, fill], [out])
    nchw = (x.onnx_shape[0], x.onnx_shape[1], h + t + b, w + left + r)
    return Value(out, x.perm, nchw)


def _conv_geometry(info: GraphInfo, node: onnx.NodeProto) -> tuple[PadPlan, tuple[int, int], tuple[int, int]]:
    x_shape = info.shape(node.input[0])
    w_shape = info.shape(node.input[1])
    y_shape = info.shape(node.output[0])
    kernel = w_shape[2:]
    strides, dilations, _ = window_params(node, kernel)
    pads = onnx_pads(node, x_shape[2:], kernel, y_shape[2:])
    plan = plan_padding(x_shape[2:], kernel, strides, dilations, pads, y_shape[2:])
    return plan, (strides[0], strides[1]), (dilations[0], dilations[1])


def check_conv(info: GraphInfo, node: onnx.NodeProto) -> str | None:
    if not info.is_const(node.input[1]):
        return "weight is not a constant"
    if len(node.input) > 2 and node.input[2] and not info.is_const(node.input[2]):
        return "bias is not a constant"
    if not info.has_shape(node.input[0]) or len(info.shape(node.input[0])) != 4:
        return "only 2-D convolution (4-D NCHW input) is supported"
    return None


def _bias(em: Emitter, node: onnx.NodeProto, cout: int) -> np.ndarray:
    b = em.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    return np.zeros(cout, np.float32) if b is None else np.asarray(b, np.float32).reshape(cout)


def _weights_and_bias(
    em: Emitter, name: str, weight: np.ndarray, bias: np.ndarray, axis: int, in_q: QParams | None
) -> tuple[int, int]:
    if in_q is None:
        return (
            em.mb.add_constant(f"{name}/weights", weight.astype(np.float32)),
            em.mb.add_constant(f"{name}/bias", bias.astype(np.float32)),
        )
    qw, wq = quantize_weights(weight, axis, bias, in_q.scale[0])
    qb, bq = quantize_bias(bias, in_q.scale[0], wq, in_q.bits)
    return em.mb.add_constant(f"{name}/weights", qw, wq), em.mb.add_constant(f"{name}/bias", qb, bq)


def lower_conv(em: Emitter, node: onnx.NodeProto) -> None:
    weight = np.asarray(em.const(node.input[1]), np.float32)
    cout, cin_g = weight.shape[0], weight.shape[1]
    group = attr_int(node, "group", 1)
    cin = cin_g * group
    bias = _bias(em, node, cout)
    act, out_name = em.activation(node)
    plan, (sh, sw), (dh, dw) = _conv_geometry(em.info, node)
    x = apply_pad(em, em.value(node.input[0]), plan, out_name)
    y = em.define(out_name, shape=em.shape(node.output[0]))
    in_q = em.quant_of(x)

    if group == 1:
        w, b = _weights_and_bias(em, out_name, conv_weight_ohwi(weight), bias, 0, in_q)
        em.op(Op.CONV_2D, [x.tensor, w, b], [y.tensor], _conv_options(plan.mode, sw, sh, dw, dh, act))
    elif group == cin and cout % cin == 0:
        w, b = _weights_and_bias(em, out_name, depthwise_weight_1hwc(weight), bias, 3, in_q)
        opts = Options(
            "DepthwiseConv2DOptions",
            (("Padding", plan.mode), ("StrideW", sw), ("StrideH", sh), ("DepthMultiplier", cout // cin),
             ("FusedActivationFunction", act), ("DilationWFactor", dw), ("DilationHFactor", dh)),
        )  # fmt: skip
        em.op(Op.DEPTHWISE_CONV_2D, [x.tensor, w, b], [y.tensor], opts)
    else:
        _grouped(em, x, y, weight, bias, group, plan.mode, (sh, sw), (dh, dw), act, out_name)


def _conv_options(mode: int, sw: int, sh: int, dw: int, dh: int, act: int) -> Options:
    return Options(
        "Conv2DOptions",
        (("Padding", mode), ("StrideW", sw), ("StrideH", sh), ("FusedActivationFunction", act),
         ("DilationWFactor", dw), ("DilationHFactor", dh)),
    )  # fmt: skip


def _grouped(
    em: Emitter,
    x: Value,
    y: Value,
    weight: np.ndarray,
    bias: np.ndarray,
    group: int,
    mode: int,
    strides: tuple[int, int],
    dilations: tuple[int, int],
    act: int,
    name: str,
) -> None:
    n, h, w, cin = x.stored_shape
    _, oh, ow, cout = y.stored_shape
    in_q, out_q = em.quant_of(x), em.quant_of(y)
    parts = [em.new_tensor(f"{name}/group{g}_in", (n, h, w, cin // group), in_q) for g in range(group)]
    em.op(Op.SPLIT, [em.int_const(f"{name}/split_axis", np.asarray(3)), x.tensor], parts,
          Options("SplitOptions", (("NumSplits", group),)))  # fmt: skip
    outs = []
    og = cout // group
    for g in range(group):
        wg = conv_weight_ohwi(weight[g * og : (g + 1) * og])
        wt, bt = _weights_and_bias(em, f"{name}/group{g}", wg, bias[g * og : (g + 1) * og], 0, in_q)
        out = em.new_tensor(f"{name}/group{g}_out", (n, oh, ow, og), out_q)
        opts = _conv_options(mode, strides[1], strides[0], dilations[1], dilations[0], act)
        em.op(Op.CONV_2D, [parts[g], wt, bt], [out], opts)
        outs.append(out)
    em.op(Op.CONCATENATION, outs, [y.tensor], Options("ConcatenationOptions", (("Axis", 3),)))
