"""Zero-pad channel counts up to the NPU's storage granule where Vela says it pays off.

Ethos-U stores feature maps in 16-channel bricks and computes output channels
in blocks of ``ofm_block_depth``: a 17-channel tensor occupies and moves two
bricks, and a 24-channel conv computes a partly empty second block. Padding
such a layer with channels whose weights are zero can *lower* Vela's estimate
(denser bricks, better block configurations) or raise it (more MACs and
weights); which one happens depends on Vela's scheduler, so every candidate is
costed with the oracle (:mod:`nirc.cost`) and kept only when it helps.

Also :func:`channel_alignment`, the per-layer alignment table for ``nirc analyze``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import onnx
import onnx_graphsurgeon as gs
from nirc.passes._channels import (
    UNARY_OPS,
    ChannelSpaces,
    Layout,
    Space,
    apply_layouts,
    channels_of,
    identity,
    padded,
    round_down,
    round_up,
)
from nirc.passes._rewrite import has_any_op

from nirc.ir import IRModel
from nirc.pass_base import Pass, PassContext
from nirc.target import Target

logger = logging.getLogger(__name__)

_LINEAR_OPS = ("Conv", "Gemm")
_AUTO_MODEL_SCOPE_NODES = 64
"""``scope="auto"`` costs candidates on the whole model up to this many nodes (a Vela run of such a
model takes well under a second), and on the touched region beyond it."""


class CostLike(Protocol):
    """What the pass reads from an oracle answer (:class:`nirc.cost.Cost` satisfies it)."""

    @property
    def cycles(self) -> int: ...

    @property
    def sram_used_bytes(self) -> int: ...


CostFn = Callable[[onnx.ModelProto, Target], CostLike]
"""Cost of a model (or a standalone subgraph) on a target."""


def oracle_cost(proto: onnx.ModelProto, target: Target) -> CostLike:
    """Vela's estimate through the shared, cached oracle: the one place to swap the cost model."""
    from nirc.cost import estimate

    return estimate(proto, target, label="pad-channels")


def improves(new: CostLike, old: CostLike) -> bool:
    """Latency drops, or SRAM drops while latency does not rise."""
    return new.cycles < old.cycles or (new.cycles <= old.cycles and new.sram_used_bytes < old.sram_used_bytes)


@dataclass(frozen=True)
class ChannelDecision:
    """What the pass decided for one channel space (one line of the report).

    Attributes:
        space: the space's key (its first tensor).
        layers: the Conv/Gemm nodes writing the space.
        channels_before, channels_after: channel count before and after (equal when rejected).
        candidate: the padded count costed (the cheapest of those tried).
        cycles_before, cycles_after: oracle cycles without and with ``candidate``, over ``scope``.
        sram_before, sram_after: oracle SRAM bytes, likewise.
        accepted: whether the padding was kept.
        reason: why (or why not).
        scope: ``model`` (whole model costed) or ``subgraph`` (the touched region).
    """

    space: str
    layers: tuple[str, ...]
    channels_before: int
    channels_after: int
    candidate: int
    cycles_before: int | None
    cycles_after: int | None
    sram_before: int | None
    sram_after: int | None
    accepted: bool
    reason: str
    scope: str

    def to_json(self) -> dict[str, Any]:
        return {
            "space": self.space,
            "layers": list(self.layers),
            "channels": [self.channels_before, self.channels_after],
            "candidate": self.candidate,
            "cycles": [self.cycles_before, self.cycles_after],
            "sram_bytes": [self.sram_before, self.sram_after],
            "accepted": self.accepted,
            "reason": self.reason,
            "scope": self.scope,
        }


