"""``nirc.compress``: compress a float model to a latency or size budget on a target, then compile it.

Steps: the target's exact canonical passes (BN folding, ...) so that every layer
is one linear op; units and levels (:mod:`.plan`); the cost tables from Vela and
the sensitivities from calibration data (:mod:`.search`); the greedy choice,
checked with Vela and re-planned with a tighter goal while the measured cost
misses the budget (the prediction is a model); the chosen configuration applied
and reconstructed layer by layer (:mod:`.reconstruct`); the result measured
again and compiled with ``nirc optimize``.

A budget that cannot be met raises :class:`BudgetNotMetError` (exit code 9)
carrying the closest result; the CLI then writes that result under a name
that says so, never as the compressed model.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx

from nirc.compress import plan, prune, search
from nirc.compress.plan import METHODS, Method
from nirc.compress.reconstruct import Reference, Refit
from nirc.errors import CalibrationError, NircError
from nirc.ir import IRModel
from nirc.pass_base import PassContext
from nirc.pass_manager import PassManager
from nirc.plugin import load_registry
from nirc.quant import load_calibration
from nirc.target import Target
from nirc.verify import run_tensors

logger = logging.getLogger(__name__)

MIB = 1 << 20
EXIT_BUDGET_NOT_MET = 10  # 9 is NPU validation failure
BudgetKind = Literal["latency-ms", "size-mib", "speedup"]


class BudgetNotMetError(NircError):
    """No configuration the search found meets the budget; ``result`` is the closest one reached."""

    exit_code = EXIT_BUDGET_NOT_MET

    def __init__(self, message: str, result: CompressResult) -> None:
        super().__init__(message)
        self.result = result


@dataclass(frozen=True)
class Budget:
    """What the compressed model must meet: one of a Vela latency, a weight size or a speedup."""

    kind: BudgetKind
    value: float

    def __post_init__(self) -> None:
        if not self.value > 0 or (self.kind == "speedup" and self.value < 1.0):
            raise ValueError(f"budget --{self.kind} must be positive (a speedup at least 1), got {self.value}")

    @property
    def metric(self) -> search.Metric:
        return "size" if self.kind == "size-mib" else "latency"

    def goal(self, base_ms: float) -> float:
        """The goal in the metric's unit: milliseconds of Vela latency, or int8 weight MiB."""
        return base_ms / self.value if self.kind == "speedup" else self.value

    def text(self) -> str:
        unit = {"latency-ms": " ms", "size-mib": " MiB", "speedup": "x speedup"}[self.kind]
        return f"{self.value:g}{unit}"


@dataclass(frozen=True)
class Measure:
    """A model's numbers: Vela latency, MACs, parameters and int8 weight size; output error vs the original."""

    latency_ms: float
    cycles: int
    macs: int
    params: int
    size_mib: float
    output_error: float | None = None
    top1_agreement: float | None = None
    top1: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


