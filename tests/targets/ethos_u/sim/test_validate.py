"""compare_outputs (zero tolerance, NaN-aware for float CPU outputs) and how cascaded stripes are stacked."""

from __future__ import annotations

from typing import Any

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


def test_cascade_stripes_are_stacked_in_row_order_even_when_vela_runs_them_bottom_up() -> None:
    """ShuffleNetV2 behind a staged image: one copy's stripes write rows 19-27, 10-18, then 0-9.

    Stacked in execution order they compared as a 207-LSB difference while every output was
    bit-exact. The stripes' OFM addresses give their rows; a rolling buffer (one address) keeps its order.
    """
    from types import SimpleNamespace

    from nirc.targets.ethos_u.sim.validate import _top_to_bottom

    def piece(base: int, rows: int, first_row: int) -> tuple[Any, np.ndarray]:
        ofm = SimpleNamespace(region=2, bases=[base, 0, 0, 0])
        return SimpleNamespace(ofm=ofm), np.full((rows, 1, 1), first_row)

    bottom_up = [piece(19 * 3248, 9, 19), piece(10 * 3248, 9, 10), piece(0, 10, 0)]
    stacked = np.concatenate([v for _, v in _top_to_bottom(bottom_up)])  # type: ignore[arg-type]
    assert [int(v) for v in stacked[[0, 10, 19], 0, 0]] == [0, 10, 19]
    rolling = [piece(0, 9, 0), piece(0, 9, 9)]
    assert [int(v[0, 0, 0]) for _, v in _top_to_bottom(rolling)] == [0, 9]  # type: ignore[arg-type]
