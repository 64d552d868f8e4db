"""Calibrate the analytical model against the oracle, and measure how well it ranks blocks.

Why log space: block latencies span four orders of magnitude and a search
cares about ratios, so a 10% error on a 10 us block must weigh as much as one
on a 10 ms block. The fit is a Levenberg-Marquardt least squares on
``log(predicted) - log(Vela)`` over the log of the coefficients (which keeps
them positive); the Jacobian is taken numerically because the model is a max
of terms.

Why a held-out set: the coefficients are fitted on the profile sweep, so the
rank correlation that decides trust (:func:`~nirc.cost.analytical.analytical_is_trusted`)
is measured on other blocks -- other sizes (channel counts that are not multiples
of 16, non-square maps) and other weights.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from nirc.cost.analytical import Calibration, Coefficients, op_cycles, op_terms, term_matrix
from nirc.cost.blocks import BLOCK_KINDS, BlockSpec, build_block
from nirc.cost.parallel import evaluate_many
from nirc.cost.profile import MAX_FM_ELEMENTS
from nirc.cost.signature import vela_version
from nirc.target import Target

logger = logging.getLogger(__name__)

HELDOUT_HW: tuple[tuple[int, int], ...] = ((10, 10), (20, 20), (24, 32), (40, 40), (48, 48), (80, 60), (12, 20))
HELDOUT_C: tuple[int, ...] = (24, 40, 48, 80, 96, 112, 160, 192)


def rankdata(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Ranks from 1, ties sharing their average rank (as scipy.stats.rankdata's default)."""
    data = np.asarray(values, dtype=np.float64)
    order = np.argsort(data, kind="mergesort")
    ranks = np.empty(len(data), dtype=np.float64)
    sorted_values = data[order]
    start = 0
    while start < len(data):
        end = start
        while end + 1 < len(data) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2.0 + 1.0
        start = end + 1
    return ranks


def spearman(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Spearman rank correlation: Pearson correlation of the ranks (NaN for fewer than 2 points or constant data)."""
    ra, rb = rankdata(a), rankdata(b)
    if len(ra) != len(rb):
        raise ValueError(f"spearman: {len(ra)} vs {len(rb)} values")
    if len(ra) < 2 or ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def heldout_specs(*, seed: int = 1, per_size: int | None = None) -> list[BlockSpec]:
    """Blocks at sizes the sweep does not contain, every kind at each size (or ``per_size`` random kinds)."""
    rng = random.Random(seed)
    specs = []
    for h, w in HELDOUT_HW:
        for c in rng.sample(HELDOUT_C, 3):
            if h * w * c > MAX_FM_ELEMENTS:
                continue
            kinds = [k for k in BLOCK_KINDS if c % BLOCK_KINDS[k].min_channels == 0]
            if per_size is not None:
                kinds = rng.sample(kinds, min(per_size, len(kinds)))
            specs += [BlockSpec(kind, h, w, c, seed=seed) for kind in kinds]
    return specs


def _predict_totals(matrices: Sequence[np.ndarray], coef: np.ndarray) -> np.ndarray:
    return np.array([op_cycles(m, coef).sum() for m in matrices])


def fit_coefficients(
    matrices: Sequence[np.ndarray],
    cycles: Sequence[float] | np.ndarray,
    *,
    start: Coefficients | None = None,
    iterations: int = 200,
) -> Coefficients:
    """Least squares in log space (Levenberg-Marquardt, numeric Jacobian), from a few starting points."""
    target = np.log(np.asarray(cycles, dtype=np.float64))

    def residuals(theta: np.ndarray) -> np.ndarray:
        predicted = _predict_totals(matrices, np.exp(theta))
        result: np.ndarray = np.log(np.maximum(predicted, 1e-9)) - target
        return result

    base = np.log((start or Coefficients()).vector())
    starts = [base, base + np.log(2.0), base - np.log(2.0)]
    best, best_cost = base, float("inf")
    for theta0 in starts:
        theta, cost = _levenberg_marquardt(residuals, theta0, iterations)
        if cost < best_cost:
            best, best_cost = theta, cost
    logger.info("analytical fit: rms log error %.3f over %d blocks", np.sqrt(best_cost / len(target)), len(target))
    return Coefficients.from_vector(np.exp(best).tolist())


def _levenberg_marquardt(
    residuals: Callable[[np.ndarray], np.ndarray], theta: np.ndarray, iterations: int
) -> tuple[np.ndarray, float]:
    r = residuals(theta)
    cost = float(r @ r)
    damping = 1e-2
    for _ in range(iterations):
        step_size = 1e-4
        jac = np.empty((len(r), len(theta)))
        for j in range(len(theta)):
            shifted = theta.copy()
            shifted[j] += step_size
            jac[:, j] = (residuals(shifted) - r) / step_size
        normal = jac.T @ jac
        gradient = jac.T @ r
        improved = False
        while damping < 1e8:
            lhs = normal + damping * (np.diag(np.diag(normal)) + 1e-9 * np.eye(len(theta)))
            candidate = theta - np.linalg.solve(lhs, gradient)
            r_new = residuals(candidate)
            new_cost = float(r_new @ r_new)
            if new_cost < cost:
                improved = cost - new_cost > 1e-10 * max(cost, 1.0)
                theta, r, cost = candidate, r_new, new_cost
                damping = max(damping / 3.0, 1e-9)
                break
            damping *= 4.0
        if not improved:
            break
    return theta, cost


@dataclass(frozen=True)
class FitReport:
    """Everything the calibration benchmark writes down."""

    calibration: Calibration
    train: list[tuple[BlockSpec, float, float]]
    heldout: list[tuple[BlockSpec, float, float]]
    """(block, Vela cycles, analytical cycles) per block."""


def same_size_spearman(rows: Sequence[tuple[BlockSpec, float, float]]) -> float:
    """Mean Spearman across block kinds at each size: does the model pick the right block at a given size?"""
    groups: dict[tuple[int, int, int], list[tuple[float, float]]] = {}
    for spec, vela, model in rows:
        groups.setdefault((spec.h, spec.w, spec.c), []).append((vela, model))
    values = [spearman([v for v, _ in g], [m for _, m in g]) for g in groups.values() if len(g) >= 3]
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def calibrate(train: Sequence[BlockSpec], heldout: Sequence[BlockSpec], target: Target, *, jobs: int = 1) -> FitReport:
    """Cost both sets with the oracle (cached), fit on ``train``, measure on ``heldout``."""
    specs = [*train, *heldout]
    costs = evaluate_many([build_block(s) for s in specs], target, jobs=jobs, labels=[s.label for s in specs])
    matrices = [term_matrix(op_terms(build_block(s), target)) for s in specs]
    cycles = np.array([c.cycles for c in costs], dtype=np.float64)
    n = len(train)
    coefficients = fit_coefficients(matrices[:n], cycles[:n])
    predicted = _predict_totals(matrices, coefficients.vector())
    train_rows = [(s, float(v), float(p)) for s, v, p in zip(train, cycles[:n], predicted[:n], strict=True)]
    held_rows = [(s, float(v), float(p)) for s, v, p in zip(heldout, cycles[n:], predicted[n:], strict=True)]
    calibration = Calibration(
        target=target.name,
        coefficients=coefficients,
        spearman_heldout=spearman(cycles[n:], predicted[n:]),
        spearman_train=spearman(cycles[:n], predicted[:n]),
        spearman_same_size=same_size_spearman(held_rows),
        n_train=n,
        n_heldout=len(heldout),
        vela_version=vela_version(),
    )
    return FitReport(calibration, train_rows, held_rows)
