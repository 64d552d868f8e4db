"""Rewrite blocks into equivalents the NPU runs faster, decided by Vela's estimate, never by FLOPs.

A library of rules (the ``nirc.passes.block_rules`` package), each a pattern, a check that says
why it does not apply, and candidate replacements. For every match the pass
costs the block as it is and every candidate with the cost oracle
(:mod:`nirc.cost`: emit int8 TFLite, compile with Vela, cached) on the real
shapes, and keeps the cheapest candidate only when it beats the block. All
decisions -- block, candidates, cycles of each, choice and reason -- are kept
in ``decisions`` and in the pass context's decision log.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from nirc.errors import NircError
from nirc.ir import IRModel
from nirc.pass_base import Pass, PassContext
from nirc.target import Target
from nirc.verify import run_tensors

from ._rewrite import Namer, has_any_op

if TYPE_CHECKING:
    from nirc.accuracy import AccuracyGuard, Verdict
from .block_rules.base import Build, Candidate, InputLayout, Match, Rule, RuleEnv, fused_activation
from .block_rules.grouped import GroupedConvRule
from .block_rules.large_kernel import LargeKernelRule
from .block_rules.lossy import FactorizeKernelRule, FuseInvertedBottleneckRule, UnfuseInvertedBottleneckRule
from .block_rules.merge_convs import MergeConvsRule
from .block_rules.reparam import ReparamRule
from .block_rules.stem import STEM_MODES, StemMode, StemRule

logger = logging.getLogger(__name__)

EXACT_RULES: tuple[str, ...] = ("reparam", "large-kernel", "merge-convs", "grouped", "stem")
LOSSY_RULES: tuple[str, ...] = ("fuse-inverted-bottleneck", "unfuse-inverted-bottleneck", "factorize-kernel")
_MAX_ROUNDS = 10_000
AUTO_MODEL_SCOPE_MAX = 12
"""With at most this many matched blocks, ``scope="auto"`` costs every candidate on the whole model: Vela
schedules a block differently inside the network (weights kept in SRAM, cascading) than alone."""
_SYNTHETIC = "synthetic N(0,1) inputs, seed 0 (no calibration data in the pass context)"


class CostLike(Protocol):
    """What the pass reads from an oracle answer (:class:`nirc.cost.Cost` has it; ``weight_bytes`` and
    ``cpu_ops`` are read with ``getattr`` and default to 0, so a test oracle may give cycles only)."""

    @property
    def cycles(self) -> int: ...


CostFn = Callable[[onnx.ModelProto, Target], CostLike]
"""Cost of a model, or of a block cut out as a standalone model, on a target."""


def oracle_cost(proto: onnx.ModelProto, target: Target) -> CostLike:
    """Vela's estimate through the shared, cached oracle."""
    from nirc.cost import estimate

    return estimate(proto, target, label="substitute-blocks")


def cost_key(cost: CostLike) -> tuple[int, int, int]:
    """Ordering of costs: ops left on the CPU first (Vela's cycles do not count them), then cycles, then weights."""
    return int(getattr(cost, "cpu_ops", 0)), int(cost.cycles), int(getattr(cost, "weight_bytes", 0))


def _summary(cost: CostLike | None, error: str | None = None) -> dict[str, Any]:
    if cost is None:
        return {"error": error or "not costed"}
    return {
        "cycles": int(cost.cycles),
        "weight_bytes": int(getattr(cost, "weight_bytes", 0)),
        "cpu_ops": int(getattr(cost, "cpu_ops", 0)),
    }


@dataclass(frozen=True)
class CandidateResult:
    """One costed candidate of a block decision."""

    name: str
    note: str
    exact: bool
    cost: CostLike | None
    error: str | None = None
    accuracy: Mapping[str, float] | None = None
    rejected: str | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "note": self.note,
            "exact": self.exact,
            **_summary(self.cost, self.error),
        }
        if self.accuracy is not None:
            data["accuracy"] = {k: round(float(v), 6) for k, v in self.accuracy.items()}
        if self.rejected is not None:
            data["rejected"] = self.rejected
        return data