def candidate_counts(space: Space, spaces: ChannelSpaces, target: Target, align: int | None) -> list[int]:
    """Padded channel counts worth costing for ``space``, smallest first.

    With ``align``: the next multiple of it. Otherwise the next multiple of the
    brick width, the next multiple of the OFM block depth, and -- when the space
    is the last operand of a channel Concat -- the count that makes the Concat
    output a whole number of bricks (so only the tail of the Concat is padded).
    """
    c = space.channels
    if align is not None:
        return [round_up(c, align)] if c % align else []
    brick = target.brick_channels
    if c % brick == 0:
        return []
    counts = {round_up(c, brick)}
    if c % target.ofm_block_depth:
        counts.add(round_up(c, target.ofm_block_depth))
    for derived in spaces.concat_consumers(space):
        assert derived.concat is not None
        inputs = spaces.nodes[derived.concat].inputs
        if inputs[-1].name in space.tensors and derived.channels % brick:
            counts.add(c + (-derived.channels) % brick)
    return sorted(n for n in counts if n > c)


def layout_trial(model: IRModel, assigned: dict[str, Layout]) -> onnx.ModelProto:
    """A copy of ``model`` with the given layouts applied (``model`` itself is not changed)."""
    copy = model.copy()
    if assigned:
        apply_layouts(copy.graph, ChannelSpaces(copy.graph), assigned)
    return copy.to_proto(check=False)


@dataclass
class _Judge:
    """Costs trials with one oracle, counting calls; oracle failures become rejections."""

    cost_fn: CostFn
    target: Target
    calls: int = 0

    def cost(self, proto: onnx.ModelProto) -> CostLike:
        self.calls += 1
        return self.cost_fn(proto, self.target)


def _region(spaces: ChannelSpaces, space: Space) -> list[str]:
    """Nodes whose cost a layout change of ``space`` can move, plus activations fused into its readers."""
    names = spaces.region(space)
    extra: list[str] = []
    for name in names:
        node = spaces.nodes[name]
        for out in node.outputs:
            readers = list({id(n): n for n in out.outputs}.values())
            if len(readers) == 1 and readers[0].op in UNARY_OPS and readers[0].name not in names:
                extra.append(readers[0].name)
    wanted = set(names) | set(extra)
    return [n.name for n in spaces.order if n.name in wanted]


