"""Regenerate benchmarks/results/compile_time.md: nirc optimize's wall time and peak RSS per stage.

Usage: python benchmarks/compile_time.py [--models tiny_cnn,resnet18,...] [--validate sim|none]
           [--skip-before | --reuse-before OLD.json] [--json RAW.json] [--large-mib 192] [--out FILE.md]

Every run is a fresh ``nirc optimize`` in its own process (so peak RSS is that run's), with an empty
cost cache (``NIRC_CACHE_DIR`` = a new temporary directory) and the default pipeline and target
(ethos-u65-256), synthetic calibration. Two configurations per model:

* ``before``: tile-activations costs every trial on the whole model
  (``--pass-option tile-activations.window=false``, the behaviour before issue 17), NPU validation off
  (it is the same code in both and only lengthens the run);
* ``after``: the default (trials ranked on the window of the model they change, the winner confirmed
  whole), with the default NPU validation (``--validate sim``).

The table gives wall seconds per stage (the report's ``profile``), the Vela compilations (count and
seconds), peak RSS against the model's weight bytes, and Vela's final latency before/after with the
relative difference, which must stay within 1% (the decisions must not change). The machine is
shared: the 1-minute load average is recorded next to each run. Models: the ONNX files in examples/
and, if present, the zoo exports under ``$NIRC_ZOO`` (default /work/zoo_exports, made by
``benchmarks/zoo.py export``): torchvision ResNet18, MobileNetV2 and EfficientNet-B0 at 224.
A last run compiles a generated Gemm/Relu MLP with ``--large-mib`` MiB of weights without Vela and
gives its peak RSS per stage against the weight bytes (issue 17's memory target: at most 3x).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ZOO = Path(os.environ.get("NIRC_ZOO", "/work/zoo_exports"))
ZOO_MODELS = {
    "resnet18": "torchvision__resnet18__torchscript.onnx",
    "mobilenet_v2": "torchvision__mobilenet_v2__torchscript.onnx",
    "efficientnet_b0": "torchvision__efficientnet_b0__torchscript.onnx",
}
MORE_ZOO = {  # --models only: more networks whose early layers tile-activations rewrites
    "mobilenet_v3_large": "torchvision__mobilenet_v3_large__torchscript.onnx",
    "mnasnet1_0": "torchvision__mnasnet1_0__torchscript.onnx",
    "regnet_x_400mf": "torchvision__regnet_x_400mf__torchscript.onnx",
    "ghostnet_100": "timm__ghostnet_100__torchscript.onnx",
}
STAGES = ("load", "passes", "emit", "validate", "vela", "validate-npu", "report")

_WORKER = """
import json, resource, sys, time
from pathlib import Path
from nirc.pipeline import optimize
model, outdir, validate = sys.argv[1], Path(sys.argv[2]), sys.argv[4]
window, compile = sys.argv[3] == "1", sys.argv[5] == "1"
start = time.perf_counter()
result = optimize(model, outdir=outdir, validate_npu=validate, compile=compile, require_fit=False,
                  pass_options={"tile-activations": {"window": window}})
