"""Eliminate Transposes by computing the ops between a Transpose and its inverse in the original layout."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs
from nirc.passes._rewrite import Namer, const_value, consumers, detach, graph_output_names, has_any_op, producer
from nirc.passes.eliminate_identity import bypass

from nirc.ir import IRModel
from nirc.pass_base import Pass, PassContext

# Ops that act on each element alone: they commute with any permutation of the axes.
_UNARY = frozenset(
    {"Relu", "Sigmoid", "Tanh", "Erf", "Sqrt", "Neg", "Abs", "Exp", "Log", "Reciprocal", "LeakyRelu",
     "HardSwish", "HardSigmoid", "Elu", "Selu", "Softplus", "Identity", "Clip", "Floor", "Ceil", "Round",
     "Sign", "Gelu", "Mish"}
)  # fmt: skip
# Broadcasting binary ops: a permuted operand pair gives the permuted result.
_BINARY = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "PRelu"})
# Reductions keeping their rank: reduce over the permuted axes instead.
_REDUCE = frozenset({"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL2", "ReduceSumSquare"})
_AXIS = frozenset({"Softmax", "LogSoftmax"})
_MAX_REGION = 4096


@dataclass(frozen=True)
class PropagateTransposesPass(Pass):
    """Remove Transpose pairs by running the ops between them in the untransposed layout.

    Pattern: a *region* of ops entered only through Transposes with one permutation
    ``p`` and left only through Transposes (typically ``p``'s inverse), e.g.
    ConvNeXt's ``permute(0, 2, 3, 1)`` -> LayerNorm -> Linear -> GELU -> Linear ->
    ``permute(0, 3, 1, 2)``. Each op in the region computes ``T_p(y)`` from inputs
    ``T_p(x)``; it is rewritten to compute ``y`` from ``x``, the entry Transposes go,
    and each exit becomes ``T_q`` composed with ``T_p`` (removed when that is the
    identity). Rewrites, all exact (same elements, same arithmetic; reductions may
    sum in another order, i.e. up to float rounding):

    * elementwise unary ops: unchanged;
    * broadcasting binary ops: a constant operand ``c`` (aligned to the rank) becomes
      ``c.transpose(p^-1)`` so that ``T_p(x) op c = T_p(x op c')``; both operands
      from the region or from an entry Transpose with the same ``p`` are fine;
    * ReduceMean/Sum/Max/Min/L2/SumSquare with ``keepdims=1``: axis ``a`` becomes ``p[a]``;
      Softmax/LogSoftmax likewise;
    * MatMul by a constant 2-D weight on a rank-4 region with ``p[-1] = 1`` (the
      contracted axis is the channel axis of ``x``): ``T_p(x) @ W = T_p(Conv(x, W^T))``
      with a 1x1 Conv, which the NPU runs as such (no FULLY_CONNECTED and RESHAPEs).

    Regions reading any other tensor, writing a graph output, or containing any other
    op are left alone; a region is only rewritten when it removes Transposes.
    """

    name = "propagate-transposes"
    exact = True

    def run(self, model: IRModel, ctx: PassContext) -> bool:
        graph = model.graph
        if not has_any_op(graph, ["Transpose"]):
            return False
        namer = Namer(graph)
        changed = False
        progress = True
        while progress:
            progress = False
            for node in list(graph.nodes):
                if node.op != "Transpose" or not node.outputs or not node.inputs:
                    continue
                region = _find_region(graph, node)
                if region is None:
                    continue
                removed = _rewrite(graph, region, namer)
                ctx.count("regions")
                ctx.count("transposes_removed", removed)
                changed = progress = True
                graph.cleanup()
                break
        return changed


def _perm(node: gs.Node) -> tuple[int, ...] | None:
    shape = node.inputs[0].shape if node.inputs else None
    if shape is None:
        return None
    rank = len(shape)
    perm = node.attrs.get("perm")
    return tuple(int(p) for p in perm) if perm is not None else tuple(range(rank - 1, -1, -1))


def _invert(perm: Sequence[int]) -> tuple[int, ...]:
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return tuple(inv)


@dataclass
class _Region:
    perm: tuple[int, ...]
    entries: list[gs.Node] = field(default_factory=list)
    nodes: list[gs.Node] = field(default_factory=list)
    exits: list[gs.Node] = field(default_factory=list)


def _static(tensor: gs.Tensor) -> bool:
    return tensor.shape is not None and all(isinstance(d, int | np.integer) for d in tensor.shape)


def _find_region(graph: gs.Graph, seed: gs.Node) -> _Region | None:
    """Grow the region reachable from ``seed``'s output; None unless it is closed and removes Transposes."""
    perm = _perm(seed)
    if perm is None or perm == tuple(range(len(perm))) or const_value(seed.inputs[0]) is not None:
        return None
    region = _Region(perm)
    outputs = graph_output_names(graph)
    inside: set[int] = set()  # ids of tensors in the transposed layout
    members: set[int] = set()  # ids of region nodes, entries and exits
    pending: list[gs.Node] = []
    pending_ids: set[int] = set()
    frontier: list[gs.Tensor] = []

    def enter(node: gs.Node) -> None:
        region.entries.append(node)
        members.add(id(node))
        inside.add(id(node.outputs[0]))
        frontier.append(node.outputs[0])

    enter(seed)
    progress = True
    while progress:
        progress = False
        while frontier:
            tensor = frontier.pop()
            if tensor.name in outputs or not _static(tensor):
                return None
            for node in consumers(tensor):
                if id(node) in members or id(node) in pending_ids:
                    continue
                if node.op == "Transpose" and node.inputs[0] is tensor and _perm(node) is not None:
                    region.exits.append(node)
                    members.add(id(node))
                    continue
                pending.append(node)
                pending_ids.add(id(node))
        for node in list(pending):
            verdict = _classify(node, region, inside)
            if verdict is False:
                return None
            if verdict is None:
                continue  # an input is produced further inside the region: retry later
            for t in node.inputs:
                src = producer(t) if not isinstance(t, gs.Constant) else None
                if id(t) not in inside and src is not None and src.op == "Transpose" and const_value(t) is None:
                    enter(src)
            pending.remove(node)
            pending_ids.discard(id(node))
            region.nodes.append(node)
            members.add(id(node))
            for out in node.outputs:
                inside.add(id(out))
                frontier.append(out)
            progress = True
            if len(region.nodes) > _MAX_REGION:
                return None
        if frontier:
            progress = True
    if pending:
        return None
    identity = tuple(range(len(perm)))
    kept = sum(1 for x in region.exits if tuple(perm[k] for k in (_perm(x) or ())) != identity)
    return region if len(region.entries) + len(region.exits) > kept else None


def _operand_ok(t: gs.Tensor, region: _Region, inside: set[int]) -> bool | None:
    """A region tensor, a constant of at most the region's rank, or an entry Transpose's output."""
    if id(t) in inside:
        return True
    value = const_value(t)
    if value is not None:
        return bool(value.ndim <= len(region.perm))
    src = producer(t)
    if src is not None and src.op == "Transpose" and _perm(src) == region.perm and _static(t):
        return True
    if src is None:
        return False
    return None  # maybe produced by a region node not classified yet


def _classify(node: gs.Node, region: _Region, inside: set[int]) -> bool | None:
    """True if ``node`` can join the region, False if it blocks it, None if undecided yet."""
    rank = len(region.perm)
    if len(node.outputs) != 1:
        return False
    if node.op in _UNARY:
        extra = [const_value(t) for t in node.inputs[1:] if t.name]
        return id(node.inputs[0]) in inside and all(v is not None and v.size == 1 for v in extra)
    if node.op in _BINARY:
        if len(node.inputs) != 2:
            return False
        verdicts = [_operand_ok(t, region, inside) for t in node.inputs]
        if any(v is False for v in verdicts):
            return False
        out = node.outputs[0]
        if out.shape is None or len(out.shape) != rank:
            return False
        return None if any(v is None for v in verdicts) else True
    if node.op in _REDUCE:
        axes = _reduce_axes(node)
        return id(node.inputs[0]) in inside and int(node.attrs.get("keepdims", 1)) == 1 and axes is not None
    if node.op in _AXIS:
        return id(node.inputs[0]) in inside
    if node.op == "MatMul":
        weight = const_value(node.inputs[1]) if len(node.inputs) == 2 else None
        return (
            rank == 4 and region.perm[-1] == 1 and id(node.inputs[0]) in inside and weight is not None
            and weight.ndim == 2 and id(node.inputs[1]) not in inside
        )  # fmt: skip
    return False


def _reduce_axes(node: gs.Node) -> list[int] | None:
    """Constant axes of a reduction (input at opset 18, attribute before), [] for all axes."""
    if len(node.inputs) > 1 and node.inputs[1].name:
        value = const_value(node.inputs[1])
        return None if value is None else [int(a) for a in value.reshape(-1)]
    return [int(a) for a in node.attrs.get("axes", [])]


def _rewrite(graph: gs.Graph, region: _Region, namer: Namer) -> int:
    """Rewire the region into the untransposed layout; returns how many Transposes went."""
    perm = region.perm
    inv = _invert(perm)
    rank = len(perm)
    before = len(region.entries) + len(region.exits)
    untransposed = {id(e.outputs[0]): e.inputs[0] for e in region.entries}
    for node in region.nodes:
        for i, t in enumerate(list(node.inputs)):
            if id(t) in untransposed:
                node.inputs[i] = untransposed[id(t)]
            elif node.op in _BINARY and (value := const_value(t)) is not None and value.size != 1:
                aligned = value.reshape((1,) * (rank - value.ndim) + value.shape)
                node.inputs[i] = namer.constant(f"{t.name}_untransposed", np.ascontiguousarray(aligned.transpose(inv)))
        if node.op in _REDUCE:
            axes = _reduce_axes(node) or []
            new_axes = sorted(perm[a % rank] for a in axes)
            if len(node.inputs) > 1 and node.inputs[1].name:
                node.inputs[1] = namer.constant(f"{node.name}_axes", np.asarray(new_axes, np.int64))
            elif axes:
                node.attrs["axes"] = new_axes
        elif node.op in _AXIS:
            node.attrs["axis"] = perm[int(node.attrs.get("axis", -1)) % rank]
        elif node.op == "MatMul":
            weight = np.asarray(const_value(node.inputs[1]))
            kernel = np.ascontiguousarray(weight.T.reshape(weight.shape[1], weight.shape[0], 1, 1))
            node.op = "Conv"
            node.attrs = {"kernel_shape": [1, 1]}
            node.inputs[1] = namer.constant(f"{node.name}_weight", kernel)
        for out in node.outputs:
            out.shape = [out.shape[inv[j]] for j in range(rank)]
    kept = 0
    for exit_ in region.exits:
        composed = [perm[k] for k in (_perm(exit_) or ())]
        if composed == list(range(rank)):
            # An identity: bypass it; one writing a graph output stays as an Identity to keep the name.
            exit_.op, exit_.attrs = "Identity", {}
            bypass(graph, exit_)
        else:
            exit_.attrs["perm"] = composed
            kept += 1
    for entry in region.entries:
        if not entry.outputs[0].outputs and entry.outputs[0].name not in graph_output_names(graph):
            detach(entry)
    return before - kept
