"""The TOSA route of ``nirc optimize --npu-format tosa``: lift, and check what Vela made of it.

The int8 TFLite stays the artifact nirc emits and the LiteRT check; for the NPU
part Vela reads the lifted TOSA graph instead and writes ``MODEL_vela.tflite``
(one ``ethos-u`` custom op, what TFLite Micro runs). Two checks replace the TFLite
route's: the TOSA reference model's int8 outputs against ONNX Runtime's float ones
(SNR, like LiteRT's), and the compiled artifact in nirc's NPU functional model
against the reference model, bit for bit.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from nirc.errors import BackendError
from nirc.target import Target
from nirc.tflite import TFLiteModel
from nirc.tosa.lift import TosaGraph, TosaUnsupportedError
from nirc.tosa.marker import mark
from nirc.tosa.partition import SEPARATE_IO, io_names, lift_split, rename_interface, stitch
from nirc.tosa.reference import run_reference
from nirc.validate import OutputCheck, check_output, from_tflite_layout, to_tflite_layout
from nirc.verify import run_onnx

if TYPE_CHECKING:
    from nirc.targets.ethos_u.vela_driver import VelaResult


def lift_for_vela(model: TFLiteModel, path: Path, target: Target, warnings: list[str]) -> TosaGraph | None:
    """Write the lifted graph to ``path``; None (and a warning naming the op) when it cannot be lifted.

    Staging the image input in SRAM (:func:`nirc.tosa.lift.lift`) helps when the first
    conv is bound by reading it (mobilenet_v3_small 2.55 -> 2.06 ms) and costs a copy
    when it is bound by writing its output to DRAM (efficientnet_b0 +0.1 ms): both
    forms are compiled and Vela's cheaper one is kept.
    """
    from nirc.targets.ethos_u.vela_driver import compile_with_vela

    try:
        graph = lift_split(model.data)
    except TosaUnsupportedError as exc:
        warnings.append(f"--npu-format tosa: {exc}; Vela compiled the int8 TFLite instead")
        return None
    if graph.staged:
        plain = lift_split(model.data, stage_inputs=False)
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


def compile_tosa(graph: TosaGraph, tosa_path: Path, target: Target, output_dir: Path) -> VelaResult:
    """Vela on the lifted graph (and a split model's TFLite part): one ``<tosa stem>_vela.tflite``.

    The artifact's interface tensors get the int8 TFLite's names (Vela keeps the TOSA
    graph's), so it is fed like the TFLite route's, and it is marked with the name and
    hash of ``tosa_path`` (:func:`nirc.tosa.partition.mark`): ``nirc validate`` then
    checks it against that graph, not against the int8 TFLite it does not compute.
    A split model's estimates add up: its parts run one after the other, each with the
    whole SRAM.
    """
    from nirc.targets.ethos_u.vela_driver import compile_with_vela

    names = dict(zip((*graph.inputs, *graph.outputs), (*graph.tflite_inputs, *graph.tflite_outputs), strict=True))
    if graph.split is None:
        result = compile_with_vela(tosa_path, target, output_dir)
        artifact = rename_interface(result.vela_tflite.read_bytes(), names)
        result.vela_tflite.write_bytes(mark(artifact, tosa_path.name, graph.data))
        return result
    rest_path = tosa_path.with_name(f"{tosa_path.stem}_rest.tflite")
    rest_path.write_bytes(graph.split.tflite)
    first = compile_with_vela(tosa_path, target, output_dir, extra_args=SEPARATE_IO)
    second = compile_with_vela(rest_path, target, output_dir, extra_args=SEPARATE_IO)
    part = rename_interface(first.vela_tflite.read_bytes(), names)
    joined = stitch(part, second.vela_tflite.read_bytes(), graph.split.inputs, graph.split.outputs)
    first.vela_tflite.write_bytes(mark(joined, tosa_path.name, graph.data))
    second.vela_tflite.unlink()
    summed = {
        f: getattr(first, f) + getattr(second, f)
        for f in ("inference_time_ms", "cycles_total", "cycles_npu", "dram_feature_map_read_bytes",
                  "dram_feature_map_write_bytes", "dram_weight_bytes", "flash_weight_bytes", "nn_macs",
                  "original_weight_bytes", "encoded_weight_bytes", "npu_ops", "cpu_ops", "cpu_op_list", "layers")
    }  # fmt: skip
    return dataclasses.replace(
        first,
        sram_used_kib=max(first.sram_used_kib, second.sram_used_kib),
        dram_used_kib=max(first.dram_used_kib, second.dram_used_kib),
        **summed,
    )


#: Samples the TOSA reference model runs on against ONNX Runtime: it takes seconds per input.
REFERENCE_SAMPLES = 8


def _int8_feeds(model: TFLiteModel, samples: Sequence[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
    """Per sample, the int8 inputs in the TFLite model's order."""
    return [[to_tflite_layout(io, sample[io.name]) for io in model.inputs] for sample in samples]


def interface(graph: TosaGraph) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The whole model's input and output tensor names (TFLite), in its order."""
    if graph.split is not None:
        return graph.split.inputs, graph.split.outputs
    return graph.tflite_inputs, graph.tflite_outputs


def run_graph(graph: TosaGraph, feed: Sequence[np.ndarray]) -> list[np.ndarray]:
    """What the NPU must compute: the TOSA reference model, then a split model's TFLite part.

    The TFLite part runs in TFLite Micro (LiteRT without it), as ``nirc validate`` runs
    the int8 TFLite. Inputs and outputs are in the model's order (:func:`interface`).
    """
    from nirc.targets.ethos_u.sim.validate import reference_outputs

    in_names, out_names = interface(graph)
    values = dict(zip(in_names, feed, strict=True))
    produced = run_reference(graph, {t: values[n] for t, n in zip(graph.inputs, graph.tflite_inputs, strict=True)})
    values.update({n: produced[t] for t, n in zip(graph.outputs, graph.tflite_outputs, strict=True)})
    if graph.split is not None:
        rest_inputs = io_names(graph.split.tflite)[0]
        values.update(reference_outputs(graph.split.tflite, {n: values[n] for n in rest_inputs})[0])
    return [values[n] for n in out_names]


def compare_reference(
    proto: onnx.ModelProto, model: TFLiteModel, graph: TosaGraph, samples: Sequence[dict[str, np.ndarray]]
) -> list[OutputCheck]:
    """The TOSA reference model's outputs against ORT's float ones, as ``nirc.validate.compare`` does for LiteRT.

    On at most :data:`REFERENCE_SAMPLES` samples.
    """
    samples = samples[:REFERENCE_SAMPLES]
    reference = run_onnx(proto, samples)
    produced = [run_graph(graph, feed) for feed in _int8_feeds(model, samples)]
    return [
        check_output(
            io,
            np.stack([run[index] for run in reference]),
            np.stack([from_tflite_layout(io, run[index]) for run in produced]),
        )
        for index, io in enumerate(model.outputs)
    ]


@dataclass(frozen=True)
class ArtifactCheck:
    """One input: the compiled artifact in the functional model against :func:`run_graph`."""

    max_abs_diff_lsb: int
    first_divergence: str | None

    @property
    def bit_exact(self) -> bool:
        return self.max_abs_diff_lsb == 0


def compare_artifact(vela_tflite: Path, graph: TosaGraph, feed: Sequence[np.ndarray]) -> ArtifactCheck:
    """Simulate ``vela_tflite`` on int8 ``feed`` (model order) and compare every output element.

    Raises:
        BackendError: the functional model cannot run the artifact (an unmodelled NPU feature).
    """
    from nirc.targets.ethos_u.sim.runner import simulate

    vela_in, vela_out = io_names(vela_tflite.read_bytes())
    ref = run_graph(graph, feed)
    got = simulate(vela_tflite, dict(zip(vela_in, feed, strict=True)))
    worst, first = 0, None
    for r, name in zip(ref, vela_out, strict=True):
        diff = np.abs(r.astype(np.int32) - got[name].reshape(r.shape).astype(np.int32))
        if diff.any() and first is None:
            at = int(np.argmax(diff))
            coords = ",".join(str(int(c)) for c in np.unravel_index(at, r.shape))
            sim_value = got[name].reshape(r.shape).flat[at]
            first = f"output {name!r} element [{coords}]: sim {sim_value} vs TOSA {r.flat[at]}"
        worst = max(worst, int(diff.max()) if diff.size else 0)
    return ArtifactCheck(worst, first)


def check_compiled(
    vela_tflite: Path, model: TFLiteModel, graph: TosaGraph, samples: Sequence[dict[str, np.ndarray]],
    warnings: list[str],
) -> dict[str, Any]:  # fmt: skip
    """``validation.npu``: the compiled artifact in the functional model against :func:`run_graph`, bit for bit."""
    feeds = _int8_feeds(model, samples)
    try:
        checks = [compare_artifact(vela_tflite, graph, feed) for feed in feeds]
    except BackendError as exc:
        warnings.append(f"NPU functional model could not run the TOSA-compiled model ({exc}); not executed")
        return {"method": "sim", "reference": "tosa", "error": str(exc)}
    worst = max((c.max_abs_diff_lsb for c in checks), default=0)
    if worst > 0:
        warnings.append(f"compiled NPU model differs from the TOSA reference model by {worst} LSB")
    first = next((c.first_divergence for c in checks if c.first_divergence), None)
    return {
        "method": "sim",
        "reference": "tosa",
        "samples": len(feeds),
        "bit_exact": worst == 0,
        "bit_exact_samples": sum(c.bit_exact for c in checks),
        "max_abs_diff_lsb": worst,
        **({"first_divergence": first} if first else {}),
    }


def summary(graph: TosaGraph, path: Path) -> dict[str, Any]:
    """``report["npu_format"]``: what the lift did and the I/O contract of the compiled model."""
    return {
        "format": "tosa",
        "tosa_file": path.name,
        "tables": graph.tables,
        "tflite_ops_in_tables": graph.ops_folded_into_tables,
        "inputs_staged_in_sram": list(graph.staged),
        "inputs": {tfl: _qjson(graph.quant[n]) for n, tfl in zip(graph.inputs, graph.tflite_inputs, strict=True)},
        # A split model's TOSA part ends at the tensors its TFLite part reads.
        "outputs": {tfl: _qjson(graph.quant[n]) for n, tfl in zip(graph.outputs, graph.tflite_outputs, strict=True)},
        **({"tflite_part_ops": dict(Counter(graph.split.ops))} if graph.split is not None else {}),
    }


def _qjson(quant: tuple[float, int]) -> dict[str, float | int]:
    return {"scale": quant[0], "zero_point": quant[1]}
