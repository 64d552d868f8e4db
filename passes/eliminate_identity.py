"""Remove Identity and inference-mode Dropout nodes."""

from __future__ import annotations

from dataclasses import dataclass

import onnx_graphsurgeon as gs

from nirc.ir import IRModel
from nirc.pass_base import Pass, PassContext

_PASS_THROUGH = ("Identity", "Dropout")


def bypass(graph: gs.Graph, node: gs.Node) -> bool:
    """Reroute readers of ``node.outputs[0]`` to ``node.inputs[0]``; False when not possible.

    A graph output keeps its name (users and reports refer to it), so when the
    pass-through feeds a graph output we instead make the producer write it.
    """
    src, dst = node.inputs[0], node.outputs[0]
    graph_outputs = {t.name for t in graph.outputs}
    if dst.name in graph_outputs:
        if isinstance(src, gs.Constant) or src.name in graph_outputs or not src.inputs:
            return False
        if any(t is src for t in graph.inputs):
            return False
        producer = src.inputs[0]
        if len(src.outputs) != 1:  # src read elsewhere too: rewiring would drop that reader
            return False
        producer.outputs[producer.outputs.index(src)] = dst
        node.outputs.clear()
        node.inputs.clear()
        return True
    for consumer in list(dst.outputs):
        for i, tensor in enumerate(consumer.inputs):
            if tensor is dst:
                consumer.inputs[i] = src
    node.outputs.clear()
    node.inputs.clear()
    return True


@dataclass(frozen=True)
class EliminateIdentityPass(Pass):
    """Remove Identity and inference-mode Dropout: both return their input unchanged.

    Dropout is the identity at inference unless ``training_mode`` is a true
    input; a Dropout whose mask output is used is kept.
    """

    name = "eliminate-identity"
    exact = True

    def run(self, model: IRModel, ctx: PassContext) -> bool:
        graph = model.graph
        changed = False
        for node in list(graph.nodes):
            if node.op not in _PASS_THROUGH or not node.inputs or not node.outputs:
                continue
            if node.op == "Dropout" and not _is_inference_dropout(node):
                continue
            if bypass(graph, node):
                ctx.count(f"removed_{node.op.lower()}")
                changed = True
        if changed:
            graph.cleanup()
        return changed


def _is_inference_dropout(node: gs.Node) -> bool:
    if len(node.outputs) > 1 and node.outputs[1].outputs:
        return False
    if len(node.inputs) >= 3 and node.inputs[2].name:
        mode = node.inputs[2]
        return isinstance(mode, gs.Constant) and not bool(mode.values)
    return True
