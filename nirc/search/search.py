"""The searcher: candidates -> Vela costs -> Pareto table, plot and the ONNX of the recommended models.

Ranking without accuracy: the candidates are untrained, so the searcher cannot
know which one will be most accurate. It uses capacity as the proxy the
families themselves are scaled by: among the candidates that meet the budget,
the recommended ones are those on the latency/MACs Pareto front (no other
candidate is both faster and larger), largest first. The table shows
everything, so a user who knows better (e.g. prefers depth to width) can pick.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import onnx

from nirc.cost.oracle import resolve_target
from nirc.cost.types import Cost
from nirc.errors import NircError
from nirc.options import DEFAULT_TARGET
from nirc.search.evaluate import Executor, Outcome, Pipeline, evaluate_all
from nirc.search.families import Candidate, Task, candidates
from nirc.search.graph import count_macs_params
from nirc.search.rows import MIB, Budget, Row
from nirc.target import Target


@dataclass(frozen=True)
class SearchResult:
    """Every costed candidate (fastest first), the budget and what was recommended."""

    target: str
    task: str
    budget: Budget
    pipeline: str
    rows: tuple[Row, ...]
    notes: tuple[str, ...] = ()
    models: dict[str, onnx.ModelProto] = field(default_factory=dict, compare=False, repr=False)

    @property
    def recommended(self) -> list[Row]:
        return sorted((r for r in self.rows if r.recommended), key=lambda r: -r.macs)

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "task": self.task,
            "budget": asdict(self.budget),
            "pipeline": self.pipeline,
            "recommended": [r.name for r in self.recommended],
            "notes": list(self.notes),
            "candidates": [asdict(r) for r in self.rows],
        }

    def table(self, rows: Sequence[Row] | None = None) -> str:
        """The Pareto table as Markdown (``*`` recommended, ``p`` on the Pareto front)."""
        head = "| | candidate | res | Vela ms | MACs (M) | params (M) | weights MiB | needs MiB | fits | note |"
        lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|---|---|"]
        for r in rows if rows is not None else self.rows:
            mark = "*" if r.recommended else ("p" if r.pareto else "")
            ms = "-" if r.latency_ms is None else f"{r.latency_ms:.2f}"
            mib = "-" if r.weight_mib is None else f"{r.weight_mib:.2f}"
            need = "-" if r.required_mib is None else f"{r.required_mib:.2f}"
            fits = {True: "yes", False: "no", None: "?"}[r.fits]
            note = r.error[:60] if r.error else (f"{r.cpu_ops} CPU ops" if r.cpu_ops else "")
            lines.append(f"| {mark} | {r.name} | {r.resolution} | {ms} | {r.macs / 1e6:.1f} | {r.params / 1e6:.2f} "
                         f"| {mib} | {need} | {fits} | {note} |")  # fmt: skip
        return "\n".join(lines) + "\n"

    def write(self, outdir: Path, *, plot: bool = True) -> list[Path]:
        """``search.md`` (table), ``search.json``, ``pareto.png`` and ``onnx/<name>.onnx`` per recommendation."""
        outdir.mkdir(parents=True, exist_ok=True)
        written = [outdir / "search.md", outdir / "search.json"]
        written[0].write_text(self.markdown(), encoding="utf-8")
        written[1].write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")
        onnx_dir = outdir / "onnx"
        for row in self.recommended:
            if row.name in self.models:
                onnx_dir.mkdir(exist_ok=True)
                path = onnx_dir / f"{row.name}.onnx"
                path.write_bytes(self.models[row.name].SerializeToString())
                written.append(path)
        if plot:
            from nirc.search.plot import plot_pareto

            title = f"nirc search: {self.task} on {self.target}"
            png = plot_pareto(self.rows, self.budget, title, self.target, outdir / "pareto.png")
            if png is not None:
                written.append(png)
        return written

    def markdown(self) -> str:
        budget = ", ".join(
            part
            for part in (
                f"latency <= {self.budget.latency_ms} ms" if self.budget.latency_ms is not None else "",
                f"weights <= {self.budget.max_mib} MiB" if self.budget.max_mib is not None else "",
            )
            if part
        )
        picks = ", ".join(r.name for r in self.recommended) or "none (no candidate meets the budget)"
        return (
            f"# nirc search: {self.task} on {self.target}\n\n"
            f"Budget: {budget or 'none'}; pipeline: {self.pipeline}. Recommended (largest first): {picks}.\n\n"
            "`*` recommended (meets the budget, on the latency/MACs Pareto front of those that do), "
            "`p` on the Pareto front of all candidates. Random weights: train the recommended ONNX.\n\n"
            + self.table()
            + "".join(f"\nNote: {note}\n" for note in self.notes)
        )


def required_bytes(cost: Cost, target: Target) -> int:
    """Platform memory the compiled model needs: its encoded weights plus Vela's feature-map arena.

    In Dedicated_Sram modes the arena is in DRAM, and Vela's DRAM figure already counts the
    encoded weights stored there (see :func:`nirc.report.vela_arena_bytes`); elsewhere it is SRAM.
    """
    if target.memory_mode.startswith("Dedicated_Sram"):
        stored = cost.encoded_weight_bytes if cost.dram_weight_bytes else 0
        arena = max(0, cost.dram_used_bytes - stored)
    else:
        arena = cost.sram_used_bytes
    return cost.encoded_weight_bytes + arena


def rank(rows: Sequence[Row], budget: Budget) -> list[Row]:
    """Mark ``meets``, ``pareto`` and ``recommended``; return the rows fastest first (failures last)."""
    def within(r: Row) -> bool:
        if r.latency_ms is None or r.fits is False:
            return False
        if budget.latency_ms is not None and r.latency_ms > budget.latency_ms:
            return False
        return not (budget.max_mib is not None and r.weight_mib is not None and r.weight_mib > budget.max_mib)

    costed = [r for r in rows if r.latency_ms is not None]
    meeting = [r for r in costed if within(r)]
    front = _front([r for r in costed if r.fits is not False])
    best = _front(meeting)
    out = [replace(r, meets=within(r), pareto=r.name in front, recommended=r.name in best) for r in rows]
    return sorted(out, key=lambda r: (r.latency_ms is None, r.latency_ms or 0.0, -r.macs, r.name))


def _front(rows: Sequence[Row]) -> set[str]:
    """Names not dominated in (lower latency, more MACs); equal points are all kept."""
    names = set()
    points = [(r.latency_ms or 0.0, r.macs) for r in rows]
    for r, (ms, macs) in zip(rows, points, strict=True):
        dominated = any(o_ms <= ms and o_macs >= macs and (o_ms < ms or o_macs > macs) for o_ms, o_macs in points)
        if not dominated:
            names.add(r.name)
    return names


def row_for(name: str, family: str, variant: str, resolution: int, model: onnx.ModelProto, outcome: Outcome,
            target: Target) -> Row:  # fmt: skip
    macs, params = count_macs_params(model)
    cost = outcome.cost
    if cost is None:
        return Row(name, family, variant, resolution, None, macs, params, None, None, None, 0, error=outcome.error)
    need = required_bytes(cost, target)
    limit = target.platform_memory_bytes
    return Row(
        name, family, variant, resolution, round(cost.time_ms, 4), macs, params,
        round(cost.weight_bytes / MIB, 3), round(need / MIB, 3), None if limit is None else need <= limit,
        cost.cpu_ops,
    )  # fmt: skip


def search(
    *,
    target: str | Target = DEFAULT_TARGET,
    task: Task = "classification",
    input_size: int = 224,
    budget: Budget | None = None,
    families: Sequence[str] | None = None,
    variants: Sequence[str] | None = None,
    resolutions: Sequence[int] | None = None,
    classes: int | None = None,
    pipeline: Pipeline = "fast",
    executor: Executor = "serial",
    jobs: int = 2,
    ray_address: str | None = None,
) -> SearchResult:
    """Cost every candidate of the chosen families on ``target`` and recommend those that meet ``budget``.

    Args:
        target: a Target or a registered target name.
        task: ``classification`` or ``detection``.
        input_size: the user's image size; candidates use it and smaller resolutions.
        budget: latency and weight limits (none by default: the whole Pareto front is recommended).
        families, variants, resolutions: restrict the space (see :func:`~nirc.search.families.candidates`).
        classes: classifier / detector classes (1000 / 80 by default).
        pipeline: ``fast`` (default) or ``full`` (see :mod:`nirc.search.evaluate`).
        executor, jobs, ray_address: where the candidates are compiled (see
            :func:`~nirc.search.evaluate.evaluate_all`); every executor gives the same result.
    """
    space = candidates(task, input_size, families=families, variants=variants, resolutions=resolutions,
                       classes=classes)  # fmt: skip
    return evaluate_candidates(space, target, task, budget or Budget(), pipeline=pipeline, executor=executor,
                               jobs=jobs, ray_address=ray_address)  # fmt: skip


def evaluate_candidates(
    space: Sequence[Candidate],
    target: str | Target,
    task: str,
    budget: Budget,
    *,
    pipeline: Pipeline = "fast",
    executor: Executor = "serial",
    jobs: int = 2,
    ray_address: str | None = None,
    models: dict[str, onnx.ModelProto] | None = None,
) -> SearchResult:
    """Cost given candidates (``models`` overrides their built ONNX by name) and rank them."""
    resolved = resolve_target(target)
    if len({c.name for c in space}) != len(space):
        raise NircError("candidate names must be unique")
    built = {c.name: (models or {}).get(c.name) or c.build() for c in space}
    outcomes = evaluate_all(
        list(built.values()), list(built), resolved, pipeline=pipeline, executor=executor, jobs=jobs,
        ray_address=ray_address,
    )  # fmt: skip
    rows = [
        row_for(c.name, c.family, c.variant, c.resolution, built[c.name], o, resolved)
        for c, o in zip(space, outcomes, strict=True)
    ]
    ranked = rank(rows, budget)
    keep = {r.name: built[r.name] for r in ranked if r.recommended}
    return SearchResult(resolved.name, task, budget, pipeline, tuple(ranked), models=keep)
