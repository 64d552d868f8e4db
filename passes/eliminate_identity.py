"""Remove nodes that return their input unchanged: Identity, Dropout, and exporter noise such as full-range Slices."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs
from nirc.passes._rewrite import const_value, input_at, slice_ranges, static_shape

from nirc.ir import IRModel
from nirc.pass_base import Pass, PassContext


def bypass(graph: gs.Graph, node: gs.Node, source: gs.Tensor | None = None) -> bool:
    """Reroute readers of ``node.outputs[0]`` to ``source`` (default ``node.inputs[0]``); False when not possible.

    A graph output keeps its name (users and reports refer to it), so when the
    pass-through feeds a graph output we instead make the producer write it.
    """
    src, dst = node.inputs[0] if source is None else source, node.outputs[0]
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
    """Remove nodes that return their input unchanged: Identity, inference Dropout, and no-op exporter noise.

    Identity: each removed node's output equals one of its inputs element for
    element, so its readers may read that input instead. Exact (no arithmetic).
    The no-op forms, checked on static shapes and constant parameters:

    * ``Slice`` whose every sliced axis starts at 0, ends at or past the dim and
      steps by 1 (TorchScript writes ``x[:, :c]`` with ``c`` the full width as one);
    * ``Split`` with a single output; ``Concat`` with a single input;
    * ``Pad`` whose amounts are all zero (any mode);
    * ``Cast`` to the input's own type; ``Expand`` to the input's own shape;
      ``Tile`` with every repeat 1;
    * ``x + 0``, ``0 + x``, ``x - 0``, ``x * 1``, ``1 * x``, ``x / 1`` with a constant
      that does not broadcast ``x`` to a larger shape (timm's MobileOne adds a
      literal 0 to every branch sum). IEEE arithmetic gives ``x`` back for every
      ``x`` (``-0 + 0`` is ``+0``, the same value);
    * an ``Expand`` read only by broadcasting elementwise ops (Add, Sub, Mul,
      Div, ...) whose other operand already has the expanded shape
      (``x / norm.expand_as(x)``): each reader broadcasts the unexpanded tensor
      to the same values itself.

    Dropout is the identity at inference unless ``training_mode`` is a true
    input; a Dropout whose mask output is used is kept. Apart from that
    broadcasting Expand, a node whose output shape or type differs from its
    input's is never removed (a Slice that crops is not a no-op), nor one with a
    non-constant parameter. Identity reshapes are ``collapse-reshapes``'s.
    """

    name = "eliminate-identity"
    exact = True
    # The emitter has no form for these; a model holding only no-op ones compiles.
    legalizes = frozenset({"Cast", "Expand", "Tile"})

    def run(self, model: IRModel, ctx: PassContext) -> bool:
        graph = model.graph
        changed = False
        for node in list(graph.nodes):
            if node.op not in _NO_OPS or not node.inputs or not node.outputs:
                continue
            source = _NO_OPS[node.op](node)
            if source is not None and bypass(graph, node, source):
                ctx.count(f"removed_{node.op.lower()}")
                changed = True
            elif node.op == "Expand" and _broadcast_by_readers(graph, node):
                bypass(graph, node)
                ctx.count("removed_broadcast_expand")
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


def _same_tensor_type(node: gs.Node) -> bool:
    """Output has the input's static shape and type: the precondition of every no-op below."""
    src, dst = node.inputs[0], node.outputs[0]
    shape = static_shape(src)
    if shape is None or shape != static_shape(dst) or len(node.outputs) != 1:
        return False
    return src.dtype is None or dst.dtype is None or np.dtype(src.dtype) == np.dtype(dst.dtype)


def _full_slice(node: gs.Node) -> bool:
    shape = static_shape(node.inputs[0])
    if shape is None or not _same_tensor_type(node):
        return False
    ranges = slice_ranges(node, shape)
    return ranges is not None and all(
        step == 1 and begin == 0 and stop == shape[axis] for axis, begin, stop, step in ranges
    )


def _zero_pad(node: gs.Node) -> bool:
    pads = const_value(input_at(node, 1))
    return pads is not None and not pads.any() and _same_tensor_type(node)


def _same_cast(node: gs.Node) -> bool:
    return _same_tensor_type(node) and node.inputs[0].dtype is not None and node.outputs[0].dtype is not None


def _unit_tile(node: gs.Node) -> bool:
    repeats = const_value(input_at(node, 1))
    return repeats is not None and bool((repeats == 1).all()) and _same_tensor_type(node)


def _single_operand(node: gs.Node) -> bool:
    return len(node.inputs) == 1 and _same_tensor_type(node)


# Elementwise ops that broadcast their two inputs (multidirectional broadcasting).
_BROADCASTING = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Equal", "Greater", "Less"})


def _broadcast_by_readers(graph: gs.Graph, node: gs.Node) -> bool:
    """Every reader of this Expand's output broadcasts it against an operand of the expanded shape."""
    out = node.outputs[0]
    shape = static_shape(out)
    if shape is None or len(node.outputs) != 1 or not out.outputs or out.name in {t.name for t in graph.outputs}:
        return False
    for reader in out.outputs:
        if reader.op not in _BROADCASTING or len(reader.inputs) != 2:
            return False
        a, b = reader.inputs
        if a is out and b is out:
            return False
        other = b if a is out else a
        other_shape = static_shape(other)
        if other_shape is None or len(other_shape) < len(shape):
            return False
        if tuple(np.broadcast_shapes(other_shape, shape)) != other_shape:
            return False
    return True


def _neutral_operand(neutral: float, commutes: bool) -> Callable[[gs.Node], gs.Tensor | None]:
    """``x op c`` (and ``c op x`` when ``op`` commutes) with every element of the constant ``c`` == ``neutral``."""

    def source(node: gs.Node) -> gs.Tensor | None:
        if len(node.inputs) != 2 or len(node.outputs) != 1:
            return None
        for var_index in (0, 1) if commutes else (0,):
            x, c = node.inputs[var_index], node.inputs[1 - var_index]
            value = const_value(c)
            if value is None or const_value(x) is not None or value.size == 0 or not bool((value == neutral).all()):
                continue
            out = node.outputs[0]
            same_type = x.dtype is None or out.dtype is None or np.dtype(x.dtype) == np.dtype(out.dtype)
            if static_shape(x) is not None and static_shape(x) == static_shape(out) and same_type:
                return x
        return None

    return source


def _first_input_if(predicate: Callable[[gs.Node], bool]) -> Callable[[gs.Node], gs.Tensor | None]:
    def source(node: gs.Node) -> gs.Tensor | None:
        return node.inputs[0] if predicate(node) else None

    return source


# Per op: the input the node returns unchanged, or None when this node does not.
_NO_OPS: dict[str, Callable[[gs.Node], gs.Tensor | None]] = {
    "Identity": _first_input_if(lambda node: True),
    "Dropout": _first_input_if(_is_inference_dropout),
    "Slice": _first_input_if(_full_slice),
    "Split": _first_input_if(lambda node: len(node.outputs) == 1 and _same_tensor_type(node)),
    "Concat": _first_input_if(_single_operand),
    "Pad": _first_input_if(_zero_pad),
    "Cast": _first_input_if(_same_cast),
    "Expand": _first_input_if(_same_tensor_type),
    "Tile": _first_input_if(_unit_tile),
    "Add": _neutral_operand(0.0, commutes=True),
    "Sub": _neutral_operand(0.0, commutes=False),
    "Mul": _neutral_operand(1.0, commutes=True),
    "Div": _neutral_operand(1.0, commutes=False),
}