@dataclass(frozen=True)
class PadChannelsPass(Pass):
    """Zero-pad Conv/Gemm output channels to the NPU's brick width where the cost oracle says it helps.

    Rewrite, for one *channel space* (the tensors that must share a channel
    layout, see :mod:`nirc.passes._channels`): every Conv/Gemm writing it gets
    extra output channels with all-zero weights and zero bias; every op inside
    it that carries per-channel constants gets neutral entries (depthwise
    weights 0, BatchNormalization scale 0 / bias 0 / mean 0 / var 1, ``x * c``
    with ``c = 1``, ``x + c`` with ``c = 0``); every Conv/Gemm reading it gets
    zero weights for the extra input channels.

    Why it is exact: an extra channel starts as exactly 0 and only meets ops
    that work channel by channel, each mapping finite values to finite values
    (``relu(0) = 0``, ``sigmoid(0) = 0.5``: any finite constant will do); the
    first Conv/Gemm to mix channels multiplies it by a zero weight, so the real
    channels compute exactly what they computed before. A residual Add joins
    its operands into one space, so both are padded alike; a Concat output
    follows its inputs (an input's extra channels sit at the end of that
    input's block, and the Concat's readers get zero weights there). Spaces
    touching a graph input or output, a channel-mixing op other than Conv/Gemm
    (Transpose, Softmax over channels, a grouped conv, ...) or a division by
    a feature map are left alone, so outputs keep their channel count. The int8
    activation ranges barely move: an extra channel holds 0, which every int8
    range contains, or a constant ``f(0)`` of an activation the real channels
    went through as well; its zero weights get the emitter's floor scale.

    Cost: each candidate padding (next multiple of the brick width or of the
    OFM block depth, or ``align``) is costed with Vela on the whole model
    (``scope="model"``) or on the nodes it touches (``scope="subgraph"``; a win
    there must then be confirmed on the whole model; ``auto`` picks the whole
    model up to 64 nodes), greedily in execution order; it is kept
    only when the estimated latency drops, or SRAM drops while latency does
    not rise. One :class:`ChannelDecision` per space costed goes to
    ``ctx.decisions`` (the report's per-pass decision log) and stays in the
    pass's ``decisions`` until its next run.
    """

    name = "pad-channels"
    exact = True
    accuracy_guarded = True

    align: int | None = None
    scope: Literal["auto", "model", "subgraph"] = "auto"
    cost_fn: CostFn | None = field(default=None, compare=False, repr=False)
    decisions: list[ChannelDecision] = field(default_factory=list, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.align is not None and self.align < 1:
            raise ValueError(f"pad-channels: align must be positive, got {self.align}")

    def run(self, model: IRModel, ctx: PassContext) -> bool:
        self.decisions.clear()
        target = ctx.target
        if not has_any_op(model.graph, _LINEAR_OPS):
            return False
        if target is None:
            logger.info("pad-channels: no target, nothing to cost against")
            return False
        spaces = ChannelSpaces(model.graph)
        todo = [(s, n) for s in spaces.free_spaces() if (n := candidate_counts(s, spaces, target, self.align))]
        if not todo:
            return False
        judge = _Judge(self.cost_fn or oracle_cost, target)
        scope = self.scope
        if scope == "auto":
            scope = "model" if len(model.graph.nodes) <= _AUTO_MODEL_SCOPE_NODES else "subgraph"
        try:
            accepted, totals = self._decide(model, spaces, todo, judge, scope)
        except Exception as exc:  # the unchanged model itself cannot be costed: keep it as it is
            logger.warning(
                "pad-channels: cannot cost the model, leaving it unchanged (%s: %s)", type(exc).__name__, exc
            )
            ctx.count("oracle_failed")
            return False
        ctx.count("oracle_calls", judge.calls)
        if totals is not None:
            ctx.count("model_cycles_before", totals[0].cycles)
            ctx.count("model_cycles_after", totals[1].cycles)
        for decision in self.decisions:
            ctx.count("padded_spaces" if decision.accepted else "rejected_spaces")
            if decision.accepted:
                ctx.count("padded_layers", len(decision.layers))
                ctx.count("added_channels", decision.channels_after - decision.channels_before)
        for decision in self.decisions:
            ctx.decide(decision.to_json())
        if not accepted:
            return False
        apply_layouts(model.graph, spaces, accepted)
        return True

    # -- deciding -----------------------------------------------------------------
    def _decide(
        self,
        model: IRModel,
        spaces: ChannelSpaces,
        todo: Sequence[tuple[Space, list[int]]],
        judge: _Judge,
        scope: str,
    ) -> tuple[dict[str, Layout], tuple[CostLike, CostLike] | None]:
        """Accepted layouts by space key, and the whole-model (before, after) costs when something changed.

        Raises whatever the oracle raises when the unchanged model itself cannot be costed.
        """
        if scope == "model":
            baseline = judge.cost(model.to_proto(check=False))
            accepted, final = self._greedy(model, spaces, todo, judge, "model", baseline)
            return accepted, (baseline, final) if accepted and final is not None else None
        accepted, _ = self._greedy(model, spaces, todo, judge, "subgraph", None)
        if not accepted:
            return accepted, None  # nothing changes, so nothing can regress: no whole-model compile needed
        baseline = judge.cost(model.to_proto(check=False))
        final_cost = _try_cost(judge, lambda: layout_trial(model, accepted))
        if final_cost is not None and improves(final_cost, baseline):
            return accepted, (baseline, final_cost)
        logger.info("pad-channels: subgraph choices do not pay off on the whole model; re-deciding on it")
        kept = set(accepted)
        retry = [(s, [len(accepted[s.key])]) for s, _ in todo if s.key in kept]
        self.decisions[:] = [d for d in self.decisions if d.space not in kept]
        accepted, final = self._greedy(model, spaces, retry, judge, "model", baseline)
        return accepted, (baseline, final) if accepted and final is not None else None

    def _greedy(
        self,
        model: IRModel,
        spaces: ChannelSpaces,
        todo: Sequence[tuple[Space, list[int]]],
        judge: _Judge,
        scope: str,
        baseline: CostLike | None,
    ) -> tuple[dict[str, Layout], CostLike | None]:
        """Decide spaces one by one in execution order, each against the model with the earlier choices applied."""
        accepted: dict[str, Layout] = {}
        current = baseline
        for space, counts in todo:
            region = _region(spaces, space) if scope == "subgraph" else []
            base = current
            if scope == "subgraph":
                base = _try_cost(judge, functools.partial(_region_trial, model, dict(accepted), region))
            if base is None:
                self._record(space, counts[0], None, None, False, "cannot be costed", scope)
                continue
            best: tuple[int, CostLike] | None = None  # cheapest candidate, by cycles then SRAM
            failures: list[str] = []
            for count in counts:
                trial = {**accepted, space.key: padded(space.channels, count)}

                cost = _try_cost(judge, functools.partial(_region_trial, model, trial, region), failures)
                if cost is not None and (best is None or _key(cost) < _key(best[1])):
                    best = (count, cost)
            if best is None:
                why = "no candidate can be costed" + (f" ({failures[0]})" if failures else "")
                self._record(space, counts[0], base, None, False, why, scope)
                continue
            count, cost = best
            if not improves(cost, base):
                self._record(space, count, base, cost, False, "Vela's estimate does not improve", scope)
                continue
            accepted[space.key] = padded(space.channels, count)
            self._record(space, count, base, cost, True, "Vela's estimate improves", scope)
            if scope == "model":
                current = cost
        return accepted, current

    def _record(
        self,
        space: Space,
        candidate: int,
        before_cost: CostLike | None,
        after_cost: CostLike | None,
        accepted: bool,
        reason: str,
        scope: str,
    ) -> None:
        decision = ChannelDecision(
            space=space.key,
            layers=tuple(space.producers),
            channels_before=space.channels,
            channels_after=candidate if accepted else space.channels,
            candidate=candidate,
            cycles_before=before_cost.cycles if before_cost is not None else None,
            cycles_after=after_cost.cycles if after_cost is not None else None,
            sram_before=before_cost.sram_used_bytes if before_cost is not None else None,
            sram_after=after_cost.sram_used_bytes if after_cost is not None else None,
            accepted=accepted,
            reason=reason,
            scope=scope,
        )
        logger.info(
            "pad-channels: %s %s %d -> %d channels (cycles %s -> %s): %s",
            "padded" if accepted else "kept",
            ",".join(space.producers),
            decision.channels_before,
            candidate,
            decision.cycles_before,
            decision.cycles_after,
            reason,
        )
        self.decisions.append(decision)


def _try_cost(judge: _Judge, make: Callable[[], onnx.ModelProto], failures: list[str] | None = None) -> CostLike | None:
    """The oracle's answer for the trial ``make()`` builds, or None when it cannot be built, emitted or compiled.

    Any failure only means "no evidence that this padding helps": the pass keeps the
    model as it is rather than aborting the compilation (the reason is logged and kept).
    """
    try:
        return judge.cost(make())
    except Exception as exc:
        logger.info("pad-channels: candidate cannot be costed: %s: %s", type(exc).__name__, exc)
        if failures is not None:
            failures.append(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        return None


def _key(cost: CostLike) -> tuple[int, int]:
    return (cost.cycles, cost.sram_used_bytes)


def _region_trial(model: IRModel, assigned: dict[str, Layout], region: list[str]) -> onnx.ModelProto:
    """``model`` with ``assigned`` layouts, cut down to the ``region`` nodes (the whole model when empty)."""
    proto = layout_trial(model, assigned)
    if not region:
        return proto
    from nirc.cost import extract_subgraph

    return extract_subgraph(proto, region)


# ----------------------------------------------------------------------------- analysis


@dataclass(frozen=True)
class LayerAlignment:
    """Channel alignment of one Conv/Gemm against a target (a row of ``nirc analyze``).

    Attributes:
        name, op: the node.
        in_channels, out_channels: its data input's and output's channel counts.
        in_brick_gap, out_brick_gap: channels left empty in the last 16-channel brick (0 = aligned).
        out_block_gap: output channels left empty in the last OFM block (``target.ofm_block_depth``).
        space: key of the channel space its output belongs to (rows of one space share the cost columns).
        paddable: whether pad-channels may change that space's layout.
        note: why not, or ``aligned``.
        pad_to: the brick-aligned channel count.
        pad_cycles_delta, pad_sram_delta: whole-model oracle change when the space is padded to ``pad_to``
            (negative = padding saves); None when not costed.
        trim_cycles_delta, trim_sram_delta: the same when it is cut down to the brick multiple below
            (what the channels beyond the last full brick cost); None when not costed or nothing below.
    """

    name: str
    op: str
    in_channels: int | None
    out_channels: int | None
    in_brick_gap: int | None
    out_brick_gap: int | None
    out_block_gap: int | None
    space: str | None
    paddable: bool
    note: str
    pad_to: int | None
    pad_cycles_delta: int | None = None
    pad_sram_delta: int | None = None
    trim_cycles_delta: int | None = None
    trim_sram_delta: int | None = None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def channel_alignment(
    model: IRModel,
    target: Target,
    *,
    costs: bool = True,
    align: int | None = None,
    cost_fn: CostFn | None = None,
) -> list[LayerAlignment]:
    """Per Conv/Gemm: channel counts, their gaps to the brick and OFM block, and what padding would save.

    Args:
        model: the model (not modified).
        target: brick width and OFM block depth come from it, and the oracle compiles for it.
        costs: cost each misaligned, paddable space with the oracle (two Vela runs per space, whole model).
        align: alignment instead of ``target.brick_channels``.
        cost_fn: oracle replacement (tests).
    """
    brick = align or target.brick_channels
    spaces = ChannelSpaces(model.graph)
    deltas: dict[str, tuple[CostLike | None, CostLike | None]] = {}
    baseline: CostLike | None = None
    if costs:
        judge = _Judge(cost_fn or oracle_cost, target)
        baseline = _try_cost(judge, lambda: model.to_proto(check=False))
        if baseline is None:
            logger.warning("channel alignment: cannot cost the model; cost columns left empty")
        for space in spaces.free_spaces():
            if baseline is None or space.channels % brick == 0:
                continue
            up = padded(space.channels, round_up(space.channels, brick))
            pad = _try_cost(judge, functools.partial(layout_trial, model, {space.key: up}))
            low = round_down(space.channels, brick)
            trim = None
            if low > 0:
                trim = _try_cost(judge, functools.partial(layout_trial, model, {space.key: identity(low)}))
            deltas[space.key] = (pad, trim)
    rows = []
    for node in spaces.order:
        if node.op not in ("Conv", "Gemm", "ConvTranspose", "MatMul") or not node.outputs:
            continue
        data = node.inputs[0] if node.inputs else None
        cin = channels_of(data) if isinstance(data, gs.Variable) else None
        cout = channels_of(node.outputs[0])
        space = spaces.space_of.get(node.outputs[0].name)
        note = "aligned" if cout is not None and cout % brick == 0 else ""
        if space is not None and space.fixed is not None and not note:
            note = space.fixed
        elif space is not None and space.derived and not note:
            note = "follows Concat inputs"
        pad, trim = deltas.get(space.key, (None, None)) if space is not None else (None, None)
        rows.append(
            LayerAlignment(
                name=node.name,
                op=node.op if not (node.op == "Conv" and int(node.attrs.get("group", 1)) > 1) else "DepthwiseConv",
                in_channels=cin,
                out_channels=cout,
                in_brick_gap=(-cin) % brick if cin is not None else None,
                out_brick_gap=(-cout) % brick if cout is not None else None,
                out_block_gap=(-cout) % target.ofm_block_depth if cout is not None else None,
                space=space.key if space is not None else None,
                paddable=bool(space is not None and space.free and cout is not None and cout % brick),
                note=note or "paddable",
                pad_to=round_up(cout, brick) if cout is not None else None,
                pad_cycles_delta=_delta(pad, baseline, "cycles"),
                pad_sram_delta=_delta(pad, baseline, "sram_used_bytes"),
                trim_cycles_delta=_delta(trim, baseline, "cycles"),
                trim_sram_delta=_delta(trim, baseline, "sram_used_bytes"),
            )
        )
    return rows


def _delta(cost: CostLike | None, baseline: CostLike | None, attr: str) -> int | None:
    if cost is None or baseline is None:
        return None
    return int(getattr(cost, attr)) - int(getattr(baseline, attr))
