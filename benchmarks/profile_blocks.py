"""Block latency characterization on one target, plus the analytical model's calibration.

Usage: python benchmarks/profile_blocks.py [--target ethos-u65-256] [-o benchmarks/results] [-j 2] [--quick]

1. Sweeps every block type of nirc.cost.blocks over H=W in {7,14,28,56,112} and
   C in {16,...,256} (sizes with H*W*C > 2^20 skipped), costs each with the Vela
   oracle (cached) and writes profile_blocks_<target>.csv and two PNGs.
2. Compares the fused inverted bottleneck with the depthwise one at every size
   (profile_blocks_<target>.md): parameters, MACs and cycles side by side.
3. Fits the analytical model on the sweep, measures its Spearman rank correlation
   with Vela on held-out blocks (other sizes, other weights), stores the
   coefficients and correlations in nirc/cost/data/analytical.json (which
   ``analytical_is_trusted`` reads) and writes cost_analytical.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from pathlib import Path
from types import ModuleType

import numpy as np

from nirc.cost.analytical import TRUST_SPEARMAN, predict, save_calibration
from nirc.cost.blocks import BLOCK_KINDS, build_block
from nirc.cost.fit import FitReport, calibrate, heldout_specs, spearman
from nirc.cost.oracle import estimate, resolve_target
from nirc.cost.profile import MAX_FM_ELEMENTS, NO_PLOTS_NOTE, ProfileRow, compare, run_profile, sweep
from nirc.ir import IRModel
from nirc.target import Target

ROOT = Path(__file__).resolve().parents[1]
NETWORKS = ("tiny_cnn", "mobilenetv1_cifar100", "resnet50_cifar100", "mobilenetv2_224")


def comparison_md(rows: list[ProfileRow], target: Target) -> str:
    lines = [
        f"# Block characterization on {target.name} ({target.system_config}, {target.memory_mode})",
        "",
        f"Vela {_vela()} estimates of single blocks (input = output = H x W x C, int8, random weights, "
        f"sizes with H*W*C > {MAX_FM_ELEMENTS} skipped); data: profile_blocks_{target.name}.csv. Blocks read their "
        "input from and write their output to the arena, which is DRAM in this memory mode, so every cycle count "
        "includes that I/O.",
        "",
        "Block types: " + "; ".join(f"`{k}` {v.description}" for k, v in BLOCK_KINDS.items()),
        "",
    ]
    for fused in ("fused_mbconv_e4", "fused_mbconv_e6"):
        pairs = compare(rows, fused, "mbconv_e6")
        lines += [
            f"## {fused} vs mbconv_e6 (depthwise inverted bottleneck, expand 6)",
            "",
            "| H x W x C | params fused / dw | MACs fused / dw | cycles fused / dw | params x | MACs x | cycles x |",
            "|---|---|---|---|---|---|---|",
        ]
        for p in pairs:
            lines.append(
                f"| {p.H}x{p.W}x{p.C} | {p.a.params:,} / {p.b.params:,} | {p.a.macs:,} / {p.b.macs:,} "
                f"| {p.a.cycles:,} / {p.b.cycles:,} | {p.param_ratio:.1f} | {p.macs_ratio:.1f} | {p.cycle_ratio:.2f} |"
            )
        close = [p for p in pairs if p.cycle_ratio <= 1.2]
        lines += [
            "",
            f"Sizes where {fused} is at most 20% slower than mbconv_e6: "
            + (", ".join(f"{p.H}x{p.W}x{p.C} ({p.cycle_ratio:.2f}x cycles, {p.param_ratio:.1f}x params)" for p in close)
               or "none"),
            "",
        ]  # fmt: skip
    return "\n".join(lines)


def _examples() -> ModuleType:
    spec = importlib.util.spec_from_file_location("examples_build", ROOT / "examples" / "build_models.py")
    if spec is None or spec.loader is None:
        raise SystemExit("examples/build_models.py not found")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def networks(target: Target) -> list[tuple[str, int, float]]:
    """(model, Vela cycles, analytical cycles) for example networks after the target's pipeline."""
    from nirc.pipeline import run_passes, select_passes
    from nirc.plugin import load_registry

    examples = _examples()
    registry = load_registry()
    rows = []
    for name in NETWORKS:
        model = IRModel.load(examples.build(name))
        run_passes(model, target, select_passes(registry, target))
        rows.append((name, estimate(model.to_proto(), target).cycles, predict(model, target).cycles))
    return rows