wall = time.perf_counter() - start
report = result.report
tiles = next((p for p in report["passes"] if p["name"] == "tile-activations"), None)
print(json.dumps({
    "wall_s": wall,
    "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    "cpu_s": sum(resource.getrusage(resource.RUSAGE_SELF)[:2]),
    "profile": report["profile"],
    "latency_ms": report["vela"]["inference_time_ms"] if report["vela"] else None,
    "cycles": report["vela"]["cycles_total"] if report["vela"] else None,
    "tiles": {"stats": tiles["stats"], "decisions": tiles["decisions"]} if tiles else None,
}))
"""


def models(names: list[str] | None) -> dict[str, Path]:
    found = {p.stem: p for p in sorted((ROOT / "examples").glob("*.onnx"))}
    found.update({name: ZOO / file for name, file in ZOO_MODELS.items() if (ZOO / file).is_file()})
    if names:
        found.update({name: ZOO / file for name, file in MORE_ZOO.items() if (ZOO / file).is_file()})
        missing = [n for n in names if n not in found]
        if missing:
            raise SystemExit(f"unknown models {missing}; known: {sorted(found)}")
        return {n: found[n] for n in names}
    return found


def run(model: Path, window: bool, validate: str, compile: bool = True) -> dict[str, Any]:
    """One ``optimize`` in a child process with an empty cache; its JSON summary plus the load average."""
    with tempfile.TemporaryDirectory(prefix="nirc-ct-") as tmp:
        env = {**os.environ, "NIRC_CACHE_DIR": str(Path(tmp) / "cache")}
        load = os.getloadavg()[0]
        flags = ["1" if window else "0", validate, "1" if compile else "0"]
        argv = [sys.executable, "-c", _WORKER, str(model), str(Path(tmp) / "out"), *flags]
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"{model.name}: {proc.stderr.strip().splitlines()[-1:]}")
        data: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
        data["load"] = [load, os.getloadavg()[0]]
        return data


def large_mlp(path: Path, mib: int) -> Path:
    """A Gemm/Relu chain with about ``mib`` MiB of float weights (three square layers), seeded."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    width = int((mib * 2**20 / 4 / 3) ** 0.5) // 16 * 16
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i in range(3):
        weight = rng.standard_normal((width, width), dtype=np.float32) * 0.02
        bias = np.zeros(width, np.float32)
        inits += [numpy_helper.from_array(weight, f"w{i}"), numpy_helper.from_array(bias, f"b{i}")]
        nodes += [helper.make_node("Gemm", [x, f"w{i}", f"b{i}"], [f"g{i}"], transB=1, name=f"gemm{i}"),
                  helper.make_node("Relu", [f"g{i}"], [f"r{i}"], name=f"relu{i}")]  # fmt: skip
        x = f"r{i}"
    graph = helper.make_graph(
        nodes, "large_mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, width])], inits,
    )  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def memory_table(data: dict[str, Any], name: str) -> list[str]:
    weights = data["profile"]["weight_bytes"]
    lines = [f"Large model: {name}, {weights / 2**20:.0f} MiB of float weights, `--no-compile --validate none` "
             f"(Vela would spend minutes encoding the weights; the front end, passes, calibration, emission and "
             f"validation are what hold copies), load average {data['load'][0]:.1f}-{data['load'][1]:.1f}.",
             "", "| stage | seconds | peak RSS MiB | x weights |", "|---|---|---|---|"]  # fmt: skip
    for stage in data["profile"]["stages"]:
        peak = stage["peak_rss_bytes"]
        lines.append(f"| {stage['name']} | {stage['seconds']:.1f} | {_mib(peak)} | {peak / weights:.2f} |")
    return lines


def _stage_seconds(data: dict[str, Any]) -> dict[str, float]:
    return {s["name"]: s["seconds"] for s in data["profile"]["stages"]}


def _stage_rss(data: dict[str, Any]) -> dict[str, int]:
    return {s["name"]: s["peak_rss_bytes"] for s in data["profile"]["stages"]}


def _vela(data: dict[str, Any]) -> str:
    tally = data["profile"]["events"].get("vela", {"count": 0, "seconds": 0.0})
    return f"{tally['count']} / {tally['seconds']:.1f}"


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f}"


