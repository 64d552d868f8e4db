"""Regenerate benchmarks/results/tiling.md: activation tiling and memory-aware scheduling on four models.

Usage: python benchmarks/tiling.py [--target ethos-u65-256] [--budget-model mobilenetv2_224] [models...]

Each model (MobileNetV2-224, ResNet-18-224, a YOLOv8n-style detector at 320, and branchy_56, four
asymmetric two-branch blocks where the branch order matters) is lowered with nirc's canonical passes (the
baseline) and then rewritten four ways: ``schedule-memory``; ``tile-activations`` (latency mode: keeps a
tiling only when Vela's estimate drops); both, in the HW pipeline's order; and ``tile-activations`` in
budget mode (``arena_size`` = the 384 KiB arena cache) for the first model. Every variant is costed by
Vela 5.2 (cost oracle, on-disk cache) and checked against the baseline with ONNX Runtime.

A second table checks the memory model (:mod:`nirc.memory`) against Vela's own allocation: Vela is run
with ``--memory-mode Shared_Sram --disable-cascading --verbose-allocation`` (every tensor allocated whole
in one arena) and its execution order and peak of live feature-map bytes are compared with the model's.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from nirc import memory
from nirc.cost import estimate
from nirc.errors import TargetError
from nirc.ir import IRModel
from nirc.pass_base import Pass, PassContext
from nirc.pass_manager import PassManager
from nirc.plugin import load_registry
from nirc.target import Target

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
import build_detection_models  # noqa: E402
import build_models  # noqa: E402
import build_tiling_models  # noqa: E402

MODELS = ("mobilenetv2_224", "resnet18_224", "yolo_320", "branchy_56")
CHECK_MODELS = ("tiny_cnn", "mobilenetv1_cifar100", "resnet50_cifar100", "shufflenet_tiny", "yolo_tiny")


def build(name: str) -> onnx.ModelProto:
    for module in (build_tiling_models, build_models, build_detection_models):
        if name in module.MODELS or (module is build_tiling_models and name == "mobilenetv2_224"):
            return module.build(name)  # type: ignore[no-any-return]
    raise ValueError(f"unknown model {name}")


def canonical(name: str, target: Target) -> IRModel:
    registry = load_registry()
    model = IRModel.load(build(name))
    passes = [registry.get_pass(n)() for n in target.default_pipeline if n not in target.hw_passes]
    PassManager(passes).run(model, PassContext(target=target))
    return model


def same_function(before: onnx.ModelProto, after: onnx.ModelProto) -> float:
    """Largest |difference| over two seeded inputs, relative to the largest |output|."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    a = ort.InferenceSession(before.SerializeToString(), options, providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(after.SerializeToString(), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(7)
    worst = 0.0
    for _ in range(2):
        feed = {i.name: rng.standard_normal(i.shape).astype(np.float32) for i in a.get_inputs()}
        for x, y in zip(a.run(None, feed), b.run(None, feed), strict=True):
            worst = max(worst, float(np.max(np.abs(x - y)) / max(np.max(np.abs(x)), 1e-9)))
    return worst


def variant(model: IRModel, passes: list[Pass], target: Target | None) -> tuple[IRModel, PassContext, float]:
    copy = model.copy()
    ctx = PassContext(target=target)
    start = time.perf_counter()
    for p in passes:
        ctx.stats.clear()
        p.run(copy, ctx)
    return copy, ctx, time.perf_counter() - start


def measure(label: str, model: IRModel, target: Target, base: onnx.ModelProto, seconds: float) -> dict[str, Any]:
    proto = model.to_proto()
    cost = estimate(proto, target, label=label)
    prof = memory.profile(model, memory.vela_order(model))
    return {
        "variant": label,
        "nodes": len(proto.graph.node),
        "peak": prof.peak,
        "sram": cost.sram_used_bytes,
        "fm_read": cost.dram_fm_read_bytes,
        "fm_write": cost.dram_fm_write_bytes,
        "weights": cost.dram_weight_bytes,
        "ms": cost.time_ms,
        "error": same_function(base, proto),
        "seconds": seconds,
    }


