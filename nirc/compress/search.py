"""Per-layer ratios from the hardware: cost tables from Vela, sensitivity from calibration data, a greedy search.

Cost: what a unit's level saves is read from Vela, not from FLOPs. The model
is compiled once as is and once per ratio with *every* unit of a method at that
ratio (:func:`cost_table`, the oracle's cache makes reruns free);
:func:`nirc.cost.per_layer_costs` credits Vela's per-layer cycles to IR nodes
(the factors of a decomposed layer are credited back to it). A node's cycles
under a mixed choice are then modelled as separable: the node's own measured
ratio ``rho(r)`` is split evenly over the prunable spaces it reads and writes
(``phi = rho^(1/sides)``) and multiplied per side, and a decomposition
multiplies by its measured factor. For the size budget the same tables hold
int8 weight bytes, which are exact.

Sensitivity: each unit is applied alone at each level, its directly disturbed
layers refit (the same recovery the final model gets), and the model outputs'
relative squared error against the original on held-out calibration samples
is its cost in accuracy.

Search: a greedy multiple-choice knapsack: from nothing compressed, repeatedly
take the level step with the least added sensitivity per predicted saving,
until the predicted cost meets the goal. The caller checks the result with Vela
and tightens the goal if the prediction was optimistic.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import onnx

from nirc.compress.plan import Applied, Config, Method, Unit, apply_config, cp_levels, with_forms
from nirc.compress.prune import Criterion
from nirc.compress.reconstruct import Reference
from nirc.ir import IRModel
from nirc.target import Target
from nirc.verify import run_tensors

logger = logging.getLogger(__name__)

Metric = Literal["latency", "size"]
NodeCosts = Callable[[IRModel], tuple[float, dict[str, float]]]
"""A model -> (whole-model cost, cost per IR node)."""


def base_name(node: str) -> str:
    """The original layer a factor node (``<layer>/lr_<role>``) stands for."""
    head, sep, _ = node.rpartition("/lr_")
    return head if sep else node


def weight_bytes(model: IRModel) -> tuple[float, dict[str, float]]:
    """int8 bytes of the float constants (weights, biases): total and per node."""
    proto = model.to_proto(check=False)
    sizes = {t.name: math.prod(t.dims) for t in proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    per_node: dict[str, float] = {}
    for node in proto.graph.node:
        own = sum(sizes.get(i, 0) for i in node.input)
        if own:
            key = base_name(node.name)
            per_node[key] = per_node.get(key, 0.0) + own
    return float(sum(sizes.values())), per_node


def vela_cycles(target: Target) -> NodeCosts:
    """Vela's total cycles and per-node op cycles (factors credited to their layer)."""
    from nirc.cost import estimate, per_layer_costs

    def measure(model: IRModel) -> tuple[float, dict[str, float]]:
        costs = per_layer_costs(model, target)
        total = estimate(model.to_proto(check=False), target).cycles
        per_node: dict[str, float] = {}
        for name, cost in costs.items():
            key = base_name(name)
            per_node[key] = per_node.get(key, 0.0) + cost.cycles
        return float(total), per_node

    return measure


@dataclass
class CostTable:
    """Per-node costs at no compression and their measured ratios at each ratio of each method."""

    total: float
    base: dict[str, float]
    prune_rho: dict[float, dict[str, float]] = field(default_factory=dict)
    lowrank_rho: dict[float, dict[str, float]] = field(default_factory=dict)
    cp_rho: dict[float, dict[str, float]] = field(default_factory=dict)
    sides: dict[str, list[str]] = field(default_factory=dict)
    probes: int = 0

    def node_cost(self, node: str, levels: Mapping[str, float], lowrank: float) -> float:
        """Predicted cost of ``node`` with prune ratios ``levels`` (unit id -> ratio) and decomposition ratio."""
        base = self.base.get(node, 0.0)
        if base == 0.0:
            return 0.0
        value = base
        sides = self.sides.get(node, [])
        for unit in sides:
            ratio = levels.get(unit, 0.0)
            if ratio > 0.0:
                rho = self.prune_rho.get(ratio, {}).get(node, 1.0)
                value *= rho ** (1.0 / len(sides))
        if lowrank > 0.0:
            value *= self.lowrank_rho.get(lowrank, {}).get(node, 1.0)
        return value