@dataclass
class CompressResult:
    """What :func:`compress` produced.

    Attributes:
        model: the compressed float ONNX model (reconstructed).
        budget: the budget asked (with ``also``: a size budget asked beside a latency or speedup).
        met: whether the measured result meets it.
        original, unrecovered, compressed: measurements of the input model (after the exact canonical
            passes), of the chosen configuration without reconstruction, and of the final model.
        layers: the per-layer report rows.
        config: unit id -> level.
        search: what the search did (probes, evaluations, rounds, predicted vs measured).
        samples: calibration samples used to fit and to evaluate; ``labelled`` when top-1 is real accuracy.
        unrecovered_model: the chosen configuration without reconstruction (for comparisons).
    """

    model: onnx.ModelProto
    budget: Budget
    met: bool
    original: Measure
    unrecovered: Measure
    compressed: Measure
    layers: list[dict[str, Any]]
    config: dict[str, int]
    also: Budget | None = None
    search: dict[str, Any] = field(default_factory=dict)
    samples: dict[str, Any] = field(default_factory=dict)
    unrecovered_model: onnx.ModelProto | None = field(default=None, repr=False)

    def asked(self) -> str:
        """The budget(s) asked, as the user wrote them."""
        return self.budget.text() + (f" and {self.also.text()}" if self.also is not None else "")

    def reached(self) -> float:
        """The budget's quantity the result reached (ms, MiB or speedup)."""
        if self.budget.kind == "size-mib":
            return self.compressed.size_mib
        if self.budget.kind == "speedup":
            return self.original.latency_ms / self.compressed.latency_ms
        return self.compressed.latency_ms

    def to_json(self) -> dict[str, Any]:
        return {
            "budget": {"asked": self.asked(), "kind": self.budget.kind, "value": self.budget.value,
                       **({"size_mib": self.also.value} if self.also is not None else {})},
            "reached": round(self.reached(), 4),
            "met": self.met,
            "original": self.original.to_json(),
            "reconstruction_off": self.unrecovered.to_json(),
            "compressed": self.compressed.to_json(),
            "speedup": round(self.original.latency_ms / self.compressed.latency_ms, 3),
            "samples": self.samples,
            "search": self.search,
            "config": self.config,
            "layers": self.layers,
        }

    def markdown(self) -> str:
        """The per-layer report as a Markdown table, headed by the budget asked and the one reached."""
        o, c = self.original, self.compressed
        reached = f"{self.reached():.3f}" + {"latency-ms": " ms", "size-mib": " MiB", "speedup": "x"}[self.budget.kind]
        lines = [
            f"Budget asked: {self.asked()}; reached: {reached}"
            + (f" and {self.compressed.size_mib:.2f} MiB" if self.also is not None else "")
            + f" ({'met' if self.met else 'NOT met'}).",
            "",
            f"Vela latency {o.latency_ms:.3f} -> {c.latency_ms:.3f} ms ({o.latency_ms / c.latency_ms:.2f}x); "
            f"params {o.params:,} -> {c.params:,}; MACs {o.macs:,} -> {c.macs:,}; "
            f"int8 weights {o.size_mib:.2f} -> {c.size_mib:.2f} MiB.",
            f"Output error vs original (held-out): {_num(self.unrecovered.output_error)} without reconstruction, "
            f"{_num(c.output_error)} with; top-1 agreement {_num(self.unrecovered.top1_agreement)} / "
            f"{_num(c.top1_agreement)}.",
        ]
        if c.top1 is not None:
            lines.append(
                f"Top-1 accuracy (labels): original {_num(o.top1)}, reconstruction off "
                f"{_num(self.unrecovered.top1)}, reconstructed {_num(c.top1)}."
            )
        lines += [
            "",
            "| layer | method | channels / rank | Vela cycles before | after | layer error before recovery | after |",
            "|---|---|---|---:|---:|---:|---:|",
        ]
        for row in self.layers:
            err = row.get("error")
            before, after = (f"{err[0]:.4f}", f"{err[1]:.4f}") if err else ("", "")
            lines.append(
                f"| {row['layer']} | {row['method']} | {row['action']} | {row['cycles'][0]:,} | {row['cycles'][1]:,} "
                f"| {before} | {after} |"
            )
        return "\n".join(lines) + "\n"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _canonical(model: IRModel, target: Target) -> None:
    """The target's exact, non-hardware passes: BN folded, identities gone, one linear op per layer."""
    registry = load_registry()
    passes = [registry.get_pass(n)() for n in target.default_pipeline if n not in target.hw_passes]
    PassManager(passes).run(model, PassContext(target=target))


def _labels(path: Path | None, count: int) -> np.ndarray | None:
    """Labels stored beside the samples (``labels`` in an ``.npz``), cut to ``count``."""
    if path is None or Path(path).suffix.lower() != ".npz":
        return None
    with np.load(path) as data:
        if "labels" not in data:
            return None
        return np.asarray(data["labels"]).reshape(-1)[:count]


def _measure(
    proto: onnx.ModelProto,
    target: Target,
    held: Sequence[Mapping[str, np.ndarray]],
    reference: Mapping[str, np.ndarray],
    labels: np.ndarray | None,
) -> Measure:
    from nirc.analysis import analyze
    from nirc.cost import estimate

    cost = estimate(proto, target)
    model = IRModel.from_proto(proto)
    stats = analyze(model)
    size = search.weight_bytes(model)[0]
    got = run_tensors(proto, held, list(reference))
    first = next(iter(reference))
    agree = float(np.mean(got[first].argmax(-1) == reference[first].argmax(-1))) if reference[first].ndim == 2 else None
    top1 = float(np.mean(got[first].argmax(-1) == labels)) if labels is not None else None
    return Measure(
        latency_ms=cost.time_ms,
        cycles=cost.cycles,
        macs=stats.macs,
        params=stats.params,
        size_mib=size / MIB,
        output_error=search.output_error(proto, held, reference),
        top1_agreement=agree,
        top1=top1,
    )


