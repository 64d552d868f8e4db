"""Consecutive linear convs with no nonlinearity between them -> one conv, where the oracle says it is faster.

Pattern::

    t = Conv(x, Wa, ba)            # read only by the chain
    u = affine(t)                  # zero or more BatchNormalization / x*s+t / Identity, each read once
    y = Conv(u, Wb, bb)

Covers 1x1 -> 1x1, 1x1 -> kxk, kxk -> 1x1, pointwise -> depthwise and any
other pair :func:`~nirc.passes.block_rules.kernels.compose` can write as one conv.

Why it is exact: a composition of linear translation-equivariant maps is one,
with kernel ``W[o, i, sa*rb + ra] = sum_m Wb[o, m, rb] Wa[m, i, ra]``, stride
``sa * sb`` and bias ``bb + sum Wb * ba``, provided the second conv's zero
padding is what the first conv maps a zero border to. That holds when the
second conv has no padding, or when the first is a 1x1 stride-1 unpadded map
*without bias*. A 1x1 conv with a bias followed by a padded kxk conv is
refused: the kxk conv pads the 1x1's output with zeros, but the merged conv
would pad the 1x1's *input* with zeros and see the bias there.

Merging changes MACs and weights in either direction (a 1x1 bottleneck merged
away multiplies them), so every merge is costed; a merged stride above the
NPU's limit of 3 is refused outright.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx_graphsurgeon as gs

from .._rewrite import Namer, static_shape
from .base import Candidate, Match, Rule, RuleEnv, Writer, remove_block, single_reader
from .kernels import LinearConv, compose, conv_attrs, conv_node_attrs, regroup
from .reparam import chain_map, linear_step

MAX_NPU_STRIDE = 3
"""Vela: conv strides above 3 (with more than one output row) do not run on the NPU."""

_AFFINE_OPS = frozenset({"BatchNormalization", "Mul", "Div", "Add", "Sub", "Identity"})


class MergeConvsRule(Rule):
    """Conv -> (per-channel affine)* -> Conv with nothing nonlinear between -> one Conv."""

    name = "merge-convs"
    exact = True
    ops = ("Conv",)

    def matches(self, graph: gs.Graph) -> Iterator[Match]:
        order = {n.name: i for i, n in enumerate(graph.nodes)}
        for second in list(graph.nodes):
            if second.op != "Conv" or not second.inputs or linear_step(second) is None:
                continue
            chain = [second]
            t = second.inputs[0]
            first = None
            while True:
                src = t.inputs[0] if isinstance(t, gs.Variable) and len(t.inputs) == 1 else None
                if src is None or single_reader(graph, t) is not chain[0] or len(src.outputs) != 1:
                    break
                if src.op == "Conv":
                    first = src
                    break
                if src.op not in _AFFINE_OPS or linear_step(src) is None:
                    break
                chain.insert(0, src)
                t = src.inputs[0]
            if first is None or linear_step(first) is None:
                continue
            nodes = [first, *chain]
            yield Match(
                self.name,
                tuple(sorted((n.name for n in nodes), key=order.__getitem__)),
                (first.inputs[0].name,),
                second.outputs[0].name,
                {"chain": tuple(n.name for n in nodes)},
            )

    def _merged(self, graph: gs.Graph, match: Match) -> tuple[LinearConv, list[int]] | str:
        by_name = {n.name: n for n in graph.nodes}
        steps = [by_name[n] for n in match.info["chain"]]
        shape = static_shape(steps[0].inputs[0])
        if shape is None or len(shape) != 4:
            return "input is not a static 4-D feature map"
        first = linear_step(steps[0])
        assert first is not None
        if isinstance(first[1], str):
            return f"{steps[0].name}: {first[1]}"
        merged = chain_map(steps[1:], first[1].cout)
        if isinstance(merged, str):
            return merged
        total = compose(first[1], merged)
        if isinstance(total, str):
            return total
        if max(total.strides) > MAX_NPU_STRIDE:
            return f"merged stride {total.strides} exceeds the NPU's limit of {MAX_NPU_STRIDE}"
        groups = []
        for step in (steps[0], steps[-1]):
            attrs = conv_attrs(step)
            if not isinstance(attrs, str):
                groups.append(attrs[3])
        if len(groups) == 2:
            groups.append(int(np.gcd(groups[0], groups[1])))
        return total, groups

    def check(self, graph: gs.Graph, match: Match) -> str | None:
        merged = self._merged(graph, match)
        return merged if isinstance(merged, str) else None

    def candidates(self, graph: gs.Graph, match: Match, env: RuleEnv) -> list[Candidate]:
        merged = self._merged(graph, match)
        assert not isinstance(merged, str)
        conv, groups = merged
        weight, group = regroup(conv.weight, groups)
        base = match.output

        def build(g: gs.Graph, namer: Namer) -> list[str]:
            (x,), out = remove_block(g, match)
            w = Writer(g, namer, f"{base}_merged")
            w.conv("conv", x, weight, conv.bias, conv_node_attrs(conv, group), None, output=out)
            return w.created

        return [Candidate("merged", build, note=f"one {conv.kernel[0]}x{conv.kernel[1]} conv, group {group}")]