def analytical_md(
    report: FitReport, target: Target, timing: tuple[float, float], nets: list[tuple[str, int, float]]
) -> str:
    cal = report.calibration
    coef = cal.coefficients
    lines = [
        f"# Analytical cost model vs Vela on {target.name}",
        "",
        f"Fitted on {cal.n_train} sweep blocks (profile_blocks_{target.name}.csv), measured on {cal.n_heldout} "
        "held-out blocks at other sizes (non-square maps, channel counts that are not multiples of 16) with "
        f"other random weights. Least squares on log cycles (Levenberg-Marquardt). Vela {cal.vela_version}.",
        "",
        "| metric | value |",
        "|---|---|",
        f"| Spearman, held-out blocks | **{cal.spearman_heldout:.4f}** (trust threshold {TRUST_SPEARMAN}) |",
        f"| Spearman, training blocks | {cal.spearman_train:.4f} |",
        f"| mean Spearman across block types at one held-out size | {cal.spearman_same_size:.4f} |",
        f"| trusted (`analytical_is_trusted`) | {cal.trusted} |",
        f"| rms log error, training / held-out | {_rms(report.train):.3f} / {_rms(report.heldout):.3f} |",
        f"| analytical predict per block (IRModel in) | {timing[0] * 1e3:.2f} ms |",
        f"| oracle per block, uncached (emit + Vela) | {timing[1] * 1e3:.1f} ms |",
        "",
        "The held-out Spearman mixes sizes over four orders of magnitude of latency, which makes it easy; the "
        "same-size figure is what a block search relies on (which block is fastest at this H x W x C).",
        "",
        "Coefficients (1.0 = the raw physical term): "
        + ", ".join(f"{name} {getattr(coef, name):.3g}" for name in vars(coef)),
        "",
        "Per block type, held-out: median ratio analytical / Vela and the worst case.",
        "",
        "| type | blocks | median ratio | worst ratio |",
        "|---|---|---|---|",
    ]
    for kind in BLOCK_KINDS:
        ratios = [p / v for s, v, p in report.heldout if s.kind == kind]
        if ratios:
            worst = max(ratios, key=lambda r: abs(np.log(r)))
            lines.append(f"| {kind} | {len(ratios)} | {statistics.median(ratios):.2f} | {worst:.2f} |")
    lines += [
        "",
        "Whole networks (examples/build_models.py after the target's pipeline; not used in the fit): the model is "
        "calibrated on single blocks, so treat these ratios as its accuracy outside the blocks it was fitted on.",
        "",
        "| network | Vela cycles | analytical cycles | ratio |",
        "|---|---|---|---|",
    ]
    lines += [f"| {name} | {vela:,} | {model:,.0f} | {model / vela:.2f} |" for name, vela, model in nets]
    sizes: dict[tuple[int, int, int], list[tuple[str, float, float]]] = {}
    for s, v, p in report.heldout:
        sizes.setdefault((s.h, s.w, s.c), []).append((s.kind, v, p))
    lines += ["", "Held-out sizes: Spearman across block types, and the fastest block by each.", ""]
    lines += ["| H x W x C | Spearman | fastest (Vela) | fastest (analytical) |", "|---|---|---|---|"]
    for (h, w, c), group in sorted(sizes.items()):
        rho = spearman([v for _, v, _ in group], [p for _, _, p in group])
        fastest_v = min(group, key=lambda g: g[1])[0]
        fastest_p = min(group, key=lambda g: g[2])[0]
        lines.append(f"| {h}x{w}x{c} | {rho:.3f} | {fastest_v} | {fastest_p} |")
    return "\n".join(lines) + "\n"


def _rms(rows: list[tuple[object, float, float]]) -> float:
    return float(np.sqrt(np.mean([np.log(p / v) ** 2 for _, v, p in rows])))


def _vela() -> str:
    from nirc.cost.signature import vela_version

    return vela_version()


def _timing(target: Target) -> tuple[float, float]:
    """Seconds per block: analytical predict on an IRModel, and an uncached oracle compilation."""
    from nirc.cost.oracle import compile_cost

    specs = heldout_specs(per_size=2)[:10]
    models = [IRModel.load(build_block(s)) for s in specs]
    predict(models[0], target)
    start = time.perf_counter()
    for model in models:
        predict(model, target)
    analytical = (time.perf_counter() - start) / len(models)
    start = time.perf_counter()
    for spec in specs:
        compile_cost(build_block(spec), target)
    return analytical, (time.perf_counter() - start) / len(specs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="ethos-u65-256")
    parser.add_argument("-o", "--outdir", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("-j", "--jobs", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="small sweep, no calibration (smoke test)")
    args = parser.parse_args()
    target = resolve_target(args.target)

    start = time.perf_counter()
    rows, written = run_profile(target, args.outdir, jobs=args.jobs, quick=args.quick)
    print(f"profiled {len(rows)} blocks in {time.perf_counter() - start:.1f} s")
    if len(written) == 1:
        print(f"note: {NO_PLOTS_NOTE}")
    summary = args.outdir / f"profile_blocks_{target.name}.md"
    summary.write_text(comparison_md(rows, target) + "\n", encoding="utf-8")
    written.append(summary)
    if not args.quick:
        start = time.perf_counter()
        report = calibrate(sweep(), heldout_specs(), target, jobs=args.jobs)
        print(f"calibrated in {time.perf_counter() - start:.1f} s: {report.calibration}")
        save_calibration(report.calibration)
        md = args.outdir / "cost_analytical.md"
        md.write_text(analytical_md(report, target, _timing(target), networks(target)), encoding="utf-8")
        written.append(md)
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
