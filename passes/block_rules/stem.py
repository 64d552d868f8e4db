"""The few-channel stem: re-lay out the model's input so the first conv uses the MAC array (explicit option).

Pattern::

    y = Conv(x, W, b)      # x a graph input with C < 8 channels (RGB: 3), read only by this conv

On ethos-u65-256 a 3x3 stride-2 conv from 224x224x3 runs at ~2.5% MAC
utilisation: the IFM is stored in 16-channel bricks and the MAC array is fed
8 input channels at a time, so 3 channels waste most of every step (measured
with Vela 5.2: 1.72 M cycles; input padded to 8 channels 1.00 M, -42%;
space-to-depth 2x2 to 112x112x12 with a 2x2 conv 1.32 M, -23%).

Both rewrites change the *shape of the input tensor the user feeds*, so they
only run when asked for (``stem`` option of ``substitute-blocks``) and every
applied one is reported as an :class:`~nirc.passes.block_rules.base.InputLayout`
saying how to make the new feed:

* ``pad-channels``: the input gets ``n`` channels (8 or 16), the original ones
  first. Exact because the conv's weights for the added channels are zero, so
  whatever finite values they hold contribute exactly 0 (feed zeros, which
  also keeps the int8 input range unchanged).
* ``space-to-depth``: the input becomes ONNX ``SpaceToDepth(x, 2)``
  (``[N, 4C, H/2, W/2]``) and the conv becomes the stride-``s/2`` conv of
  :func:`~nirc.passes.block_rules.kernels.space_to_depth_conv`, which reads the same
  pixels with the same weights (exact for stride divisible by 2 and even H, W).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import numpy as np
import onnx_graphsurgeon as gs

from .._rewrite import Namer, static_shape
from .base import Build, Candidate, InputLayout, Match, Rule, RuleEnv, nodes_by_name, single_reader
from .kernels import LinearConv, conv_attrs, conv_node_attrs, conv_of, space_to_depth_conv

StemMode = Literal["none", "pad-channels", "space-to-depth", "auto"]
STEM_MODES: tuple[StemMode, ...] = ("none", "pad-channels", "space-to-depth", "auto")
MAX_STEM_CHANNELS = 8
"""Inputs with fewer channels than this are stems (the MAC array takes 8 input channels per step)."""
PAD_TARGETS = (8, 16)


class StemRule(Rule):
    """A conv on a few-channel graph input -> the same conv on a channel-padded or space-to-depth input."""

    name = "stem"
    exact = True
    ops = ("Conv",)

    def __init__(self, mode: StemMode) -> None:
        if mode not in STEM_MODES:
            raise ValueError(f"stem must be one of {', '.join(STEM_MODES)}, got {mode!r}")
        self.mode = mode

    def matches(self, graph: gs.Graph) -> Iterator[Match]:
        for x in graph.inputs:
            shape = static_shape(x)
            if shape is None or len(shape) != 4 or shape[1] >= MAX_STEM_CHANNELS:
                continue
            conv = single_reader(graph, x)
            if conv is None or conv.op != "Conv" or conv.inputs[0] is not x or len(conv.outputs) != 1:
                continue
            if any(t is x for t in conv.inputs[1:]):
                continue
            yield Match(self.name, (conv.name,), (x.name,), conv.outputs[0].name)

    def check(self, graph: gs.Graph, match: Match) -> str | None:
        node = nodes_by_name(graph)[match.nodes[0]]
        conv = conv_of(node)
        if isinstance(conv, str):
            return conv
        attrs = conv_attrs(node)
        if not isinstance(attrs, str) and attrs[3] != 1:
            return "grouped stem conv"
        return None

    def candidates(self, graph: gs.Graph, match: Match, env: RuleEnv) -> list[Candidate]:
        node = nodes_by_name(graph)[match.nodes[0]]
        conv = conv_of(node)
        assert not isinstance(conv, str)
        x = graph.tensors()[match.inputs[0]]
        shape = static_shape(x)
        assert shape is not None
        out: list[Candidate] = []
        if self.mode in ("pad-channels", "auto"):
            for n in PAD_TARGETS:
                if n <= shape[1]:
                    continue
                layout = InputLayout(x.name, "pad-channels", shape, (shape[0], n, *shape[2:]))
                weight = np.zeros((conv.cout, n, *conv.kernel))
                weight[:, : shape[1]] = conv.weight
                padded = LinearConv(weight, conv.bias, conv.strides, conv.pads)
                note = f"input {shape[1]} -> {n} channels (zero weights for the added ones)"
                out.append(
                    Candidate(f"pad-channels-{n}", _rewrite(match, padded, layout), note=note, input_layout=layout)
                )
        if self.mode in ("space-to-depth", "auto"):
            s2d = space_to_depth_conv(conv, (2, 2), shape[2:])
            if not isinstance(s2d, str):
                layout = InputLayout(
                    x.name, "space-to-depth", shape, (shape[0], 4 * shape[1], shape[2] // 2, shape[3] // 2), 2
                )
                note = f"SpaceToDepth(2) input, {s2d.kernel[0]}x{s2d.kernel[1]} stride {s2d.strides[0]} conv"
                out.append(Candidate("space-to-depth", _rewrite(match, s2d, layout), note=note, input_layout=layout))
        return out


def _rewrite(match: Match, conv: LinearConv, layout: InputLayout) -> Build:
    def build(g: gs.Graph, namer: Namer) -> list[str]:
        x = g.tensors()[layout.input]
        node = nodes_by_name(g)[match.nodes[0]]
        x.shape = list(layout.new_shape)
        node.inputs[1] = namer.constant(f"{node.name}_stem_w", conv.weight.astype(np.float32))
        bias = namer.constant(f"{node.name}_stem_b", conv.bias.astype(np.float32))
        if len(node.inputs) > 2:
            node.inputs[2] = bias
        else:
            node.inputs.append(bias)
        node.attrs.clear()
        node.attrs.update(conv_node_attrs(conv, 1))
        return [node.name]

    return build
