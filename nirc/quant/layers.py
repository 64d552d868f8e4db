"""The layers whose int8 weights are rounded per output channel: constant-weight Convs and Gemms.

Why one place: the weight-rounding remedies (bias correction, AdaRound) work on exactly the weights
the emitter quantizes symmetric per channel along axis 0 -- a dense or depthwise Conv's kernel and a
Gemm's ``transB=1`` matrix -- and must agree on which those are.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx


@dataclass(frozen=True)
class WeightedLayer:
    """A Conv or Gemm with a constant weight; ``bias`` is its constant bias initializer, if any."""

    node: onnx.NodeProto
    weight: str
    bias: str | None
    depthwise: bool


def attr_int(node: onnx.NodeProto, name: str, default: int) -> int:
    for a in node.attribute:
        if a.name == name:
            return int(a.i)
    return default


def weighted_layers(proto: onnx.ModelProto) -> list[WeightedLayer]:
    """Convs (dense, or depthwise: one input channel per group) and Gemms (transB=1), in graph order."""
    inits = {i.name: i for i in proto.graph.initializer}
    found = []
    for node in proto.graph.node:
        if len(node.input) < 2 or node.input[1] not in inits:
            continue
        bias = node.input[2] if len(node.input) > 2 and node.input[2] in inits else None
        if node.op_type == "Conv":
            dims = list(inits[node.input[1]].dims)
            group = attr_int(node, "group", 1)
            if len(dims) == 4 and (group == 1 or (dims[1] == 1 and group == dims[0])):
                found.append(WeightedLayer(node, node.input[1], bias, group > 1))
        elif node.op_type == "Gemm" and attr_int(node, "transB", 0) == 1 and attr_int(node, "transA", 0) == 0:
            found.append(WeightedLayer(node, node.input[1], bias, False))
    return found
