#!/usr/bin/env python3
"""TorchScript vs dynamo export of one network: does nirc give the same Vela latency? (issue 14)

Reads pairs ``<lib>__<arch>__torchscript.onnx`` / ``<lib>__<arch>__dynamo.onnx`` from a directory
(default ``/work/zoo_exports``, made by ``benchmarks/zoo.py export`` on the zoo branch: same weights
in both files) and compiles each with ``nirc.optimize`` for ethos-u65 (no NPU simulation), writing
``benchmarks/results/exporters.md``: Vela latency of both exports, their gap, node counts in and out,
or the one-line error. ``--no-hw-passes`` measures canonicalisation alone (the quicker run);
``--only ARCH`` limits the run to some architectures.

    python benchmarks/exporters.py [DIR] [--no-hw-passes] [--only ghostnet_100,resnet18] [--out FILE]
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from pathlib import Path

import nirc
from nirc.errors import NircError

RESULTS = Path(__file__).resolve().parent / "results"
_NAME = re.compile(r"^(?P<lib>[^_]+)__(?P<arch>.+)__(?P<exporter>torchscript|dynamo)\.onnx$")


def pairs(directory: Path) -> dict[str, dict[str, Path]]:
    found: dict[str, dict[str, Path]] = {}
    for path in sorted(directory.glob("*.onnx")):
        match = _NAME.match(path.name)
        if match:
            found.setdefault(match["arch"], {})[match["exporter"]] = path
    return {arch: files for arch, files in found.items() if len(files) == 2}


def compile_one(path: Path, no_hw_passes: bool) -> dict[str, object]:
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="nirc-exporters-") as out:
        try:
            result = nirc.optimize(path, "ethos-u65", outdir=Path(out) / "o", no_hw_passes=no_hw_passes,
                                   validate_npu="none", require_fit=False)  # fmt: skip
        except NircError as exc:
            return {"error": str(exc).splitlines()[0], "seconds": time.perf_counter() - start}
    report = result.report
    vela = report["vela"]
    return {
        "ms": float(vela["inference_time_ms"]),
        "cpu_ops": int(vela["cpu_ops"]),
        "nodes_in": int(report["model"]["before"]["nodes"]),
        "nodes_out": int(report["model"]["after"]["nodes"]),
        "seconds": time.perf_counter() - start,
    }


def _cell(run: dict[str, object]) -> str:
    if "error" in run:
        text = str(run["error"]).split(": ", 1)[-1]  # drop the path, the row names the arch
        return f"error: {text[:140]}{'...' if len(text) > 140 else ''}"
    cpu = f", {run['cpu_ops']} CPU ops" if run["cpu_ops"] else ""
    return f"{run['ms']:.3f} ms ({run['nodes_in']} -> {run['nodes_out']} nodes{cpu})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", nargs="?", type=Path, default=Path("/work/zoo_exports"))
    parser.add_argument("--no-hw-passes", action="store_true")
    parser.add_argument("--only", default="")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    wanted = {a for a in args.only.split(",") if a}
    mode = "canonicalisation only (--no-hw-passes)" if args.no_hw_passes else "full default pipeline"
    out = args.out or RESULTS / ("exporters_canonical.md" if args.no_hw_passes else "exporters.md")
    lines = [
        "# TorchScript vs dynamo exports through nirc (issue 14)",
        "",
        f"`python benchmarks/exporters.py {args.directory}{' --no-hw-passes' if args.no_hw_passes else ''}"
        f"{' --only ' + args.only if args.only else ''}` -- {mode}, ethos-u65-256, Vela 5.2; same weights in both"
        " files (see the export directory's MANIFEST.md). gap = |dynamo - torchscript| / torchscript.",
        "",
        "| arch | torchscript | dynamo | gap |",
        "|---|---|---|---|",
    ]
    for arch, files in pairs(args.directory).items():
        if wanted and arch not in wanted:
            continue
        ts, dy = compile_one(files["torchscript"], args.no_hw_passes), compile_one(files["dynamo"], args.no_hw_passes)
        gap = "-"
        if "ms" in ts and "ms" in dy:
            gap = f"{abs(float(dy['ms']) - float(ts['ms'])) / float(ts['ms']) * 100:.2f}%"  # type: ignore[arg-type]
        lines.append(f"| {arch} | {_cell(ts)} | {_cell(dy)} | {gap} |")
        print(lines[-1], flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
