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
SIM_TARGETS = ("ethos-u55-32", "ethos-u55-64", "ethos-u55-128", "ethos-u55-256", "ethos-u65-256", "ethos-u65-512")


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
        ops = _unchecked_ops(vela_tflite, target)
        return {"method": "sim", "skipped": f"{target.name} is not modelled", "ops": ops}
    from nirc.targets.ethos_u.sim.validate import validate_artifact

    try:
        result = _summary(validate_artifact(vela_tflite, int8_tflite, feeds).to_json())
    except BackendError as exc:
        warnings.append(f"NPU functional model could not run the compiled model ({exc}); not executed")
        return {"method": "sim", "error": str(exc)}
    except (ValueError, IndexError, KeyError, NotImplementedError) as exc:
        # A command-stream form the functional model does not execute yet (e.g. the
        # elementwise/reduce sequence Vela emits for BATCH_MATMUL): the compile itself is
        # fine, only this last check is missing, so it is a warning, not a failure.
        message = f"{type(exc).__name__}: {exc}"
        warnings.append(f"NPU functional model could not run the compiled model ({message}); not executed")
        return {"method": "sim", "error": message}
    if result["unexplained"]:
        warnings.append(
            f"compiled NPU model differs from the int8 TFLite by {result['max_abs_diff_lsb']} LSB "
            f"(first at {result['first_divergence']})"
        )
    for known in result["explained"]:
        warnings.append(f"compiled NPU model: known difference at {known['op']} {known['tensor']!r}: {known['rule']}")
    return result


def _summary(run: dict[str, Any]) -> dict[str, Any]:
    """The report's record of a multi-input validation: counts over all inputs, per input in details."""
    samples = run["details"]["per_sample"]
    return {
        "method": run["method"],
        "samples": len(samples),
        "bit_exact": run["bit_exact"],
        "bit_exact_samples": sum(1 for r in samples if r["bit_exact"]),
        "max_abs_diff_lsb": run["max_abs_diff_lsb"],
        "first_divergence": run["first_divergence"],
        "unexplained": run["unexplained"],
        "explained": run["explained"],
        "details": run["details"],
    }


def _merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One record over several single-input runs (the FVP): worst case, per-input details side by side."""
    first = next(((i, r["first_divergence"]) for i, r in enumerate(runs) if r["first_divergence"]), None)
    details = {key: value for key, value in runs[0]["details"].items() if key != "outputs"}
    details["per_sample"] = [
        {"sample": i, "bit_exact": r["bit_exact"], "max_abs_diff_lsb": r["max_abs_diff_lsb"],
         "first_divergence": r["first_divergence"], "outputs": r["details"].get("outputs")}
        for i, r in enumerate(runs)
    ]  # fmt: skip
    return {
        "method": runs[0]["method"],
        "samples": len(runs),
        "bit_exact": all(r["bit_exact"] for r in runs),
        "bit_exact_samples": sum(1 for r in runs if r["bit_exact"]),
        "max_abs_diff_lsb": max(r["max_abs_diff_lsb"] for r in runs),
        "first_divergence": f"sample {first[0]}: {first[1]}" if first else None,
        "unexplained": any(r.get("unexplained", not r["bit_exact"]) for r in runs),
        "explained": [],
        "details": details,
    }


def random_feeds(int8_tflite: Path, count: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``count`` seeded random inputs for the int8 model, by name, in its dtype (full integer range)."""
    from ai_edge_litert.interpreter import Interpreter

    details = Interpreter(model_path=str(int8_tflite)).get_input_details()
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(count):
        feed = {}
        for d in details:
            dtype = np.dtype(d["dtype"])
            if np.issubdtype(dtype, np.integer):
                info = np.iinfo(dtype)
                feed[d["name"]] = rng.integers(info.min, info.max, size=d["shape"], dtype=dtype, endpoint=True)
            else:
                feed[d["name"]] = rng.standard_normal(d["shape"]).astype(dtype)
        feeds.append(feed)
    return feeds


def check_npu_files(
    vela_tflite: Path,
    int8_tflite: Path,
    feeds: Sequence[dict[str, np.ndarray]],
    method: Literal["sim", "fvp"],
    target: Target | None = None,
    reference: Literal["micro", "litert"] = "micro",
) -> dict[str, Any]:
    """``nirc validate``: the record for two files; a stream that cannot execute is a validation failure.

    Why a failure rather than a backend error: the command asks whether the artifact
    is right, and a stream the model rejects (a reserved register value, an address
    outside its region, a corrupted weight stream) is the clearest "no".
    """
    from nirc.errors import NpuValidationError

    if method == "fvp":
        from nirc.targets.ethos_u.fvp import validate_fvp

        name = target.name if target is not None else "ethos-u65-256"
        return _merge([validate_fvp(vela_tflite, int8_tflite, f, name).to_json() for f in feeds])
    from nirc.targets.ethos_u.sim import CommandStreamError, SimulationError, WeightStreamError
    from nirc.targets.ethos_u.sim.validate import validate_artifact

    try:
        return _summary(validate_artifact(vela_tflite, int8_tflite, feeds, reference_runtime=reference).to_json())
    except (CommandStreamError, SimulationError, WeightStreamError) as exc:
        raise NpuValidationError(f"{vela_tflite}: the command stream cannot be executed: {exc}") from exc


def _unchecked_ops(vela_tflite: Path, target: Target) -> list[dict[str, Any]]:
    """Per op of the compiled model, what a target the functional model lacks leaves unchecked."""
    from nirc.targets.ethos_u.sim import container

    model = container.load(vela_tflite)
    return [
        {"op": op.index, "opcode": op.opcode,
         "checked": f"not modelled ({target.name} command stream)" if op.index in model.npu_calls else "reference only"}
        for op in model.ops
    ]  # fmt: skip