def bench_model(name: str, target: Target, budget_mode: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    from nirc.passes.schedule_memory import ScheduleMemoryPass
    from nirc.passes.tile_activations import TileActivationsPass

    base_model = canonical(name, target)
    base = base_model.to_proto()
    rows = [measure("baseline", base_model, target, base, 0.0)]
    decisions: list[dict[str, Any]] = []
    plans: list[tuple[str, list[Pass]]] = [
        ("schedule-memory", [ScheduleMemoryPass()]),
        ("tile-activations", [TileActivationsPass()]),
        ("schedule, then tile (HW pipeline order)", [ScheduleMemoryPass(), TileActivationsPass()]),
    ]
    if budget_mode and target.arena_cache_bytes:
        plans.append(
            (
                f"tile, budget {target.arena_cache_bytes // 1024} KiB",
                [TileActivationsPass(arena_size=target.arena_cache_bytes, max_tiles=16)],
            )
        )
    for label, passes in plans:
        try:
            model, ctx, seconds = variant(base_model, passes, target)
        except TargetError as exc:
            rows.append({"variant": label, "failed": str(exc)})
            continue
        rows.append(measure(label, model, target, base, seconds))
        decisions += [{"variant": label, **d} for d in ctx.decisions]
        print(f"  {name} {label}: {rows[-1]}", flush=True)
    return rows, decisions


def input_read_floor(name: str, target: Target) -> int:
    """DRAM feature-map bytes Vela counts for reading the model's input once (an identity 1x1 MaxPool).

    Any op reading a graph input in DRAM pays this at least; with 3 channels in NHWC Vela counts ~16x
    the tensor's size (partial bricks), which bounds how far tiling can cut the DRAM traffic.
    """
    proto = build(name)
    value = proto.graph.input[0]
    shape = [d.dim_value for d in value.type.tensor_type.shape.dim]
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[1, 1])],
        "input_read",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, shape)],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, shape)],
    )
    probe = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)], ir_version=9)
    return int(estimate(probe, target, label="input-read").dram_fm_read_bytes)


def check_memory_model(name: str, target: Target) -> dict[str, Any]:
    from nirc.targets.ethos_u.vela_driver import compile_with_vela

    from nirc.backend import emit, input_shapes
    from nirc.quant import load_calibration

    model = canonical(name, target)
    proto = model.to_proto()
    calib = load_calibration(None, input_shapes(proto), count=2, seed=0)
    tflite = emit(proto, dtype="int8", calib=calib, method="minmax").tflite
    shared = dataclasses.replace(target, memory_mode="Shared_Sram")
    with tempfile.TemporaryDirectory(prefix="nirc-tiling-") as tmp:
        path = Path(tmp) / "m.tflite"
        path.write_bytes(tflite.data)
        extra = ["--verbose-allocation", "--disable-cascading"]
        result = compile_with_vela(path, shared, Path(tmp) / "vela", extra_args=extra)
        vela = memory.parse_vela_allocation(result.log_path.read_text())
    order = memory.vela_order(model)
    concats = {n.outputs[0].name for n in order if n.op == "Concat"}
    ran = [n for n in dict.fromkeys(layer.name for layer in result.layers) if n not in concats]
    produced = [n.outputs[0].name for n in order if n.op != "Concat"]
    common = set(ran) & set(produced)
    vela_peak = max(memory.vela_live_bytes(vela))
    model_peak = memory.profile(model, order).peak
    file_order_peak = memory.profile(model).peak
    return {
        "model": name,
        "ops": len(common),
        "order_match": [n for n in produced if n in common] == [n for n in ran if n in common],
        "vela_peak": vela_peak,
        "model_peak": model_peak,
        "error": (model_peak - vela_peak) / vela_peak,
        "file_order_peak": file_order_peak,
    }


FINDINGS = [
    "## What the numbers say",
    "",
    "- Tiling pays where Vela's own cascade is expensive: the stem of every network (the 3-channel input is "
    "re-read from DRAM for each stripe of the cascade). Two to six tiles of the stem region, with the input "
    "slice staged through an on-chip copy, cut DRAM feature-map reads by 32-56% and latency by 11-20%. Deeper "
    "regions (56x56 residual stages) were costed and rejected: halo recompute, weights re-read per tile and "
    "lost cascades cost more than the DRAM traffic they save.",
    "- The MobileNetV2 goal of <= 25% of the baseline's DRAM feature-map reads is not reached (51%): Vela "
    "counts a read of a 3-channel NHWC tensor in DRAM at ~16.6x its size (partial 16-channel bricks), so "
    "reading the 224x224x3 input once is already 35% of the baseline (see the floor under each table). Only "
    "changing the model's input (channel padding, space-to-depth) could go lower; that is not exact.",
    "- Latency mode optimises Vela's cycles, not the arena: the whole-tensor peak can grow (tile buffers, "
    "staging copies, and tiles that Vela's walk interleaves). Budget mode brings MobileNetV2 under 384 KiB "
    "with 16 tiles over the first 21 nodes at +86% halo recompute and +25% latency: it trades speed for fit.",
    "- Vela ignores the op order of the TFLite file (it walks the graph back from its outputs), so reordering "
    "graph.nodes only serves CPU runtimes and nirc's own reports; what moves Vela is the input order of "
    "commutative ops. On branchy_56, swapping the four Adds makes Vela run the big-intermediate branch first: "
    "-10% latency and -27% DRAM feature-map reads. The classifiers and the detector have no such choice at "
    "their peak (their peak is the stem, which no order changes).",
    "",
]


