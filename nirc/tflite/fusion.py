"""Activation fusion plan: which Relu/Clip nodes fold into their producer.

TFLite's ``fused_activation_function`` clamps in the producer's output stage; Vela
maps it onto the NPU's output clamp for free, whereas a standalone RELU costs a
full elementwise pass over the feature map.  A node is fused only when nothing
else can observe the unclamped tensor: a single consumer and not a graph output.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Set
from dataclasses import dataclass, field
from typing import Any

import onnx
from tflite.ActivationFunctionType import ActivationFunctionType

from nirc.tflite.builder import BuiltinOperator
from nirc.tflite.graph import GraphInfo
from nirc.tflite.rules import OpRule

Activation: Any = ActivationFunctionType

#: The standalone op equal to each fusable activation (for producers without one).
STANDALONE_ACTIVATION: dict[int, int] = {
    int(Activation.RELU): BuiltinOperator.RELU,
    int(Activation.RELU6): BuiltinOperator.RELU6,
    int(Activation.RELU_N1_TO_1): BuiltinOperator.RELU_N1_TO_1,
}


def clip_bounds(info: GraphInfo, node: onnx.NodeProto) -> tuple[float | None, float | None] | None:
    """Constant (min, max) of a Clip (None for an absent bound), or None if dynamic."""
    bounds: list[float | None] = []
    for slot in (1, 2):
        name = node.input[slot] if len(node.input) > slot else ""
        if not name:
            bounds.append(None)
            continue
        value = info.const(name)
        if value is None:
            return None
        bounds.append(float(value.reshape(-1)[0]))
    return bounds[0], bounds[1]


def activation_kind(info: GraphInfo, node: onnx.NodeProto) -> int | None:
    """The TFLite fused activation equal to this Relu/Clip node, if there is one."""
    if node.op_type == "Relu":
        return int(Activation.RELU)
    if node.op_type != "Clip":
        return None
    bounds = clip_bounds(info, node)
    if bounds is None:
        return None
    lo, hi = bounds
    if lo == 0.0 and (hi is None or (math.isinf(hi) and hi > 0)):
        return int(Activation.RELU)
    if lo == 0.0 and hi == 6.0:
        return int(Activation.RELU6)
    if lo == -1.0 and hi == 1.0:
        return int(Activation.RELU_N1_TO_1)
    return None


@dataclass
class FusionPlan:
    """``fused[producer] = (activation, activation node output)``; ``skipped`` nodes vanish."""

    fused: dict[int, tuple[int, str]] = field(default_factory=dict)
    skipped: set[int] = field(default_factory=set)

    def output_name(self, index: int, node: onnx.NodeProto) -> str:
        """The ONNX name whose tensor the node's (first) output really becomes."""
        hit = self.fused.get(index)
        return hit[1] if hit else node.output[0]


def plan_fusion(info: GraphInfo, rules: Mapping[str, OpRule[Any]], exclude: Set[int] = frozenset()) -> FusionPlan:
    """Fuse each Relu/Clip into its producer where nothing else sees the unclamped tensor.

    ``exclude``: producers that must keep their activation separate (nodes lowered as
    part of a multi-node pattern, whose TFLite op may have no fused activation).
    """
    plan = FusionPlan()
    for idx, node in info.live_nodes():
        kind = activation_kind(info, node)
        if kind is None:
            continue
        src = node.input[0]
        producer = info.producers.get(src)
        if producer is None or producer in info.folded or producer in plan.fused or producer in exclude:
            continue
        pnode = info.nodes[producer]
        rule = rules.get(pnode.op_type)
        if rule is None or not rule.fusable(info, pnode):
            continue
        if len([o for o in pnode.output if o]) != 1 or pnode.output[0] != src:
            continue
        if info.users(src) != [(idx, 0)] or info.is_graph_output(src):
            continue
        plan.fused[producer] = (kind, node.output[0])
        plan.skipped.add(idx)
    return plan
