"""compare_outputs: zero tolerance, and float outputs of CPU ops compared value for value (NaN included)."""

from __future__ import annotations

import numpy as np
from nirc.targets.ethos_u.sim.validate import compare_outputs


def test_equal_nans_and_infinities_of_a_float_output_are_bit_exact() -> None:
    ref = np.array([1.5, np.nan, np.inf, -np.inf, 0.0], np.float32)
    result = compare_outputs({"y": ref.copy()}, {"y": ref}, {"y": None}, "sim")
    assert result.bit_exact and not result.unexplained and result.max_abs_diff_lsb == 0.0


def test_a_nan_on_one_side_only_is_an_infinite_difference() -> None:
    ref = np.array([1.5, 2.0, np.inf], np.float32)
    out = np.array([1.5, np.nan, np.inf], np.float32)
    result = compare_outputs({"y": out}, {"y": ref}, {"y": None}, "sim")
    assert not result.bit_exact and result.unexplained and result.max_abs_diff_lsb == np.inf
    assert result.first_divergence is not None and "element [1]" in result.first_divergence
    assert result.details["outputs"]["y"]["differing"] == 1


def test_one_lsb_of_an_int8_output_fails() -> None:
    ref = np.array([[-128, 0, 127]], np.int8)
    out = ref.copy()
    out[0, 1] = 1
    result = compare_outputs({"y": out}, {"y": ref}, {"y": 0.1}, "sim")
    assert not result.bit_exact and result.max_abs_diff_lsb == 1.0
