"""Empirical bias correction: cancel the mean output shift that rounding a layer's weights to int8 causes.

Why: per-channel int8 weights ``Wq = W + dW`` change every output by ``dW . x``; its mean over the data,
``dW . E[x]``, is a systematic offset (not noise) that the following layers carry and amplify -- worst in
depthwise convs, whose few taps per channel round coarsely. Subtracting it from the bias (Nagel et al.,
"Data-Free Quantization", 2019, empirical variant) makes the int8 layer's output unbiased on the
calibration data. The float model is not changed: the corrected copy is only what the emitter quantizes,
and validation still compares with the original float model.

``dW`` is computed with the emitter's own weight scales (:func:`nirc.tflite.quantize.weight_scales`,
same ``WEIGHT_RANGE``), so the correction matches the int8 weights that are written. ``E[x]`` is each
layer input's per-channel mean over the calibration samples and positions; padding is ignored (its zeros
make border outputs' true shift slightly smaller), which is why the correction is opt-in and measured.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from nirc.quant.calibration import CalibrationSet
from nirc.quant.layers import attr_int, weighted_layers


def _layers(proto: onnx.ModelProto) -> list[tuple[onnx.NodeProto, str, str]]:
    """(node, weight initializer, bias initializer) of Convs (dense or depthwise) and Gemms (transB=1) with a bias."""
    return [(layer.node, layer.weight, layer.bias) for layer in weighted_layers(proto) if layer.bias is not None]


def _quantized(weight: np.ndarray) -> np.ndarray:
    """``weight`` as the emitter rounds it: symmetric per output channel (axis 0 here, as in ONNX)."""
    from nirc.tflite.quantize import INT8_MAX, weight_scales

    scales = weight_scales(weight, 0, None, 1.0).astype(np.float64)
    shape = (-1,) + (1,) * (weight.ndim - 1)
    q = np.clip(np.round(weight / scales.reshape(shape)), -INT8_MAX, INT8_MAX)
    return (q * scales.reshape(shape)).astype(np.float64)


def _input_means(
    proto: onnx.ModelProto, samples: Sequence[dict[str, np.ndarray]], names: list[str]
) -> dict[str, np.ndarray]:
    """Per-channel mean (axis 1) of each tensor over samples and positions, one sample at a time (bounded memory)."""
    from nirc.verify import run_tensors

    sums: dict[str, np.ndarray] = {}
    for sample in samples:
        values = run_tensors(proto, [sample], names)
        for name, value in values.items():
            v = np.asarray(value, dtype=np.float64)
            axes = tuple(i for i in range(v.ndim) if i != 1)
            sums[name] = sums.get(name, 0.0) + v.mean(axis=axes)
    return {name: total / len(samples) for name, total in sums.items()}


def correct_biases(proto: onnx.ModelProto, calib: CalibrationSet) -> tuple[onnx.ModelProto, int]:
    """A copy of ``proto`` whose Conv/Gemm biases absorb the mean int8 weight-rounding error; and how many changed."""
    layers = _layers(proto)
    if not layers or not len(calib):
        return proto, 0
    means = _input_means(proto, [dict(s) for s in calib.samples], sorted({n.input[0] for n, _, _ in layers}))
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    inits = {i.name: i for i in out.graph.initializer}
    done: set[str] = set()
    changed = 0
    for node, weight_name, bias_name in layers:
        if bias_name in done:
            continue  # a bias shared by two layers cannot take two corrections
        weight = numpy_helper.to_array(inits[weight_name]).astype(np.float64)
        bias = numpy_helper.to_array(inits[bias_name]).astype(np.float64)
        mean = means[node.input[0]]
        delta = _quantized(weight) - weight
        if node.op_type == "Gemm":
            shift = delta @ mean
        elif weight.shape[1] == 1 and weight.shape[0] == mean.shape[0] and attr_int(node, "group", 1) > 1:
            shift = delta.sum(axis=(1, 2, 3)) * mean  # depthwise: channel c reads only input channel c
        else:
            shift = np.einsum("oikl,i->o", delta, mean)
        if shift.shape != bias.shape:
            continue
        inits[bias_name].CopyFrom(numpy_helper.from_array((bias - shift).astype(np.float32), bias_name))
        done.add(bias_name)
        changed += 1
    return out, changed