def compress(
    source: str | Path | bytes | onnx.ModelProto,
    target: str | Target = "ethos-u65",
    *,
    latency_ms: float | None = None,
    size_mib: float | None = None,
    speedup: float | None = None,
    calib: str | Path | None = None,
    samples: int = 256,
    holdout: float = 0.25,
    methods: Sequence[Method] = METHODS,
    ratios: Sequence[float] = plan.RATIOS,
    criterion: prune.Criterion = "activation",
    align: int | None = None,
    rounds: int = 4,
    progress: Callable[[str], None] = lambda _m: None,
    reuse: dict[str, Any] | None = None,
) -> CompressResult:
    """Compress ``source`` until it meets exactly one of ``latency_ms``, ``size_mib``, ``speedup`` on ``target``.

    Args:
        source: a path, ONNX bytes or a ModelProto (float).
        target: a target or its name.
        latency_ms, size_mib, speedup: the budget (Vela latency, int8 weight MiB, or latency reduction);
            a size may be asked together with a latency or a speedup, and then both must hold.
        calib: calibration data (``.npy``/``.npz``/image folder as for ``nirc optimize``); an ``.npz`` with
            a ``labels`` array also gives top-1 accuracy. Required: compressing on noise is meaningless.
        samples: calibration samples to use; ``holdout`` of them are never fitted on and measure the error.
        methods: ``prune`` and/or ``lowrank`` (with ``cp``: CP as a second form of its kxk decompositions).
        ratios: the levels each unit is measured and searched at (share of channels or parameters removed).
        criterion: channel importance for pruning.
        align: channel/rank granule (default: the target's brick).
        rounds: Vela checks of the plan before giving up on the budget.
        reuse: a dict the caller keeps between calls on the same model, calibration and options (the
            budget may differ): the cost tables and sensitivities, which do not depend on the budget, are
            stored in it and reused.

    Raises:
        BudgetNotMetError: with the closest result (``exc.result``).
        CalibrationError: no or unusable calibration data.
    """
    timing = [(k, v) for k, v in (("latency-ms", latency_ms), ("speedup", speedup)) if v]
    if len(timing) > 1 or not (timing or size_mib):
        raise NircError(
            "compress needs one budget (--latency-ms, --size-mib or --speedup), or a latency/speedup and a size"
        )
    try:
        budget = Budget(*timing[0]) if timing else Budget("size-mib", float(size_mib or 0))  # type: ignore[arg-type]
        also = Budget("size-mib", float(size_mib)) if timing and size_mib else None
    except ValueError as exc:
        raise NircError(str(exc)) from None
    if calib is None:
        raise CalibrationError("compress needs calibration data (--calib): it measures sensitivity and refits on it")
    if not methods or any(m not in METHODS for m in methods):
        raise NircError(f"compress methods must be among {', '.join(METHODS)}, got {list(methods)}")
    if "cp" in methods and "lowrank" not in methods:
        raise NircError("compress method cp is a form of lowrank's decompositions: give lowrank too")
    tgt = load_registry().get_target(target) if isinstance(target, str) else target
    align = align or tgt.brick_channels

    model = IRModel.load(source)
    progress("canonicalizing (exact passes)")
    _canonical(model, tgt)
    proto = model.to_proto()
    from nirc.backend import input_shapes

    calibration = load_calibration(Path(calib), input_shapes(proto), count=samples)
    all_samples = list(calibration.samples)
    n_held = max(1, round(len(all_samples) * holdout))
    if len(all_samples) - n_held < 8:
        raise CalibrationError(f"{calib}: {len(all_samples)} samples are too few to fit and evaluate (need 16+)")
    fit, held = all_samples[:-n_held], all_samples[-n_held:]
    labels_all = _labels(Path(calib), len(all_samples))
    labels = labels_all[-n_held:] if labels_all is not None and len(labels_all) == len(all_samples) else None
    ref = Reference(proto, fit, held)
    outputs = [o.name for o in proto.graph.output]
    reference = run_tensors(proto, held, outputs)

    original = _measure(proto, tgt, held, reference, labels)
    goal = budget.goal(original.latency_ms) if budget.metric == "latency" else budget.goal(0.0)
    units = plan.find_units(model, align, methods, ratios)
    progress(f"{len(units)} compressible units; measuring costs with Vela")
    memo = reuse if reuse is not None else {}

    def table_for(metric: search.Metric) -> search.CostTable:
        measure = search.vela_cycles(tgt) if metric == "latency" else search.weight_bytes
        found: search.CostTable = memo.get(f"table:{metric}") or search.cost_table(
            proto, units, measure, align, progress, cp="cp" in methods
        )
        memo[f"table:{metric}"] = found
        return found

    table = table_for(budget.metric)
    size_table = table_for("size") if also is not None else None
    scale = original.cycles / original.latency_ms if budget.metric == "latency" else float(MIB)
    if "sensitivity" not in memo:
        progress("measuring sensitivities on calibration data")
        memo["sensitivity"] = search.sensitivity(
            proto, units, ref, held[:32], align=align, criterion=criterion, progress=progress
        )
    sens: search.Sensitivity = memo["sensitivity"]
    candidates = search.cp_candidates(units, table, align)
    if candidates and "cp_sensitivity" not in memo:
        progress(f"measuring the CP form of {len(candidates)} layers Vela runs faster in it")
        twins = [plan.with_forms(u, candidates[u.id], align) for u in units if u.id in candidates]
        memo["cp_sensitivity"] = search.sensitivity(
            proto, twins, ref, held[:32], align=align, criterion=criterion, progress=progress, only=candidates
        )
    if candidates:
        units, table, sens = search.choose_forms(units, table, sens, memo["cp_sensitivity"], align)
        size_table = search.with_cp_costs(units, size_table) if size_table is not None else None

    config: dict[str, int] = {}
    goal_units = goal * scale
    history: list[dict[str, float]] = []
    applied: plan.Applied | None = None
    reached = float("inf")
    size_goal = also.value * MIB if also is not None else 0.0
    for round_ in range(rounds):
        second = (size_table, size_goal) if size_table is not None else None
        config = search.greedy(units, table, sens, goal_units, start=config, also=second)
        predicted = search.predict(table, units, config)
        applied = plan.apply_config(proto, units, config, align=align, criterion=criterion, samples=fit[:32])
        size_now = search.weight_bytes(applied.model)[0] / MIB
        if budget.metric == "latency":
            from nirc.cost import estimate

            reached = estimate(applied.model.to_proto(check=False), tgt).cycles / scale
        else:
            reached = search.weight_bytes(applied.model)[0] / scale
        history.append(
            {"round": round_ + 1, "goal": goal_units / scale, "predicted": predicted / scale, "measured": reached}
        )
        progress(f"round {round_ + 1}: predicted {predicted / scale:.3f}, measured {reached:.3f} (goal {goal:.3f})"
                 + (f"; {size_now:.2f} MiB (goal {also.value:g})" if also is not None else ""))  # fmt: skip
        latency_ok = reached <= goal
        size_ok = also is None or size_now <= also.value * (1 + 1e-9)
        size_predicted = search.predict(second[0], units, config) if second is not None else 0.0
        if (latency_ok and size_ok) or predicted > goal_units * 1.0001 or size_predicted > size_goal * 1.0001:
            break  # met, or the units cannot reach a goal even on paper
        if not latency_ok:
            goal_units = predicted * goal / reached
        if not size_ok and also is not None:  # pruning's size is modelled per side, not exactly
            size_goal = size_predicted * also.value / size_now
    assert applied is not None

    unrecovered_proto = applied.model.to_proto()
    unrecovered = _measure(unrecovered_proto, tgt, held, reference, labels)
    progress("reconstructing layer by layer")
    refits = plan.reconstruct(applied, ref)
    final = applied.model.to_proto()
    compressed = _measure(final, tgt, held, reference, labels)
    met = (compressed.latency_ms if budget.metric == "latency" else compressed.size_mib) <= goal * (1 + 1e-9)
    met = met and (also is None or compressed.size_mib <= also.value * (1 + 1e-9))
    layers = _layer_rows(proto, final, applied, refits, tgt)
    result = CompressResult(
        model=final,
        budget=budget,
        also=also,
        met=met,
        original=original,
        unrecovered=unrecovered,
        compressed=compressed,
        layers=layers,
        config={k: v for k, v in config.items() if v and k in applied.details},
        search={
            "units": len(units),
            "cost_probes": table.probes,
            "sensitivity_evaluations": sens.evaluations,
            "rounds": history,
            "criterion": criterion,
            "methods": list(methods),
            "align": align,
        },
        samples={"fit": len(fit), "held_out": len(held), "source": calibration.source, "labelled": labels is not None},
        unrecovered_model=unrecovered_proto,
    )
    if not met:
        raise BudgetNotMetError(
            f"budget {result.asked()} not met: closest reached {result.reached():.3f} "
            f"({compressed.latency_ms:.3f} ms, {compressed.size_mib:.2f} MiB)",
            result,
        )
    return result