def _kib(n: int) -> str:
    return f"{n / 1024:.0f}"


def to_markdown(
    target: Target,
    results: dict[str, list[dict[str, Any]]],
    decisions: dict[str, list[dict[str, Any]]],
    checks: list[dict[str, Any]],
    floors: dict[str, int],
    seconds: float,
) -> str:
    lines = [
        "# Activation tiling and memory-aware scheduling",
        "",
        f"Generated by `python benchmarks/tiling.py` on {target.name} ({target.system_config}, "
        f"{target.memory_mode}) in {seconds:.0f} s (2 shared cores; Vela results cached on disk). "
        "Baseline: nirc's canonical passes (BN folded, no hardware passes). Latency, SRAM and DRAM traffic "
        "are Vela 5.2 estimates; *peak* is nirc's memory model (int8, NHCWB16 bricks, 16-byte quantum, in "
        "the order Vela runs the graph) -- the arena a whole-tensor allocation needs, not Vela's cascaded "
        "SRAM use. *err* is the largest ONNX Runtime output difference against the baseline, relative.",
        "",
    ]
    for name, rows in results.items():
        base = rows[0]
        lines += [
            f"## {name}",
            "",
            "| variant | nodes | peak (KiB) | Vela SRAM (KiB) | DRAM FM read (MB) | DRAM FM write (MB) "
            "| DRAM FM read vs base | DRAM weights (MB) | latency (ms) | vs base | err | pass time (s) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            if "failed" in r:
                lines.append(f"| {r['variant']} | failed: {r['failed']} |" + " |" * 10)
                continue
            lines.append(
                f"| {r['variant']} | {r['nodes']} | {_kib(r['peak'])} | {_kib(r['sram'])} "
                f"| {r['fm_read'] / 1e6:.2f} | {r['fm_write'] / 1e6:.2f} | {r['fm_read'] / base['fm_read']:.0%} "
                f"| {r['weights'] / 1e6:.2f} | {r['ms']:.3f} | {r['ms'] / base['ms'] - 1:+.1%} "
                f"| {r['error']:.1e} | {r['seconds']:.0f} |"
            )
        floor = floors.get(name)
        if floor is not None:
            lines += [
                "",
                f"Reading the input once from DRAM (an identity op) already counts {floor / 1e6:.2f} MB of DRAM "
                f"feature-map reads in Vela's model, {floor / base['fm_read']:.0%} of this baseline: no rewrite "
                "that keeps the model's input can go below that.",
            ]
        lines += ["", "Decisions:", ""]
        for d in decisions.get(name, []):
            lines.append(f"- {d['variant']}: " + ", ".join(f"{k}={v}" for k, v in d.items() if k != "variant"))
        lines.append("")
    lines += FINDINGS
    lines += [
        "## Memory model vs Vela's allocation",
        "",
        "Vela run with the arena in SRAM (`Shared_Sram`), `--disable-cascading` and `--verbose-allocation`, so "
        "every feature map is allocated whole; *Vela peak* is the peak of its live feature-map bytes (a buffer "
        "Vela reuses in place counted once). *order* says whether `nirc.memory.vela_order` predicts the order "
        "of Vela's per-layer table. *file order* is the model's peak in the ONNX/TFLite node order.",
        "",
        "| model | ops compared | order | Vela peak (KiB) | model peak (KiB) | error | file order peak (KiB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in checks:
        lines.append(
            f"| {c['model']} | {c['ops']} | {'same' if c['order_match'] else 'differs'} | {_kib(c['vela_peak'])} "
            f"| {_kib(c['model_peak'])} | {c['error']:+.1%} | {_kib(c['file_order_peak'])} |"
        )
    lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("models", nargs="*", default=list(MODELS))
    parser.add_argument("--target", default="ethos-u65-256")
    parser.add_argument("--budget-model", default="mobilenetv2_224", help="model also run in budget mode")
    parser.add_argument("--no-check", action="store_true", help="skip the memory-model check")
    parser.add_argument("-o", "--output", type=Path, default=ROOT / "benchmarks" / "results" / "tiling.md")
    args = parser.parse_args()
    target = load_registry().get_target(args.target)
    start = time.perf_counter()
    results: dict[str, list[dict[str, Any]]] = {}
    decisions: dict[str, list[dict[str, Any]]] = {}
    floors: dict[str, int] = {}
    for name in args.models:
        print(f"{name} ...", flush=True)
        results[name], decisions[name] = bench_model(name, target, name == args.budget_model)
        floors[name] = input_read_floor(name, target)
    checks: list[dict[str, Any]] = []
    if not args.no_check:
        for name in (*args.models, *CHECK_MODELS):
            checks.append(check_memory_model(name, target))
            print(f"  check {checks[-1]}", flush=True)
    text = to_markdown(target, results, decisions, checks, floors, time.perf_counter() - start)
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
