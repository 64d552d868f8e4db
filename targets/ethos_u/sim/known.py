"""Known, explained differences between the NPU and TFLite Micro, each checked, never assumed.

A rule explains a divergence only when recomputing the op from the reference's own
inputs with the NPU's register values reproduces the simulated result exactly, and
recomputing it with TFLite's values reproduces the reference exactly: the difference
is then located in one named quantity, not in the functional model.

Rule ``vela-f32-mul-scale``: Vela derives an elementwise MUL's output multiplier from
float32 scales, TFLite (and TFLite Micro) from doubles; the multipliers can differ in
the last bits (measured on EfficientNet-B0: 1387780352 vs 1387780328 at shift 38), which
changes one result in tens of thousands by 1 LSB.
"""

from __future__ import annotations

import math

import numpy as np
from nirc.targets.ethos_u.sim import cmdstream, container
from nirc.targets.ethos_u.sim.engine import rescale

RULES = ("vela-f32-mul-scale",)
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
