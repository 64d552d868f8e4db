"""Run a Vela-compiled model on Arm's Corstone FVP with a prebuilt inference runner.

Why this exists: the functional model (:mod:`nirc.targets.ethos_u.sim`) checks the
command stream's arithmetic, but only Arm's Fixed Virtual Platform runs the real
NPU model with TFLite Micro and the Ethos-U driver, and only it reports NPU cycle
counters.  When an FVP is installed this backend feeds the model and its inputs to
it and reads back outputs and counters; when none is, it says how to get one.

What it needs, neither of which nirc installs:

* the FVP executable -- ``FVP_Corstone_SSE-300_Ethos-U55`` / ``-U65`` (Corstone-300)
  or ``FVP_Corstone_SSE-320`` (Ethos-U85) -- on ``PATH``, in ``$NIRC_FVP`` or given;
  Arm distributes them from its website ("Arm Ecosystem FVPs", Corstone-300/320);
* an inference-runner application.  The PyPI package ``mlia-ethos-u`` (0.1.0) ships
  prebuilt TFLite Micro runners (``mlek_inference_runner.axf`` for SSE-300 U55/U65,
  SSE-310 U55/U65, SSE-320 U85).  They load the model from 0x90000000, copy input
  bytes from 0x92000000 into the input tensors in order, copy the outputs to
  0x93000000 after the inference and print the NPU PMU counters as base64 JSON
  between ``<metrics>`` tags.  Install it (``pip install mlia-ethos-u``) or pass the
  ``.axf`` path (or set ``$NIRC_ETHOSU_RUNNER``).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from nirc.targets.ethos_u.sim import container
from nirc.targets.ethos_u.sim.validate import NpuValidation, compare_outputs, reference_outputs

from nirc.errors import BackendError

MODEL_ADDRESS = 0x90000000
IFM_ADDRESS = 0x92000000
OFM_ADDRESS = 0x93000000
IO_REGION_BYTES = 0x01000000  # the runner reserves 16 MiB each for inputs and outputs

FVP_NAMES: dict[str, tuple[str, ...]] = {
    "ethos-u55": ("FVP_Corstone_SSE-300_Ethos-U55",),
    "ethos-u65": ("FVP_Corstone_SSE-300_Ethos-U65",),
    "ethos-u85": ("FVP_Corstone_SSE-320",),
}
_RUNNER_DIRS = {
    "ethos-u55": "inference_runner-sse-300-26.03.0-tflm-ethos-U55-Default-noTA",
    "ethos-u65": "inference_runner-sse-300-26.03.0-tflm-ethos-U65-Default-noTA",
    "ethos-u85": "inference_runner-sse-320-26.03.0-tflm-ethos-U85-Default-noTA",
}
HOW_TO_GET_FVP = (
    "Arm's Corstone FVPs are not on PyPI: download 'Arm Ecosystem FVPs' (Corstone-300 for Ethos-U55/U65, "
    "Corstone-320 for Ethos-U85) from Arm's developer website, install it, and put the model executable on PATH, "
    "set NIRC_FVP, or pass it explicitly. Without an FVP, use the functional model (--validate sim)."
)


class FvpNotFoundError(BackendError):
    """No FVP executable (or no inference runner) is available."""


@dataclass(frozen=True)
class FvpResult:
    """Outputs (by tensor name, TFLite layout) and the PMU counters the runner printed."""

    outputs: dict[str, np.ndarray]
    counters: dict[str, int]
    log: str = field(repr=False)

    @property
    def npu_active_cycles(self) -> int | None:
        return self.counters.get("NPU ACTIVE")


def npu_family(target: str) -> str:
    """``ethos-u65-256`` -> ``ethos-u65``."""
    match = re.match(r"(ethos-u\d\d)", target)
    if not match or match.group(1) not in FVP_NAMES:
        raise BackendError(f"no Corstone FVP models target {target!r}")
    return match.group(1)


def find_fvp(target: str, fvp: str | Path | None = None, *, path: str | None = None) -> Path | None:
    """The FVP executable for ``target``: explicit argument, then ``$NIRC_FVP``, then ``PATH``."""
    for candidate in (fvp, os.environ.get("NIRC_FVP")):
        if candidate:
            resolved = shutil.which(str(candidate)) or (str(candidate) if Path(candidate).is_file() else None)
            if resolved:
                return Path(resolved)
            raise FvpNotFoundError(f"FVP {candidate!s} does not exist or is not executable. {HOW_TO_GET_FVP}")
    for name in FVP_NAMES[npu_family(target)]:
        found = shutil.which(name, path=path)
        if found:
            return Path(found)
    return None


def require_fvp(target: str, fvp: str | Path | None = None) -> Path:
    found = find_fvp(target, fvp)
    if found is None:
        names = ", ".join(FVP_NAMES[npu_family(target)])
        raise FvpNotFoundError(
            f"no FVP for {target} found (looked for {names} on PATH and in NIRC_FVP). {HOW_TO_GET_FVP}"
        )
    return found


def find_runner(target: str, runner: str | Path | None = None) -> Path:
    """The inference-runner ``.axf``: explicit, ``$NIRC_ETHOSU_RUNNER``, or inside an installed ``mlia-ethos-u``."""
    for candidate in (runner, os.environ.get("NIRC_ETHOSU_RUNNER")):
        if candidate:
            if Path(candidate).is_file():
                return Path(candidate)
            raise FvpNotFoundError(f"inference runner {candidate!s} does not exist")
    rel = Path("resources", "backends", "applications", _RUNNER_DIRS[npu_family(target)], "mlek_inference_runner.axf")
    try:
        import importlib.util

        spec = importlib.util.find_spec("mlia")
    except (ImportError, ValueError):
        spec = None
    for location in spec.submodule_search_locations or [] if spec else []:
        axf = Path(location) / rel
        if axf.is_file():
            return axf
    raise FvpNotFoundError(
        "no Ethos-U inference runner found: `pip install mlia-ethos-u` (it ships prebuilt TFLite Micro runners; "
        "nirc does not depend on it), or pass the .axf path / set NIRC_ETHOSU_RUNNER"
    )


def fvp_command(
    fvp: Path, runner: Path, model: Path, ifm: Path, ofm: Path, ofm_bytes: int, target: str, macs: int
) -> list[str]:
    """The FVP command line: model, inputs and output dump at the runner's fixed addresses."""
    family = npu_family(target)
    board, macs_param = (
        ("mps4_board", "mps4_board.subsystem.ethosu.num_macs")
        if family == "ethos-u85"
        else ("mps3_board", "ethosu.num_macs")
    )
    return [
        str(fvp),
        "-a",
        str(runner),
        "--data",
        f"{model}@{MODEL_ADDRESS:#x}",
        "--data",
        f"{ifm}@{IFM_ADDRESS:#x}",
        "--dump",
        f"cpu0={ofm}@Memory:{OFM_ADDRESS:#x},{max(ofm_bytes, 1)}",
        "-C",
        f"{macs_param}={macs}",
        "-C",
        f"{board}.telnetterminal0.start_telnet=0",
        "-C",
        f"{board}.uart0.out_file='-'",
        "-C",
        f"{board}.uart0.shutdown_on_eot=1",
        "-C",
        f"{board}.visualisation.disable-visualisation=1",
        "--stat",
    ]


