"""The TOSA route of ``nirc optimize --npu-format tosa``: lift, and check what Vela made of it.

The int8 TFLite stays the artifact nirc emits and the LiteRT check; for the NPU
part Vela reads the lifted TOSA graph instead and writes ``MODEL_vela.tflite``
(one ``ethos-u`` custom op, what TFLite Micro runs). Two checks replace the TFLite
route's: the TOSA reference model's int8 outputs against ONNX Runtime's float ones
(SNR, like LiteRT's), and the compiled artifact in nirc's NPU functional model
against the reference model, bit for bit.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from nirc.errors import BackendError
from nirc.target import Target
from nirc.tflite import TFLiteModel
from nirc.tosa.lift import TosaGraph, TosaUnsupportedError, lift
from nirc.tosa.reference import run_reference
from nirc.validate import OutputCheck, check_output, from_tflite_layout, to_tflite_layout
from nirc.verify import run_onnx


def lift_for_vela(model: TFLiteModel, path: Path, target: Target, warnings: list[str]) -> TosaGraph | None:
    """Write the lifted graph to ``path``; None (and a warning naming the op) when it cannot be lifted.

    Staging the image input in SRAM (:func:`nirc.tosa.lift.lift`) helps when the first
    conv is bound by reading it (mobilenet_v3_small 2.55 -> 2.06 ms) and costs a copy
    when it is bound by writing its output to DRAM (efficientnet_b0 +0.1 ms): both
    forms are compiled and Vela's cheaper one is kept.
    """
    from nirc.targets.ethos_u.vela_driver import compile_with_vela

    try:
        graph = lift(model.data)
    except TosaUnsupportedError as exc:
        warnings.append(f"--npu-format tosa: {exc}; Vela compiled the int8 TFLite instead")
        return None
    if graph.staged:
        plain = lift(model.data, stage_inputs=False)
        with tempfile.TemporaryDirectory(prefix="nirc-stage-") as tmp:
            cycles = []
            for i, candidate in enumerate((graph, plain)):
                probe = Path(tmp) / f"candidate{i}.tosa"
                probe.write_bytes(candidate.data)
                try:
                    cycles.append(compile_with_vela(probe, target, Path(tmp) / f"vela{i}").cycles_total)
                except BackendError as exc:
                    warnings.append(f"--npu-format tosa: {exc}; Vela compiled the int8 TFLite instead")
                    return None
        if cycles[1] <= cycles[0]:
            graph = plain
    path.write_bytes(graph.data)
    return graph


def _int8_feeds(
    model: TFLiteModel, graph: TosaGraph, samples: Sequence[dict[str, np.ndarray]]
) -> list[dict[str, np.ndarray]]:
    return [
        {name: to_tflite_layout(io, sample[io.name]) for name, io in zip(graph.inputs, model.inputs, strict=True)}
        for sample in samples
    ]


def compare_reference(
    proto: onnx.ModelProto, model: TFLiteModel, graph: TosaGraph, samples: Sequence[dict[str, np.ndarray]]
) -> list[OutputCheck]:
    """The TOSA reference model's outputs against ORT's float ones, as ``nirc.validate.compare`` does for LiteRT."""
    reference = run_onnx(proto, samples)
    produced = [run_reference(graph, feed) for feed in _int8_feeds(model, graph, samples)]
    return [
        check_output(
            io,
            np.stack([run[index] for run in reference]),
            np.stack([from_tflite_layout(io, run[name]) for run in produced]),
        )
        for index, (name, io) in enumerate(zip(graph.outputs, model.outputs, strict=True))
    ]


def check_compiled(
    vela_tflite: Path, model: TFLiteModel, graph: TosaGraph, samples: Sequence[dict[str, np.ndarray]],
    warnings: list[str],
) -> dict[str, Any]:  # fmt: skip
    """``validation.npu``: the compiled artifact in the functional model against the TOSA reference model."""
    from nirc.targets.ethos_u.sim.runner import simulate

    worst, exact = 0, 0
    feeds = _int8_feeds(model, graph, samples)
    try:
        for feed in feeds:
            ref = run_reference(graph, feed)
            got = simulate(vela_tflite, feed)
            diff = max(int(np.max(np.abs(ref[n].astype(np.int32) - got[n].astype(np.int32)))) for n in graph.outputs)
            worst = max(worst, diff)
            exact += diff == 0
    except BackendError as exc:
        warnings.append(f"NPU functional model could not check the TOSA-compiled model: {exc}")
        return {"method": "sim", "reference": "tosa", "error": str(exc)}
    if worst > 0:
        warnings.append(f"compiled NPU model differs from the TOSA reference model by {worst} LSB")
    return {
        "method": "sim",
        "reference": "tosa",
        "samples": len(feeds),
        "bit_exact": exact == len(feeds),
        "bit_exact_samples": exact,
        "max_abs_diff_lsb": worst,
    }


def summary(graph: TosaGraph, path: Path) -> dict[str, Any]:
    """``report["npu_format"]``: what the lift did and the I/O contract of the compiled model."""
    return {
        "format": "tosa",
        "tosa_file": path.name,
        "tables": graph.tables,
        "tflite_ops_in_tables": graph.ops_folded_into_tables,
        "inputs_staged_in_sram": list(graph.staged),
        "inputs": {n: {"scale": s, "zero_point": z} for n, (s, z) in graph.quant.items() if n in graph.inputs},
        "outputs": {n: {"scale": s, "zero_point": z} for n, (s, z) in graph.quant.items() if n in graph.outputs},
    }
