"""How far a quantized model's outputs are from the float model's.

Two numbers the validation step reports: SNR in dB says how much error int8
added to the output values, top-1 agreement says whether it changed the
decision. Both are computed in float64 so the metric itself adds no error.
"""

from __future__ import annotations

import math

import numpy as np


def snr_db(ref: np.ndarray, out: np.ndarray) -> float:
    """Signal-to-noise ratio of ``out`` against ``ref``: ``10 log10(sum ref^2 / sum (ref - out)^2)``.

    ``inf`` when the outputs are identical; ``-inf`` when ``ref`` is all zeros
    but ``out`` is not (no signal to compare against).
    """
    r, o = _pair(ref, out)
    noise = float(np.sum((r - o) ** 2))
    signal = float(np.sum(r**2))
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def top1_agreement(ref: np.ndarray, out: np.ndarray) -> float:
    """Fraction of rows whose arg-max over the last axis is the same in ``ref`` and ``out``.

    A 1-D array is one row; leading axes (batch, positions) are rows. Ties go
    to the lowest index in both, as ``np.argmax`` does.
    """
    r, o = _pair(ref, out)
    if r.ndim == 0 or r.shape[-1] == 0:
        raise ValueError(f"top-1 needs a class axis, got shape {r.shape}")
    r2 = r.reshape(-1, r.shape[-1])
    o2 = o.reshape(-1, o.shape[-1])
    if r2.shape[0] == 0:
        raise ValueError(f"top-1 needs at least one row, got shape {r.shape}")
    return float(np.mean(np.argmax(r2, axis=-1) == np.argmax(o2, axis=-1)))


def _pair(ref: np.ndarray, out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r = np.asarray(ref, dtype=np.float64)
    o = np.asarray(out, dtype=np.float64)
    if r.shape != o.shape:
        raise ValueError(f"reference and output shapes differ: {r.shape} vs {o.shape}")
    return r, o
