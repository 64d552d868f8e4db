"""The analytical model: hardware numbers, rank statistics, the fit, and ranking blocks like Vela does."""

from __future__ import annotations

import numpy as np
import pytest

from nirc.cost import evaluate_many
from nirc.cost.analytical import (
    TRUST_SPEARMAN,
    Coefficients,
    analytical_is_trusted,
    calibration_for,
    load_calibrations,
    op_cycles,
    predict,
)
from nirc.cost.blocks import BLOCK_KINDS, BlockSpec, build_block
from nirc.cost.fit import fit_coefficients, rankdata, spearman
from nirc.cost.hardware import hardware
from nirc.cost.oracle import resolve_target
from nirc.ir import IRModel
from nirc.target import Target


def test_hardware_from_vela_ini(u65: Target) -> None:
    hw = hardware(u65)
    assert hw.clock_hz == 1e9
    assert hw.sram_bw == 16.0  # 14.90 GiB/s at 1 GHz, as Vela's summary reports
    assert hw.dram_bw == pytest.approx(3.75)  # 3.49 GiB/s
    assert hw.dram_burst == 128
    assert hw.fm_in_dram  # Dedicated_Sram: the arena is in DRAM, the SRAM caches it
    assert hw.cache_bytes == 384 * 1024
    assert hw.ublock == (2, 2, 8)
    u55 = hardware(resolve_target("ethos-u55-128"))
    assert (u55.sram_bw, u55.fm_in_dram, u55.ublock) == (8.0, False, (1, 2, 8))  # Vela: Block(w=2, h=1, d=8)


def test_rankdata_and_spearman() -> None:
    assert rankdata([10, 30, 20, 20]).tolist() == [1.0, 4.0, 2.5, 2.5]
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # Monotone transforms do not change ranks; Pearson on these values would not be 1.
    x = np.array([1.0, 2.0, 5.0, 9.0, 30.0])
    assert spearman(x, np.exp(x)) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    assert np.isnan(spearman([1], [2]))


def test_fit_recovers_known_coefficients() -> None:
    rng = np.random.default_rng(0)
    truth = Coefficients(conv=1.3, depthwise=2.0, elementwise=0.7, sram=0.9, dram=1.1, weights=0.8, overhead=900.0)
    matrices = [np.abs(rng.lognormal(8, 2, size=(3, 7))) * rng.integers(0, 2, size=(3, 7)) for _ in range(60)]
    for m in matrices:
        m[:, 6] = 1.0
    cycles = [op_cycles(m, truth.vector()).sum() for m in matrices]
    fitted = fit_coefficients(matrices, cycles)
    predicted = [op_cycles(m, fitted.vector()).sum() for m in matrices]
    assert np.allclose(np.log(predicted), np.log(cycles), atol=1e-3)


def test_trust_comes_from_stored_measurement(u65: Target) -> None:
    calibration = calibration_for(u65)
    assert calibration is not None, "run benchmarks/profile_blocks.py to calibrate"
    assert calibration.n_heldout > 0
    assert analytical_is_trusted(u65) == (calibration.spearman_heldout >= TRUST_SPEARMAN)
    assert set(load_calibrations()) >= {u65.name}
    assert not analytical_is_trusted(resolve_target("ethos-u55-32"))  # never calibrated


def test_predict_is_fast_and_per_op(u65: Target) -> None:
    model = IRModel.load(build_block(BlockSpec("mbconv_e6", 28, 28, 32)))
    result = predict(model, u65)
    assert result.calibrated
    assert result.cycles == pytest.approx(sum(result.per_op.values()))
    assert {"conv3", "conv9", "conv15", "add16"} <= set(result.per_op)
    assert result.time_ms == pytest.approx(result.cycles / 1e6)


@pytest.mark.parametrize("size", [(14, 14, 16), (20, 20, 80)], ids=["sweep-size", "held-out-size"])
def test_ranks_blocks_like_vela(u65: Target, size: tuple[int, int, int]) -> None:
    """Every block type at one feature-map size: the ordering a block search needs, checked against real Vela."""
    specs = [BlockSpec(kind, *size) for kind in BLOCK_KINDS if size[2] % BLOCK_KINDS[kind].min_channels == 0]
    models = [build_block(s) for s in specs]
    vela = [c.cycles for c in evaluate_many(models, u65)]
    model = [predict(m, u65).cycles for m in models]
    assert spearman(vela, model) >= 0.9, list(zip([s.kind for s in specs], vela, model, strict=True))
