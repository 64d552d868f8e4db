"""ONNX explicit/auto padding -> TFLite SAME/VALID, or an explicit PAD op first.

TFLite convs and pools only know SAME (extra padding at the end) and VALID.  Vela
handles both inside the NPU kernel, so we use them whenever they reproduce the ONNX
output exactly; otherwise a PAD (which Vela also runs on the NPU) precedes a VALID
op.  End padding the op never reads (a stride that skips it) is dropped first, which
turns many PyTorch-style symmetric pads into SAME.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import onnx
from tflite.Padding import Padding as _Padding

from nirc.tflite.graph import attr_ints, attr_str

Padding: Any = _Padding


@dataclass(frozen=True)
class PadPlan:
    """``mode`` for the TFLite op, and (begin, end) per spatial axis for a PAD before it."""

    mode: int
    explicit: tuple[tuple[int, int], ...] | None


def window_params(
    node: onnx.NodeProto, kernel: Sequence[int]
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(strides, dilations, pads as ONNX [b0, b1, ..., e0, e1, ...]) with defaults."""
    n = len(kernel)
    strides = tuple(attr_ints(node, "strides", [1] * n))
    dilations = tuple(attr_ints(node, "dilations", [1] * n))
    pads = tuple(attr_ints(node, "pads", [0] * (2 * n)))
    return strides, dilations, pads


def onnx_pads(
    node: onnx.NodeProto,
    in_sizes: Sequence[int],
    kernel: Sequence[int],
    out_sizes: Sequence[int],
) -> list[tuple[int, int]]:
    """(begin, end) per spatial axis as ONNX applies them, auto_pad resolved."""
    strides, dilations, pads = window_params(node, kernel)
    auto_s = attr_str(node, "auto_pad", "NOTSET")
    n = len(kernel)
    result = []
    for i in range(n):
        eff_k = (kernel[i] - 1) * dilations[i] + 1
        if auto_s in ("SAME_UPPER", "SAME_LOWER"):
            total = max((out_sizes[i] - 1) * strides[i] + eff_k - in_sizes[i], 0)
            small, big = total // 2, total - total // 2
            result.append((small, big) if auto_s == "SAME_UPPER" else (big, small))
        elif auto_s == "VALID":
            result.append((0, 0))
        else:
            result.append((pads[i], pads[i + n]))
    return result


def plan_padding(
    in_sizes: Sequence[int],
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
    pads: Sequence[tuple[int, int]],
    out_sizes: Sequence[int],
    *,
    allow_same: bool = True,
) -> PadPlan:
    """Choose SAME, VALID or explicit pads reproducing the ONNX output exactly.

    ``allow_same=False`` for AveragePool with ``count_include_pad``: TFLite's SAME
    average excludes the padding from the divisor, so the zeros must be real.
    """
    effective: list[tuple[int, int]] = []
    same_ok = True
    for i in range(len(kernel)):
        eff_k = (kernel[i] - 1) * dilations[i] + 1
        total = (out_sizes[i] - 1) * strides[i] + eff_k - in_sizes[i]
        begin = pads[i][0]
        end_used = total - begin  # end padding the windows actually read (may be < 0)
        effective.append((begin, max(end_used, 0)))
        tfl_out = math.ceil(in_sizes[i] / strides[i])
        if tfl_out != out_sizes[i] or max(total, 0) // 2 != begin:
            same_ok = False
    if all(b == 0 and e == 0 for b, e in effective):
        return PadPlan(Padding.VALID, None)
    if same_ok and allow_same:
        return PadPlan(Padding.SAME, None)
    return PadPlan(Padding.VALID, tuple(effective))


def needs_end_extension(pads: Sequence[tuple[int, int]], plan: PadPlan) -> bool:
    """Whether the plan reads padding beyond what ONNX declared (ceil_mode windows)."""
    if plan.explicit is None:
        return False
    return any(e > p[1] for (_, e), p in zip(plan.explicit, pads, strict=True))
