"""Cut over-budget chains of sliding-window ops into spatial tiles where Vela says it pays off.

Vela cascades a chain of ops in height stripes held in SRAM, but a cascade
stops at a residual Add, at a tensor with several readers and wherever its
stripe buffers do not fit, so the big early feature maps of a CNN go to DRAM
(in ``Dedicated_Sram`` mode the arena is in DRAM and the SRAM is a cache).
Patch-based inference (MCUNetV2) runs such a region tile by tile instead:
each tile's intermediates are small enough to stay on chip and only the
region's output is written whole. Whether that wins on an Ethos-U depends on
halo recompute, per-op overhead, weights read once per tile and what Vela
then cascades by itself, so every plan is costed with the Vela oracle and
kept only when the estimated latency drops (the pass backs off otherwise).

The rewrite itself lives in :mod:`nirc.passes._tiling`; the memory model that
says which steps exceed the arena in :mod:`nirc.memory`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import onnx
import onnx_graphsurgeon as gs
from nirc.passes._tiling import Region, TilePlan, TileSpec, apply_plan, shape_of, why_not_tileable
from nirc.passes._tiling_window import CostWindow, find_window

from nirc import memory, progress
from nirc.errors import NircError, TargetError
from nirc.ir import IRModel
from nirc.pass_base import Pass, PassContext
from nirc.target import Target

logger = logging.getLogger(__name__)

_WINDOW_OPS = ("Conv", "MaxPool", "AveragePool")


class CostLike(Protocol):
    """What the pass reads from an oracle answer (:class:`nirc.cost.Cost` satisfies it)."""

    @property
    def cycles(self) -> int: ...

    @property
    def sram_used_bytes(self) -> int: ...

    @property
    def dram_fm_read_bytes(self) -> int: ...


CostFn = Callable[[onnx.ModelProto, Target], CostLike]
"""Cost of a whole model on a target."""


def oracle_cost(proto: onnx.ModelProto, target: Target) -> CostLike:
    """Vela's estimate through the shared, cached oracle."""
    from nirc.cost import estimate

    return estimate(proto, target, label="tile-activations")


@dataclass(frozen=True)
class Candidate:
    """One tiling to try: the region is the nodes after cut ``start`` through cut ``end`` (IR positions)."""

    start: int
    end: int
    spec: TileSpec
    stage: bool = False

    def label(self, names: Sequence[str]) -> str:
        staged = " staged" if self.stage else ""
        return f"{names[self.start + 1]}..{names[self.end]} {self.spec}{staged}"


@dataclass(frozen=True)
class TileDecision:
    """One line of the decision log: a region, the plan chosen for it and what the oracle said."""

    first: str
    last: str
    nodes: int
    tiles: str
    staged: bool
    halo: float
    peak_before: int
    peak_after: int
    cycles_before: int | None
    cycles_after: int | None
    dram_fm_read_before: int | None
    dram_fm_read_after: int | None
    trials: int
    accepted: bool
    reason: str
    int8: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        extra = {"int8": self.int8} if self.int8 is not None else {}
        return {
            "region": [self.first, self.last],
            "nodes": self.nodes,
            "tiles": self.tiles,
            "staged": self.staged,
            "halo_overhead": round(self.halo, 4),
            "peak_bytes": [self.peak_before, self.peak_after],
            "cycles": [self.cycles_before, self.cycles_after],
            "dram_fm_read_bytes": [self.dram_fm_read_before, self.dram_fm_read_after],
            "trials": self.trials,
            "accepted": self.accepted,
            "reason": self.reason,
            **extra,
        }


def vela_profile(model: IRModel) -> memory.MemoryProfile:
    """The memory profile of the order Vela will run ``model`` in."""
    return memory.profile(model, memory.vela_order(model))


