"""Collapse chains of Reshape/Flatten/Squeeze/Unsqueeze into one Reshape, and drop no-op reshapes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs
from nirc.passes._rewrite import Namer, const_value, has_any_op, input_at, producer, static_shape
from nirc.passes.eliminate_identity import bypass

from nirc.ir import IRModel
from nirc.pass_base import Pass, PassContext

RESHAPE_OPS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")


@dataclass(frozen=True)
class CollapseReshapesPass(Pass):
    """Collapse consecutive Reshape/Flatten/Squeeze/Unsqueeze into one Reshape; remove reshapes to the same shape.

    Identity: all four ops keep the elements in row-major order and only change
    the shape, so any chain of them equals one ``Reshape`` from the chain's
    input to the last node's (static) output shape, and a reshape whose output
    shape equals its input shape is the identity. Exact (no arithmetic).

    The last node of a chain is rewritten as a Reshape with an explicit
    constant shape reading the chain's input; earlier links that lose their
    last reader are removed. A lone Flatten/Squeeze/Unsqueeze is respelled as
    that Reshape too, so the exporters' spellings of one flatten
    (TorchScript's ``Flatten``, dynamo's ``Reshape``) meet in one form.

    A ``Gather`` whose constant indices are ``0, 1, ..., n-1`` in order (``n`` the
    gathered axis' size; dynamo writes ``as_strided`` views so) takes every element
    once in its place, so it too is a Reshape to its output shape. A no-op reshape feeding a graph output from a
    graph input is kept (the output needs a producer). Tensors with zero-sized
    dimensions are left alone (an explicit 0 in a Reshape shape means "copy").
    """

    name = "collapse-reshapes"
    exact = True

    def run(self, model: IRModel, ctx: PassContext) -> bool:
        graph = model.graph
        if not has_any_op(graph, (*RESHAPE_OPS, "Gather")):
            return False
        namer = Namer(graph)
        changed = False
        for node in model.view().topological_order():
            if node.op == "Gather" and _static(node) and _gathers_in_order(node):
                _as_reshape(node, node.inputs[0], namer)
                ctx.count("gather_as_reshape")
                changed = True
            if node.op not in RESHAPE_OPS or not _static(node):
                continue
            src = producer(node.inputs[0])
            if src is not None and src.op in RESHAPE_OPS and _static(src) and len(src.outputs) == 1:
                _as_reshape(node, src.inputs[0], namer)
                ctx.count("collapsed")
                changed = True
            if static_shape(node.inputs[0]) == static_shape(node.outputs[0]) and bypass(graph, node):
                ctx.count("removed_noop")
                changed = True
        if changed:
            graph.cleanup()
        for node in list(graph.nodes):
            if node.op in RESHAPE_OPS and node.op != "Reshape" and _static(node):
                _as_reshape(node, node.inputs[0], namer)
                ctx.count("respelled")
                changed = True
        return changed


def _static(node: gs.Node) -> bool:
    if not node.inputs or len(node.outputs) != 1:
        return False
    shapes = (static_shape(node.inputs[0]), static_shape(node.outputs[0]))
    return all(s is not None and 0 not in s for s in shapes)


def _gathers_in_order(node: gs.Node) -> bool:
    indices = const_value(input_at(node, 1))
    shape = static_shape(node.inputs[0])
    if indices is None or shape is None or not np.issubdtype(indices.dtype, np.integer):
        return False
    axis = int(node.attrs.get("axis", 0))
    size = shape[axis]
    return indices.size == size and bool((indices.reshape(-1) == np.arange(size)).all())


def _as_reshape(node: gs.Node, source: gs.Tensor, namer: Namer) -> None:
    """Turn ``node`` into ``Reshape(source, <its own output shape>)``."""
    shape = np.array(static_shape(node.outputs[0]), dtype=np.int64)
    node.op = "Reshape"
    node.attrs.clear()
    node.inputs.clear()
    node.inputs.extend([source, namer.constant(f"{node.name}_shape", shape)])
