"""What a TOSA-form compile leaves next to ``MODEL_vela.tflite`` so ``nirc validate`` can check it later.

Why: a TOSA-form artifact computes what the lifted TOSA graph specifies (one TABLE per
activation chain), not what the int8 TFLite does, so the int8 TFLite is the wrong
reference for it. ``MODEL_npu.tosa`` is that graph; ``MODEL_npu.json`` maps its interface
to the model's tensor names and, for a split model (:mod:`nirc.tosa.partition`), names
``MODEL_npu_rest.tflite``, the part Vela read as TFLite. :func:`validate` runs the compiled
artifact in the NPU functional model against the TOSA reference model (and TFLite Micro
for the TFLite part), bit for bit, on seeded random int8 inputs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nirc.errors import ModelLoadError, NpuValidationError
from nirc.tosa.lift import SplitRest, TosaGraph
from nirc.tosa.marker import digest, tosa_source
from nirc.tosa.route import ArtifactCheck, compare_artifact, interface

_FORMAT = "nirc-tosa-artifact-1"


def sidecar_files(graph: TosaGraph, tosa_name: str) -> dict[str, bytes]:
    """The files that describe ``graph`` (saved as ``tosa_name``) to :func:`load`, by file name."""
    stem = Path(tosa_name).stem
    files: dict[str, bytes] = {tosa_name: graph.data}
    doc: dict[str, object] = {
        "format": _FORMAT,
        "tosa": tosa_name,
        "inputs": [[t, n, *graph.quant[t]] for t, n in zip(graph.inputs, graph.tflite_inputs, strict=True)],
        "outputs": [[t, n, *graph.quant[t]] for t, n in zip(graph.outputs, graph.tflite_outputs, strict=True)],
        "split": None,
    }
    if graph.split is not None:
        rest = f"{stem}_rest.tflite"
        files[rest] = graph.split.tflite
        doc["split"] = {
            "tflite": rest,
            "ops": list(graph.split.ops),
            "inputs": list(graph.split.inputs),
            "outputs": list(graph.split.outputs),
        }
    files[f"{stem}.json"] = (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()
    return files


def load(tosa_path: Path) -> TosaGraph:
    """The lifted graph saved by :func:`sidecar_files` (``MODEL_npu.tosa`` and its ``.json``).

    Raises:
        ModelLoadError: a file is missing or not what nirc wrote.
    """
    doc_path = tosa_path.with_suffix(".json")
    for path in (tosa_path, doc_path):
        if not path.is_file():
            raise ModelLoadError(f"{path}: no such file (nirc optimize writes it next to a TOSA-form artifact)")
    try:
        doc = json.loads(doc_path.read_text(encoding="utf-8"))
        if doc.get("format") != _FORMAT:
            raise ValueError(f"format {doc.get('format')!r}")
        ins, outs = doc["inputs"], doc["outputs"]
        quant = {row[0]: (float(row[2]), int(row[3])) for row in (*ins, *outs)}
        split = None
        if doc["split"] is not None:
            part = doc["split"]
            rest = tosa_path.with_name(part["tflite"])
            if not rest.is_file():
                raise ModelLoadError(f"{rest}: no such file (the TFLite part of {tosa_path.name})")
            split = SplitRest(rest.read_bytes(), tuple(part["ops"]), tuple(part["inputs"]), tuple(part["outputs"]))
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise ModelLoadError(f"{doc_path}: not a nirc TOSA artifact description ({exc})") from None
    data = tosa_path.read_bytes()
    if data[4:8] != b"TOSA":
        raise ModelLoadError(f"{tosa_path}: not a TOSA flatbuffer (no 'TOSA' file identifier)")
    return TosaGraph(
        data,
        tuple(r[0] for r in ins),
        tuple(r[0] for r in outs),
        quant,
        tables=0,
        ops_folded_into_tables=0,
        tflite_inputs=tuple(r[1] for r in ins),
        tflite_outputs=tuple(r[1] for r in outs),
        split=split,
    )


@dataclass(frozen=True)
class Validation:
    """``nirc validate VELA MODEL_npu.tosa``: one :class:`ArtifactCheck` per random input."""

    checks: tuple[ArtifactCheck, ...]

    @property
    def max_abs_diff_lsb(self) -> int:
        return max((c.max_abs_diff_lsb for c in self.checks), default=0)


def find_tosa(vela_tflite: Path, reference: Path) -> Path | None:
    """The TOSA graph ``vela_tflite`` must be checked against, or None for a TFLite-form artifact.

    ``reference`` is what the user named: a ``.tosa`` file is taken as given; otherwise the
    artifact's own mark (:mod:`nirc.tosa.marker`) names the file, which must sit next to it
    with the recorded hash.

    Raises:
        ModelLoadError: the marked TOSA file is missing or is not the one the artifact was compiled from.
    """
    if reference.suffix == ".tosa":
        return reference
    source = tosa_source(vela_tflite.read_bytes()) if vela_tflite.is_file() else None
    if source is None:
        return None
    name, recorded = source
    path = vela_tflite.with_name(name)
    if not path.is_file():
        raise ModelLoadError(f"{vela_tflite}: compiled from the TOSA graph {name}, which is not next to it")
    if digest(path.read_bytes()) != recorded:
        raise ModelLoadError(f"{path}: not the TOSA graph {vela_tflite.name} was compiled from (hash differs)")
    return path


def validate(vela_tflite: Path, tosa_path: Path, samples: int = 3, seed: int = 0) -> Validation:
    """Check a TOSA-form artifact on ``samples`` seeded random int8 inputs (see the module docstring)."""
    from nirc.targets.ethos_u.sim import container

    graph = load(tosa_path)
    model = container.load(vela_tflite)
    shapes = {model.tensors[i].name: model.tensors[i].shape for i in model.inputs}
    in_names = interface(graph)[0]
    vela_names = [model.tensors[i].name for i in model.inputs]
    if len(vela_names) != len(in_names):
        raise ModelLoadError(f"{vela_tflite}: {len(vela_names)} inputs, {tosa_path.name} describes {len(in_names)}")
    rng = np.random.default_rng(seed)
    checks = []
    for _ in range(samples):
        feed = [rng.integers(-128, 128, size=shapes[n], dtype=np.int8) for n in vela_names]
        checks.append(compare_artifact(vela_tflite, graph, feed))
    return Validation(tuple(checks))


def validate_command(vela_tflite: Path, tosa_path: Path, samples: int, write: Callable[[str], object]) -> int:
    """``nirc validate VELA MODEL_npu.tosa``: print one line per input; 0 when bit-exact.

    Zero tolerance, as for a TFLite-form artifact: any difference raises
    :class:`~nirc.errors.NpuValidationError` (exit 9). The TOSA route has no known
    differences to explain, so every LSB counts.
    """
    result = validate(vela_tflite, tosa_path, samples)
    for check in result.checks:
        where = f", first at {check.first_divergence}" if check.first_divergence else ""
        write(f"sim vs TOSA reference: bit-exact {check.bit_exact}, max diff {check.max_abs_diff_lsb} LSB{where}\n")
    worst = result.max_abs_diff_lsb
    write(f"{'bit-exact' if worst == 0 else f'max difference {worst} LSB'} on {samples} random inputs\n")
    if worst:
        first = next(c.first_divergence for c in result.checks if c.first_divergence)
        raise NpuValidationError(f"{vela_tflite} differs from {tosa_path} by {worst} LSB: {first}")
    return 0
