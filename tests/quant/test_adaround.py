"""AdaRound: learned up/down rounding is never worse than nearest on its objective, keeps each channel's
scale, and raises the trained digits CNN's held-out int8 SNR (real digits, LiteRT against ORT)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from nirc_testing import moved_initializers, trained_digits

from nirc.backend import emit
from nirc.options import CalibrationOptions
from nirc.pipeline import accuracy_guard
from nirc.quant.adaround import adaround, learn_rounding
from nirc.tflite.quantize import weight_scales
from nirc.validate import compare

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _objective(levels: np.ndarray, w_div: np.ndarray, h: np.ndarray) -> np.ndarray:
    d = levels - w_div
    return np.sum((d @ h) * d, axis=1)


def test_learned_rounding_beats_nearest_on_correlated_inputs_and_keeps_the_scale() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4000, 6)) @ rng.standard_normal((6, 48))  # rank-6 inputs: strong correlation
    h = x.T @ x / len(x)
    w_div = rng.uniform(-127, 127, size=(16, 48))
    w_div[np.arange(16), rng.integers(0, 48, 16)] = 127.0  # each channel's max sets its scale
    levels = learn_rounding(w_div, h, depthwise=False)
    nearest = np.round(w_div)
    assert np.all(np.abs(levels - w_div) < 1.0) and np.all(np.abs(levels) <= 127)
    assert np.array_equal(levels == np.floor(levels), np.ones_like(levels, dtype=bool))
    assert np.all(np.abs(levels).max(axis=1) == 127)  # the largest weight kept its level: same scale
    assert np.all(_objective(levels, w_div, h) <= _objective(nearest, w_div, h) + 1e-9)
    assert _objective(levels, w_div, h).sum() < 0.5 * _objective(nearest, w_div, h).sum()


def test_depthwise_channels_are_rounded_each_with_their_own_inputs() -> None:
    rng = np.random.default_rng(1)
    patches = np.einsum("rcj,cjk->rck", rng.standard_normal((3000, 8, 3)), rng.standard_normal((8, 3, 9)))  # rank 3
    h = np.einsum("rck,rcl->ckl", patches, patches) / len(patches)
    w_div = rng.uniform(-60, 60, size=(8, 9))
    levels = learn_rounding(w_div, h, depthwise=True)
    nearest = np.round(w_div)
    err = lambda q: np.einsum("ck,ckl,cl->c", q - w_div, h, q - w_div)  # noqa: E731
    assert np.all(err(levels) <= err(nearest) + 1e-9) and err(levels).sum() < err(nearest).sum()


def test_adaround_raises_the_trained_digits_cnns_held_out_snr() -> None:
    proto, calib, val = trained_digits()
    rounded, changed = adaround(proto, calib)
    assert changed >= 3
    moved = moved_initializers(proto, rounded)
    assert len(moved) == changed and all(new.ndim in (2, 4) for _, new in moved.values())  # only weights move
    for old, new in moved.values():
        scales = weight_scales(old, 0, None, 1.0).astype(np.float64)
        assert np.allclose(weight_scales(new, 0, None, 1.0), scales, rtol=1e-6)  # scale kept
        levels = new.reshape(len(scales), -1) / scales[:, None]
        assert np.allclose(levels, np.round(levels), atol=1e-3)  # on the int8 grid
        assert np.all(np.abs(levels - old.reshape(len(scales), -1) / scales[:, None]) < 1.0 + 1e-3)

    plain = emit(proto, dtype="int8", calib=calib).tflite
    learned = emit(proto, dtype="int8", calib=calib, weights="adaround").tflite
    (snr_plain,) = compare(proto, plain, val)
    (snr_learned,) = compare(proto, learned, val)  # against the original float model
    assert snr_learned.snr_db > snr_plain.snr_db + 0.5


def test_the_accuracy_guard_judges_rewrites_with_nearest_rounding() -> None:
    """AdaRound fits the guard's own samples, so rewrites are judged without it (it refines the winner)."""
    _, calib, _ = trained_digits()
    for weights, judged in (("adaround", "max"), ("mse", "mse"), ("max", "max")):
        guard = accuracy_guard(calib, CalibrationOptions(weights=weights), enabled=True, max_snr_drop=0.5)  # type: ignore[arg-type]
        assert guard is not None and guard.weights == judged
