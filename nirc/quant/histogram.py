"""Fixed-range histograms of activations and the clipping ranges chosen from them.

Why histograms: percentile and MSE clipping need the value distribution of a
tensor over all calibration samples, and keeping the raw values of every
intermediate tensor of MobileNetV2 for 16 samples would take gigabytes. A
histogram over the tensor's known ``[min, max]`` (measured in a first pass)
is small, order-independent and exactly reproducible.

The MSE search scores int8 *asymmetric* quantization the way the TFLite
emitter parameterises it (``nirc.tflite.quantize.activation_qparams``): range
widened to contain 0, ``scale = span / 255``, zero point rounded so that 0 is
exact. Scoring a different scheme would optimise the wrong error.
"""

from __future__ import annotations

import numpy as np

QUANT_LEVELS = 255  # int8 steps between the lowest and highest code


class Histogram:
    """Counts of a tensor's values in ``bins`` equal bins over ``[min(lo, 0), max(hi, 0)]``.

    ``lo``/``hi`` are the tensor's true extremes, kept to clamp estimates.
    The range includes 0 because the final range does; its resolution is
    still ``bins / 255`` bins per quantization step at full range.
    """

    def __init__(self, lo: float, hi: float, bins: int) -> None:
        if bins < 2 * QUANT_LEVELS:
            raise ValueError(f"need at least {2 * QUANT_LEVELS} bins, got {bins}")
        self.lo, self.hi = float(lo), float(hi)
        self.start, self.stop = min(self.lo, 0.0), max(self.hi, 0.0)
        self.counts = np.zeros(bins, dtype=np.int64)

    @property
    def edges(self) -> np.ndarray:
        return np.linspace(self.start, self.stop, self.counts.size + 1)

    def add(self, values: np.ndarray) -> None:
        """Count ``values`` (any shape); values outside the range land in the end bins."""
        if self.stop == self.start:
            self.counts[0] += values.size
            return
        bins = self.counts.size
        x = np.asarray(values, dtype=np.float64).reshape(-1)
        index = np.floor((x - self.start) * (bins / (self.stop - self.start))).astype(np.int64)
        np.clip(index, 0, bins - 1, out=index)
        self.counts += np.bincount(index, minlength=bins)


def percentile_range(hist: Histogram, percentile: float) -> tuple[float, float]:
    """Values at the ``100 - p`` and ``p`` percentiles, widened to contain 0.

    Each tail loses ``100 - p`` percent of the values: a one-sided tensor (after
    ReLU) loses only its upper tail because its lower bound is 0 anyway.
    """
    if hist.lo == hist.hi:  # a constant has no tails to drop
        return (min(hist.lo, 0.0), max(hist.hi, 0.0))
    q = percentile / 100.0
    lower = max(_value_at(hist, 1.0 - q), hist.lo)
    upper = min(_value_at(hist, q), hist.hi)
    return (min(lower, 0.0), max(upper, 0.0))


def _value_at(hist: Histogram, quantile: float) -> float:
    """Linear interpolation inside the bin where the cumulative count crosses ``quantile``."""
    counts = hist.counts
    cumulative = np.cumsum(counts)
    rank = quantile * float(cumulative[-1])
    i = int(np.searchsorted(cumulative, rank, side="left"))
    i = min(i, counts.size - 1)
    before = float(cumulative[i - 1]) if i > 0 else 0.0
    fraction = (rank - before) / float(counts[i]) if counts[i] else 0.0
    width = (hist.stop - hist.start) / counts.size
    return hist.start + (i + min(max(fraction, 0.0), 1.0)) * width


def mse_range(hist: Histogram, *, steps: int = 64, refine: int = 16, subpoints: int = 4) -> tuple[float, float]:
    """The clipping range whose int8 asymmetric quantization has the least squared error.

    Candidates shrink the lower and upper bound of the min/max range towards
    0 by fractions: first both together, then the upper and the lower bound
    alone, each on a ``steps`` grid refined ``refine`` times around the best.
    Min/max itself is a candidate, so the estimate never gets worse than it.
    Each bin stands for ``subpoints`` evenly spaced values, which keeps the
    rounding error honest when a quantization step is only a few bins wide.
    """
    lo, hi = min(hist.lo, 0.0), max(hist.hi, 0.0)
    if hist.lo == hist.hi:  # a constant (or all-zero) tensor: nothing to trade off
        return (lo, hi)
    x, w = _points(hist, subpoints)

    def search(fixed_u: float | None, fixed_v: float | None, current: tuple[float, float]) -> tuple[float, float]:
        def candidates(fractions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            u = fractions if fixed_u is None else np.full_like(fractions, fixed_u)
            v = fractions if fixed_v is None else np.full_like(fractions, fixed_v)
            return u, v

        grid = np.linspace(1.0, 1.0 / steps, steps)  # widest first: ties keep the wider range
        u, v = candidates(grid)
        best = int(np.argmin(_errors(x, w, lo * u, hi * v)))
        step = 1.0 / steps
        centre = grid[best]
        fine = np.linspace(min(centre + step, 1.0), max(centre - step, step / refine), 2 * refine + 1)
        fine = np.concatenate([[centre], fine])  # the coarse optimum stays a candidate
        u, v = candidates(fine)
        errors = _errors(x, w, lo * u, hi * v)
        best = int(np.argmin(errors))
        chosen = (float(u[best]), float(v[best]))
        current_error = _errors(x, w, np.array([lo * current[0]]), np.array([hi * current[1]]))[0]
        return chosen if errors[best] < current_error else current

    uv = search(None, None, (1.0, 1.0))
    uv = search(uv[0], None, uv)  # upper bound alone
    if lo < 0.0:
        uv = search(None, uv[1], uv)  # lower bound alone
    return (lo * uv[0], hi * uv[1])


def _points(hist: Histogram, subpoints: int) -> tuple[np.ndarray, np.ndarray]:
    """Representative values and weights of the non-empty bins."""
    nonzero = np.flatnonzero(hist.counts)
    width = (hist.stop - hist.start) / hist.counts.size
    offsets = (np.arange(subpoints) + 0.5) / subpoints
    x = hist.start + (nonzero[:, None] + offsets[None, :]) * width
    w = np.repeat(hist.counts[nonzero].astype(np.float64) / subpoints, subpoints)
    return x.reshape(-1), w


def _errors(x: np.ndarray, w: np.ndarray, lows: np.ndarray, highs: np.ndarray) -> np.ndarray:
    """Weighted squared int8 asymmetric quantization error of ``x`` for each candidate range."""
    scale = (highs - lows) / QUANT_LEVELS
    safe = np.where(scale > 0, scale, 1.0)
    zero_point = np.clip(np.round(-lows / safe), 0, QUANT_LEVELS)
    codes = np.clip(np.round(x[None, :] / safe[:, None]) + zero_point[:, None], 0, QUANT_LEVELS)
    restored = (codes - zero_point[:, None]) * safe[:, None]
    errors: np.ndarray = ((x[None, :] - restored) ** 2) @ w
    return np.where(scale > 0, errors, np.inf)
