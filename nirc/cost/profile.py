"""Block latency characterization: sweep block types over feature-map sizes, cost each with the oracle.

Why: MACs and parameter counts are poor proxies for NPU latency. A depthwise
conv uses a fraction of the MAC array, channel counts round up to the brick
and micro-block granules, and a block whose activations or weights spill to
DRAM pays bandwidth instead of compute. Sweeping interchangeable blocks
(input size = output size) over H x W x C shows which one is cheapest where.

Output: a CSV (one row per block) and, when matplotlib is installed (extra
``plots``), two PNGs: latency vs H*W*C per type, and latency vs MACs coloured
by type (equal MACs, unequal latency).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from nirc.analysis import analyze
from nirc.cost.blocks import BLOCK_KINDS, BlockSpec, build_block
from nirc.cost.parallel import evaluate_many
from nirc.ir import IRModel
from nirc.target import Target

logger = logging.getLogger(__name__)

SWEEP_HW: tuple[int, ...] = (7, 14, 28, 56, 112)
SWEEP_C: tuple[int, ...] = (16, 32, 64, 128, 256)
QUICK_HW: tuple[int, ...] = (7, 14)
QUICK_C: tuple[int, ...] = (16, 32)
MAX_FM_ELEMENTS = 1 << 20
"""Sizes with H*W*C above this (1 MiB of int8 per feature map, e.g. 112x112x128) are skipped:
no MCU-class network carries such activations, and the expanded blocks would need tens of MiB."""

NO_PLOTS_NOTE = "matplotlib is not installed (pip install 'nirc[plots]'): wrote the CSV only, no PNG plots"


def sweep(*, quick: bool = False, kinds: Sequence[str] | None = None) -> list[BlockSpec]:
    """The blocks to profile: every kind at every H=W and C of the (quick) sweep, absurd sizes skipped."""
    hws, cs = (QUICK_HW, QUICK_C) if quick else (SWEEP_HW, SWEEP_C)
    chosen = list(kinds) if kinds else list(BLOCK_KINDS)
    return [
        BlockSpec(kind, hw, hw, c)
        for kind in chosen
        for hw in hws
        for c in cs
        if hw * hw * c <= MAX_FM_ELEMENTS and c % BLOCK_KINDS[kind].min_channels == 0
    ]


@dataclass(frozen=True)
class ProfileRow:
    """One profiled block (a CSV row). ``mac_util = macs / (cycles * target.macs)``."""

    type: str
    H: int
    W: int
    C: int
    macs: int
    params: int
    weight_bytes: int
    encoded_weight_bytes: int
    cycles: int
    time_ms: float
    sram_used_bytes: int
    sram_traffic_bytes: int
    dram_traffic_bytes: int
    mac_util: float


def profile_blocks(
    specs: Sequence[BlockSpec], target: Target, *, jobs: int = 1, use_cache: bool = True
) -> list[ProfileRow]:
    """Cost every block with the oracle (cached) and add its static MACs and parameters."""
    models = [build_block(spec) for spec in specs]
    costs = evaluate_many(models, target, jobs=jobs, use_cache=use_cache, labels=[s.label for s in specs])
    rows = []
    for spec, model, cost in zip(specs, models, costs, strict=True):
        static = analyze(IRModel.load(model))  # load infers the shapes MAC counting needs
        rows.append(
            ProfileRow(
                type=spec.kind,
                H=spec.h,
                W=spec.w,
                C=spec.c,
                macs=static.macs,
                params=static.params,
                weight_bytes=static.weight_bytes,
                encoded_weight_bytes=cost.encoded_weight_bytes,
                cycles=cost.cycles,
                time_ms=cost.time_ms,
                sram_used_bytes=cost.sram_used_bytes,
                sram_traffic_bytes=cost.sram_traffic_bytes,
                dram_traffic_bytes=cost.dram_traffic_bytes,
                mac_util=static.macs / (cost.cycles * target.macs) if cost.cycles else 0.0,
            )
        )
    return rows


def write_csv(rows: Iterable[ProfileRow], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    names = [f.name for f in fields(ProfileRow)]
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=names, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            data = asdict(row)
            data["time_ms"] = f"{row.time_ms:.6f}"
            data["mac_util"] = f"{row.mac_util:.6f}"
            writer.writerow(data)
    return path


def read_csv(path: Path) -> list[ProfileRow]:
    """Rows written by :func:`write_csv` (for re-plotting and the analytical fit)."""
    with path.open(newline="", encoding="utf-8") as f:
        return [_row(record) for record in csv.DictReader(f)]


def _row(record: dict[str, str]) -> ProfileRow:
    def num(name: str) -> int:
        return int(record[name])

    return ProfileRow(
        type=record["type"],
        H=num("H"),
        W=num("W"),
        C=num("C"),
        macs=num("macs"),
        params=num("params"),
        weight_bytes=num("weight_bytes"),
        encoded_weight_bytes=num("encoded_weight_bytes"),
        cycles=num("cycles"),
        time_ms=float(record["time_ms"]),
        sram_used_bytes=num("sram_used_bytes"),
        sram_traffic_bytes=num("sram_traffic_bytes"),
        dram_traffic_bytes=num("dram_traffic_bytes"),
        mac_util=float(record["mac_util"]),
    )


def write_plots(rows: Sequence[ProfileRow], outdir: Path, stem: str, target_name: str) -> list[Path]:
    """Two log-log PNGs; returns [] (after logging :data:`NO_PLOTS_NOTE`) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning(NO_PLOTS_NOTE)
        return []
    outdir.mkdir(parents=True, exist_ok=True)
    kinds = [k for k in BLOCK_KINDS if any(r.type == k for r in rows)]
    colors = {k: plt.get_cmap("tab10")(i % 10) for i, k in enumerate(kinds)}
    paths = []

    fig, ax = plt.subplots(figsize=(9, 6))
    for kind in kinds:
        for i, c in enumerate(sorted({r.C for r in rows if r.type == kind})):
            points = sorted((r.H * r.W * r.C, r.time_ms) for r in rows if r.type == kind and c == r.C)
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o", ms=3, lw=1, color=colors[kind], label=kind if i == 0 else None)
    ax.set(xscale="log", yscale="log", ylabel="latency (ms)")
    ax.set_xlabel("feature map H x W x C (elements); lines join sizes with equal C")
    ax.set_title(f"Block latency vs feature-map size on {target_name} (Vela estimate)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    paths.append(_save(fig, outdir / f"{stem}_latency_vs_size.png"))

    fig, ax = plt.subplots(figsize=(9, 6))
    for kind in kinds:
        points = [(r.macs, r.time_ms) for r in rows if r.type == kind and r.macs > 0]
        if points:
            xs, ys = zip(*points, strict=True)
            ax.scatter(xs, ys, s=14, color=colors[kind], label=kind)
    ax.set(xscale="log", yscale="log", xlabel="MACs", ylabel="latency (ms)")
    skipped = [k for k in kinds if all(r.macs == 0 for r in rows if r.type == k)]
    note = f" ({', '.join(skipped)}: no MACs, not shown)" if skipped else ""
    ax.set_title(f"Latency vs MACs on {target_name}: equal MACs, unequal latency{note}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    paths.append(_save(fig, outdir / f"{stem}_latency_vs_macs.png"))
    return paths


def _save(fig: Any, path: Path) -> Path:
    # Any: matplotlib is an optional extra, so its types are not always installed for mypy.
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


@dataclass(frozen=True)
class Comparison:
    """Two block types at one size: how their parameters, MACs and cycles compare."""

    H: int
    W: int
    C: int
    a: ProfileRow
    b: ProfileRow

    @property
    def param_ratio(self) -> float:
        return self.a.params / self.b.params if self.b.params else float("inf")

    @property
    def macs_ratio(self) -> float:
        return self.a.macs / self.b.macs if self.b.macs else float("inf")

    @property
    def cycle_ratio(self) -> float:
        return self.a.cycles / self.b.cycles


def compare(rows: Sequence[ProfileRow], kind_a: str, kind_b: str) -> list[Comparison]:
    """``kind_a`` vs ``kind_b`` at every size both were profiled at."""
    b_at = {(r.H, r.W, r.C): r for r in rows if r.type == kind_b}
    return [
        Comparison(r.H, r.W, r.C, r, b_at[(r.H, r.W, r.C)])
        for r in rows
        if r.type == kind_a and (r.H, r.W, r.C) in b_at
    ]


def run_profile(
    target: Target,
    outdir: Path,
    *,
    jobs: int = 1,
    quick: bool = False,
    kinds: Sequence[str] | None = None,
    use_cache: bool = True,
    plots: bool = True,
) -> tuple[list[ProfileRow], list[Path]]:
    """Sweep, write ``profile_blocks_<target>.csv`` (+ PNGs) into ``outdir``; returns rows and written files."""
    specs = sweep(quick=quick, kinds=kinds)
    logger.info("profiling %d blocks on %s with %d job(s)", len(specs), target.name, jobs)
    rows = profile_blocks(specs, target, jobs=jobs, use_cache=use_cache)
    stem = f"profile_blocks_{target.name}"
    written = [write_csv(rows, outdir / f"{stem}.csv")]
    if plots:
        written += write_plots(rows, outdir, stem, target.name)
    return rows, written