@dataclass(frozen=True)
class BlockDecision:
    """What the pass decided for one matched block (one entry of the report's decision log).

    Attributes:
        rule: the rule that matched.
        exact: whether the rule is exact.
        block: names of the nodes of the block.
        output: the block's output tensor.
        scope: ``subgraph`` (block and its fused activation costed alone) or ``model``.
        before: cost of the block as it is (None: not costed, or it does not compile).
        before_error: why ``before`` is None.
        candidates: every candidate with its cost (or error) and, for lossy ones, measured accuracy.
        chosen: the candidate applied, None when the block was kept.
        reason: why.
        input_layout: the input-layout change the chosen candidate makes (stem rule), else None.
    """

    rule: str
    exact: bool
    block: tuple[str, ...]
    output: str
    scope: str
    before: CostLike | None
    before_error: str | None
    candidates: tuple[CandidateResult, ...]
    chosen: str | None
    reason: str
    input_layout: InputLayout | None = None
    int8: Mapping[str, Any] | None = None
    fallback: str | None = None

    @property
    def key(self) -> tuple[str, tuple[str, ...]]:
        return self.rule, self.block

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "pass": "substitute-blocks",
            "rule": self.rule,
            "exact": self.exact,
            "block": list(self.block),
            "output": self.output,
            "scope": self.scope,
            "before": _summary(self.before, self.before_error) if self.candidates else None,
            "candidates": [c.to_json() for c in self.candidates],
            "chosen": self.chosen,
            "reason": self.reason,
        }
        if self.input_layout is not None:
            data["input_layout"] = self.input_layout.to_json()
        if self.int8 is not None:
            data["int8"] = dict(self.int8)
        if self.fallback is not None:
            data["fallback"] = self.fallback
        return data


@dataclass
class _Judge:
    """Costs trials with one oracle, counting calls; an oracle failure is an answer ("does not compile")."""

    cost_fn: CostFn
    target: Target
    calls: int = 0

    jobs: int = 1
    parallel: bool = False

    def cost_all(self, protos: Sequence[onnx.ModelProto]) -> list[tuple[CostLike | None, str | None]]:
        """Answers for several trials: through the oracle's process pool when ``parallel``, else one by one.

        The pool answers all or nothing (it raises the first failure), so a failure there falls back to
        one-by-one costing, which records which trial failed and why (most are cache hits by then).
        """
        if self.parallel and self.jobs > 1 and len(protos) > 1:
            from nirc.cost import evaluate_many

            try:
                costs = evaluate_many(protos, self.target, jobs=self.jobs, labels=["substitute-blocks"] * len(protos))
            except NircError:
                pass
            else:
                self.calls += len(protos)
                return [(c, None) for c in costs]
        return [self.cost(p) for p in protos]

    def cost(self, proto: onnx.ModelProto) -> tuple[CostLike | None, str | None]:
        self.calls += 1
        try:
            return self.cost_fn(proto, self.target), None
        except NircError as exc:
            text = str(exc).strip().splitlines()
            logger.info("substitute-blocks: cannot cost a trial: %s", text[0] if text else type(exc).__name__)
            return None, (text[-1] if text else type(exc).__name__)[:300]