def single_tensor_cuts(model: IRModel) -> dict[int, gs.Tensor]:
    """IR positions ``k`` after which exactly one activation tensor is alive (-1: before the first node).

    A region between two such cuts has one input and one output, so it can be
    tiled without touching anything else.
    """
    nodes = list(model.graph.nodes)
    position = {id(n): i for i, n in enumerate(nodes)}
    last_read: dict[str, int] = {}
    tensors: dict[str, gs.Tensor] = {}
    born: dict[str, int] = {}
    outputs = {t.name for t in model.graph.outputs}
    for tensor in model.graph.inputs:
        born[tensor.name], tensors[tensor.name] = -1, tensor
    for node in nodes:
        for out in node.outputs:
            born[out.name], tensors[out.name] = position[id(node)], out
        for inp in node.inputs:
            if isinstance(inp, gs.Constant) or not inp.name or inp.name not in born:
                continue
            last_read[inp.name] = max(last_read.get(inp.name, -1), position[id(node)])
    end = len(nodes)
    delta_add: dict[int, list[str]] = {}
    for name, b in born.items():
        dies = end if name in outputs else last_read.get(name, b)
        if dies > b:
            delta_add.setdefault(b, []).append(name)
    cuts: dict[int, gs.Tensor] = {}
    alive: dict[str, int] = {}
    for k in range(-1, end):
        for name in delta_add.get(k, []):
            alive[name] = end if name in outputs else last_read[name]
        for name in [n for n, d in alive.items() if d <= k]:
            del alive[name]
        if len(alive) == 1:
            (name,) = alive
            if len(shape_of(tensors[name])) == 4:
                cuts[k] = tensors[name]
    return cuts


def _region_nodes(model: IRModel, start: int, end: int) -> list[gs.Node]:
    return list(model.graph.nodes[start + 1 : end + 1])


def tileable_regions(model: IRModel, max_nodes: int) -> list[tuple[int, int]]:
    """(start cut, end cut) pairs whose nodes are all tileable and include a sliding-window op."""
    cuts = sorted(single_tensor_cuts(model))
    nodes = list(model.graph.nodes)
    ok = [why_not_tileable(n) is None for n in nodes]
    pairs = []
    for i, s in enumerate(cuts):
        for e in cuts[i + 1 :]:
            if e - s > max_nodes or not all(ok[s + 1 : e + 1]):
                break
            if any(n.op in _WINDOW_OPS for n in nodes[s + 1 : e + 1]):
                pairs.append((s, e))
    return pairs


def apply_candidate(model: IRModel, cand: Candidate) -> float:
    """Tile ``model`` in place as ``cand`` says; returns the plan's halo overhead (0.1 = 10% more outputs)."""
    nodes = _region_nodes(model, cand.start, cand.end)
    region = Region.of(nodes, {t.name for t in model.graph.outputs})
    plan = TilePlan.build(region, cand.spec)
    halo = float(plan.halo_overhead())
    graph_inputs = {t.name for t in model.graph.inputs}
    staged = [t.name for t in region.inputs if t.name in graph_inputs] if cand.stage else []
    apply_plan(model.graph, plan, stage=staged)
    return halo


def trial(model: IRModel, cand: Candidate) -> tuple[IRModel, float]:
    """A tiled copy of ``model`` and the plan's halo overhead (``model`` is not changed)."""
    copy = model.copy()
    return copy, apply_candidate(copy, cand)


def _specs(height: int, width: int, max_tiles: int, directions: Sequence[str]) -> list[TileSpec]:
    """Tile grids worth trying for an output of ``height`` x ``width``, fewest tiles first."""
    specs: list[TileSpec] = []
    counts = [n for n in (2, 3, 4, 6, 8, 12, 16) if n <= max_tiles]
    if "h" in directions:
        specs += [TileSpec(n, 1) for n in counts if n <= height]
    if "w" in directions:
        specs += [TileSpec(1, n) for n in counts if n <= width]
    if "hw" in directions:
        specs += [TileSpec(r, c) for r, c in ((2, 2), (4, 2), (2, 4), (3, 3), (4, 4)) if r * c <= max_tiles]
        specs = [s for s in specs if s.rows <= height and s.cols <= width]
    return sorted(specs, key=lambda s: (s.count, s.cols))


FIT_MARGIN = 0.95
"""Share of the platform memory above which a plan may not grow the DRAM footprint."""


