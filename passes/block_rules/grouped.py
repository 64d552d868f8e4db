"""Grouped conv: keep it grouped (split + per-group convs + concat on the NPU) or write it with fewer groups.

Pattern::

    y = Conv<group = g>(x, W, b)      # 1 < g, more than one input channel per group (not depthwise)

The emitter lowers a grouped conv to SPLIT + ``g`` CONV_2Ds + CONCATENATION;
each small conv pays Vela's per-op overhead and uses the MAC array poorly.
Candidates are the same conv with ``d`` groups for divisors ``d`` of ``g``
(``d = 1``: one dense conv), whose weight is block-diagonal with zero
off-diagonal blocks.

Why it is exact: group ``j`` of a conv with ``d`` groups reads input channels
``j*C/d .. (j+1)*C/d``; the weight of an output channel of original group
``i`` is zero on every input channel outside group ``i``, so it sums exactly
the products it summed before (plus exact zeros). More MACs, fewer ops: only
the oracle knows which wins.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from .._rewrite import Namer, const_value, input_at
from .base import Build, Candidate, Match, Rule, RuleEnv, Writer, remove_block
from .kernels import block_diagonal, conv_attrs, conv_of, divisors

MAX_CANDIDATES = 4


class GroupedConvRule(Rule):
    """Grouped Conv -> the same conv with fewer groups (dense block-diagonal weight), chosen by cost."""

    name = "grouped"
    exact = True
    ops = ("Conv",)
    rematch_own = False

    def matches(self, graph: gs.Graph) -> Iterator[Match]:
        for node in list(graph.nodes):
            if node.op != "Conv" or int(node.attrs.get("group", 1)) <= 1 or len(node.outputs) != 1:
                continue
            weight = const_value(input_at(node, 1))
            if weight is None or weight.ndim != 4 or weight.shape[1] == 1:
                continue  # depthwise: dense would multiply MACs by the channel count
            yield Match(self.name, (node.name,), (node.inputs[0].name,), node.outputs[0].name)

    def check(self, graph: gs.Graph, match: Match) -> str | None:
        node = next(n for n in graph.nodes if n.name == match.nodes[0])
        conv = conv_of(node)
        return conv if isinstance(conv, str) else None

    def candidates(self, graph: gs.Graph, match: Match, env: RuleEnv) -> list[Candidate]:
        node = next(n for n in graph.nodes if n.name == match.nodes[0])
        conv = conv_of(node)
        attrs = conv_attrs(node)
        assert not isinstance(conv, str) and not isinstance(attrs, str)
        group = attrs[3]
        coarser = divisors(group)[:-1]
        if len(coarser) > MAX_CANDIDATES:
            coarser = [1, *coarser[-(MAX_CANDIDATES - 1) :]]
        out: list[Candidate] = []
        for d in coarser:
            weight = conv.weight if d == 1 else block_diagonal(conv.weight, d)
            assert weight is not None
            label = "dense" if d == 1 else f"groups={d}"
            out.append(
                Candidate(
                    label, _writer(match, weight, conv.bias, {**node.attrs, "group": d}), note=f"{group} groups -> {d}"
                )
            )
        return out


def _writer(match: Match, weight: np.ndarray, bias: np.ndarray, attrs: dict[str, Any]) -> Build:
    def build(g: gs.Graph, namer: Namer) -> list[str]:
        (x,), y = remove_block(g, match)
        w = Writer(g, namer, f"{match.nodes[0]}_g{attrs['group']}")
        w.conv("conv", x, weight, bias, attrs, None, output=y)
        return w.created

    return build