def table(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    lines = [
        "| model | weights MiB | run | wall s | CPU s | " + " | ".join(f"{s} s" for s in STAGES)
        + " | Vela calls / s | tile-activations s | peak RSS MiB (x weights) | latency ms | load avg |",
        "|---" * (len(STAGES) + 11) + "|",
    ]
    for name, runs in results.items():
        for label, data in runs.items():
            seconds = _stage_seconds(data)
            weights = data["profile"]["weight_bytes"]
            tiles = next((p["seconds"] for p in data["profile"]["passes"] if p["name"] == "tile-activations"), 0.0)
            peak = data["profile"]["peak_rss_bytes"]  # ru_maxrss misses the peaks before a stage reset it
            ratio = f"{peak / weights:.1f}" if weights else "-"
            latency = f"{data['latency_ms']:.3f}" if data["latency_ms"] is not None else "-"
            cpu = f"{data['cpu_s']:.1f}" if "cpu_s" in data else "-"
            lines.append(
                f"| {name} | {weights / 2**20:.1f} | {label} | {data['wall_s']:.1f} | {cpu} | "
                + " | ".join(f"{seconds[s]:.1f}" if s in seconds else "-" for s in STAGES)
                + f" | {_vela(data)} | {tiles:.1f} | {_mib(peak)} ({ratio}) | {latency} | "
                f"{data['load'][0]:.1f}-{data['load'][1]:.1f} |"
            )
    return "\n".join(lines)


def latency_check(results: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    lines = ["| model | latency before ms | after ms | difference | tile-activations Vela trials before -> after |",
             "|---|---|---|---|---|"]
    for name, runs in results.items():
        if "before" not in runs:
            continue
        b, a = runs["before"], runs["after"]
        diff = (a["latency_ms"] - b["latency_ms"]) / b["latency_ms"] if b["latency_ms"] else 0.0
        trials = []
        for data in (b, a):
            stats = (data["tiles"] or {}).get("stats", {})
            whole, window = stats.get("oracle_calls", 0), stats.get("oracle_window_calls", 0)
            trials.append(f"{whole} whole" + (f" + {window} window" if window else ""))
        lines.append(
            f"| {name} | {b['latency_ms']:.3f} | {a['latency_ms']:.3f} | {diff:+.2%} | {trials[0]} -> {trials[1]} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", help="comma-separated names (default: every example and zoo model found)")
    parser.add_argument("--validate", default="sim", choices=("sim", "none"), help="NPU validation of 'after'")
    parser.add_argument("--skip-before", action="store_true", help="only the 'after' runs")
    parser.add_argument("--reuse-before", type=Path, help="take the 'before' runs from this --json file instead")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "compile_time.md")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--from-json", type=Path, help="only write the table of results saved with --json")
    parser.add_argument("--large-mib", type=int, default=192, help="weights of the large-model memory run (0: skip)")
    args = parser.parse_args()
    selected = {} if args.from_json else models(args.models.split(",") if args.models else None)
    results: dict[str, dict[str, dict[str, Any]]] = json.loads(args.from_json.read_text()) if args.from_json else {}
    reused = json.loads(args.reuse_before.read_text()) if args.reuse_before else {}
    for name, path in selected.items():
        results[name] = {}
        if "before" in reused.get(name, {}):
            results[name]["before"] = reused[name]["before"]
        elif not args.skip_before:
            results[name]["before"] = run(path, window=False, validate="none")
            print(f"{name} before: {results[name]['before']['wall_s']:.1f} s", file=sys.stderr)
        results[name]["after"] = run(path, window=True, validate=args.validate)
        print(f"{name} after: {results[name]['after']['wall_s']:.1f} s", file=sys.stderr)
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))
    if args.large_mib and not args.from_json:
        with tempfile.TemporaryDirectory(prefix="nirc-ct-large-") as tmp:
            path = large_mlp(Path(tmp) / "large_mlp.onnx", args.large_mib)
            results["__large__"] = {"after": run(path, window=True, validate="none", compile=False)}
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))
    large = results.pop("__large__", None)
    cpus = os.cpu_count()
    text = [
        "# Compile time and memory (issue 17)",
        "",
        f"Generated by `benchmarks/compile_time.py` on {time.strftime('%Y-%m-%d')} ({platform.machine()}, "
        f"{cpus} cores shared with other jobs; the load average is the 1-minute one at the start and end of each "
        f"run). Empty cost cache per run, default pipeline, target ethos-u65-256, synthetic calibration; "
        f"'before' = whole-model tiling trials and no NPU validation, 'after' = the default "
        "(window-ranked trials; NPU validation where validate-npu has a time). Peak RSS: the highest of the "
        "stages' peaks (the report's profile.peak_rss_bytes). CPU s: user + system seconds of the run's "
        "process, what the run costs whatever the load (on an idle machine the wall time is about this, less "
        "where ONNX Runtime runs on both cores).",
        "",
        table(results),
        "",
        "Vela latency: the decisions are the same when the latency is (within 1%).",
        "",
        *latency_check(results),
        "",
        *(memory_table(large["after"], "a Gemm/Relu MLP (`large_mlp` in this script)") if large else []),
        "",
    ]
    args.out.write_text("\n".join(text), encoding="utf-8")
    print(args.out)


if __name__ == "__main__":
    main()
