"""Structural re-parameterisation: parallel linear branches summed into one conv (RepVGG, ACNet, DBB).

Pattern (written like the ONNX it matches)::

    y = Add(Add(b1(x), b2(x)), b3(x))     # any tree of two-operand Adds / Sum
    bi = chain of linear maps of x        # Conv, BatchNormalization, x*s+t, AveragePool, Identity, or nothing

Every branch reads the same tensor ``x`` and every intermediate tensor is read
only inside the block. A branch is composed into one :class:`LinearConv`
(RepVGG's ``conv3x3 -> BN``, ``conv1x1 -> BN``, ``BN`` (identity branch);
ACNet's ``1x3`` / ``3x1``; DBB's ``1x1 -> kxk`` and ``1x1 -> AvgPool`` where
exact), the branches are embedded in their common window and summed.

Why it is exact: convolution is linear, so a sum of convs over the same input
is the conv with the summed (aligned) kernels and biases; a smaller kernel is
the larger one with zero taps outside it, aligned by the difference of the
top/left paddings -- a ``1x1`` pad-0 branch inside a ``3x3`` pad-1 block is the
``3x3`` kernel's centre tap (see :mod:`nirc.passes.block_rules.kernels`). The
identity branch is the diagonal 1x1 kernel. The result is written with the
largest group count its weight is block-diagonal in (depthwise branches stay
depthwise).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx_graphsurgeon as gs

from .._rewrite import Namer, producer, static_shape
from .base import Candidate, Match, Rule, RuleEnv, Writer, remove_block, single_reader
from .kernels import (
    LinearConv,
    add,
    avgpool_conv,
    batchnorm_affine,
    channel_affine,
    compose,
    conv_attrs,
    conv_node_attrs,
    conv_of,
    elementwise_affine,
    identity_conv,
    regroup,
)

_STEP_OPS = frozenset({"Conv", "BatchNormalization", "Mul", "Div", "Add", "Sub", "AveragePool", "Identity"})


def linear_step(node: gs.Node) -> tuple[gs.Tensor, LinearConv | str] | None:
    """``(data input, map)`` when ``node`` is a linear map of one feature map (map may be a reason it is not exact).

    None when the node is not a candidate step at all (nonlinear, or an Add of two feature maps).
    """
    if node.op not in _STEP_OPS or len(node.outputs) != 1 or not node.inputs:
        return None
    x = node.inputs[0]
    if node.op == "Conv":
        return x, conv_of(node)
    if node.op == "BatchNormalization":
        affine = batchnorm_affine(node)
        return None if affine is None else (x, channel_affine(*affine))
    if node.op == "AveragePool":
        shape = static_shape(x)
        return None if shape is None or len(shape) != 4 else (x, avgpool_conv(node, shape[1]))
    if node.op == "Identity":
        shape = static_shape(x)
        return None if shape is None or len(shape) != 4 else (x, identity_conv(shape[1]))
    elementwise = elementwise_affine(node)
    if elementwise is None:
        return None
    data, scale, shift = elementwise
    return data, channel_affine(scale, shift)


def walk_chain(graph: gs.Graph, t: gs.Tensor) -> tuple[gs.Tensor, list[gs.Node]]:
    """Follow single-use linear steps up from ``t``: ``(source tensor, steps in execution order)``."""
    steps: list[gs.Node] = []
    while True:
        src = producer(t)
        if src is None or single_reader(graph, t) is None:
            return t, steps
        step = linear_step(src)
        if step is None:
            return t, steps
        steps.insert(0, src)
        t = step[0]


def chain_map(steps: list[gs.Node], channels: int) -> LinearConv | str:
    """The composition of ``steps`` (identity when empty), or why it is not one exact conv."""
    total = identity_conv(channels)
    for node in steps:
        step = linear_step(node)
        assert step is not None
        if isinstance(step[1], str):
            return f"{node.name}: {step[1]}"
        composed = compose(total, step[1])
        if isinstance(composed, str):
            return f"{node.name}: {composed}"
        total = composed
    return total


def _is_sum(node: gs.Node) -> bool:
    """An Add of two feature maps, or a Sum of several, all of the output's shape (no broadcasting)."""
    if node.op not in ("Add", "Sum") or len(node.outputs) != 1 or len(node.inputs) < 2:
        return False
    if node.op == "Add" and len(node.inputs) != 2:
        return False
    shape = static_shape(node.outputs[0])
    return shape is not None and all(
        isinstance(t, gs.Variable) and t.name and static_shape(t) == shape for t in node.inputs
    )