@dataclass(frozen=True)
class SubstituteBlocksPass(Pass):
    """Replace blocks by equivalents Vela estimates faster (re-parameterisation, conv merging, regrouping, ...).

    Exact rules (always on): ``reparam`` (parallel conv/BN/identity/avg-pool
    branches summed -> one conv: RepVGG, ACNet, DBB), ``large-kernel``
    (strides > 3 and kernels beyond Vela's limits -> space-to-depth,
    subsampled or kernel-split convs), ``merge-convs`` (consecutive linear
    convs -> one), ``grouped`` (grouped conv -> fewer groups / dense). The
    ``stem`` rule (few-channel input -> channel-padded or space-to-depth input)
    is exact too but changes the shape of the model's input, so it runs only
    when ``stem`` is not ``"none"``; each applied one is listed in
    ``input_layouts`` with how to make the new feed. Lossy rules
    (``fuse-inverted-bottleneck``, ``unfuse-inverted-bottleneck``,
    ``factorize-kernel``) run only with ``allow_lossy=True``; their weights are
    fitted by least squares on calibration activations (``ctx.calibration``,
    else synthetic normal inputs) and a candidate whose model-output relative
    error on held-out samples exceeds ``max_error`` is rejected. Each rule's
    module docstring states the identity that makes it exact.

    Decision: the block as it is and every candidate are costed with the
    oracle -- ``scope="subgraph"`` cuts out the block (plus the activation
    Vela fuses after it) as a standalone model, ``scope="model"`` costs the
    whole model, ``scope="auto"`` picks ``model`` when at most
    ``AUTO_MODEL_SCOPE_MAX`` blocks match; ``jobs > 1`` costs a block's
    candidates in parallel (:func:`nirc.cost.evaluate_many`) -- and the
    cheapest candidate by (CPU ops, cycles, weight bytes) is applied only
    when it beats the block. With ``guard`` (default)
    the whole model is costed before and after; if the subgraph decisions do
    not pay off together, the model is restored and the accepted rewrites are
    re-decided one by one on the whole model. ``decisions`` holds one
    :class:`BlockDecision` per matched block (also appended to
    ``ctx.decisions``).

    int8 accuracy: exact rules are exact in float, not in int8 (a merged
    RepVGG kernel's centre tap widens each channel's weight range). With
    ``ctx.accuracy`` set the applied rewrites are kept only as far as the int8
    SNR of every output stays within the guard's tolerance of the model
    before the pass (see ``_keep_accurate``: one measurement when all is
    well, a bisection over rewrites by cycles saved otherwise); a rewrite the
    guard refuses falls back to its rule's accuracy-preferred candidate when
    there is one that still beats the block, else the block is kept.
    """

    name = "substitute-blocks"
    exact = True
    accuracy_guarded = True
    judges_accuracy = True

    allow_lossy: bool = False
    stem: StemMode = "none"
    rules: tuple[str, ...] = ()
    scope: Literal["auto", "subgraph", "model"] = "auto"
    guard: bool = True
    max_error: float = 0.05
    samples: int = 16
    jobs: int = 1
    cost_fn: CostFn | None = field(default=None, compare=False, repr=False)
    decisions: list[BlockDecision] = field(default_factory=list, compare=False, repr=False)
    input_layouts: list[InputLayout] = field(default_factory=list, compare=False, repr=False)
    summary: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.stem not in STEM_MODES:
            raise ValueError(f"substitute-blocks: stem must be one of {', '.join(STEM_MODES)}, got {self.stem!r}")
        unknown = [r for r in self.rules if r not in EXACT_RULES + LOSSY_RULES]
        if unknown:
            raise ValueError(
                f"substitute-blocks: unknown rule(s) {unknown}; known: {', '.join(EXACT_RULES + LOSSY_RULES)}"
            )
        lossy = [r for r in self.rules if r in LOSSY_RULES]
        if lossy and not self.allow_lossy:
            raise ValueError(f"substitute-blocks: rule(s) {lossy} are lossy and need allow_lossy=True")
        if self.scope not in ("auto", "subgraph", "model"):
            raise ValueError(f"substitute-blocks: scope must be auto, subgraph or model, got {self.scope!r}")
        if self.max_error < 0 or self.samples < 2 or self.jobs < 1:
            raise ValueError("substitute-blocks: max_error must be >= 0, samples >= 2 and jobs >= 1")

    @property
    def is_exact(self) -> bool:
        """Whether this configuration only applies exact rules (the class-level ``exact`` assumes defaults)."""
        return not any(r.name in LOSSY_RULES for r in self.active_rules())

    def adapt_inputs(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The feed for the rewritten model (stem rules may re-lay out an input)."""
        return adapt_inputs(self.input_layouts, feed) if self.input_layouts else feed

    @property
    def changes_inputs(self) -> bool:
        """Whether this configuration may change the model's input shapes (see ``input_layouts``)."""
        return any(r.name == "stem" for r in self.active_rules())

    def active_rules(self) -> list[Rule]:
        """The rules this configuration runs, in the order they are tried."""
        library: list[Rule] = [ReparamRule(), LargeKernelRule(), MergeConvsRule(), GroupedConvRule()]
        if self.stem != "none":
            library.append(StemRule(self.stem))
        if self.allow_lossy:
            library += [FuseInvertedBottleneckRule(), UnfuseInvertedBottleneckRule(), FactorizeKernelRule()]
        if self.rules:
            library = [r for r in library if r.name in self.rules]
        return library

    def run(self, model: IRModel, ctx: PassContext) -> bool:
        self.decisions.clear()
        self.input_layouts.clear()
        self.summary.clear()
        rules = [r for r in self.active_rules() if has_any_op(model.graph, r.ops)]
        if not rules:
            return False
        target = ctx.target
        if target is None:
            logger.info("substitute-blocks: no target, nothing to cost against")
            return False
        judge = _Judge(self.cost_fn or oracle_cost, target, jobs=self.jobs, parallel=self.cost_fn is None)
        original = model.to_proto(check=False)
        env = _Env(model, original, getattr(ctx, "calibration", None), self.samples, self.input_layouts)
        scope = self.scope
        if scope == "auto":
            blocks = sum(1 for rule in rules for _ in rule.matches(model.graph))
            scope = "model" if blocks <= AUTO_MODEL_SCOPE_MAX else "subgraph"
        changed = self._search(model, rules, judge, env, scope, None)
        if changed and self.guard and scope == "subgraph":
            changed = self._guard(model, original, rules, judge, env)
        elif changed and scope == "model":
            self._model_summary()
        guard = getattr(ctx, "accuracy", None)
        if changed and guard is not None:
            changed = self._keep_accurate(model, original, rules, env, guard, ctx)
            report = self.summary.get("accuracy_guard", {})
            if report.get("fallback") or report.get("refused"):
                # The guard changed the model: what speed it gave up, on the whole model.
                final, final_error = judge.cost(model.to_proto(check=False)) if changed else judge.cost(original)
                report["cycles_as_decided"] = self.summary.get("after")
                self.summary["after"] = _summary(final, final_error)
        if self.summary:
            self.summary["scope"] = scope
        ctx.count("oracle_calls", judge.calls)
        for decision in self.decisions:
            outcome = "applied" if decision.chosen else ("not_applicable" if not decision.candidates else "rejected")
            ctx.count(f"{decision.rule}.{outcome}")
        if self.input_layouts:
            ctx.count("inputs_relaid_out", len(self.input_layouts))
        if env.synthetic_used:
            ctx.count("synthetic_calibration")
        sink = getattr(ctx, "decisions", None)
        if isinstance(sink, list):
            sink.extend(d.to_json() for d in self.decisions)
            if self.summary:
                sink.append({"pass": "substitute-blocks", "summary": dict(self.summary)})
        return changed

    # -- search ---------------------------------------------------------------------
    def _search(
        self,
        model: IRModel,
        rules: Sequence[Rule],
        judge: _Judge,
        env: _Env,
        scope: str,
        only: set[tuple[str, tuple[str, ...]]] | None,
    ) -> bool:
        """Greedy: decide the first undecided match, apply it if it wins, re-match; until nothing is left."""
        seen: set[tuple[str, tuple[str, ...]]] = set()
        lossy_made: set[str] = set()
        made_by: dict[str, set[str]] = {}
        changed = False
        for _ in range(_MAX_ROUNDS):
            applied = False
            for rule in rules:
                for match in rule.matches(model.graph):
                    if match.key in seen or (only is not None and match.key not in only):
                        continue
                    if not rule.exact and lossy_made.intersection(match.nodes):
                        continue  # never re-substitute what a lossy rule just wrote (no fuse/unfuse ping-pong)
                    if not rule.rematch_own and made_by.get(rule.name, set()).intersection(match.nodes):
                        continue  # its candidates were costed already, as candidates of the original block
                    seen.add(match.key)
                    decision, chosen = self._decide(model, rule, match, judge, env, scope)
                    self.decisions.append(decision)
                    if chosen is None:
                        continue
                    created = chosen.build(model.graph, Namer(model.graph))
                    model.graph.cleanup().toposort()
                    if _unshaped(model):
                        model.refresh_shapes()  # later matches read shapes of the tensors just written
                    made_by.setdefault(rule.name, set()).update(created)
                    if not rule.exact:
                        lossy_made.update(created)
                    if chosen.input_layout is not None:
                        self.input_layouts.append(chosen.input_layout)
                    applied = changed = True
                    break
                if applied:
                    break
            if not applied:
                break
        return changed

    def _decide(
        self, model: IRModel, rule: Rule, match: Match, judge: _Judge, env: _Env, scope: str
    ) -> tuple[BlockDecision, Candidate | None]:
        def record(
            reason: str,
            before: CostLike | None = None,
            before_error: str | None = None,
            results: Sequence[CandidateResult] = (),
            chosen: Candidate | None = None,
            fallback: str | None = None,
        ) -> tuple[BlockDecision, Candidate | None]:
            decision = BlockDecision(
                rule=rule.name,
                exact=rule.exact,
                block=match.nodes,
                output=match.output,
                scope=scope,
                before=before,
                before_error=before_error,
                candidates=tuple(results),
                chosen=chosen.name if chosen is not None else None,
                reason=reason,
                input_layout=chosen.input_layout if chosen is not None else None,
                fallback=fallback,
            )
            logger.info(
                "substitute-blocks: %s %s: %s (%s)",
                rule.name,
                ",".join(match.nodes),
                decision.chosen or "kept",
                reason,
            )
            return decision, chosen

        graph = model.graph
        reason = rule.check(graph, match)
        if reason is not None:
            return record(reason)
        try:
            candidates = rule.candidates(graph, match, env)
        except (np.linalg.LinAlgError, ValueError, NircError) as exc:
            return record(f"building candidates failed: {exc}")
        if not candidates:
            return record("no candidate replacement for this block")
        act = fused_activation(graph, match.output)
        region = [*match.nodes, *([act] if act else [])]
        current = model.to_proto(check=False)
        if scope == "subgraph":
            from nirc.cost import extract_subgraph

            base = extract_subgraph(current, region)
        else:
            base = current
        rejected: dict[str, str] = {}
        for cand in candidates:
            if not cand.exact:
                error = (cand.accuracy or {}).get("output_rel_error")
                if error is None or not np.isfinite(error) or error > self.max_error:
                    rejected[cand.name] = f"model-output relative error {error} exceeds max_error {self.max_error}"
        costed = [c for c in candidates if c.name not in rejected]
        answers = judge.cost_all([base, *(_trial(base, c.build) for c in costed)])
        before, before_error = answers[0]
        by_name = {c.name: answer for c, answer in zip(costed, answers[1:], strict=True)}
        results: list[CandidateResult] = []
        best: tuple[Candidate, CostLike] | None = None
        for cand in candidates:
            if cand.name in rejected:
                results.append(
                    CandidateResult(cand.name, cand.note, cand.exact, None, None, cand.accuracy, rejected[cand.name])
                )
                continue
            cost, error_text = by_name[cand.name]
            results.append(CandidateResult(cand.name, cand.note, cand.exact, cost, error_text, cand.accuracy))
            if cand.accuracy_preferred:
                continue  # only a fallback of the int8 guard: never chosen for speed alone
            if cost is not None and (best is None or cost_key(cost) < cost_key(best[1])):
                best = (cand, cost)
        if best is None:
            return record("no candidate can be costed", before, before_error, results)
        cand, cost = best
        if before is None:
            return record(
                f"the block does not compile on the NPU; {cand.name} does", before, before_error, results, cand
            )
        if cost_key(cost) < cost_key(before):
            why = _improvement(before, cost)
            # The cheapest accuracy-preferred variant that still beats the block: what the int8 guard
            # falls back to if it refuses ``cand``.
            safer = [
                (c, by_name[c.name][0])
                for c in candidates
                if c.accuracy_preferred and c is not cand and c.name in by_name and by_name[c.name][0] is not None
            ]
            beats = [(c, k) for c, k in safer if k is not None and cost_key(k) < cost_key(before)]
            fallback = min(beats, key=lambda item: cost_key(item[1]))[0].name if beats else None
            return record(why, before, before_error, results, cand, fallback)
        return record("no candidate beats the block in Vela's estimate", before, before_error, results)

    def _guard(
        self, model: IRModel, original: onnx.ModelProto, rules: Sequence[Rule], judge: _Judge, env: _Env
    ) -> bool:
        """Whole-model check of the subgraph decisions; re-decide on the whole model if they do not pay off."""
        before, before_error = judge.cost(original)
        after, after_error = judge.cost(model.to_proto(check=False))
        self.summary.update(
            before=_summary(before, before_error), after=_summary(after, after_error), applied=self._applied()
        )
        if after is not None and (before is None or cost_key(after) <= cost_key(before)):
            self.summary["guard"] = "kept: the whole model does not get slower"
            return True
        logger.info("substitute-blocks: subgraph decisions do not pay off on the whole model; re-deciding")
        accepted = {d.key for d in self.decisions if d.chosen is not None}
        self.summary["superseded"] = self._applied()
        model.graph = IRModel.from_proto(original, model.label).graph
        self.input_layouts.clear()
        self.decisions[:] = [d for d in self.decisions if d.chosen is None]
        changed = self._search(model, rules, judge, env, "model", accepted)
        final, final_error = judge.cost(model.to_proto(check=False)) if changed else (before, before_error)
        self.summary.update(after=_summary(final, final_error), applied=self._applied())
        self.summary["guard"] = "re-decided on the whole model"
        return changed

    def _keep_accurate(
        self,
        model: IRModel,
        original: onnx.ModelProto,
        rules: Sequence[Rule],
        env: _Env,
        guard: AccuracyGuard,
        ctx: PassContext,
    ) -> bool:
        """Keep the applied rewrites only as far as int8 SNR stays within the guard's tolerance.

        Cost is bounded: the accepted set is measured once; only if it loses too much are the
        applied rewrites ordered by the cycles each saved (largest first) and the longest prefix
        within tolerance found by bisection, the rest replaced by their decision's accuracy-preferred
        ``fallback`` candidate (e.g. RepVGG's identity kept as a residual Add) where they have one;
        if even all-fallbacks lose too much, the fallbacks are bisected the same way. About
        2 log2(n) + 2 int8 measurements for n rewrites, each a replay of already-costed candidates
        (no new Vela runs). Refused rewrites say why in their decision.
        """
        applied = [d for d in self.decisions if d.chosen is not None]
        order = sorted(applied, key=lambda d: -_saved_cycles(d))
        measured: dict[tuple[int, int], Verdict] = {}

        def plan(chosen: int, fallbacks: int) -> dict[tuple[str, tuple[str, ...]], str]:
            """The first ``chosen`` rewrites as decided, then ``fallbacks`` of the rest by their fallback."""
            out = {d.key: str(d.chosen) for d in order[:chosen]}
            for d in order[chosen : chosen + fallbacks]:
                if d.fallback is not None:
                    out[d.key] = d.fallback
            return out

        def verdict(chosen: int, fallbacks: int) -> Verdict:
            if (chosen, fallbacks) not in measured:
                if (chosen, fallbacks) != (len(order), 0):
                    self._replay(model, original, rules, env, plan(chosen, fallbacks))
                feeds = [adapt_inputs(self.input_layouts, dict(s)) for s in guard.calibration.samples]
                measured[chosen, fallbacks] = guard.judge(original, model.to_proto(check=False), feeds)
                ctx.count("accuracy_measurements")
            return measured[chosen, fallbacks]

        def longest(ok_at: Callable[[int], bool], high: int) -> int:
            """Largest ``k`` in [0, high] with ``ok_at(k)``, given ``ok_at(0)`` and not ``ok_at(high)``."""
            low = 0
            while high - low > 1:
                mid = (low + high) // 2
                if ok_at(mid):
                    low = mid
                else:
                    high = mid
            return low

        n = len(order)
        rest = n
        if verdict(n, 0).ok:
            chosen, rest = n, 0
        elif any(d.fallback for d in order) and verdict(0, n).ok:
            chosen = longest(lambda k: verdict(k, n - k).ok, n)
            rest = n - chosen
        else:
            chosen = 0
            has = sum(1 for d in order if d.fallback)
            rest = longest(lambda k: verdict(0, k).ok, n) if has else 0
        final_plan = plan(chosen, rest)
        if (chosen, rest) != (n, 0):
            self._replay(model, original, rules, env, final_plan)
        final = verdict(chosen, rest) if final_plan else None
        self._settle(order, final_plan, final, measured, guard)
        self.summary["accuracy_guard"] = {
            **(final.to_json() if final is not None else {"int8_snr_db_after": "the model without the pass"}),
            "as_decided": sum(1 for d in order if final_plan.get(d.key) == d.chosen),
            "fallback": sum(1 for d in order if d.key in final_plan and final_plan[d.key] != d.chosen),
            "refused": sum(1 for d in order if d.key not in final_plan),
            "measured": {f"{c}+{f}": _round_db(v.drop) for (c, f), v in sorted(measured.items())},
        }
        ctx.count("accuracy_fallback", self.summary["accuracy_guard"]["fallback"])
        ctx.count("accuracy_refused", self.summary["accuracy_guard"]["refused"])
        return bool(final_plan)

    def _settle(
        self,
        order: Sequence[BlockDecision],
        final_plan: Mapping[tuple[str, tuple[str, ...]], str],
        final: Verdict | None,
        measured: Mapping[tuple[int, int], Verdict],
        guard: AccuracyGuard,
    ) -> None:
        """Rewrite the decisions to what the guard kept: chosen, fallen back, or refused, with int8 numbers."""
        worst = max(measured.values(), key=lambda v: v.drop)
        by_key = {d.key: d for d in order}
        settled = []
        for d in self.decisions:
            if d.key not in by_key:
                settled.append(d)
                continue
            now = final_plan.get(d.key)
            int8: dict[str, Any] = {**(final or worst).to_json(), "saved_cycles": _saved_cycles(d)}
            if now == d.chosen:
                settled.append(replace(d, int8=int8))
                continue
            # A refused rewrite shows the verdict that refused it: every rewrite as decided.
            int8 = {**measured[len(order), 0].to_json(), "saved_cycles": _saved_cycles(d)}
            why = (
                f"the accuracy guard refused {d.chosen}: with every rewrite as decided int8 SNR drops "
                f"{measured[len(order), 0].drop:.2f} dB (> {guard.max_snr_drop:.2f} dB)"
            )
            int8["refused"] = d.chosen
            if now is None:
                settled.append(replace(d, chosen=None, reason=f"{why}; block kept", input_layout=None, int8=int8))
            else:
                int8["saved_cycles"] = _saved_cycles(d, now)
                settled.append(replace(d, chosen=now, reason=f"{why}; fell back to {now}", int8=int8))
        self.decisions[:] = settled

    def _replay(
        self,
        model: IRModel,
        original: onnx.ModelProto,
        rules: Sequence[Rule],
        env: _Env,
        wanted: Mapping[tuple[str, tuple[str, ...]], str],
    ) -> None:
        """``original`` with exactly the candidates ``wanted`` (block key -> candidate name) applied, uncosted."""
        model.graph = IRModel.from_proto(original, model.label).graph
        self.input_layouts.clear()
        done: set[tuple[str, tuple[str, ...]]] = set()
        for _ in range(_MAX_ROUNDS):
            applied = False
            for rule in rules:
                for match in rule.matches(model.graph):
                    if match.key in done or match.key not in wanted:
                        continue
                    done.add(match.key)
                    chosen = next(
                        (c for c in rule.candidates(model.graph, match, env) if c.name == wanted[match.key]), None
                    )
                    if chosen is None:
                        continue
                    chosen.build(model.graph, Namer(model.graph))
                    model.graph.cleanup().toposort()
                    if _unshaped(model):
                        model.refresh_shapes()
                    if chosen.input_layout is not None:
                        self.input_layouts.append(chosen.input_layout)
                    applied = True
                    break
                if applied:
                    break
            if not applied:
                break

    def _model_summary(self) -> None:
        """Whole-model scope: the first decision's 'before' and the last applied candidate are whole-model costs."""
        costed = [d for d in self.decisions if d.candidates]
        applied = [d for d in costed if d.chosen is not None]
        last = next(c for c in applied[-1].candidates if c.name == applied[-1].chosen)
        self.summary.update(
            before=_summary(costed[0].before, costed[0].before_error),
            after=_summary(last.cost, last.error),
            applied=self._applied(),
        )

    def _applied(self) -> list[str]:
        return [f"{d.rule}:{d.output}:{d.chosen}" for d in self.decisions if d.chosen is not None]


def _round_db(value: float) -> float | str:
    return round(value, 3) if np.isfinite(value) else str(value)


def _saved_cycles(decision: BlockDecision, name: str | None = None) -> int:
    """Cycles candidate ``name`` (default: the chosen one) saved over the block as it was (0 when not costed)."""
    name = name or decision.chosen
    chosen = next((c for c in decision.candidates if c.name == name), None)
    if chosen is None or chosen.cost is None or decision.before is None:
        return 0
    return int(decision.before.cycles) - int(chosen.cost.cycles)


def _unshaped(model: IRModel) -> bool:
    return any(isinstance(t, gs.Variable) and t.shape is None for t in model.graph.tensors().values())


def _improvement(before: CostLike, after: CostLike) -> str:
    b, a = cost_key(before), cost_key(after)
    if a[0] < b[0]:
        return f"moves {b[0] - a[0]} op(s) from the CPU to the NPU"
    if a[1] < b[1]:
        return f"Vela's estimate drops {b[1]} -> {a[1]} cycles ({100.0 * (a[1] - b[1]) / max(b[1], 1):+.1f}%)"
    return f"same cycles, fewer weight bytes ({b[2]} -> {a[2]})"


def _trial(base: onnx.ModelProto, build: Build) -> onnx.ModelProto:
    """``base`` with one candidate applied (``base`` itself is not changed)."""
    trial = IRModel.from_proto(base)
    build(trial.graph, Namer(trial.graph))
    return trial.to_proto(check=False)


class _Env(RuleEnv):
    """Calibration samples, the original model's outputs, and ORT runs for the lossy rules (built lazily)."""

    def __init__(
        self,
        model: IRModel,
        original: onnx.ModelProto,
        calibration: object,
        count: int,
        layouts: Sequence[InputLayout],
    ) -> None:
        self.model = model
        self.original = original
        self.calibration = calibration
        self.count = count
        self.layouts = layouts
        self.synthetic_used = False
        self._split: tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]]] | None = None
        self._reference: dict[str, np.ndarray] | None = None

    def _samples(self) -> tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]]]:
        if self._split is None:
            samples = [dict(s) for s in getattr(self.calibration, "samples", ()) or ()]
            if not samples or bool(getattr(self.calibration, "synthetic", False)):
                from nirc.backend import input_shapes

                self.synthetic_used = True
                logger.warning("substitute-blocks: lossy rules fit and measure on %s", _SYNTHETIC)
                rng = np.random.default_rng(0)
                shapes = input_shapes(self.original)
                samples = [
                    {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()} for _ in range(self.count)
                ]
            samples = samples[: self.count]
            held = max(1, len(samples) // 4)
            self._split = (samples[:-held] or samples, samples[-held:])
        return self._split

    def _adapt(self, samples: Sequence[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        """Samples in the current model's input layout (after any stem rewrite of this run)."""
        return [adapt_inputs(self.layouts, sample) for sample in samples]

    def activations(self, names: Sequence[str]) -> dict[str, np.ndarray]:
        fit, _ = self._samples()
        return run_tensors(self.model.to_proto(check=False), self._adapt(fit), names)

    def measure(self, match: Match, build: Build) -> dict[str, float]:
        _, held = self._samples()
        outputs = [o.name for o in self.original.graph.output]
        if self._reference is None:
            self._reference = run_tensors(self.original, held, outputs)
        feeds = self._adapt(held)
        current = run_tensors(self.model.to_proto(check=False), feeds, [match.output])
        trial = self.model.copy()
        build(trial.graph, Namer(trial.graph))
        got = run_tensors(trial.to_proto(check=False), feeds, [match.output, *outputs])
        num = sum(float(np.sum((got[n].astype(np.float64) - self._reference[n]) ** 2)) for n in outputs)
        den = sum(float(np.sum(self._reference[n].astype(np.float64) ** 2)) for n in outputs)
        block_ref = current[match.output].astype(np.float64)
        block_err = float(np.linalg.norm(got[match.output] - block_ref)) / max(float(np.linalg.norm(block_ref)), 1e-30)
        rel = float(np.sqrt(num / den)) if den > 0 else float("inf")
        return {
            "block_rel_error": block_err,
            "output_rel_error": rel,
            "output_snr_db": float(-20.0 * np.log10(rel)) if rel > 0 else float("inf"),
        }


def adapt_inputs(layouts: Sequence[InputLayout], feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """An input feed for the original model, rewritten for the model after ``layouts`` (in order).

    For callers that feed the rewritten model what they fed the original: ``--verify`` (compare the
    model before the pass on ``feed`` with the model after it on ``adapt_inputs(pass_.input_layouts, feed)``)
    and the calibration samples used to emit and validate the int8 model.
    """
    out = dict(feed)
    for layout in layouts:
        out[layout.input] = layout.adapt(np.asarray(out[layout.input]))
    return out


