"""Gemm / MatMul with a constant weight -> FULLY_CONNECTED.

FULLY_CONNECTED stores its weight [units, depth], i.e. Gemm's B transposed (unless
transB).  Its input is always made 2-D: Vela only places FCs with a 2-D output on
the NPU.  ``alpha`` and a broadcast ``beta * C`` fold into the constant weight and
bias; a per-row C becomes an ADD after the FC.

A flattened NHWC feature map arrives with its columns in (H, W, C) order; instead
of transposing the activation back to (C, H, W), the weight's columns are permuted
once here, which is exact and free at run time.
"""

from __future__ import annotations

import numpy as np
import onnx

from nirc.tflite.builder import BuiltinOperator as Op
from nirc.tflite.builder import Options
from nirc.tflite.context import Emitter, Value
from nirc.tflite.fusion import Activation
from nirc.tflite.graph import GraphInfo, attr_float, attr_int
from nirc.tflite.quantize import quantize_bias, quantize_weights


def check_gemm(info: GraphInfo, node: onnx.NodeProto) -> str | None:
    if attr_int(node, "transA", 0):
        return "transA=1 is not supported"
    if not info.is_const(node.input[1]):
        return "B is not a constant (only constant-weight Gemm maps to FULLY_CONNECTED)"
    if not info.has_shape(node.input[0]) or len(info.shape(node.input[0])) != 2:
        return "A must be 2-D"
    c_name = node.input[2] if len(node.input) > 2 else ""
    if c_name and not info.is_const(c_name) and attr_float(node, "beta", 1.0) != 1.0:
        return "non-constant C with beta != 1"
    return None


def check_matmul(info: GraphInfo, node: onnx.NodeProto) -> str | None:
    b = info.consts.get(node.input[1]) if node.input[1] in info.consts else None
    if not info.is_const(node.input[1]):
        return "B is not a constant (only constant-weight MatMul maps to FULLY_CONNECTED)"
    if b is not None and b.ndim > 2 and any(d != 1 for d in b.shape[:-2]):
        return "batched (>2-D) constant B is not supported"
    if not info.has_shape(node.input[0]):
        return "A shape unknown"
    return None


def _activation_value(em: Emitter, name: str) -> Value:
    v = em.values.get(name)
    if v is not None and v.col_order is not None:
        return em.fit(v, name)
    return em.value(name)


def _fully_connected(
    em: Emitter, x: Value, weight: np.ndarray, bias: np.ndarray, out: int, act: int, name: str
) -> None:
    """FC of a 2-D ``x`` with weight [units, depth] (ONNX column order)."""
    if x.col_order is not None:
        weight = weight[:, x.col_order]
    in_q = em.quant_of(x)
    if in_q is None:
        w = em.mb.add_constant(f"{name}/weights", weight.astype(np.float32))
        b = em.mb.add_constant(f"{name}/bias", bias.astype(np.float32))
    else:
        qw, wq = quantize_weights(weight, 0, bias, in_q.scale[0])
        qb, bq = quantize_bias(bias, in_q.scale[0], wq, in_q.bits)
        w = em.mb.add_constant(f"{name}/weights", qw, wq)
        b = em.mb.add_constant(f"{name}/bias", qb, bq)
    opts = Options("FullyConnectedOptions", (("FusedActivationFunction", act),))
    em.op(Op.FULLY_CONNECTED, [x.tensor, w, b], [out], opts)


def lower_gemm(em: Emitter, node: onnx.NodeProto) -> None:
    alpha = attr_float(node, "alpha", 1.0)
    beta = attr_float(node, "beta", 1.0)
    bmat = np.asarray(em.const(node.input[1]), np.float64)
    weight = (bmat if attr_int(node, "transB", 0) else bmat.T) * alpha
    units = weight.shape[0]
    x = _activation_value(em, node.input[0])
    act, out_name = em.activation(node)
    c_name = node.input[2] if len(node.input) > 2 else ""
    c = em.const(c_name) if c_name else None
    bias = np.zeros(units)
    extra: str | None = None
    if c is not None and (c.size == 1 or (c.size == units and (c.ndim == 1 or c.shape[0] == 1))):
        bias = np.broadcast_to(np.asarray(c, np.float64).reshape(-1) * beta, (units,)).copy()
    elif c_name:
        extra = c_name
    y_shape = em.shape(node.output[0])
    if extra is None:
        y = em.define(out_name, shape=y_shape)
        _fully_connected(em, x, weight.astype(np.float32), bias, y.tensor, act, out_name)
        return
    out_q = em.qparams(out_name)
    mid_q = None
    if c is not None:
        c_arr = np.asarray(c, np.float64) * beta
        c_tensor = em.float_const(f"{out_name}/c", c_arr.astype(np.float32))
        clo, chi = float(c_arr.min()), float(c_arr.max())
    else:
        c_value = em.value(c_name)
        c_tensor = c_value.tensor
        c_q = em.quant_of(c_value)
        clo, chi = em.real_range(c_q) if c_q is not None else (0.0, 0.0)
    if out_q is not None:
        lo, hi = em.real_range(out_q)
        mid_q = em.range_qparams(lo - chi, hi - clo)
    mid = em.new_tensor(f"{out_name}/fc", y_shape, mid_q)
    _fully_connected(em, x, weight.astype(np.float32), bias, mid, int(Activation.NONE), out_name)
    y = em.define(out_name, shape=y_shape)
    em.op(Op.ADD, [mid, c_tensor], [y.tensor], Options("AddOptions", (("FusedActivationFunction", act),)))


def lower_matmul(em: Emitter, node: onnx.NodeProto) -> None:
    bmat = np.asarray(em.const(node.input[1]), np.float32)
    if bmat.ndim > 2:  # [1, ..., 1, K, N]: one weight broadcast over every batch (check_matmul)
        bmat = bmat.reshape(bmat.shape[-2:])
    weight = bmat.reshape(-1, 1).T if bmat.ndim == 1 else bmat.T
    units, depth = weight.shape
    act, out_name = em.activation(node)
    x = _activation_value(em, node.input[0])
    y_shape = em.shape(node.output[0])
    if len(x.onnx_shape) == 2 and len(y_shape) == 2:
        y = em.define(out_name, shape=y_shape)
        _fully_connected(em, x, weight, np.zeros(units), y.tensor, act, out_name)
        return
    rows = int(np.prod(x.onnx_shape)) // depth
    x2 = em.reshaped(x, (rows, depth), f"{out_name}/in")
    out_q = em.qparams(out_name)
    mid = em.new_tensor(f"{out_name}/fc", (rows, units), out_q)
    _fully_connected(em, x2, weight, np.zeros(units), mid, act, out_name)
    em.alias(out_name, em.reshaped(Value(mid, (0, 1), (rows, units)), y_shape, out_name))