def cost_table(
    proto: onnx.ModelProto,
    units: Sequence[Unit],
    measure: NodeCosts,
    align: int,
    progress: Callable[[str], None],
    cp: bool = True,
) -> CostTable:
    """Measure the uncompressed model and, per method and ratio, the model with all its units at that ratio
    (with ``cp``, also every kxk decomposition in CP form)."""
    total, base = measure(IRModel.from_proto(proto))
    table = CostTable(total=total, base=base)
    for unit in units:
        if unit.method == "prune":
            for node in unit.nodes:
                table.sides.setdefault(node, []).append(unit.id)
    for method in ("prune", "lowrank"):
        mine = [u for u in units if u.method == method]
        if not mine:
            continue
        for ratio in sorted({r for u in mine for r in u.ratios if r > 0}):
            config = {u.id: u.ratios.index(ratio) for u in mine if ratio in u.ratios}
            # Units whose levels skip this ratio take their largest level not above it.
            for u in mine:
                if u.id not in config:
                    config[u.id] = max(i for i, r in enumerate(u.ratios) if r <= ratio)
            if not any(config.values()):
                continue
            rho = _probe(proto, units, config, measure, align, table, f"every {method} unit at ratio {ratio}", progress)
            (table.prune_rho if method == "prune" else table.lowrank_rho)[ratio] = rho
    if cp:
        _cp_probes(proto, units, measure, align, progress, table)
    return table


def _probe(
    proto: onnx.ModelProto,
    units: Sequence[Unit],
    config: Config,
    measure: NodeCosts,
    align: int,
    table: CostTable,
    what: str,
    progress: Callable[[str], None],
) -> dict[str, float]:
    """One cost probe: ``config`` applied and measured; each node's cost as a ratio of its uncompressed cost."""
    progress(f"cost probe: {what}")
    _, costs = measure(apply_config(proto, units, config, align=align).model)
    table.probes += 1
    return {n: costs.get(n, 0.0) / c for n, c in table.base.items() if c > 0}


def _cp_probes(
    proto: onnx.ModelProto,
    units: Sequence[Unit],
    measure: NodeCosts,
    align: int,
    progress: Callable[[str], None],
    table: CostTable,
) -> None:
    """Per ratio, every kxk decomposition in CP form at it: the CP cost of each such layer."""
    levels = {u.id: cp_levels(u, align) for u in units}
    capable = {u.id: with_forms(u, levels[u.id], align) for u in units if levels[u.id]}
    for ratio in sorted({u.ratios[i] for u in capable.values() for i in levels[u.id]}):
        config = {k: u.ratios.index(ratio) for k, u in capable.items() if ratio in (u.ratios[i] for i in levels[k])}
        if not config:
            continue
        what = f"every kxk decomposition in CP form at ratio {ratio}"
        rho = _probe(proto, list(capable.values()), config, measure, align, table, what, progress)
        targets = {capable[k].target for k in config}
        table.cp_rho[ratio] = {n: v for n, v in rho.items() if n in targets}


def _ratios(units: Sequence[Unit], config: Config) -> tuple[dict[str, float], dict[str, float]]:
    """(prune unit id -> ratio, decomposed node -> ratio) of a configuration."""
    prune = {u.id: u.ratios[config.get(u.id, 0)] for u in units if u.method == "prune"}
    lowrank = {u.target: u.ratios[config.get(u.id, 0)] for u in units if u.method == "lowrank"}
    return prune, lowrank


def predict(table: CostTable, units: Sequence[Unit], config: Config) -> float:
    """Predicted whole-model cost of ``config``."""
    prune, lowrank = _ratios(units, config)
    total = table.total
    for node, base in table.base.items():
        total += table.node_cost(node, prune, lowrank.get(node, 0.0)) - base
    return total


@dataclass(frozen=True)
class Sensitivity:
    """Output error (relative squared error vs the original, held-out samples) of each unit at each level."""

    error: dict[str, tuple[float, ...]]
    evaluations: int


def output_error(
    proto: onnx.ModelProto, samples: Sequence[Mapping[str, np.ndarray]], want: Mapping[str, np.ndarray]
) -> float:
    """Mean over outputs of ``sum (y - y_ref)^2 / sum y_ref^2`` on ``samples``."""
    got = run_tensors(proto, samples, list(want))
    errors = []
    for name, ref in want.items():
        den = float(np.sum(np.square(ref, dtype=np.float64)))
        errors.append(float(np.sum(np.square(got[name].astype(np.float64) - ref))) / max(den, 1e-30))
    return float(np.mean(errors))


