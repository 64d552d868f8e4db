"""From the optimized float IR to an int8 TFLite: calibrate, emit, validate.

Kept apart from Vela so ``nirc convert`` and the cost oracle can emit without
compiling, and so the validation measures exactly the file that Vela compiles.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal

import onnx

from nirc.options import CalibrationOptions as CalibrationOptions  # where it lived before nirc.options
from nirc.quant import CalibrationSet, RangeMethod, collect_ranges, load_calibration
from nirc.quant.ranges import share_tile_ranges
from nirc.tflite import TFLiteModel, check_supported, emit_tflite
from nirc.tflite.quantize import WEIGHT_RANGE, WeightRange
from nirc.validate import OutputCheck, compare

logger = logging.getLogger(__name__)

DEFAULT_RANGE_METHOD: RangeMethod = "minmax"
SYNTHETIC_WARNING = (
    "no --calib data: int8 ranges come from synthetic random inputs; accuracy numbers are not meaningful"
)


def input_shapes(proto: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    inits = {i.name for i in proto.graph.initializer}
    return {
        v.name: tuple(d.dim_value for d in v.type.tensor_type.shape.dim)
        for v in proto.graph.input
        if v.name not in inits
    }


def load_samples(proto: onnx.ModelProto, options: CalibrationOptions) -> CalibrationSet:
    """Calibration samples; synthetic ones are flagged for the caller to warn about and report."""
    return load_calibration(options.path, input_shapes(proto), mean=options.mean, std=options.std, count=options.count)


@dataclass(frozen=True)
class EmitResult:
    tflite: TFLiteModel
    ranges: dict[str, tuple[float, float]] | None


def emit(
    proto: onnx.ModelProto,
    *,
    dtype: Literal["float32", "int8"],
    calib: CalibrationSet | None,
    method: RangeMethod = DEFAULT_RANGE_METHOD,
    io_dtype: Literal["int8", "float32"] = "int8",
    label: str = "<model>",
    weights: WeightRange = "max",
    bias_correction: bool = False,
    wide: Collection[str] = (),
    ranges: dict[str, tuple[float, float]] | None = None,
) -> EmitResult:
    """Emit TFLite; for int8 the ranges are measured on ``calib`` with ORT on this very graph.

    ``wide``: activation tensors emitted as int16 (:mod:`nirc.quant.act16` chooses them).
    ``ranges``: those an earlier emission of this graph measured on ``calib`` (re-emitting with
    other tensors wide needs no new calibration run).
    """
    check_supported(proto, label)
    if dtype == "int8" and ranges is None:
        if calib is None:
            raise ValueError("int8 emission needs calibration samples")
        ranges = share_tile_ranges(collect_ranges(proto, calib, method=method))
    token = WEIGHT_RANGE.set(weights)
    try:
        if dtype == "int8" and weights == "adaround" and calib is not None:
            from nirc.quant.adaround import adaround

            proto, _ = adaround(proto, calib)  # weights on the chosen int8 levels; same ranges (max|w| kept)
        if dtype == "int8" and bias_correction and calib is not None:
            from nirc.quant.bias_correction import correct_biases

            proto, _ = correct_biases(proto, calib)  # same weights, so the same int8 weights and ranges
        model = emit_tflite(proto, dtype=dtype, ranges=ranges, io_dtype=io_dtype, source=label, wide=wide)
    finally:
        WEIGHT_RANGE.reset(token)
    return EmitResult(model, ranges)


def validate(proto: onnx.ModelProto, model: TFLiteModel, calib: CalibrationSet) -> list[OutputCheck]:
    return compare(proto, model, list(calib.samples))
