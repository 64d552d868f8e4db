"""Run the TOSA reference model (tosa-tools' ``tosa_reference_model``) on a lifted graph.

Why: once the NPU part goes to Vela as TOSA, the int8 TFLite is no longer what the
NPU computes (its SiLU is LOGISTIC then MUL, rounded twice; the TABLE rounds once).
The reference model computes exactly what the TOSA ops specify, so the compiled
artifact can be checked against it bit for bit.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from nirc.errors import BackendError
from nirc.tosa.lift import TosaGraph

_BINARY = "tosa_reference_model"


def reference_binary() -> Path:
    """The reference model next to this Python (a venv's bin/), in the venv tosa-tools is in, or on PATH."""
    import tosa

    site = Path(tosa.__file__).resolve().parent.parent  # .../lib/pythonX.Y/site-packages
    for local in (Path(sys.executable).parent / _BINARY, site.parent.parent.parent / "bin" / _BINARY):
        if local.is_file():
            return local
    found = shutil.which(_BINARY)
    if found is None:
        raise BackendError(f"{_BINARY} not found: pip install tosa-tools")
    return Path(found)


def run_reference(graph: TosaGraph, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """int8 outputs of ``graph`` for int8 ``inputs`` (by TOSA input name, NHWC)."""
    with tempfile.TemporaryDirectory(prefix="nirc-tosa-") as tmp:
        root = Path(tmp)
        (root / "model.tosa").write_bytes(graph.data)
        ifm_files: list[str] = []
        for name in graph.inputs:
            path = root / f"in_{len(ifm_files)}.npy"
            np.save(path, np.ascontiguousarray(inputs[name], np.int8))
            ifm_files.append(path.name)
        ofm_files = [f"out_{i}.npy" for i in range(len(graph.outputs))]
        argv = [
            str(reference_binary()),
            "--tosa_file", str(root / "model.tosa"),
            "--ifm_name", ",".join(graph.inputs),
            "--ifm_file", ",".join(str(root / f) for f in ifm_files),
            "--ofm_name", ",".join(graph.outputs),
            "--ofm_file", ",".join(ofm_files),
            "--output_dir", str(root),
        ]  # fmt: skip
        run = subprocess.run(argv, capture_output=True, text=True, check=False)
        missing = [f for f in ofm_files if not (root / f).is_file()]
        if run.returncode != 0 or missing:
            text = (run.stdout + run.stderr).strip().splitlines()
            detail = next((line for line in text if "ERROR" in line or "Unable" in line), text[-1] if text else "")
            raise BackendError(f"TOSA reference model failed: {detail}")
        return {name: np.load(root / f) for name, f in zip(graph.outputs, ofm_files, strict=True)}