def sensitivity(
    proto: onnx.ModelProto,
    units: Sequence[Unit],
    ref: Reference,
    samples: Sequence[Mapping[str, np.ndarray]],
    *,
    align: int,
    criterion: Criterion,
    progress: Callable[[str], None],
    fit_samples: int = 32,
    only: Mapping[str, Sequence[int]] | None = None,
) -> Sensitivity:
    """Each unit alone at each level, locally refit on ``fit_samples`` samples; the error is made
    non-decreasing in the level (a deeper cut that measures better is noise, not a gain).

    ``only``: measure just these levels per unit id (the others are NaN, the errors left as measured).
    """
    outputs = [o.name for o in proto.graph.output]
    want = run_tensors(proto, samples, outputs)
    ref = Reference(proto, ref.fit[:fit_samples], ref.held[:fit_samples])
    table: dict[str, tuple[float, ...]] = {}
    count = 0
    for index, unit in enumerate(units):
        measured = [lv for lv in range(1, unit.levels) if only is None or lv in only.get(unit.id, ())]
        # Every unit: at 224x224 one takes minutes (each level refits and runs the whole model).
        progress(f"sensitivity: unit {index + 1}/{len(units)} ({unit.id}, {len(measured)} levels)")
        errors = [0.0]
        for level in range(1, unit.levels):
            if only is not None and level not in only.get(unit.id, ()):
                errors.append(float("nan"))
                continue
            applied: Applied = apply_config(
                proto,
                units,
                {unit.id: level},
                align=align,
                criterion=criterion,
                samples=ref.fit[:32],
                ref=ref,
                local_refit=True,
            )
            error = output_error(applied.model.to_proto(check=False), samples, want)
            errors.append(error if only is not None else max(errors[-1], error))
            count += 1
        table[unit.id] = tuple(errors)
    return Sensitivity(table, count)


def cp_candidates(units: Sequence[Unit], table: CostTable, align: int) -> dict[str, tuple[int, ...]]:
    """Per decomposition unit, the levels whose CP form Vela measured cheaper than Tucker-2 for that layer."""
    found: dict[str, tuple[int, ...]] = {}
    for unit in units:
        levels = tuple(
            i
            for i in cp_levels(unit, align)
            if table.cp_rho.get(unit.ratios[i], {}).get(unit.target, math.inf)
            < table.lowrank_rho.get(unit.ratios[i], {}).get(unit.target, 1.0)
        )
        if levels:
            found[unit.id] = levels
    return found


def choose_forms(
    units: Sequence[Unit], table: CostTable, sens: Sensitivity, cp_sens: Sensitivity, align: int
) -> tuple[list[Unit], CostTable, Sensitivity]:
    """Units, costs and errors with each level of a kxk decomposition in the form that is the better step.

    A level takes CP where its CP form saves more cycles per unit of output error than its Tucker-2
    form (the greedy search's own criterion, from nothing compressed): faster alone is not enough,
    since CP fits a kernel less closely at equal parameters. Inputs are not modified.
    """
    chosen: list[Unit] = []
    lowrank_rho = {r: dict(v) for r, v in table.lowrank_rho.items()}
    errors = dict(sens.error)
    for unit in units:
        measured = cp_sens.error.get(unit.id)
        if measured is None:
            chosen.append(unit)
            continue
        base = table.base.get(unit.target, 0.0)
        picks: list[int] = []
        for level, cp_error in enumerate(measured):
            if level == 0 or math.isnan(cp_error):
                continue
            ratio = unit.ratios[level]
            saved_t = base * (1.0 - table.lowrank_rho.get(ratio, {}).get(unit.target, 1.0))
            saved_c = base * (1.0 - table.cp_rho[ratio][unit.target])
            tucker_error = sens.error[unit.id][level]
            if saved_c > 0 and cp_error * max(saved_t, 0.0) < tucker_error * saved_c:
                picks.append(level)
                lowrank_rho.setdefault(ratio, {})[unit.target] = table.cp_rho[ratio][unit.target]
        if picks:
            pairs = enumerate(zip(sens.error[unit.id], measured, strict=True))
            mixed = np.asarray([cp if i in picks else t for i, (t, cp) in pairs])
            errors[unit.id] = tuple(float(e) for e in np.maximum.accumulate(mixed))
        chosen.append(with_forms(unit, picks, align))
    new_table = CostTable(table.total, table.base, table.prune_rho, lowrank_rho, table.cp_rho, table.sides,
                          table.probes)  # fmt: skip
    return chosen, new_table, Sensitivity(errors, sens.evaluations + cp_sens.evaluations)


