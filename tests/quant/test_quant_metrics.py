"""SNR and top-1 agreement."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nirc.quant import snr_db, top1_agreement


def test_snr_of_known_noise_power() -> None:
    ref = np.full((10, 100), 2.0, np.float32)  # signal power 4 per element
    out = ref + np.where(np.arange(100) % 2 == 0, 0.2, -0.2).astype(np.float32)  # noise power 0.04
    assert snr_db(ref, out) == pytest.approx(20.0, abs=1e-4)


def test_snr_edge_cases() -> None:
    ref = np.arange(6, dtype=np.float32)
    assert snr_db(ref, ref.copy()) == math.inf
    assert snr_db(np.zeros(3), np.ones(3)) == -math.inf
    with pytest.raises(ValueError, match="shapes differ"):
        snr_db(np.zeros(3), np.zeros(4))


def test_top1_agreement_over_rows() -> None:
    ref = np.array([[0.1, 0.9, 0.0], [0.5, 0.2, 0.3], [0.0, 0.1, 0.8], [0.3, 0.3, 0.4]])
    out = np.array([[0.2, 0.7, 0.1], [0.1, 0.6, 0.3], [0.0, 0.1, 0.9], [0.3, 0.2, 0.5]])
    assert top1_agreement(ref, out) == 0.75
    assert top1_agreement(ref[0], out[0]) == 1.0  # 1-D: one row
    assert top1_agreement(ref.reshape(2, 2, 3), out.reshape(2, 2, 3)) == 0.75  # leading axes are rows


def test_top1_rejects_mismatched_or_empty() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        top1_agreement(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="class axis"):
        top1_agreement(np.float32(1.0), np.float32(1.0))