_Branches = tuple[list[LinearConv], list[bool], list[int], tuple[int, ...]]


class ReparamRule(Rule):
    """Sum of parallel linear branches of one input -> one conv (structural re-parameterisation)."""

    name = "reparam"
    exact = True
    ops = ("Add", "Sum")

    def matches(self, graph: gs.Graph) -> Iterator[Match]:
        order = {n.name: i for i, n in enumerate(graph.nodes)}
        for root in list(graph.nodes):
            if not _is_sum(root):
                continue
            reader = single_reader(graph, root.outputs[0])
            if reader is not None and _is_sum(reader):
                continue  # not the top of the sum tree
            sums, leaves = self._tree(graph, root)
            sources: list[gs.Tensor] = []
            chains: list[list[gs.Node]] = []
            for leaf in leaves:
                source, steps = walk_chain(graph, leaf)
                sources.append(source)
                chains.append(steps)
            if len({s.name for s in sources}) != 1 or all(not c for c in chains):
                continue
            nodes = sorted({n.name for c in chains for n in c} | {n.name for n in sums}, key=order.__getitem__)
            yield Match(
                self.name,
                tuple(nodes),
                (sources[0].name,),
                root.outputs[0].name,
                {"chains": tuple(tuple(n.name for n in c) for c in chains)},
            )

    @staticmethod
    def _tree(graph: gs.Graph, root: gs.Node) -> tuple[list[gs.Node], list[gs.Tensor]]:
        """The sum nodes under ``root`` (single-use inner sums) and the tensors they add up."""
        sums: list[gs.Node] = [root]
        leaves: list[gs.Tensor] = []
        todo = [(t, root) for t in root.inputs]
        while todo:
            t, parent = todo.pop(0)
            src = producer(t)
            if src is not None and _is_sum(src) and single_reader(graph, t) is parent:
                sums.append(src)
                todo.extend((u, src) for u in src.inputs)
            else:
                leaves.append(t)
        return sums, leaves

    def _maps(self, graph: gs.Graph, match: Match) -> _Branches | str:
        """Each branch's linear map, whether the branch is channelwise (no conv step), conv group counts, x's shape."""
        by_name = {n.name: n for n in graph.nodes}
        x = graph.tensors()[match.inputs[0]]
        shape = static_shape(x)
        if shape is None or len(shape) != 4:
            return "input is not a static 4-D feature map"
        maps: list[LinearConv] = []
        channelwise: list[bool] = []
        groups: list[int] = []
        for chain in match.info["chains"]:
            steps = [by_name[n] for n in chain]
            mapped = chain_map(steps, shape[1])
            if isinstance(mapped, str):
                return mapped
            maps.append(mapped)
            channelwise.append(all(step.op not in ("Conv", "AveragePool") for step in steps))
            for step in steps:
                attrs = conv_attrs(step) if step.op == "Conv" else None
                if attrs is not None and not isinstance(attrs, str):
                    groups.append(attrs[3])
        return maps, channelwise, groups, tuple(shape)

    def _keep_identity(self, graph: gs.Graph, match: Match) -> tuple[LinearConv, list[int], np.ndarray] | None:
        """The conv branches merged, and the per-channel scale of the one channelwise (identity) branch.

        The identity branch's shift goes into the merged bias; None when there is not exactly one
        channelwise branch beside at least one conv branch.
        """
        found = self._maps(graph, match)
        if isinstance(found, str):
            return None
        maps, channelwise, groups, shape = found
        if channelwise.count(True) != 1 or len(maps) < 2:
            return None
        ident = maps[channelwise.index(True)]
        if ident.strides != (1, 1) or ident.weight.shape[2:] != (1, 1) or any(ident.pads):
            return None
        scale = np.diagonal(ident.weight[:, :, 0, 0]).copy()
        if not np.allclose(ident.weight[:, :, 0, 0], np.diag(scale)):
            return None
        rest = [m for m, cw in zip(maps, channelwise, strict=True) if not cw]
        conv_chains = [c for c, cw in zip(match.info["chains"], channelwise, strict=True) if not cw]
        if len(conv_chains) == 1 and len(conv_chains[0]) == 1:
            return None  # already one conv beside the identity: the residual form is the block itself
        summed = add(rest, shape[2:])
        if isinstance(summed, str) or summed.out_size(shape[2:]) != tuple(shape[2:]):
            return None
        summed = LinearConv(summed.weight, summed.bias + ident.bias, summed.strides, summed.pads)
        return summed, groups, scale

    def _merged(self, graph: gs.Graph, match: Match) -> tuple[LinearConv, list[int]] | str:
        found = self._maps(graph, match)
        if isinstance(found, str):
            return found
        maps, _, groups, shape = found
        summed = add(maps, shape[2:])
        if isinstance(summed, str):
            return summed
        if summed.cin == summed.cout:
            groups.append(summed.cin)  # all-channelwise branches (BN, pooling) stay depthwise
        return summed, groups

    def check(self, graph: gs.Graph, match: Match) -> str | None:
        merged = self._merged(graph, match)
        return merged if isinstance(merged, str) else None

    def candidates(self, graph: gs.Graph, match: Match, env: RuleEnv) -> list[Candidate]:
        merged = self._merged(graph, match)
        assert not isinstance(merged, str)
        conv, groups = merged
        weight, group = regroup(conv.weight, groups)
        dtype = np.float32
        base = match.output

        def build(g: gs.Graph, namer: Namer) -> list[str]:
            (x,), out = remove_block(g, match)
            w = Writer(g, namer, f"{base}_reparam", dtype)
            w.conv("conv", x, weight, conv.bias, conv_node_attrs(conv, group), None, output=out)
            return w.created

        branches = len(match.info["chains"])
        found = [
            Candidate("reparameterised", build, note=f"{branches} branches -> one {conv.kernel} conv, group {group}")
        ]
        kept = self._keep_identity(graph, match)
        if kept is not None:
            found.append(self._residual_candidate(match, *kept))
        return found

    @staticmethod
    def _residual_candidate(match: Match, conv: LinearConv, groups: list[int], scale: np.ndarray) -> Candidate:
        """Conv branches merged, the identity branch kept as ``x * scale`` added after the conv.

        Why offer it: folding the identity into the centre tap widens each output channel's weight
        range, so per-channel int8 rounds the other taps coarsely; a residual Add keeps the merged
        kernel's range that of the conv branches at the price of one elementwise Add (and, unless the
        scale is 1, a depthwise 1x1 conv: its per-channel int8 weights hold ``scale`` more exactly than
        an elementwise Mul's one per-tensor constant range -- on the RepVGG fixture 23.5 vs 21.7 dB).
        The accuracy guard chooses between the two.
        """
        weight, group = regroup(conv.weight, groups)
        base = match.output
        unit = bool(np.allclose(scale, 1.0))

        def build(g: gs.Graph, namer: Namer) -> list[str]:
            (x,), out = remove_block(g, match)
            w = Writer(g, namer, f"{base}_reparam", np.float32)
            shape = static_shape(out)
            y = w.conv("conv", x, weight, conv.bias, conv_node_attrs(conv, group), shape)
            depthwise = {"kernel_shape": [1, 1], "group": scale.size}
            skip = x if unit else w.conv("scale", x, scale.reshape(-1, 1, 1, 1), None, depthwise, shape)
            w.node("Add", "add", [y, skip], shape, output=out)
            return w.created

        return Candidate(
            "reparameterised-residual",
            build,
            note=f"conv branches -> one {conv.kernel} conv, group {group}; identity kept as a residual "
            + ("Add" if unit else "depthwise 1x1 + Add"),
            accuracy_preferred=True,
        )
