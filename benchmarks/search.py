"""Model-search benchmark: candidates per hour on 1 process, a 2-process pool and 2 local Ray workers,
and recommendation tables for three latency budgets on ethos-u65 and ethos-u55-128.

Usage: python benchmarks/search.py [--quick] [-o benchmarks/results/search.md]

Throughput: the same candidates are costed (``nirc.search.evaluate_all``, the ``fast`` pipeline:
passes, int8 emission, Vela) by each executor, each against its own fresh cache directory so that
every candidate is a miss; the Ray time includes starting and stopping the local Ray instance, as a
user's ``nirc search --executor ray`` pays it. The rows of the three runs must be identical.

Recommendations: classification at 224 (and 160, 128) over a subset of every family, three budgets
per target. One search per target; the budgets only re-rank it (the cost does not depend on them).
Random-weight candidates: the rows are costs, the "largest on the Pareto front" rule stands in for
accuracy (see nirc/search/search.py).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from nirc.search import Budget, search
from nirc.search.evaluate import Executor
from nirc.search.plot import plot_pareto
from nirc.search.search import SearchResult, rank

ROOT = Path(__file__).resolve().parents[1]

THROUGHPUT = {"input_size": 96, "families": ["mobilenetv2", "resnet", "efficientnet-lite", "repvgg"],
              "variants": ["w0.35", "w0.75", "w1.0", "d10-w0.5", "d18-w0.5", "lite0", "a0"], "resolutions": [96],
              "classes": 100}  # fmt: skip
RECOMMEND = {"input_size": 224, "variants": ["w0.35", "w0.5", "w0.75", "w1.0", "lite0", "f1-w0.5", "f2-w1.0",
                                              "d10-w0.5", "d18-w0.5", "d18-w1.0", "a0"]}  # fmt: skip
READING = ("Reading: the wall times include each executor's start-up: a pool worker imports ONNX Runtime and Vela "
           "before its first candidate, and Ray also starts and stops a local cluster. On this 2-core machine, shared "
           "with other jobs while it ran, two workers had no idle core to use, so neither parallel executor beat one "
           "process; they pay off where cores are free (a larger host, or a cluster through `--ray-address`).")
BUDGETS = {"ethos-u65": (2.0, 5.0, 10.0), "ethos-u55-128": (5.0, 15.0, 30.0)}


def _timed(executor: Executor, target: str, space: dict[str, object]) -> tuple[SearchResult, float]:
    with tempfile.TemporaryDirectory(prefix=f"nirc-search-{executor}-") as cache:
        os.environ["NIRC_CACHE_DIR"] = cache
        start = time.perf_counter()
        result = search(target=target, executor=executor, jobs=2, **space)  # type: ignore[arg-type]
        return result, time.perf_counter() - start


def throughput(target: str, quick: bool) -> tuple[list[str], bool]:
    space = dict(THROUGHPUT)
    if quick:
        space["variants"] = ["w0.35", "d10-w0.5", "lite0"]
    runs = {executor: _timed(executor, target, space) for executor in ("serial", "pool", "ray")}  # type: ignore[misc]
    reference = runs["serial"][0].rows
    same = all(result.rows == reference for result, _ in runs.values())
    count = len(reference)
    lines = ["| executor | workers | candidates | wall s | candidates / hour | rows identical to serial |",
             "|---|---:|---:|---:|---:|---|"]  # fmt: skip
    labels = {"serial": ("1 process", 1), "pool": ("process pool (forkserver)", 2), "ray": ("Ray, local", 2)}
    for executor, (result, seconds) in runs.items():
        name, workers = labels[executor]
        lines.append(f"| {name} | {workers} | {count} | {seconds:.1f} | {3600 * count / seconds:.0f} | "
                     f"{'yes' if result.rows == reference else 'NO'} |")  # fmt: skip
    return lines, same


def recommendations(target: str, budgets: tuple[float, ...], quick: bool, outdir: Path) -> list[str]:
    space = dict(RECOMMEND)
    if quick:
        space["variants"] = ["w0.35", "w1.0", "d10-w0.5"]
        space["resolutions"] = [224, 128]
    os.environ.pop("NIRC_CACHE_DIR", None)
    with tempfile.TemporaryDirectory(prefix="nirc-search-rec-") as cache:
        os.environ["NIRC_CACHE_DIR"] = cache
        start = time.perf_counter()
        result = search(target=target, executor="serial", **space)  # type: ignore[arg-type]
        seconds = time.perf_counter() - start
    middle = Budget(latency_ms=budgets[len(budgets) // 2])
    plot_pareto(rank(result.rows, middle), middle, f"nirc search: classification on {result.target}", result.target,
                outdir / f"search_{target}.png")  # fmt: skip
    lines = [f"### {result.target}: {len(result.rows)} candidates costed in {seconds:.0f} s (serial)", "",
             "| latency budget | recommended (largest first: Vela ms, MACs M, weights MiB) |", "|---|---|"]  # fmt: skip
    for budget in budgets:
        ranked = [r for r in rank(result.rows, Budget(latency_ms=budget)) if r.recommended]
        ranked.sort(key=lambda r: -r.macs)
        text = "; ".join(f"{r.name} ({r.latency_ms:.2f} ms, {r.macs / 1e6:.0f} M, {r.weight_mib:.2f} MiB)"
                         for r in ranked[:4]) or "none"  # fmt: skip
        lines.append(f"| <= {budget} ms | {text} |")
    lines += ["", "<details><summary>all candidates</summary>", "", result.table(), "</details>", ""]
    return lines


PIPELINE_CHECK = {"input_size": 128, "variants": ["w1.0", "d10-w0.5", "f1-w0.5", "lite0"], "resolutions": [128]}


def pipeline_check(target: str, output: Path) -> None:
    """Does the ``fast`` pipeline rank candidates as the ``full`` one (``nirc optimize``'s) does?"""
    runs = {}
    for pipeline in ("fast", "full"):
        with tempfile.TemporaryDirectory(prefix=f"nirc-search-{pipeline}-") as cache:
            os.environ["NIRC_CACHE_DIR"] = cache
            start = time.perf_counter()
            result = search(target=target, pipeline=pipeline, **PIPELINE_CHECK)  # type: ignore[arg-type]
            runs[pipeline] = (result, time.perf_counter() - start)
    full = {r.name: r for r in runs["full"][0].rows}
    lines = ["# nirc search: `fast` vs `full` pipeline", "",
             "Command: `python benchmarks/search.py --pipeline-check` (nice -n 10, shared 2-core machine). "
             "`fast` skips schedule-memory and tile-activations (they run Vela in their own loop).", "",
             f"Wall time: fast {runs['fast'][1]:.0f} s, full {runs['full'][1]:.0f} s for {len(full)} candidates "
             f"on {runs['fast'][0].target}.", "",
             "| candidate | fast ms | full ms | full / fast |", "|---|---:|---:|---:|"]  # fmt: skip
    for row in runs["fast"][0].rows:
        other = full[row.name]
        fast_ms, full_ms = row.latency_ms or 0.0, other.latency_ms or 0.0
        lines.append(f"| {row.name} | {fast_ms:.3f} | {full_ms:.3f} | {full_ms / fast_ms:.3f} |")
    same = [r.name for r in runs["fast"][0].rows] == [r.name for r in runs["full"][0].rows]
    lines += ["", f"Same latency order under both pipelines: {'yes' if same else 'no'}.", ""]
    output.write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {output}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", type=Path, default=ROOT / "benchmarks" / "results" / "search.md")
    parser.add_argument("--quick", action="store_true", help="fewer candidates (a smoke run)")
    parser.add_argument("--pipeline-check", action="store_true",
                        help="only compare the fast and full pipelines -> results/search_pipelines.md")  # fmt: skip
    args = parser.parse_args()
    if args.pipeline_check:
        pipeline_check("ethos-u65", args.output.parent / "search_pipelines.md")
        return 0
    out: list[str] = ["# nirc search: throughput and recommendations", "",
                      f"Command: `python benchmarks/search.py{' --quick' if args.quick else ''}` (2-core machine "
                      "shared with other jobs, `nice -n 10`; Vela 5.2 in-process; `fast` pipeline).", "",
                      "## Candidates per hour (ethos-u65, cold cache)", ""]  # fmt: skip
    lines, same = throughput("ethos-u65", args.quick)
    out += [*lines, "", f"Identical rows across executors: {'yes' if same else 'NO'}.", "", READING, ""]
    variants = ", ".join(RECOMMEND["variants"])  # type: ignore[arg-type]
    out += ["## Recommendations, classification at 224 (and 160, 128)", "",
            f"Candidates: {variants} of every classification family. Recommended = meets the budget and lies "
            "on the latency/MACs Pareto front of those that do.", ""]  # fmt: skip
    for target, budgets in BUDGETS.items():
        out += recommendations(target, budgets, args.quick, args.output.parent)
    args.output.write_text("\n".join(out) + "\n", encoding="utf-8")
    print(f"wrote {args.output}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
