"""Quantization arithmetic: activation parameters, per-channel weights, int32 bias.

Conventions follow the TFLite int8 spec, which is what both the LiteRT reference
kernels and Vela's NPU code generator assume:

* activations: asymmetric per-tensor int8, range widened to contain 0 so that zero
  padding (PAD, SAME convs) is exact;
* weights: symmetric per-channel int8 (zero point 0) on the output-channel axis;
* bias: int32 with ``scale = input_scale * weight_scale[c]`` and zero point 0, so the
  accumulator needs no rescale before the bias add.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Literal

import numpy as np

from nirc.tflite.builder import QParams

INT8_MIN = -128
INT8_MAX = 127
INT16_MAX = 32767
INT32_LIMIT = 2**31 - 1
#: Smallest range span turned into a scale; a degenerate (constant) tensor would
#: otherwise get scale 0, which LiteRT rejects and Vela flags as an infinite rescale.
MIN_SPAN = 1e-6

#: Output quantization TFLite mandates for int8 LOGISTIC / SOFTMAX and TANH.
SIGMOID_QPARAMS = QParams((1.0 / 256.0,), (-128,))
TANH_QPARAMS = QParams((1.0 / 128.0,), (0,))
#: Their int16 forms (16-bit activations): TFLite's int16 LOGISTIC and TANH write [-1, 1) in Q15.
WIDE_FIXED_QPARAMS = {
    SIGMOID_QPARAMS: QParams((1.0 / 32768.0,), (0,), bits=16),
    TANH_QPARAMS: QParams((1.0 / 32768.0,), (0,), bits=16),
}


def _f32(value: float) -> float:
    return float(np.float32(value))


def activation_qparams(lo: float, hi: float) -> QParams:
    """Asymmetric int8 parameters for a calibrated ``(min, max)`` range."""
    lo = min(float(lo), 0.0)
    hi = max(float(hi), 0.0)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"non-finite range ({lo}, {hi})")
    span = max(hi - lo, MIN_SPAN)
    scale = _f32(span / 255.0)
    zero_point = int(np.clip(round(-128.0 - lo / scale), INT8_MIN, INT8_MAX))
    return QParams((scale,), (zero_point,))


def activation_qparams16(lo: float, hi: float) -> QParams:
    """Symmetric int16 parameters (zero point 0) for a calibrated ``(min, max)`` range.

    Symmetric because TFLite's 16x8 kernels (CONV_2D, FULLY_CONNECTED, ADD, ...) require a zero
    point of 0 on int16 activations; the 256x finer step than int8 pays for the lost half range.
    """
    lo, hi = float(lo), float(hi)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"non-finite range ({lo}, {hi})")
    bound = max(abs(lo), abs(hi), MIN_SPAN)
    return QParams((_f32(bound / INT16_MAX),), (0,), bits=16)


def widened(q: QParams) -> QParams:
    """int16 parameters that hold every value the int8 parameters ``q`` can represent."""
    s, z = q.scale[0], q.zero_point[0]
    return activation_qparams16(s * (INT8_MIN - z), s * (INT8_MAX - z))


def int_bounds(q: QParams) -> tuple[int, int]:
    """The integer range of the type ``q`` is for."""
    return (-INT16_MAX - 1, INT16_MAX) if q.bits == 16 else (INT8_MIN, INT8_MAX)


def quantize(array: np.ndarray, q: QParams) -> np.ndarray:
    """Quantize a float array with per-tensor or per-axis parameters to int8 (int16 for 16-bit ``q``)."""
    arr = np.asarray(array, dtype=np.float64)
    scale = np.asarray(q.scale, dtype=np.float64)
    zp = np.asarray(q.zero_point, dtype=np.float64)
    if not q.per_tensor:
        shape = [1] * arr.ndim
        shape[q.axis] = -1
        scale = scale.reshape(shape)
        zp = zp.reshape(shape)
    lo, hi = int_bounds(q)
    return np.clip(np.round(arr / scale) + zp, lo, hi).astype(np.int16 if q.bits == 16 else np.int8)


def dequantize(array: np.ndarray, q: QParams) -> np.ndarray:
    arr = np.asarray(array, dtype=np.float64)
    return ((arr - q.zero_point[0]) * q.scale[0]).astype(np.float32)


def constant_qparams(array: np.ndarray, bits: int = 8) -> QParams:
    """Per-tensor parameters for a constant operand of ADD/MUL/SUB.

    The range is the constant's own (widened to 0), so each of its extreme values is
    exactly representable; a single repeated value is then exact as well.
    """
    arr = np.asarray(array, dtype=np.float64)
    make = activation_qparams16 if bits == 16 else activation_qparams
    if arr.size == 0:
        return make(0.0, 1.0)
    return make(float(arr.min()), float(arr.max()))


def weight_scales(weight: np.ndarray, axis: int, bias: np.ndarray | None, input_scale: float) -> np.ndarray:
    """Symmetric per-channel scales ``max|w|/127`` along ``axis``.

    A channel whose scale would be 0 (all-zero weights) or so small that its bias
    overflows int32 gets the smallest scale that keeps ``bias`` representable.
    """
    moved = np.moveaxis(np.asarray(weight, dtype=np.float64), axis, 0).reshape(weight.shape[axis], -1)
    scales = np.abs(moved).max(axis=1) / INT8_MAX if moved.size else np.zeros(weight.shape[axis])
    if WEIGHT_RANGE.get() == "mse" and moved.size:
        scales = _mse_scales(moved, scales)
    floor = np.full_like(scales, 1e-12)
    if bias is not None:
        floor = np.maximum(
            floor, np.abs(np.asarray(bias, dtype=np.float64)) / (input_scale * (INT32_LIMIT // 2))
        )
    scales = np.maximum(scales, floor)
    return scales.astype(np.float32)


WeightRange = Literal["max", "mse", "adaround"]
WEIGHT_RANGE: ContextVar[WeightRange] = ContextVar("nirc_weight_range", default="max")
"""How per-channel weight ranges are chosen while emitting: ``max`` (``max|w|``, no clipping) or ``mse``
(per channel, the clipped range that minimises the squared rounding + clipping error of the weights);
``adaround`` emits with ``max`` ranges weights :mod:`nirc.quant.adaround` already put on their levels.
Set for one emission by :func:`nirc.backend.emit`; a context variable so the emitter's op builders
need no new argument."""
MSE_CLIP_GRID = np.linspace(1.0, 0.3, 71)
"""Largest first: on equal error the unclipped range wins."""


def _mse_scales(moved: np.ndarray, full: np.ndarray) -> np.ndarray:
    """Per row, ``full`` shrunk by the grid factor with the least squared quantization error.

    Why it can help: one large weight (a re-parameterised kernel's centre tap) sets ``max|w|`` and
    rounds every other weight of its channel to a few levels; clipping it a little costs less
    than that rounding. The grid includes 1.0, so the result is never worse in weight MSE.
    """
    best = full.copy()
    best_err = np.full(full.shape, np.inf)
    for factor in MSE_CLIP_GRID:
        scale = np.maximum(full * factor, 1e-30)[:, None]
        q = np.clip(np.round(moved / scale), -INT8_MAX, INT8_MAX) * scale
        err = np.sum((q - moved) ** 2, axis=1)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best = np.where(better, full * factor, best)
    return best


def quantize_weights(
    weight: np.ndarray, axis: int, bias: np.ndarray | None, input_scale: float
) -> tuple[np.ndarray, QParams]:
    scales = weight_scales(weight, axis, bias, input_scale)
    q = QParams(tuple(float(s) for s in scales), (0,) * len(scales), axis)
    return quantize(weight, q), q


def quantize_bias(
    bias: np.ndarray, input_scale: float, w: QParams, input_bits: int = 8
) -> tuple[np.ndarray, QParams]:
    """int32 bias with ``scale[c] = input_scale * weight_scale[c]`` (zero point 0).

    For an int16 input the bias is int64, the type TFLite's 16x8 CONV_2D / FULLY_CONNECTED
    kernels take (Vela needs its values within 40 bits; the int32 clip keeps them there).
    """
    scales = np.asarray([np.float32(input_scale) * np.float32(s) for s in w.scale], dtype=np.float64)
    values = np.round(np.asarray(bias, dtype=np.float64) / scales)
    values = np.clip(values, -INT32_LIMIT, INT32_LIMIT).astype(np.int64 if input_bits == 16 else np.int32)
    q = QParams(tuple(_f32(s) for s in scales), (0,) * len(scales), 0)
    return values, q
