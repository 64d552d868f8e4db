"""Small graph-rewriting helpers shared by the built-in passes (no pass lives here).

They read graphsurgeon's live producer/consumer links rather than a
:class:`~nirc.ir.GraphView`, so a pass can apply several rewrites in one run
without rebuilding a view after each one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import onnx_graphsurgeon as gs

from nirc.ir.names import fresh_name

# Constant node attributes other than ``value`` and the dtype each one produces.
_CONSTANT_ATTRS: dict[str, type[np.generic]] = {
    "value_float": np.float32,
    "value_floats": np.float32,
    "value_int": np.int64,
    "value_ints": np.int64,
}


def has_any_op(graph: gs.Graph, ops: Iterable[str]) -> bool:
    """The cheap skip every pass starts with: is any node of these op types present?"""
    wanted = set(ops)
    return any(node.op in wanted for node in graph.nodes)


def is_present(tensor: gs.Tensor | None) -> bool:
    """False for an absent optional input (graphsurgeon's empty-named Variable)."""
    return tensor is not None and (isinstance(tensor, gs.Constant) or bool(tensor.name))


def input_at(node: gs.Node, index: int) -> gs.Tensor | None:
    """The node's ``index``-th input, or None when it is absent or empty."""
    if index >= len(node.inputs):
        return None
    tensor: gs.Tensor = node.inputs[index]
    return tensor if is_present(tensor) else None


def reduce_axes(node: gs.Node, rank: int) -> list[int] | None:
    """A Reduce* node's (opset 18) sorted non-negative axes; None when they are not constant or the node is a no-op.

    Absent or empty axes mean every axis, unless ``noop_with_empty_axes`` makes the node an identity.
    """
    axes_input = input_at(node, 1)
    value = const_value(axes_input) if axes_input is not None else None
    if axes_input is None or (value is not None and value.size == 0):
        return None if node.attrs.get("noop_with_empty_axes", 0) else list(range(rank))
    if value is None:
        return None
    return sorted({int(a) % rank for a in value.reshape(-1)})


def const_value(tensor: gs.Tensor | None) -> np.ndarray | None:
    """The value of an initializer or of a ``Constant`` node's output; None otherwise."""
    if tensor is None:
        return None
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    src = producer(tensor)
    if src is None or src.op != "Constant" or src.domain not in ("", None, "ai.onnx"):
        return None
    if "value" in src.attrs and isinstance(src.attrs["value"], gs.Constant):
        return np.asarray(src.attrs["value"].values)
    for key, dtype in _CONSTANT_ATTRS.items():
        if key in src.attrs:
            return np.asarray(src.attrs[key], dtype=dtype)
    return None


def scalar_value(tensor: gs.Tensor | None) -> float | None:
    """A constant holding exactly one element, as a float; None otherwise."""
    value = const_value(tensor)
    if value is None or value.size != 1 or not np.issubdtype(value.dtype, np.number):
        return None
    return float(value.reshape(-1)[0])


def producer(tensor: gs.Tensor) -> gs.Node | None:
    if isinstance(tensor, gs.Constant) or len(tensor.inputs) != 1:
        return None
    node: gs.Node = tensor.inputs[0]
    return node


def consumers(tensor: gs.Tensor) -> list[gs.Node]:
    """Distinct nodes reading ``tensor`` (a node reading it twice appears once)."""
    seen: dict[int, gs.Node] = {}
    for node in tensor.outputs:
        seen.setdefault(id(node), node)
    return list(seen.values())


def graph_output_names(graph: gs.Graph) -> set[str]:
    return {t.name for t in graph.outputs}


def single_use(graph: gs.Graph, tensor: gs.Tensor) -> bool:
    """Exactly one read by one node, and not a graph output: the reader may absorb it."""
    return len(tensor.outputs) == 1 and tensor.name not in graph_output_names(graph)


def static_shape(tensor: gs.Tensor) -> tuple[int, ...] | None:
    shape = tensor.shape
    if shape is None or not all(isinstance(d, int | np.integer) for d in shape):
        return None
    return tuple(int(d) for d in shape)


def slice_ranges(node: gs.Node, shape: tuple[int, ...]) -> list[tuple[int, int, int, int]] | None:
    """A Slice's constant parameters as (axis, begin, end, step) per listed axis, ONNX-normalised.

    Negative axes and indices count from the end; begin and end are clamped to the axis,
    as ONNX does for a positive step. None when any parameter is computed at run time.
    """
    starts, ends = const_value(input_at(node, 1)), const_value(input_at(node, 2))
    if starts is None or ends is None:
        return None
    axes_input, steps_input = input_at(node, 3), input_at(node, 4)
    axes = const_value(axes_input) if axes_input is not None else np.arange(starts.size)
    steps = const_value(steps_input) if steps_input is not None else np.ones(starts.size, dtype=np.int64)
    if axes is None or steps is None:
        return None
    ranges = []
    for start, end, axis, step in zip(*(p.reshape(-1) for p in (starts, ends, axes, steps)), strict=True):
        rank_axis = int(axis) + len(shape) if axis < 0 else int(axis)
        dim = shape[rank_axis]
        begin = min(max(int(start) + dim if start < 0 else int(start), 0), dim)
        stop = min(max(int(end) + dim if end < 0 else int(end), 0), dim)
        ranges.append((rank_axis, begin, stop, int(step)))
    return ranges


def replace_uses(old: gs.Tensor, new: gs.Tensor) -> None:
    """Make every node reading ``old`` read ``new`` instead (graph outputs are not touched)."""
    for node in consumers(old):
        for index, tensor in enumerate(node.inputs):
            if tensor is old:
                node.inputs[index] = new


def detach(*nodes: gs.Node) -> None:
    """Disconnect nodes so ``graph.cleanup()`` drops them."""
    for node in nodes:
        node.inputs.clear()
        node.outputs.clear()


def other_operand(node: gs.Node, tensor: gs.Tensor) -> gs.Tensor | None:
    """For a binary node reading ``tensor`` once, its other input."""
    if len(node.inputs) != 2:
        return None
    a, b = node.inputs
    if a is tensor and b is not tensor:
        return b
    if b is tensor and a is not tensor:
        return a
    return None


def split_const(node: gs.Node) -> tuple[gs.Tensor, np.ndarray] | None:
    """For a binary node with one constant and one non-constant input: (variable, constant value)."""
    if len(node.inputs) != 2:
        return None
    a, b = node.inputs
    va, vb = const_value(a), const_value(b)
    if vb is not None and va is None:
        return a, vb
    if va is not None and vb is None:
        return b, va
    return None


def broadcasts_without_growing(const_shape: Sequence[int], shape: Sequence[int]) -> bool:
    """True when broadcasting a constant of ``const_shape`` against ``shape`` leaves ``shape`` unchanged."""
    if len(const_shape) > len(shape):
        return False
    try:
        return tuple(np.broadcast_shapes(tuple(const_shape), tuple(shape))) == tuple(shape)
    except ValueError:
        return False


def per_channel(value: np.ndarray, shape: Sequence[int], axis: int = 1) -> np.ndarray | None:
    """A constant broadcast against a tensor of ``shape`` as a vector along ``axis``.

    Returns the ``shape[axis]`` values when the constant is a scalar or varies
    only along ``axis`` (after NumPy's right-aligned broadcasting) and does not
    grow the tensor; None otherwise.
    """
    if not broadcasts_without_growing(value.shape, shape):
        return None
    padded = value.reshape((1,) * (len(shape) - value.ndim) + value.shape)
    if any(d != 1 for i, d in enumerate(padded.shape) if i != axis):
        return None
    vector = padded.reshape(-1)
    return np.broadcast_to(vector, (shape[axis],)).copy() if vector.size == 1 else vector.copy()


def identity_copy(namer: Namer, src: gs.Tensor, base: str) -> tuple[gs.Node, gs.Variable]:
    """A node writing a copy of ``src``: ``LeakyRelu(alpha=1)``, the identity.

    Vela runs it as an elementwise lookup table that streams the map (the int8 emitter
    ties its input and output parameters, so the table is the identity): the cheap way
    to get a few-channel image from DRAM into SRAM (a 1x1 MaxPool reads it as slowly as
    a conv does). See stage-inputs and tile-activations' staging.
    """
    out = gs.Variable(namer.fresh(f"{base}/staged"), dtype=src.dtype, shape=src.shape)
    node = gs.Node("LeakyRelu", namer.fresh(f"{base}/stage"), attrs={"alpha": 1.0}, inputs=[src], outputs=[out])
    return node, out


def is_identity_copy(node: gs.Node) -> bool:
    """Whether ``node`` is an :func:`identity_copy`."""
    return node.op == "LeakyRelu" and float(node.attrs.get("alpha", 0.01)) == 1.0


class Namer:
    """Fresh tensor and node names: graphsurgeon exports duplicates silently, ONNX rejects them."""

    def __init__(self, graph: gs.Graph) -> None:
        self.used: set[str] = set(graph.tensors().keys()) | {n.name for n in graph.nodes}

    def fresh(self, base: str) -> str:
        return fresh_name(self.used, base)

    def constant(self, base: str, values: np.ndarray) -> gs.Constant:
        return gs.Constant(self.fresh(base), np.array(values, order="C"))