def _endangers_fit(baseline: CostLike, cost: CostLike, target: Target) -> str | None:
    """Why a faster plan is refused because it could make the model stop fitting its platform.

    Tiles can re-stream weights and grow the arena; a model that fitted must keep
    fitting (measured: VGG19-224 went from 31.7 to 32.9 MiB, past Corstone-300's 32 MiB).
    The DRAM footprint Vela reports (arena and weights) stands for the platform need;
    within ``FIT_MARGIN`` of the limit any growth is refused.
    """
    limit = target.platform_memory_bytes
    before = getattr(baseline, "dram_used_bytes", 0)
    after = getattr(cost, "dram_used_bytes", 0)
    if limit is None or after <= before or after <= FIT_MARGIN * limit:
        return None
    return f"plan grows the DRAM footprint {before} -> {after} B, near the {limit} B platform limit: backing off"


@dataclass
class _Judge:
    """Costs trials with one oracle, counting calls; a trial the oracle cannot cost is None."""

    cost_fn: CostFn
    target: Target
    calls: int = 0
    window_calls: int = 0

    def cost(self, model: IRModel, window: CostWindow | None = None) -> CostLike | None:
        """The cost of ``model``, or of its ``window`` only (see :mod:`nirc.passes._tiling_window`)."""
        progress.tick("trials")
        try:
            if window is not None:
                self.window_calls += 1
                return self.cost_fn(window.cut(model), self.target)
            self.calls += 1
            return self.cost_fn(model.to_proto(check=False), self.target)
        except (NircError, KeyError) as exc:
            logger.info("tile-activations: a trial cannot be costed (%s)", exc)
            return None


