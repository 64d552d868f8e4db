"""Calibration for int8: load samples, measure activation ranges, compare outputs."""

from __future__ import annotations

from nirc.quant.calibration import CalibrationSet, load_calibration
from nirc.quant.metrics import snr_db, top1_agreement
from nirc.quant.ranges import Range, RangeMethod, collect_ranges

__all__ = [
    "CalibrationSet",
    "Range",
    "RangeMethod",
    "collect_ranges",
    "load_calibration",
    "snr_db",
    "top1_agreement",
]
