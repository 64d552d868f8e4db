"""Compare the simulated Vela model with the pre-Vela int8 model run in TFLite Micro (or LiteRT).

Why LiteRT's *reference* kernels by default: Ethos-U is designed to be bit-exact
with the TFLite reference kernels (the ones TFLite Micro and CMSIS-NN mirror on the
device), whose requantisation rounds both of its steps half away from zero.
LiteRT's optimised kernels (ruy) round the final shift half *up*, so on ties they
differ by one LSB from the reference, the device and this model, and those
differences compound through a deep network.  ``kernels="optimized"`` is kept for
measuring exactly that.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from nirc.targets.ethos_u.sim import container
from nirc.targets.ethos_u.sim.runner import run


@dataclass(frozen=True)
class NpuValidation:
    """Outcome of validating the compiled NPU artifact (the report's ``validation.npu``).

    Attributes:
        method: ``"sim"`` (this functional model) or ``"fvp"`` (Arm's Corstone FVP).
        bit_exact: every output element equals the reference.
        max_abs_diff_lsb: largest absolute difference in output quantisation steps.
        first_divergence: where the first differing element is, or None.
        details: per-output counts, reference kernels used, notes.
    """

    method: str
    bit_exact: bool
    max_abs_diff_lsb: float
    first_divergence: str | None
    details: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def run_reference(
    int8_tflite: Path | bytes,
    inputs: Mapping[str, np.ndarray],
    *,
    kernels: Literal["reference", "optimized"] = "reference",
) -> dict[str, np.ndarray]:
    """Run the pre-Vela model in LiteRT; inputs/outputs by tensor name in TFLite layout."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    data = Path(int8_tflite).read_bytes() if isinstance(int8_tflite, (str, Path)) else bytes(int8_tflite)
    resolver = (
        OpResolverType.BUILTIN_REF if kernels == "reference" else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    )
    interpreter = Interpreter(model_content=data, num_threads=1, experimental_op_resolver_type=resolver)
    interpreter.allocate_tensors()
    for detail in interpreter.get_input_details():
        name = detail["name"]
        if name not in inputs:
            raise KeyError(f"missing input {name!r}")
        interpreter.set_tensor(detail["index"], np.asarray(inputs[name]).reshape(detail["shape"]))
    interpreter.invoke()
    outputs: dict[str, np.ndarray] = {}
    for detail in interpreter.get_output_details():
        value: np.ndarray = interpreter.get_tensor(detail["index"])
        outputs[detail["name"]] = value
    return outputs


_MICRO_ARENA_BYTES = (16 << 20, 256 << 20)
"""TFLite Micro arena sizes to try: it fails cleanly when the arena is too small."""


def run_micro(int8_tflite: Path | bytes, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray] | None:
    """Run the pre-Vela model in TFLite Micro; None when tflite-micro is missing or cannot run it.

    Why TFLite Micro: it is the runtime that sits beside the NPU on the device, and its
    reference kernels are what Ethos-U is specified to match. LiteRT's BUILTIN_REF
    FULLY_CONNECTED resolves rounding ties differently (measured: 1 LSB in one logit on
    some inputs of MobileNetV2/ResNet18 heads, where TFLite Micro and the NPU agree), so
    LiteRT is only the fallback.
    """
    try:
        from tflite_micro.python.tflite_micro import runtime
    except ImportError:
        return None
    data = Path(int8_tflite).read_bytes() if isinstance(int8_tflite, (str, Path)) else bytes(int8_tflite)
    parsed = container.load(data)  # TFLite Micro's details carry no names: take them from the flatbuffer
    in_names = [parsed.tensors[i].name for i in parsed.inputs]
    out_names = [parsed.tensors[i].name for i in parsed.outputs]
    for arena in _MICRO_ARENA_BYTES:
        try:
            interpreter = runtime.Interpreter.from_bytes(data, arena_size=arena)
            for i, name in enumerate(in_names):
                if name not in inputs:
                    raise KeyError(f"missing input {name!r}")
                shape = tuple(int(d) for d in interpreter.get_input_details(i)["shape"])
                interpreter.set_input(np.ascontiguousarray(np.asarray(inputs[name]).reshape(shape)), i)
            interpreter.invoke()
            return {name: np.array(interpreter.get_output(i)) for i, name in enumerate(out_names)}
        except (RuntimeError, ValueError):
            continue  # arena too small, or an op TFLite Micro lacks: try larger, then fall back
    return None


def reference_outputs(
    int8_tflite: Path | bytes,
    inputs: Mapping[str, np.ndarray],
    kernels: Literal["reference", "optimized"] = "reference",
) -> tuple[dict[str, np.ndarray], str]:
    """What the compiled artifact must reproduce, and which runtime computed it (for the report).

    TFLite Micro when it can run the model (``kernels="reference"``), else LiteRT with ``kernels``.
    """
    micro = run_micro(int8_tflite, inputs) if kernels == "reference" else None
    if micro is not None:
        return micro, "TFLite Micro reference kernels on the pre-Vela int8 model"
    return run_reference(int8_tflite, inputs, kernels=kernels), f"LiteRT {kernels} kernels on the pre-Vela int8 model"


def _coords(shape: tuple[int, ...], flat: int) -> str:
    return "[" + ",".join(str(int(c)) for c in np.unravel_index(flat, shape)) + "]"


def compare_outputs(
    produced: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray],
    scales: Mapping[str, float | None],
    method: str,
    details: dict[str, Any] | None = None,
) -> NpuValidation:
    """Element-wise comparison of two output dicts, differences in LSB of each output's type."""
    info: dict[str, Any] = dict(details or {})
    per_output: dict[str, Any] = {}
    worst = 0.0
    first: str | None = None
    for name, ref in reference.items():
        if name not in produced:
            raise KeyError(f"output {name!r} missing from the {method} result")
        out = np.asarray(produced[name]).reshape(ref.shape)
        if np.issubdtype(ref.dtype, np.integer):
            diff = np.abs(out.astype(np.int64) - ref.astype(np.int64)).astype(np.float64)
        else:
            scale = scales.get(name) or 1.0
            diff = np.abs(out.astype(np.float64) - ref.astype(np.float64)) / scale
        count = int(np.count_nonzero(diff))
        max_diff = float(diff.max()) if diff.size else 0.0
        per_output[name] = {"elements": int(diff.size), "differing": count, "max_abs_diff_lsb": max_diff}
        worst = max(worst, max_diff)
        if count and first is None:
            flat = int(np.flatnonzero(diff)[0])
            first = (
                f"output {name!r} element {_coords(ref.shape, flat)}: {method} {out.ravel()[flat]} vs "
                f"reference {ref.ravel()[flat]} ({count} of {diff.size} elements differ)"
            )
    info["outputs"] = per_output
    return NpuValidation(method, first is None, worst, first, info)


def compare_with_reference(
    vela_tflite: Path | bytes,
    int8_tflite: Path | bytes,
    inputs: Mapping[str, np.ndarray],
    *,
    kernels: Literal["reference", "optimized"] = "reference",
) -> NpuValidation:
    """Simulate ``vela_tflite`` and compare it with ``int8_tflite`` in TFLite Micro (LiteRT without it)."""
    model = container.load(vela_tflite)
    produced = run(model, inputs, cpu_kernels=kernels).outputs
    reference, used = reference_outputs(int8_tflite, inputs, kernels)
    scales = {model.tensors[i].name: model.tensors[i].scale for i in model.outputs}
    details = {
        "reference": used,
        "npu_ops": len(model.npu_calls),
        "cpu_ops": len(model.ops) - len(model.npu_calls),
    }
    return compare_outputs(produced, reference, scales, "sim", details)