@dataclass(frozen=True)
class TileActivationsPass(Pass):
    """Tile chains of convs/pools whose live activations exceed the arena, where Vela's estimate drops.

    Rewrite (see :mod:`nirc.passes._tiling`): a region between two points of
    the graph where a single tensor is alive -- any mix of convolutions
    (strided, dilated, depthwise), pooling, elementwise ops including residual
    Adds and channel Concats, with tensors read several times -- becomes one
    copy per tile. Each copy reads a Slice of the region input with the halo
    its windows need and computes exactly its part of every tensor, with the
    original zero padding only where the tile touches the image border; the
    tile outputs are concatenated back into the region output.

    Why it is exact: each output position of every op is computed from the
    same input positions, weights and padding values as without tiling
    (interior tile edges read real neighbouring rows and columns, never
    padding), so only the float summation order may change.

    Search (latency mode, the default): the memory model (:mod:`nirc.memory`,
    in the order Vela runs the graph) finds the steps whose live bytes exceed
    the arena (``target.arena_cache_bytes``). Candidate regions start at one of
    the two single-tensor cuts before the first such span and end inside it or
    at one of the three cuts after it; a third of ``max_trials`` costs them
    tiled 2x1 with Vela, the two cheapest then get every tile grid up to
    ``max_tiles`` along height, width or both, with and without staging the
    graph input through one on-chip copy (an identity lookup table, see
    ``_rewrite.identity_copy``: the tiles slice the copy instead of re-reading DRAM). The cheapest plan is kept
    only if Vela's estimated cycles drop, otherwise the model is left
    unchanged; then the next span, for at most ``max_rounds`` rounds.
    With ``window`` (the default) the trials are ranked by Vela's cost of the
    stretch of the model around the candidate regions only
    (:mod:`nirc.passes._tiling_window`), and the winner alone is compiled
    whole to be compared with the model: the same Vela latency (within 0.3%)
    on the benchmark models for 2.5-9x less time (``benchmarks/compile_time.py``).
    Each trial is one whole-model Vela compilation, so the defaults (12 trials,
    1 round) bound the compile time: measured cold, MobileNetV2-224 4.904 ->
    4.078 ms in 16 s (40 trials x 3 rounds: 4.024 ms in 76 s); raise them with
    ``--pass-option tile-activations.max_trials=40`` when compile time is cheap.

    Budget mode (``arena_size`` set): plans are chosen to bring the memory
    model's peak under ``arena_size`` bytes, cheapest by Vela when a target is
    given. If an op that cannot be tiled, or the best plan found, still needs
    more, a :class:`~nirc.errors.TargetError` names the op, the tensors alive
    there and the excess.
    """

    name = "tile-activations"
    exact = True
    accuracy_guarded = True
    judges_accuracy = True

    arena_size: int | None = None
    max_tiles: int = 8
    directions: tuple[str, ...] = ("h", "w", "hw")
    max_region_nodes: int = 40
    max_trials: int = 12
    max_rounds: int = 1
    stage: bool = True
    window: bool = True
    cost_fn: CostFn | None = field(default=None, compare=False, repr=False)
    decisions: list[TileDecision] = field(default_factory=list, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.arena_size is not None and self.arena_size <= 0:
            raise ValueError(f"tile-activations: arena_size must be positive, got {self.arena_size}")
        if self.max_tiles < 2:
            raise ValueError(f"tile-activations: max_tiles must be at least 2, got {self.max_tiles}")
        unknown = set(self.directions) - {"h", "w", "hw"}
        if unknown or not self.directions:
            raise ValueError(f"tile-activations: directions must be among h, w, hw, got {self.directions}")

    def run(self, model: IRModel, ctx: PassContext) -> bool:
        self.decisions.clear()
        if not any(n.op in _WINDOW_OPS for n in model.graph.nodes):
            return False
        target = ctx.target
        budget = self.arena_size if self.arena_size is not None else (target.arena_cache_bytes if target else None)
        if budget is None:
            logger.info("tile-activations: no arena size (no target, no arena_size): nothing to do")
            return False
        judge = _Judge(self.cost_fn or oracle_cost, target) if target is not None else None
        if self.arena_size is not None:
            changed = self._fit(model, budget, judge, ctx)
        else:
            assert judge is not None
            changed = self._speed_up(model, budget, judge, ctx)
        if judge is not None:
            ctx.count("oracle_calls", judge.calls)
            if judge.window_calls:
                ctx.count("oracle_window_calls", judge.window_calls)
        for decision in self.decisions:
            ctx.count("tiled_regions" if decision.accepted else "rejected_regions")
            ctx.decide(decision.to_json())
        return changed

    # -- latency mode -----------------------------------------------------------
    def _speed_up(self, model: IRModel, budget: int, judge: _Judge, ctx: PassContext) -> bool:
        changed = False
        done_spans: set[str] = set()
        for _ in range(self.max_rounds):
            prof = vela_profile(model)
            names = [n.name for n in model.graph.nodes]
            over = _over_positions(model, prof, budget)
            over = [p for p in over if names[p] not in done_spans]
            if not over:
                break
            span = _first_span(model, over)
            baseline = judge.cost(model)
            if baseline is None:
                logger.warning("tile-activations: the model itself cannot be costed; leaving it unchanged")
                ctx.count("oracle_failed")
                break
            best = self._search(model, span, judge)
            if best is None:
                done_spans.update(names[p] for p in range(span[0], span[1] + 1))
                self._log(model, None, prof.peak, prof.peak, baseline, None, judge, False, "no region can be tiled")
                continue
            cand, cost, halo, peak_after = best
            ok = cost.cycles < baseline.cycles
            reason = (
                f"cycles {baseline.cycles} -> {cost.cycles}"
                if ok
                else f"best plan {cand.label(names)} costs {cost.cycles} >= {baseline.cycles} cycles: backing off"
            )
            if ok and (why := _endangers_fit(baseline, cost, judge.target)):
                ok, reason = False, why
            self._log(model, cand, prof.peak, peak_after, baseline, cost, judge, ok, reason, halo)
            if ok:
                before = {n.name for n in model.graph.nodes}
                previous = model.to_proto(check=False) if ctx.accuracy is not None else None
                apply_candidate(model, cand)
                if previous is not None and not self._accurate(model, previous, ctx):
                    ok = False
            if ok:
                done_spans.update(n.name for n in model.graph.nodes if n.name not in before)  # the tiles
                changed = True
            else:
                done_spans.update(names[p] for p in range(span[0], span[1] + 1))
        return changed

    def _accurate(self, model: IRModel, previous: onnx.ModelProto, ctx: PassContext) -> bool:
        """Keep the region just tiled only if int8 SNR stays within the guard's tolerance (else restore).

        Tiles get their own activation ranges at the Concat that joins them, so a float-exact tiling
        can move int8 error; one measurement per accepted region (a handful per model). The budget
        mode (``arena_size``) is a requirement and is not guarded.
        """
        guard = ctx.accuracy
        assert guard is not None
        verdict = guard.judge(previous, model.to_proto(check=False))
        last = self.decisions[-1]
        if verdict.ok:
            self.decisions[-1] = replace(last, int8=verdict.to_json())
            return True
        model.graph = IRModel.from_proto(previous, model.label).graph
        why = f"refused by the accuracy guard: int8 SNR drops {verdict.drop:.2f} dB (> {verdict.max_drop:.2f} dB)"
        self.decisions[-1] = replace(last, accepted=False, reason=f"{why}; {last.reason}", int8=verdict.to_json())
        ctx.count("accuracy_refused")
        return False

    def _search(
        self, model: IRModel, span: tuple[int, int], judge: _Judge
    ) -> tuple[Candidate, CostLike, float, int] | None:
        """Cheapest (candidate, cost, halo, peak) for regions covering part of ``span``, by Vela cycles."""
        lo, hi = span
        regions = [(s, e) for s, e in tileable_regions(model, self.max_region_nodes) if s < hi and e >= lo]
        if not regions:
            return None
        cuts = sorted({s for s, _ in regions} | {e for _, e in regions})
        starts = sorted({s for s, _ in regions if s < lo})[-2:] or sorted({s for s, _ in regions})[:1]
        ends_after = [c for c in cuts if c >= hi][:3]
        regions = [(s, e) for s, e in regions if s in starts and (e < hi or e in ends_after)]
        regions.sort(key=lambda r: (r[1] - r[0], r))
        window = self._window(model, regions[: max(self.max_trials // 3, 1)])
        best = self._rank(model, regions, judge, window)
        if best is None or window is None:
            return best
        # The window ranked the plans; the accept rule compares whole models.
        cand, _, halo, peak = best
        whole = judge.cost(trial(model, cand)[0])
        return (cand, whole, halo, peak) if whole is not None else None

    def _window(self, model: IRModel, regions: Sequence[tuple[int, int]]) -> CostWindow | None:
        """The stretch the candidates can change, if cutting it out works on the untiled model."""
        if not self.window:
            return None
        window = find_window(model, single_tensor_cuts(model), regions)
        if window is None:
            return None
        try:
            window.cut(model)
        except (NircError, KeyError) as exc:
            logger.info("tile-activations: costing whole models (window cannot be cut: %s)", exc)
            return None
        return window

    def _rank(
        self, model: IRModel, regions: Sequence[tuple[int, int]], judge: _Judge, window: CostWindow | None
    ) -> tuple[Candidate, CostLike, float, int] | None:
        """Regions tiled 2x1 first, then every grid for the two cheapest; the cheapest plan of all."""
        budget = self.max_trials
        scored: list[tuple[int, tuple[int, int]]] = []
        results: list[tuple[Candidate, CostLike, float, int]] = []
        first_pass = max(budget // 3, 1)
        for s, e in regions[:first_pass]:
            height, width = shape_of(model.graph.nodes[e].outputs[0])[2:]
            spec = TileSpec(2, 1) if height >= 2 else TileSpec(1, 2)
            got = self._try(model, Candidate(s, e, spec), judge, window)
            if got is not None:
                results.append(got)
                scored.append((got[1].cycles, (s, e)))
        budget -= min(len(regions), first_pass)
        scored.sort()
        for _, (s, e) in scored[:2]:
            height, width = shape_of(model.graph.nodes[e].outputs[0])[2:]
            staged = [False, True] if self.stage and self._stageable(model, s, e) else [False]
            for spec in _specs(height, width, self.max_tiles, self.directions):
                for stage in staged:
                    if budget <= 0 or (spec == TileSpec(2, 1) and not stage):
                        continue
                    budget -= 1
                    got = self._try(model, Candidate(s, e, spec, stage), judge, window)
                    if got is not None:
                        results.append(got)
        return min(results, key=lambda r: (r[1].cycles, r[0].spec.count)) if results else None

    def _stageable(self, model: IRModel, start: int, end: int) -> bool:
        region = Region.of(_region_nodes(model, start, end), set())
        graph_inputs = {t.name for t in model.graph.inputs}
        return any(t.name in graph_inputs for t in region.inputs)

    def _try(
        self, model: IRModel, cand: Candidate, judge: _Judge, window: CostWindow | None = None
    ) -> tuple[Candidate, CostLike, float, int] | None:
        try:
            tiled, halo = trial(model, cand)
        except (ValueError, NircError) as exc:
            logger.info("tile-activations: %s cannot be built (%s)", cand, exc)
            return None
        cost = judge.cost(tiled, window)
        if cost is None:
            return None
        return cand, cost, halo, vela_profile(tiled).peak

    # -- budget mode ------------------------------------------------------------
    def _fit(self, model: IRModel, budget: int, judge: _Judge | None, ctx: PassContext) -> bool:
        _check_untileable(model, budget)
        changed = False
        for _ in range(max(self.max_rounds, 8)):
            prof = vela_profile(model)
            names = [n.name for n in model.graph.nodes]
            if not prof.over(budget):
                return changed
            over = _over_positions(model, prof, budget)
            if not over:
                raise _no_plan(model, prof, budget, "no tileable op is alive there")
            span = _first_span(model, over)
            best = self._fit_span(model, span, budget, judge)
            if best is None:
                raise _no_plan(model, prof, budget, "no tileable region covers it")
            cand, peak_after, span_peak, cost, halo = best
            span_before = max(prof.live[prof.order.index(names[p])] for p in range(span[0], span[1] + 1))
            if span_peak >= span_before:
                raise _no_plan(model, prof, budget, f"the best tiling found ({cand.spec}) leaves {span_peak} B there")
            self._log(model, cand, prof.peak, peak_after, None, cost, judge, True, f"fits {budget} B arena", halo)
            apply_candidate(model, cand)
            changed = True
        prof = vela_profile(model)
        if prof.over(budget):
            raise _no_plan(model, prof, budget, f"still over after {max(self.max_rounds, 8)} rounds of tiling")
        return changed

    def _fit_span(
        self, model: IRModel, span: tuple[int, int], budget: int, judge: _Judge | None
    ) -> tuple[Candidate, int, int, CostLike | None, float] | None:
        """The plan that best fixes ``span``: fits if any does (cheapest by Vela, else least halo)."""
        lo = span[0]
        regions = [(s, e) for s, e in tileable_regions(model, self.max_region_nodes) if s < lo + 1 and e >= lo]
        fitting: list[tuple[Candidate, int, int, float, IRModel]] = []
        best_partial: tuple[Candidate, int, int, float, IRModel] | None = None
        for s, e in sorted(regions, key=lambda r: (r[1] - r[0], -r[0])):
            height, width = shape_of(model.graph.nodes[e].outputs[0])[2:]
            for spec in _specs(height, width, self.max_tiles, self.directions):
                cand = Candidate(s, e, spec)
                try:
                    tiled, halo = trial(model, cand)
                except (ValueError, NircError):
                    continue
                prof = vela_profile(tiled)
                entry = (cand, prof.peak, _span_peak(prof, model, span), halo, tiled)
                if entry[2] <= budget:
                    fitting.append(entry)
                    break  # more tiles only add overhead for this region
                if best_partial is None or entry[2] < best_partial[2]:
                    best_partial = entry
            if len(fitting) >= 4:
                break
        if fitting:
            if judge is not None:
                costed = [(judge.cost(f[4]), f) for f in fitting]
                good = [(c, f) for c, f in costed if c is not None]
                if good:
                    cost, f = min(good, key=lambda cf: cf[0].cycles)
                    return f[0], f[1], f[2], cost, f[3]
            f = min(fitting, key=lambda f: (f[3], f[0].spec.count))
            return f[0], f[1], f[2], None, f[3]
        if best_partial is not None:
            return best_partial[0], best_partial[1], best_partial[2], None, best_partial[3]
        return None

    def _log(
        self,
        model: IRModel,
        cand: Candidate | None,
        peak_before: int,
        peak_after: int,
        before: CostLike | None,
        after: CostLike | None,
        judge: _Judge | None,
        accepted: bool,
        reason: str,
        halo: float = 0.0,
    ) -> None:
        names = [n.name for n in model.graph.nodes]
        first = names[cand.start + 1] if cand else ""
        last = names[cand.end] if cand else ""
        self.decisions.append(
            TileDecision(
                first=first,
                last=last,
                nodes=(cand.end - cand.start) if cand else 0,
                tiles=str(cand.spec) if cand else "",
                staged=bool(cand and cand.stage),
                halo=halo,
                peak_before=peak_before,
                peak_after=peak_after,
                cycles_before=before.cycles if before else None,
                cycles_after=after.cycles if after else None,
                dram_fm_read_before=before.dram_fm_read_bytes if before else None,
                dram_fm_read_after=after.dram_fm_read_bytes if after else None,
                trials=judge.calls + judge.window_calls if judge else 0,
                accepted=accepted,
                reason=reason,
            )
        )


def _over_positions(model: IRModel, prof: memory.MemoryProfile, budget: int) -> list[int]:
    """IR positions of tileable nodes at whose step (in Vela's order) more than ``budget`` bytes are live."""
    nodes = list(model.graph.nodes)
    pos = {n.name: i for i, n in enumerate(nodes)}
    over = sorted(pos[prof.order[s]] for s in prof.over(budget))
    return [p for p in over if why_not_tileable(nodes[p]) is None]


def _first_span(model: IRModel, over: Sequence[int]) -> tuple[int, int]:
    """The first run of consecutive over-budget IR positions (gaps of one step are bridged)."""
    lo = hi = over[0]
    for p in over[1:]:
        if p > hi + 2:
            break
        hi = p
    return lo, hi


def _span_peak(prof: memory.MemoryProfile, original: IRModel, span: tuple[int, int]) -> int:
    """Peak live bytes of a tiled model (``prof``) over the steps up to the end of ``span`` of ``original``."""
    old_names = {n.name for n in original.graph.nodes[span[0] : span[1] + 1]}
    after = {n.name for n in original.graph.nodes[span[1] + 1 :]}
    steps = [i for i, name in enumerate(prof.order) if name not in after or name in old_names]
    return max((prof.live[i] for i in steps), default=0)


def _check_untileable(model: IRModel, budget: int) -> None:
    """Fail early: an op that must see whole tensors and whose own inputs and outputs exceed the budget."""
    prof = vela_profile(model)
    owner = {t: b for b in prof.buffers for t in b.tensors}
    for node in model.graph.nodes:
        reason = why_not_tileable(node)
        if reason is None:
            continue
        touched = {owner[t.name].name: owner[t.name] for t in [*node.inputs, *node.outputs] if t.name in owner}
        need = sum(b.size for b in touched.values())
        if need > budget:
            listed = ", ".join(f"'{b.name}' {b.size} B" for b in sorted(touched.values(), key=lambda b: -b.size))
            raise TargetError(
                f"tile-activations: op '{node.name}' ({node.op}) cannot be tiled ({reason}) and needs "
                f"{need} B for its own tensors ({listed}): {need - budget} B over the {budget} B arena"
            )


def _no_plan(model: IRModel, prof: memory.MemoryProfile, budget: int, why: str) -> TargetError:
    step = max(prof.over(budget), key=lambda s: prof.live[s])
    node = next(n for n in model.graph.nodes if n.name == prof.order[step])
    alive = prof.alive_at(step)[:3]
    listed = ", ".join(f"'{b.name}' {b.size} B" for b in alive)
    return TargetError(
        f"tile-activations: cannot fit the {budget} B arena: at op '{node.name}' ({node.op}) "
        f"{prof.live[step]} B are live ({listed}); {why}: {prof.live[step] - budget} B over"
    )