def _layer_rows(
    before: onnx.ModelProto,
    after: onnx.ModelProto,
    applied: plan.Applied,
    refits: Sequence[Refit],
    target: Target,
) -> list[dict[str, Any]]:
    """One row per Conv/Gemm of the original model that changed: what was done, its Vela cycles before
    and after (factors summed), and its output error vs the original before and after reconstruction."""
    from nirc.cost import per_layer_costs

    cycles_before = {n: c.cycles for n, c in per_layer_costs(IRModel.from_proto(before), target).items()}
    cycles_after: dict[str, int] = {}
    for name, cost in per_layer_costs(IRModel.from_proto(after), target).items():
        key = search.base_name(name)
        cycles_after[key] = cycles_after.get(key, 0) + cost.cycles
    error = {search.base_name(r.node): (r.error_before, r.error_after) for r in refits}
    shapes_before = _weight_shapes(before)
    shapes_after = _weight_shapes(after)
    ranks = {u: d for u, d in applied.details.items() if u.startswith("lowrank:")}
    rows = []
    for node in before.graph.node:
        name = node.name
        if node.op_type not in ("Conv", "Gemm", "MatMul") or name not in shapes_before:
            continue
        old = shapes_before[name]
        decomposed = f"lowrank:{name}" in ranks
        new = shapes_after.get(name)
        if not decomposed and new == old:
            continue
        what = []
        if (new is not None and new[0] != old[0]) or (decomposed and _out_channels(after, name) != old[0]):
            what.append(f"out {old[0]} -> {new[0] if new else _out_channels(after, name)}")
        in_after = new[1] if new is not None else _in_channels(after, name)
        if in_after != old[1]:
            what.append(f"in {old[1]} -> {in_after}")
        if decomposed:
            what.append(ranks[f"lowrank:{name}"])
        if decomposed and ranks[f"lowrank:{name}"].startswith("CP"):
            method = "cp"
        else:
            method = "prune" if not decomposed else ("tucker2" if len(old) == 4 and old[2:] != (1, 1) else "svd")
        if decomposed and (new is None) and any(w.startswith(("out", "in")) for w in what):
            method = "prune+" + method
        err = error.get(name)
        rows.append(
            {
                "layer": name,
                "method": method,
                "action": ", ".join(what),
                "cycles": [cycles_before.get(name, 0), cycles_after.get(name, 0)],
                "error": [round(err[0], 6), round(err[1], 6)] if err else None,
            }
        )
    return rows


