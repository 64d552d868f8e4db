"""Data-driven weight rounding (AdaRound): round each int8 weight up or down to keep the layer's output.

Why: rounding every weight to the nearest int8 level minimises the weights' own error, not the layer's
output error on real inputs, which is what the following layers see. With ``x`` the layer's input
patches on the calibration data and ``H = E[x x^T]``, the output error of a rounding is ``dW H dW^T``
per output channel; correlated inputs make some up/down choices cancel each other's error. AdaRound
(Nagel et al., "Up or Down? Adaptive Rounding for Post-Training Quantization", 2020) relaxes the choice
to ``h(V)`` in [0, 1], minimises that error plus a term that drives ``h`` to 0 or 1, and then rounds.

How it reaches the int8 file: the float copy that the emitter quantizes gets weights that lie exactly
on the int8 grid at the chosen levels, so the emitter's own symmetric ``max|w|/127`` scales and its
round-to-nearest reproduce them. Each channel's largest weight keeps its nearest level, which keeps
that scale. The float model is not changed: validation still compares with the original.

Guarded per channel: a channel keeps the nearest rounding unless the learned one has less output
error on the calibration data. Layers with fewer than two input rows (patches) per weight of a
channel are left alone: late layers of a small-input network see a few positions per sample, and a
rounding fitted to so few rows fits the samples rather than the data. For the same reason the
accuracy guard judges rewrites with nearest rounding (:func:`nirc.pipeline.accuracy_guard`), not with this. Opt-in
(``--weight-range adaround``) and measured in ``benchmarks/results/accuracy.md`` before any default.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from nirc.quant.calibration import CalibrationSet
from nirc.quant.layers import WeightedLayer, weighted_layers

ZETA, GAMMA = 1.1, -0.1  # the rectified sigmoid's stretch (AdaRound's values)
ITERATIONS = 300
REG_WEIGHT = 0.01
MAX_ROWS = 8192  # input patches per layer, sampled evenly over the calibration samples
ROWS_PER_WEIGHT = 2  # a layer needs this many input rows per weight of a channel, else it keeps nearest
FLOP_BUDGET = 4e11  # per layer: larger layers keep nearest rounding (numpy on the CPU)
HESSIAN_BYTES = 256 << 20  # layers whose inputs are gathered in one pass over the calibration data


def _attrs(node: onnx.NodeProto) -> dict[str, object]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _layers(proto: onnx.ModelProto) -> list[WeightedLayer]:
    """The per-channel-quantized layers (:mod:`nirc.quant.layers`) whose input patches can be formed here:
    every Gemm, and Convs with explicit padding."""
    return [
        layer
        for layer in weighted_layers(proto)
        if layer.node.op_type != "Conv" or _attrs(layer.node).get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET")
    ]


def _patches(x: np.ndarray, node: onnx.NodeProto, kernel: tuple[int, int], rows: int, seed: int) -> np.ndarray:
    """``rows`` sampled im2col rows of a conv input ``x`` (N, C, H, W): shape (rows, C, kh, kw)."""
    attrs = _attrs(node)
    pads = list(attrs.get("pads", [0, 0, 0, 0]))  # type: ignore[call-overload]
    sy, sx = list(attrs.get("strides", [1, 1]))  # type: ignore[call-overload]
    dy, dx = list(attrs.get("dilations", [1, 1]))  # type: ignore[call-overload]
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    kh, kw = kernel
    ho = (xp.shape[2] - (kh - 1) * dy - 1) // sy + 1
    wo = (xp.shape[3] - (kw - 1) * dx - 1) // sx + 1
    rng = np.random.default_rng(seed)
    total = x.shape[0] * ho * wo
    pick = rng.choice(total, size=min(rows, total), replace=False) if total > rows else np.arange(total)
    n, rem = np.divmod(np.sort(pick), ho * wo)
    i, j = np.divmod(rem, wo)
    ys = (i * sy)[:, None] + np.arange(kh)[None, :] * dy  # (rows, kh)
    xs = (j * sx)[:, None] + np.arange(kw)[None, :] * dx  # (rows, kw)
    # xp[n, c, ys, xs] for every row: (rows, C, kh, kw)
    return np.asarray(xp[n[:, None, None, None], np.arange(x.shape[1])[None, :, None, None],
                         ys[:, None, :, None], xs[:, None, None, :]], dtype=np.float64)  # fmt: skip


def _hessian(
    layer: WeightedLayer, x: np.ndarray, shape: tuple[int, ...], rows: int, seed: int
) -> tuple[np.ndarray, int]:
    """Sum of ``x x^T`` over sampled rows, (K, K) or (C, k, k) per channel for a depthwise conv; the row count."""
    if layer.node.op_type == "Gemm":
        flat = x.reshape(x.shape[0], -1).astype(np.float64)
        return np.asarray(flat.T @ flat), flat.shape[0]
    p = _patches(x, layer.node, (shape[2], shape[3]), rows, seed)
    if layer.depthwise:
        per = p.reshape(p.shape[0], p.shape[1], -1)
        return np.asarray(np.einsum("rck,rcl->ckl", per, per, optimize=True)), p.shape[0]
    flat = p.reshape(p.shape[0], -1)
    return np.asarray(flat.T @ flat), p.shape[0]


def _errors(d: np.ndarray, h: np.ndarray, depthwise: bool) -> np.ndarray:
    """Per channel ``d H d^T`` for rounding offsets ``d`` (O, K)."""
    if depthwise:
        return np.asarray(np.einsum("ck,ckl,cl->c", d, h, d, optimize=True))
    return np.asarray(np.sum((d @ h) * d, axis=1))


def learn_rounding(w_div: np.ndarray, h: np.ndarray, depthwise: bool, iterations: int = ITERATIONS) -> np.ndarray:
    """Integer levels (O, K) for weights in units of their scale, ``w_div``; nearest where not better.

    ``h``: the input second moment (K, K), or (O, K, K) for a depthwise conv.
    """
    floor = np.floor(w_div)
    rest = w_div - floor
    nearest = np.round(w_div)
    fixed = np.zeros_like(w_div, dtype=bool)
    fixed[np.arange(w_div.shape[0]), np.argmax(np.abs(w_div), axis=1)] = True  # keeps the channel's scale
    scale = (np.trace(h, axis1=-2, axis2=-1) / h.shape[-1]).reshape(-1, 1) if depthwise else np.trace(h) / h.shape[0]
    hn = h / np.maximum(scale, 1e-30)[..., None] if depthwise else h / max(float(scale), 1e-30)
    p = np.clip((rest - GAMMA) / (ZETA - GAMMA), 1e-4, 1 - 1e-4)
    v = np.log(p / (1 - p))
    m, s = np.zeros_like(v), np.zeros_like(v)
    lr, b1, b2 = 0.01, 0.9, 0.999
    warm = iterations // 5
    for t in range(1, iterations + 1):
        sig = 1.0 / (1.0 + np.exp(-v))
        soft = np.clip(sig * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)
        soft = np.where(fixed, nearest - floor, soft)
        d = floor + soft - w_div
        grad = 2.0 * (np.einsum("ck,ckl->cl", d, hn, optimize=True) if depthwise else d @ hn)
        if t > warm:
            beta = 20.0 + (2.0 - 20.0) * (t - warm) / max(1, iterations - warm)
            u = 2.0 * soft - 1.0
            grad = grad + REG_WEIGHT * w_div.shape[1] * (-beta * np.abs(u) ** (beta - 1) * np.sign(u) * 2.0)
        inside = (sig * (ZETA - GAMMA) + GAMMA > 0) & (sig * (ZETA - GAMMA) + GAMMA < 1) & ~fixed
        g = np.where(inside, grad * sig * (1 - sig) * (ZETA - GAMMA), 0.0)
        m = b1 * m + (1 - b1) * g
        s = b2 * s + (1 - b2) * g * g
        v = v - lr * (m / (1 - b1**t)) / (np.sqrt(s / (1 - b2**t)) + 1e-8)
    sig = 1.0 / (1.0 + np.exp(-v))
    learned = np.where(fixed, nearest, floor + (sig * (ZETA - GAMMA) + GAMMA >= 0.5))
    learned = np.clip(learned, -127, 127)
    better = _errors(learned - w_div, h, depthwise) < _errors(nearest - w_div, h, depthwise)
    return np.where(better[:, None], learned, nearest)


def _flops(shape: tuple[int, ...], depthwise: bool) -> float:
    k = int(np.prod(shape[1:]))
    return float(shape[0]) * k * (k if not depthwise else 1) * 2 * ITERATIONS * (1 if not depthwise else k)


def adaround(proto: onnx.ModelProto, calib: CalibrationSet) -> tuple[onnx.ModelProto, int]:
    """A copy of ``proto`` whose Conv/Gemm weights sit on the int8 levels AdaRound chose; and how many changed."""
    from nirc.tflite.quantize import weight_scales
    from nirc.verify import run_tensors

    samples = [dict(s) for s in calib.samples]
    inits = {i.name: i for i in proto.graph.initializer}
    layers = []
    for layer in _layers(proto):
        shape = tuple(int(d) for d in inits[layer.weight].dims)
        if _flops(shape, layer.depthwise) <= FLOP_BUDGET:
            layers.append((layer, shape))
    if not layers or not samples:
        return proto, 0
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    new_inits = {i.name: i for i in out.graph.initializer}
    changed = 0
    done: set[str] = set()
    pending = [(layer, shape, _hessian_bytes(shape, layer.depthwise)) for layer, shape in layers]
    while pending:
        chunk: list[tuple[WeightedLayer, tuple[int, ...]]] = []
        size = 0
        while pending and (not chunk or size + pending[0][2] <= HESSIAN_BYTES):
            layer, shape, nbytes = pending.pop(0)
            chunk.append((layer, shape))
            size += nbytes
        sums: dict[int, np.ndarray] = {}
        rows: dict[int, int] = {}
        per_sample = max(1, MAX_ROWS // len(samples))
        names = sorted({layer.node.input[0] for layer, _ in chunk})
        for index, sample in enumerate(samples):
            values = run_tensors(proto, [sample], names)
            for k, (layer, shape) in enumerate(chunk):
                x = np.asarray(values[layer.node.input[0]], dtype=np.float64)
                part, count = _hessian(layer, x, shape, per_sample, seed=index)
                sums[k] = sums[k] + part if k in sums else part
                rows[k] = rows.get(k, 0) + count
        for k, (layer, shape) in enumerate(chunk):
            if layer.weight in done:
                continue  # a weight shared by two layers keeps the rounding learned for the first
            weight = numpy_helper.to_array(inits[layer.weight]).astype(np.float64)
            flat = weight.reshape(shape[0], -1)
            if rows[k] < ROWS_PER_WEIGHT * flat.shape[1]:
                continue  # too few input rows: the rounding would fit these samples, not the data
            scales = weight_scales(weight, 0, None, 1.0).astype(np.float64)
            levels = learn_rounding(flat / scales[:, None], sums[k] / max(rows[k], 1), layer.depthwise)
            if np.array_equal(levels, np.round(flat / scales[:, None])):
                continue
            value = (levels * scales[:, None]).reshape(weight.shape).astype(np.float32)
            new_inits[layer.weight].CopyFrom(numpy_helper.from_array(value, layer.weight))
            done.add(layer.weight)
            changed += 1
    return out, changed


def _hessian_bytes(shape: tuple[int, ...], depthwise: bool) -> int:
    k = int(np.prod(shape[1:]))
    return 8 * (shape[0] * k * k if depthwise else k * k)


__all__ = ["adaround", "learn_rounding"]