def parse_counters(log: str) -> dict[str, int]:
    """PMU counters from the runner's ``<metrics>base64(JSON)</metrics>`` lines."""
    counters: dict[str, int] = {}
    for chunk in re.findall(r"<metrics>(.*?)</metrics>", log):
        try:
            groups = json.loads(base64.b64decode(chunk, validate=True))
        except (binascii.Error, ValueError) as exc:
            raise BackendError(f"unreadable <metrics> block from the inference runner: {exc}") from exc
        for group in groups:
            for sample in group.get("samples", []):
                counters[str(sample["name"])] = int(sample["value"][0])
    return counters


def _runner_errors(log: str) -> list[str]:
    pattern = re.compile(r"^(?:ERROR - |E \[|TFLM - (?:Failed to |Didn't find op for ))")
    return [line.strip() for line in log.splitlines() if pattern.match(line.strip())]


def run_fvp(
    vela_tflite: Path,
    inputs: Mapping[str, np.ndarray],
    target: str,
    *,
    fvp: str | Path | None = None,
    runner: str | Path | None = None,
    timeout: float = 600.0,
    extra_args: Sequence[str] = (),
) -> FvpResult:
    """Run ``vela_tflite`` on the FVP for ``target`` (e.g. ``ethos-u65-256``) and read back outputs and counters."""
    exe = require_fvp(target, fvp)
    axf = find_runner(target, runner)
    model = container.load(vela_tflite)
    macs = int(target.rsplit("-", 1)[-1])
    ins = [model.tensors[i] for i in model.inputs]
    outs = [model.tensors[i] for i in model.outputs]
    blob = b"".join(np.ascontiguousarray(np.asarray(inputs[t.name], dtype=t.dtype)).tobytes() for t in ins)
    ofm_bytes = sum(t.nbytes for t in outs)
    if len(blob) > IO_REGION_BYTES or ofm_bytes > IO_REGION_BYTES:
        raise BackendError("inputs or outputs exceed the inference runner's 16 MiB I/O buffers")
    with tempfile.TemporaryDirectory(prefix="nirc-fvp-") as tmp:
        work = Path(tmp)
        ifm, ofm = work / "ifm.bin", work / "ofm.bin"
        ifm.write_bytes(blob)
        cmd = [*fvp_command(exe, axf, Path(vela_tflite).resolve(), ifm, ofm, ofm_bytes, target, macs), *extra_args]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise BackendError(f"FVP did not finish within {timeout:.0f} s") from exc
        log = proc.stdout + proc.stderr
        errors = _runner_errors(log)
        if proc.returncode != 0 or errors:
            detail = "; ".join(errors) or log.strip()[-500:]
            raise BackendError(f"FVP run failed (exit {proc.returncode}): {detail}")
        if not ofm.is_file() or ofm.stat().st_size < ofm_bytes:
            raise BackendError("FVP produced no output dump; the runner may not have reached the end of the inference")
        raw = ofm.read_bytes()
    outputs: dict[str, np.ndarray] = {}
    offset = 0
    for t in outs:
        outputs[t.name] = np.frombuffer(raw[offset : offset + t.nbytes], dtype=t.dtype).reshape(t.shape).copy()
        offset += t.nbytes
    return FvpResult(outputs, parse_counters(log), log)


def validate_fvp(
    vela_tflite: Path,
    int8_tflite: Path,
    inputs: Mapping[str, np.ndarray],
    target: str,
    *,
    fvp: str | Path | None = None,
    runner: str | Path | None = None,
    kernels: Literal["reference", "optimized"] = "reference",
) -> NpuValidation:
    """Run on the FVP and compare with the pre-Vela model (``method="fvp"``, counters in details)."""
    result = run_fvp(vela_tflite, inputs, target, fvp=fvp, runner=runner)
    reference, used = reference_outputs(int8_tflite, inputs, kernels)
    model = container.load(vela_tflite)
    scales = {model.tensors[i].name: model.tensors[i].scale for i in model.outputs}
    details = {"reference": used, "counters": result.counters}
    return compare_outputs(result.outputs, reference, scales, "fvp", details)