def _weight_shapes(proto: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Conv/Gemm/MatMul node -> weight shape as ``[out, in, ...]``."""
    dims = {t.name: tuple(int(d) for d in t.dims) for t in proto.graph.initializer}
    out: dict[str, tuple[int, ...]] = {}
    for node in proto.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2 or node.input[1] not in dims:
            continue
        shape = dims[node.input[1]]
        trans = any(a.name == "transB" and a.i for a in node.attribute)
        if node.op_type == "MatMul" or (node.op_type == "Gemm" and not trans):
            shape = (shape[1], shape[0])
        out[node.name] = shape
    return out


def _factor_shapes(proto: onnx.ModelProto, name: str) -> list[tuple[int, ...]]:
    shapes = _weight_shapes(proto)
    return [s for n, s in shapes.items() if search.base_name(n) == name and n != name]


def _out_channels(proto: onnx.ModelProto, name: str) -> int:
    factors = _factor_shapes(proto, name)
    return factors[-1][0] if factors else 0


def _in_channels(proto: onnx.ModelProto, name: str) -> int:
    factors = _factor_shapes(proto, name)
    return factors[0][1] if factors else 0


def write(
    result: CompressResult, outdir: Path, stem: str, target: Target | str, calib: Path | None = None
) -> dict[str, Path]:
    """Write the compressed model, its ``nirc optimize`` artifacts and the reports; the closest result of an
    unmet budget goes under ``<stem>_closest.onnx`` and gets no artifacts."""
    from nirc.options import CalibrationOptions
    from nirc.pipeline import optimize

    outdir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    name = f"{stem}_compressed.onnx" if result.met else f"{stem}_closest.onnx"
    paths["model"] = outdir / name
    onnx.save(result.model, str(paths["model"]))
    report = result.to_json()
    if result.met:
        opt = optimize(paths["model"], target, outdir=outdir / "optimize", calibration=CalibrationOptions(path=calib))
        vela = opt.report.get("vela")
        report["optimize"] = {
            "outdir": "optimize",
            "vela_ms": vela.get("inference_time_ms") if isinstance(vela, dict) else None,
        }
        paths["optimize"] = outdir / "optimize"
    paths["report"] = outdir / "compress_report.json"
    paths["report"].write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    paths["markdown"] = outdir / "compress_report.md"
    paths["markdown"].write_text(result.markdown(), encoding="utf-8")
    return paths


__all__ = ["EXIT_BUDGET_NOT_MET", "Budget", "BudgetNotMetError", "CompressResult", "Measure", "compress", "write"]
