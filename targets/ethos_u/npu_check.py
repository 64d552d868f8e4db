"""Validate the Vela-compiled artifact itself: on the FVP when one is installed, else in the functional model.

The int8 TFLite is already checked against the float model; this closes the last
gap, Vela's own output (command stream, encoded weights, scales, cascading), by
executing it and comparing with LiteRT on the pre-Vela int8 model, bit for bit.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from nirc.errors import BackendError
from nirc.target import Target
from nirc.tflite import TFLiteModel
from nirc.validate import to_tflite_layout

logger = logging.getLogger(__name__)

NpuMethod = Literal["sim", "fvp", "none"]
# What the functional model executes (see nirc.targets.ethos_u.sim): U55/U65 command streams,
# not the U65-512 second weight stream nor the U85.
SIM_TARGETS = ("ethos-u55-32", "ethos-u55-64", "ethos-u55-128", "ethos-u55-256", "ethos-u65-256")


def check_npu_artifact(
    method: NpuMethod,
    target: Target,
    vela_tflite: Path,
    int8_tflite: Path,
    model: TFLiteModel,
    samples: Sequence[dict[str, np.ndarray]],
    warnings: list[str],
) -> dict[str, Any] | None:
    """``validation.npu`` for the report, or None for ``method="none"``; problems become warnings."""
    if method == "none":
        return None
    feeds = [{io.name: to_tflite_layout(io, sample[io.name]) for io in model.inputs} for sample in samples]
    if method == "fvp":
        from nirc.targets.ethos_u.fvp import FvpNotFoundError, validate_fvp

        try:
            return _merge([validate_fvp(vela_tflite, int8_tflite, f, target.name).to_json() for f in feeds])
        except FvpNotFoundError as exc:
            warnings.append(f"{exc}; validated in the functional model instead")
    if target.name not in SIM_TARGETS:
        warnings.append(f"the NPU functional model does not cover {target.name}; Vela's output was not executed")
        return {"method": "sim", "skipped": f"{target.name} is not modelled"}
    from nirc.targets.ethos_u.sim import compare_with_reference

    try:
        result = _merge([compare_with_reference(vela_tflite, int8_tflite, f).to_json() for f in feeds])
    except BackendError as exc:
        warnings.append(f"NPU functional model could not run the compiled model: {exc}")
        return {"method": "sim", "error": str(exc)}
    except (ValueError, IndexError, KeyError, NotImplementedError) as exc:
        # A command-stream form the functional model does not execute yet (e.g. the
        # elementwise/reduce sequence Vela emits for BATCH_MATMUL): the compile itself is
        # fine, only this last check is missing, so it is a warning, not a failure.
        message = f"{type(exc).__name__}: {exc}"
        warnings.append(f"NPU functional model could not run the compiled model ({message}); not executed")
        return {"method": "sim", "error": message}
    if result["max_abs_diff_lsb"] > 1:
        warnings.append(
            f"compiled NPU model differs from the int8 TFLite by {result['max_abs_diff_lsb']} LSB "
            f"(first at {result['first_divergence']})"
        )
    return result


def _merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One record over several inputs: worst case, first divergence seen."""
    first = next((r["first_divergence"] for r in runs if r["first_divergence"]), None)
    return {
        "method": runs[0]["method"],
        "samples": len(runs),
        "bit_exact": all(r["bit_exact"] for r in runs),
        "bit_exact_samples": sum(1 for r in runs if r["bit_exact"]),
        "max_abs_diff_lsb": max(r["max_abs_diff_lsb"] for r in runs),
        "first_divergence": first,
        "details": runs[0]["details"],
    }