def with_cp_costs(units: Sequence[Unit], table: CostTable) -> CostTable:
    """``table`` with the cost ratio of every CP-form level taken from its CP probe (a second metric's table)."""
    lowrank_rho = {r: dict(v) for r, v in table.lowrank_rho.items()}
    for unit in units:
        for level, form in enumerate(unit.forms):
            ratio = unit.ratios[level]
            if form == "cp" and unit.target in table.cp_rho.get(ratio, {}):
                lowrank_rho.setdefault(ratio, {})[unit.target] = table.cp_rho[ratio][unit.target]
    return CostTable(table.total, table.base, table.prune_rho, lowrank_rho, table.cp_rho, table.sides, table.probes)


def greedy(
    units: Sequence[Unit],
    table: CostTable,
    sens: Sensitivity,
    goal: float,
    start: Config | None = None,
    allowed: Sequence[Method] = ("prune", "lowrank"),
    also: tuple[CostTable, float] | None = None,
) -> dict[str, int]:
    """Raise levels, cheapest accuracy per saved cost first, until the predicted cost is at most ``goal``.

    A step may skip levels (a unit's next level can save nothing on the NPU while the one after does).
    Stops early when no step saves anything: the result is then the closest the units can get.
    ``also``: a second budget (another metric's table and its goal) that must hold too; a step's saving
    is then the sum over the unmet budgets of what it saves relative to what each still lacks.
    """
    config = {u.id: 0 for u in units}
    config.update(start or {})
    prune, lowrank = _ratios(units, config)
    budgets = [(table, goal)] + ([also] if also is not None else [])

    def local(unit: Unit) -> list[float]:
        return [sum(t.node_cost(n, prune, lowrank.get(n, 0.0)) for n in unit.nodes) for t, _ in budgets]

    def set_level(unit: Unit, level: int) -> None:
        if unit.method == "prune":
            prune[unit.id] = unit.ratios[level]
        else:
            lowrank[unit.target] = unit.ratios[level]

    current = [predict(t, units, config) for t, _ in budgets]

    def unmet() -> list[int]:
        return [k for k, (_, g) in enumerate(budgets) if current[k] > g]

    while unmet():
        lacking = {k: current[k] - budgets[k][1] for k in unmet()}
        best: tuple[float, Unit, int, list[float]] | None = None
        for unit in units:
            if unit.method not in allowed:
                continue
            level = config[unit.id]
            now = local(unit)
            for new in range(level + 1, unit.levels):
                set_level(unit, new)
                saved = [a - b for a, b in zip(now, local(unit), strict=True)]
                set_level(unit, level)
                gain = sum(saved[k] / lack for k, lack in lacking.items())
                if gain <= 0.0:
                    continue
                score = (sens.error[unit.id][new] - sens.error[unit.id][level]) / gain
                if best is None or score < best[0]:
                    best = (score, unit, new, saved)
        if best is None:
            break
        _, chosen, new, saved = best
        config[chosen.id] = new
        set_level(chosen, new)
        current = [c - s_ for c, s_ in zip(current, saved, strict=True)]
    # The last steps may overshoot: give back levels, most accuracy regained first, while every goal holds.
    improved = not unmet()
    while improved:
        improved = False
        options: list[tuple[float, Unit, int, list[float]]] = []
        for unit in units:
            level = config[unit.id]
            if level == 0 or (start and level <= start.get(unit.id, 0)):
                continue
            now = local(unit)
            set_level(unit, level - 1)
            extra = [b - a for a, b in zip(now, local(unit), strict=True)]
            set_level(unit, level)
            if all(current[k] + extra[k] <= g for k, (_, g) in enumerate(budgets)):
                gain = sens.error[unit.id][level] - sens.error[unit.id][level - 1]
                options.append((gain, unit, level - 1, extra))
        if options:
            _, unit, level, extra = max(options, key=lambda o: o[0])
            config[unit.id] = level
            set_level(unit, level)
            current = [c + e for c, e in zip(current, extra, strict=True)]
            improved = True
    return config
