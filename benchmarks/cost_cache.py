"""Cost-oracle cache benchmark: cold (emit + Vela) vs warm (cache hit) evaluation time per block.

Usage: python benchmarks/cost_cache.py [--target ethos-u65-256] [-o benchmarks/results/cost_cache.md]

Runs against a fresh temporary cache directory so that "cold" really is a miss.
Cold = first ``estimate`` of a block (canonicalize, calibrate, emit int8 TFLite,
compile with Vela in-process, write the entry); warm = the same call again,
which hashes the graph and reads one JSON file (median of repeated hits). One
unrelated block is compiled first so that import and first-use costs do not
inflate the first cold time. Also times ``evaluate_many`` over the same blocks
cold with 1 and 2 processes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from nirc.cost import clear_cache, estimate, evaluate_many
from nirc.cost.blocks import BlockSpec, build_block
from nirc.cost.oracle import resolve_target
from nirc.cost.signature import vela_version

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = (
    BlockSpec("conv3x3", 14, 14, 32),
    BlockSpec("dwconv3x3", 28, 28, 64),
    BlockSpec("pwconv1x1", 28, 28, 64),
    BlockSpec("gconv3x3_g4", 14, 14, 64),
    BlockSpec("mbconv_e6", 14, 14, 32),
    BlockSpec("mbconv_e6", 28, 28, 64),
    BlockSpec("fused_mbconv_e4", 14, 14, 32),
    BlockSpec("fused_mbconv_e6", 28, 28, 32),
    BlockSpec("ghost", 28, 28, 64),
    BlockSpec("bsconv", 56, 56, 32),
    BlockSpec("pool_residual", 28, 28, 64),
    BlockSpec("conv3x3", 7, 7, 256),
)
WARM_REPEATS = 20


def measure(target_name: str) -> list[tuple[str, float, float]]:
    target = resolve_target(target_name)
    estimate(build_block(BlockSpec("conv3x3", 7, 7, 16, seed=99)), target)  # warm up imports, not the cache
    rows = []
    for spec in BLOCKS:
        model = build_block(spec)
        start = time.perf_counter()
        cold = estimate(model, target)
        cold_s = time.perf_counter() - start
        warm_times = []
        for _ in range(WARM_REPEATS):
            start = time.perf_counter()
            warm = estimate(model, target)
            warm_times.append(time.perf_counter() - start)
            if warm != cold:
                raise SystemExit(f"{spec.label}: cache hit differs from the compiled cost")
        rows.append((spec.label, cold_s, statistics.median(warm_times)))
    return rows


def pool_times(target_name: str) -> dict[int, float]:
    models = [build_block(s) for s in BLOCKS]
    times = {}
    for jobs in (1, 2):
        clear_cache()
        start = time.perf_counter()
        evaluate_many(models, target_name, jobs=jobs)
        times[jobs] = time.perf_counter() - start
    return times


def to_markdown(rows: list[tuple[str, float, float]], pools: dict[int, float], target: str) -> str:
    total_cold = sum(c for _, c, _ in rows)
    total_warm = sum(w for _, _, w in rows)
    ratios = [c / w for _, c, w in rows]
    lines = [
        f"# Cost-oracle cache: cold vs warm on {target} (Vela {vela_version()}, {os.cpu_count()} CPUs)",
        "",
        "Cold: first `nirc.cost.estimate` of the block (emit int8 TFLite + Vela in-process + write the entry). "
        f"Warm: the same call again, a cache hit (median of {WARM_REPEATS}); the hit returned a Cost equal to the "
        "compiled one every time. Fresh temporary cache directory.",
        "",
        "| block | cold (ms) | warm (ms) | speedup |",
        "|---|---|---|---|",
    ]
    for (label, cold, warm), ratio in zip(rows, ratios, strict=True):
        lines.append(f"| {label} | {cold * 1e3:.1f} | {warm * 1e3:.3f} | {ratio:.0f}x |")
    lines += [
        "",
        f"Total over {len(rows)} blocks: cold {total_cold * 1e3:.0f} ms, warm {total_warm * 1e3:.2f} ms, "
        f"**{total_cold / total_warm:.0f}x**; per-block speedup median {statistics.median(ratios):.0f}x, "
        f"minimum {min(ratios):.0f}x (goal: >= 50x).",
        "",
        f"`evaluate_many` over the same {len(rows)} blocks, cold: jobs=1 {pools[1]:.2f} s, jobs=2 {pools[2]:.2f} s "
        "(jobs=2 includes starting two forkserver workers, which import nirc, ONNX Runtime and Vela).",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="ethos-u65-256")
    parser.add_argument("-o", "--output", type=Path, default=ROOT / "benchmarks" / "results" / "cost_cache.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nirc-cache-bench-") as tmp:
        os.environ["NIRC_CACHE_DIR"] = tmp
        rows = measure(args.target)
        pools = pool_times(args.target)
    text = to_markdown(rows, pools, args.target)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
