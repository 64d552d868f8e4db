"""Known, explained differences between the NPU and TFLite Micro, each checked, never assumed.

A rule explains a divergence only when recomputing the op from the reference's own
inputs with the NPU's register values reproduces the simulated result exactly, and
recomputing it with TFLite's values reproduces the reference exactly: the difference
is then located in one named quantity, not in the functional model.

Rule ``vela-f32-mul-scale``: Vela derives an elementwise MUL's output multiplier from
float32 scales, TFLite (and TFLite Micro) from doubles; the multipliers can differ in
the last bits (measured on EfficientNet-B0: 1387780352 vs 1387780328 at shift 38), which
changes one result in tens of thousands by 1 LSB.

Rule ``vela-matmul-scale``: Vela lowers BATCH_MATMUL on U55/U65 to an elementwise MUL and a
REDUCE_SUM per output column, whose output multiplier is not TFLite's (EfficientFormerV2's
talking-heads attention: 1525499041 vs 1525499062 >> 38); 1 LSB in one result in thousands.
Explained only when the product recomputed from the reference's operands reproduces the NPU's
result with Vela's multiplier and the reference's with TFLite's.

Rule ``vela-exact-lut``: Vela runs an int8 LOGISTIC or TANH as a 256-entry LUT holding
the real function rounded once; TFLite Micro's fixed-point kernels saturate beyond an
input radius of a few units (4 integer bits). With a large input scale (a detection
head's class logits at 4.0 per code) TFLite Micro already returns 0 or 1 one code away
from the zero point, where the LUT holds sigmoid(-4) = 0.018. The rule holds only when
every differing element is the NPU's exactly rounded function of the reference's input.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from nirc.targets.ethos_u.sim import cmdstream, container
from nirc.targets.ethos_u.sim.engine import rescale

RULES = ("vela-f32-mul-scale", "vela-exact-lut", "vela-matmul-scale")
"""Rule names; an explained difference's text starts with its rule's name."""


def tflite_multiplier(real: float) -> tuple[int, int]:
    """TFLite's QuantizeMultiplier in the NPU's (scale, shift) form: ``real = scale / 2**shift``."""
    if real == 0.0:
        return 0, 0
    fraction, exponent = math.frexp(real)
    q = math.floor(abs(fraction) * (1 << 31) + 0.5)  # std::round: half away from zero
    if q == 1 << 31:
        q //= 2
        exponent += 1
    return q, 31 - exponent


def explain(
    block: cmdstream.BlockOp | None,
    model: container.VelaModel,
    producer: container.OpInfo | None,
    inputs: dict[int, np.ndarray],
    produced: np.ndarray,
    expected: np.ndarray,
) -> str | None:
    """The rule that accounts for ``produced`` differing from ``expected`` at ``producer``'s output, or None.

    ``inputs``: the reference's values of the producer's input tensors (by int8 tensor index).
    """
    if producer is not None and producer.opcode in _LUT_FUNCTIONS:
        return _exact_lut(block, model, producer, inputs, produced, expected)
    if producer is not None and producer.opcode == "BATCH_MATMUL":
        return _matmul_scale(block, model, producer, inputs, produced, expected)
    if block is None or producer is None or producer.opcode != "MUL" or block.name != "ELEMENTWISE.MUL":
        return None
    first, second = producer.inputs[:2]
    x, y, out = model.tensors[first], model.tensors[second], model.tensors[producer.outputs[0]]
    if not (x.scale and y.scale and out.scale) or first not in inputs or second not in inputs:
        return None
    left = inputs[first].astype(np.int64) - int(x.zero_point or 0)
    raw = left * (inputs[second].astype(np.int64) - int(y.zero_point or 0))
    real = float(x.scale) * float(y.scale) / float(out.scale)
    tfl_scale, tfl_shift = tflite_multiplier(real)
    npu_scale, npu_shift = block.ofm_scale
    if (npu_scale, npu_shift) == (tfl_scale, tfl_shift):
        return None

    def result(scale: int, shift: int, rounding: str) -> np.ndarray:
        value = rescale(raw, scale, shift, rounding) + int(out.zero_point or 0)
        clipped: np.ndarray = np.clip(value, -128, 127).reshape(expected.shape)
        return clipped

    npu = result(npu_scale, npu_shift, block.rounding)
    tfl = result(tfl_scale, tfl_shift, "TFL")
    if np.array_equal(npu, produced.reshape(expected.shape)) and np.array_equal(tfl, expected.astype(np.int64)):
        return (
            f"vela-f32-mul-scale: Vela's MUL output multiplier {npu_scale} >> {npu_shift} (from float32 scales) "
            f"vs TFLite's {tfl_scale} >> {tfl_shift} (double); each reproduces its result exactly"
        )
    return None


def _sigmoid(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = 1.0 / (1.0 + np.exp(-x))
    return out


_LUT_FUNCTIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {"LOGISTIC": _sigmoid, "TANH": np.tanh}


def _exact_lut(
    block: cmdstream.BlockOp | None,
    model: container.VelaModel,
    producer: container.OpInfo,
    inputs: dict[int, np.ndarray],
    produced: np.ndarray,
    expected: np.ndarray,
) -> str | None:
    """``vela-exact-lut`` when the NPU applied a LUT and its result is the real function rounded once."""
    if block is None or block.activation.lut_index is None or producer.inputs[0] not in inputs:
        return None
    x, out = model.tensors[producer.inputs[0]], model.tensors[producer.outputs[0]]
    if not (x.scale and out.scale) or x.dtype != np.int8 or out.dtype != np.int8:
        return None
    codes = inputs[producer.inputs[0]].astype(np.float64).reshape(-1)
    real = _LUT_FUNCTIONS[producer.opcode]((codes - int(x.zero_point or 0)) * float(x.scale))
    rounded = np.clip(np.round(real / float(out.scale)) + int(out.zero_point or 0), -128, 127)
    got = produced.reshape(-1).astype(np.float64)
    if rounded.size != got.size or not np.array_equal(rounded, got):
        return None
    differing = np.unique(codes[got != expected.reshape(-1)]).astype(int).tolist()
    return (
        f"vela-exact-lut: Vela's {producer.opcode} LUT is the function rounded once (every element reproduced); "
        f"TFLite Micro's fixed-point kernel saturates at input codes {differing[:6]} (input scale {float(x.scale):g})"
    )


def _matmul_scale(
    block: cmdstream.BlockOp | None,
    model: container.VelaModel,
    producer: container.OpInfo,
    inputs: dict[int, np.ndarray],
    produced: np.ndarray,
    expected: np.ndarray,
) -> str | None:
    """``vela-matmul-scale`` when each multiplier reproduces its own result from the exact integer product.

    The operands' orientation (TFLite's adj_x/adj_y) is taken from their shapes; every reading
    that gives the output shape is tried, and only an exact reproduction of both results counts.
    """
    a_i, b_i, y_i = producer.inputs[0], producer.inputs[1], producer.outputs[0]
    if block is None or a_i not in inputs or b_i not in inputs:
        return None
    x, w, out = model.tensors[a_i], model.tensors[b_i], model.tensors[y_i]
    if not (x.scale and w.scale and out.scale):
        return None
    a = inputs[a_i].astype(np.int64) - int(x.zero_point or 0)
    b = inputs[b_i].astype(np.int64) - int(w.zero_point or 0)
    tfl_scale, tfl_shift = tflite_multiplier(float(x.scale) * float(w.scale) / float(out.scale))
    npu_scale, npu_shift = block.ofm_scale
    if (npu_scale, npu_shift) == (tfl_scale, tfl_shift):
        return None
    shape = tuple(out.shape)
    for left in (a, np.swapaxes(a, -1, -2)):
        for right in (b, np.swapaxes(b, -1, -2)):
            if left.shape[-1] != right.shape[-2] or left.shape[:-1] + right.shape[-1:] != shape:
                continue
            raw = np.matmul(left, right)

            def result(scale: int, shift: int, rounding: str, raw: np.ndarray = raw) -> np.ndarray:
                value: np.ndarray = np.clip(rescale(raw, scale, shift, rounding) + int(out.zero_point or 0), -128, 127)
                return value.reshape(-1)

            npu = result(npu_scale, npu_shift, block.rounding)
            tfl = result(tfl_scale, tfl_shift, "TFL")
            if np.array_equal(npu, produced.reshape(-1)) and np.array_equal(tfl, expected.reshape(-1)):
                return (
                    f"vela-matmul-scale: Vela's BATCH_MATMUL output multiplier {npu_scale} >> {npu_shift} vs "
                    f"TFLite's {tfl_scale} >> {tfl_shift}; each reproduces its result exactly"
                )
    return None
