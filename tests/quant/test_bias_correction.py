"""Empirical bias correction on the trained digits CNN (real held-out digits): the int8 model's mean
output error shrinks and its SNR rises; the float model and the int8 weights are untouched."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from nirc_testing import moved_initializers, trained_digits

from nirc.backend import emit
from nirc.quant import load_calibration
from nirc.quant.bias_correction import correct_biases
from nirc.validate import compare, run_tflite
from nirc.verify import run_onnx

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_bias_correction_improves_the_trained_digits_cnn() -> None:
    proto, calib, val = trained_digits()
    corrected, changed = correct_biases(proto, calib)
    assert changed >= 4
    moved = moved_initializers(proto, corrected)
    assert moved and all(new.ndim == 1 for _, new in moved.values())  # only biases move

    plain = emit(proto, dtype="int8", calib=calib).tflite
    fixed = emit(proto, dtype="int8", calib=calib, bias_correction=True).tflite
    reference = np.concatenate([r[0] for r in run_onnx(proto, val)])
    bias_plain = np.abs(np.mean(np.concatenate([r[0] for r in run_tflite(plain, val)]) - reference, axis=0)).mean()
    bias_fixed = np.abs(np.mean(np.concatenate([r[0] for r in run_tflite(fixed, val)]) - reference, axis=0)).mean()
    assert bias_fixed < bias_plain
    (snr_plain,) = compare(proto, plain, val)
    (snr_fixed,) = compare(proto, fixed, val)  # against the uncorrected float model
    assert snr_fixed.snr_db > snr_plain.snr_db + 0.5


def test_nothing_to_correct_without_biased_layers() -> None:
    proto = onnx.parser.parse_model(
        '<ir_version: 9, opset_import: ["" : 18]> g (float[1,4] x) => (float[1,4] y) { y = Relu (x) }'
    )
    calib = load_calibration(None, {"x": (1, 4)}, count=2)
    same, changed = correct_biases(proto, calib)
    assert changed == 0 and same is proto
