"""Attention benchmark: does each model compile, what runs on the CPU and why, Vela latency, int8 SNR.

Usage::

    python benchmarks/attention.py [-o benchmarks/results/attention.md] [ONNX files or directories...]

Default inputs: the fixtures in tests/fixtures/attention (examples/build_attention_models.py).  Pass
the directory written by benchmarks/export_attention_zoo.py (run with a torch environment) to add
the public architectures, or files of /work/zoo_exports.
Each model runs through ``nirc.pipeline.optimize`` for ethos-u65-256
(Ethos_U65_High_End, Dedicated_Sram_384KB) with synthetic calibration (random inputs; the models
have random weights): per model it records whether it compiles (else nirc's one-line error), the
NPU/CPU op split with each CPU op's type and Vela's reason, how many TRANSPOSE and BATCH_MATMUL
ops the int8 TFLite holds, Vela's latency estimate and the int8-vs-float SNR of the first output.
"""

from __future__ import annotations

import argparse
import collections
import logging
import sys
import tempfile
import time
from pathlib import Path

import tflite

from nirc.errors import NircError
from nirc.pipeline import optimize

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_INPUTS = (ROOT / "tests" / "fixtures" / "attention",)


def _models(inputs: list[Path]) -> list[Path]:
    found: list[Path] = []
    for item in inputs:
        found.extend(sorted(item.glob("*.onnx")) if item.is_dir() else [item])
    return found


def _op_counts(data: bytes) -> collections.Counter[str]:
    from nirc.targets.ethos_u.vela_driver import _builtin_names

    names = _builtin_names()
    model = tflite.Model.GetRootAs(data, 0)
    sg = model.Subgraphs(0)
    counts: collections.Counter[str] = collections.Counter()
    for i in range(sg.OperatorsLength()):
        code = model.OperatorCodes(sg.Operators(i).OpcodeIndex())
        counts[names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "?")] += 1
    return counts


def _row(path: Path, out: Path) -> str:
    start = time.perf_counter()
    try:
        result = optimize(path, outdir=out / path.stem, validate_npu="none", require_fit=False)
    except NircError as exc:
        return f"| {path.stem} | no: `{exc}` | | | | | | | | {time.perf_counter() - start:.0f} |"
    report = result.report
    vela = report["vela"]
    cpu = collections.Counter(  # what Vela did (the placement section also lists mispredictions)
        f"{op['op_type']} ({op['reasons'][0] if op['reasons'] else '?'})"
        for op in report["placement"]["cpu_ops"]
        if op["observed"] == "CPU"
    )
    cpu_text = "; ".join(f"{n} x {k}" for k, n in sorted(cpu.items())) or "-"
    ops = _op_counts(result.int8_tflite)
    snr = report["validation"]["outputs"][0]["snr_db"]
    layers = vela.get("layers") or []
    total = sum(layer["op_cycles"] for layer in layers) or 1
    attention = sum(layer["op_cycles"] for layer in layers if layer["original_op"] in ("BatchMatMul", "Softmax"))
    agree = "" if report["placement"]["agree"] else " (prediction differs)"
    return (
        f"| {path.stem} | yes | {vela['npu_ops']} | {vela['cpu_ops']}{agree} | {cpu_text} | {ops['TRANSPOSE']} | "
        f"{ops['BATCH_MATMUL']} | {100 * attention / total:.0f}% | "
        f"{vela['inference_time_ms']:.3f} ms, SNR {snr:.1f} dB | "
        f"{time.perf_counter() - start:.0f} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("-o", "--output", type=Path, default=ROOT / "benchmarks" / "results" / "attention.md")
    parser.add_argument("inputs", nargs="*", type=Path, default=list(DEFAULT_INPUTS))
    args = parser.parse_args(argv)
    logging.getLogger("nirc.tflite").setLevel(logging.ERROR)  # one TRANSPOSE warning per head otherwise
    lines = [
        "# Attention models: compile, placement, latency, int8 accuracy",
        "",
        "`python benchmarks/attention.py " + " ".join(str(p) for p in args.inputs) + "`",
        "",
        "ethos-u65-256, Ethos_U65_High_End, Dedicated_Sram_384KB, Vela 5.2; default pipeline; synthetic",
        "calibration (random weights, random inputs). `_ts`: TorchScript exporter, opset 17; `_dynamo`: dynamo",
        "exporter, opset 18 (zoo files: default opset). TRANSPOSE / BATCH_MATMUL: ops in the int8 TFLite.",
        "Attention share: Vela cycles of the BATCH_MATMUL and SOFTMAX layers (Vela's per-layer table).",
        "",
        "| model | compiles | NPU ops | CPU ops | CPU op types (Vela's reason) | TRANSPOSE | BATCH_MATMUL "
        "| attention share | Vela latency, int8 SNR | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="nirc_attention_") as tmp:
        for path in _models(args.inputs):
            row = _row(path, Path(tmp))
            print(row, flush=True)
            lines.append(row)
            args.output.write_text("\n".join(lines) + "\n", encoding="utf-8")  # a row at a time: runs are long
    return 0


if __name__ == "__main__":
    sys.exit(main())
