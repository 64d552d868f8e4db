"""Numerics of the emitted TFLite against the float ONNX model.

The int8 model is what Vela compiles (Vela does not change the arithmetic of the
ops it places on the NPU beyond rounding details), so ORT-float vs LiteRT-int8
on the same inputs measures the accuracy cost of the whole backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import onnx

from nirc.quant import snr_db, top1_agreement
from nirc.tflite import TensorIO, TFLiteModel
from nirc.verify import run_onnx

SNR_WARN_DB = 20.0
"""Below this an int8 output is flagged: roughly 10% RMS error relative to the signal."""


def to_tflite_layout(io: TensorIO, array: np.ndarray) -> np.ndarray:
    """An ONNX-layout float array as the TFLite tensor expects it (transposed, quantized)."""
    data = array.reshape(io.onnx_shape)
    if io.perm is not None:
        data = data.transpose(io.perm)
    if io.dtype == "int8":
        assert io.scale is not None and io.zero_point is not None
        q = np.round(data / io.scale) + io.zero_point
        return np.clip(q, -128, 127).astype(np.int8)
    return data.astype(np.float32)


def _from_tflite(io: TensorIO, array: np.ndarray) -> np.ndarray:
    data = array.astype(np.float32)
    if io.dtype == "int8":
        assert io.scale is not None and io.zero_point is not None
        data = (data - io.zero_point) * io.scale
    data = data.reshape(io.tflite_shape)
    if io.perm is not None:
        data = data.transpose(np.argsort(io.perm))
    return data.reshape(io.onnx_shape)


def from_tflite_layout(io: TensorIO, array: np.ndarray) -> np.ndarray:
    """A TFLite output as the float ONNX-layout array it stands for (dequantized, transposed back)."""
    return _from_tflite(io, array)


def run_tflite(model: TFLiteModel, feeds: Sequence[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
    """Run LiteRT; inputs and returned outputs are float arrays in ONNX layout."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    # No XNNPACK: the builtin kernels are the ones TFLite Micro mirrors on the device.
    interpreter = Interpreter(
        model_content=model.data,
        num_threads=1,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    interpreter.allocate_tensors()
    in_details = interpreter.get_input_details()
    out_details = interpreter.get_output_details()
    results = []
    for feed in feeds:
        for io, detail in zip(model.inputs, in_details, strict=True):
            interpreter.set_tensor(detail["index"], to_tflite_layout(io, feed[io.name]))
        interpreter.invoke()
        pairs = zip(model.outputs, out_details, strict=True)
        results.append([_from_tflite(io, interpreter.get_tensor(d["index"])) for io, d in pairs])
    return results


@dataclass(frozen=True)
class OutputCheck:
    name: str
    snr_db: float
    max_abs_error_steps: float | None
    top1_agreement: float | None
    low_snr: bool

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data["snr_db"] = round(self.snr_db, 3) if np.isfinite(self.snr_db) else "inf"
        if self.max_abs_error_steps is not None:
            data["max_abs_error_steps"] = round(self.max_abs_error_steps, 3)
        return data


def compare(
    onnx_model: onnx.ModelProto, tflite_model: TFLiteModel, feeds: Sequence[dict[str, np.ndarray]]
) -> list[OutputCheck]:
    """Per output: SNR over all samples, worst error in int8 steps, top-1 agreement for classifiers."""
    return compare_to_reference(run_onnx(onnx_model, feeds), tflite_model, feeds)


def compare_to_reference(
    reference: Sequence[Sequence[np.ndarray]], tflite_model: TFLiteModel, feeds: Sequence[dict[str, np.ndarray]]
) -> list[OutputCheck]:
    """:func:`compare` against float outputs already computed for ``feeds`` (``run_onnx``).

    Why: a search that emits many int8 candidates of one graph (16-bit activations) compares
    each with the same float outputs; ONNX Runtime runs once, not once per candidate.
    """
    produced = run_tflite(tflite_model, feeds)
    return [
        check_output(io, np.stack([run[index] for run in reference]), np.stack([run[index] for run in produced]))
        for index, io in enumerate(tflite_model.outputs)
    ]


def check_output(io: TensorIO, ref: np.ndarray, out: np.ndarray) -> OutputCheck:
    """One output's float reference against what an int8 runtime produced, over all samples stacked."""
    steps = None
    if io.dtype == "int8" and io.scale:
        steps = float(np.max(np.abs(ref - out)) / io.scale)
    # A classifier output is (1, classes) per sample: top-1 makes sense there.
    is_classifier = len(io.onnx_shape) == 2 and io.onnx_shape[0] == 1 and io.onnx_shape[1] > 1
    top1 = top1_agreement(ref, out) if is_classifier else None
    snr = snr_db(ref, out)
    return OutputCheck(io.name, snr, steps, top1, bool(snr < SNR_WARN_DB))
