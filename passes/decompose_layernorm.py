"""Decompose LayerNormalization and InstanceNormalization (also PyTorch's GroupNorm form) into NPU-supported ops."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs
from nirc.passes._legalize import Emit
from nirc.passes._rewrite import (
    Namer,
    const_value,
    consumers,
    detach,
    graph_output_names,
    has_any_op,
    input_at,
    producer,
    single_use,
    static_shape,
)

from nirc.ir import IRModel
from nirc.pass_base import Pass, PassContext

_OPS = ("LayerNormalization", "InstanceNormalization")


@dataclass(frozen=True)
class DecomposeLayernormPass(Pass):
    """Decompose LayerNormalization and InstanceNormalization into ReduceMean, Sub, Mul, Add and Pow(-0.5).

    Vela has no normalization operator, but every piece of the definition runs on
    the NPU: ``MEAN``, ``SUB``, ``MUL``, ``ADD`` and ``RSQRT`` (what the emitter makes
    of ``Pow(v, -0.5)``). The rewrite is the definition itself, so it is exact up
    to float rounding:

    * ``LayerNormalization(x, s, b, axis)``: ``m = mean(x)``, ``d = x - m``,
      ``y = d * (mean(d * d) + eps) ** -0.5 * s + b``, means over ``axis..rank-1``.
    * ``InstanceNormalization(x, s, b)``: the same with means over the spatial axes
      and ``s``, ``b`` per channel.
    * GroupNorm as PyTorch exports it, ``Reshape(x, [N, G, -1])`` ->
      ``InstanceNormalization`` -> ``Reshape`` back to ``x``'s 4-D shape: the
      same with means over each group's channels and the spatial axes, taken on the
      4-D map (a 3-D view of an NHWC map would need TRANSPOSEs): spatial means per
      channel, then a 1x1 Conv whose weight averages the channels of each group
      (equal counts, so the mean of means is the mean). (ONNX's own
      GroupNormalization is deprecated at opset 18 and does not pass the checker.)

    A mean over channels and space on a 4-D map is taken in two ReduceMeans (space,
    then channels) because Vela reduces over depth only when H, W or C is 1.
    Nodes whose optional Mean/InvStdDev outputs are read, or whose shapes are not
    static, are kept.
    """

    name = "decompose-layernorm"
    exact = True
    legalizes = frozenset({"LayerNormalization", "InstanceNormalization"})

    def run(self, model: IRModel, ctx: PassContext) -> bool:
        graph = model.graph
        if not has_any_op(graph, _OPS):
            return False
        namer = Namer(graph)
        changed = False
        outputs = graph_output_names(graph)
        for node in list(graph.nodes):
            if node.op not in _OPS or any(t.outputs or t.name in outputs for t in node.outputs[1:]):
                continue
            x = node.inputs[0]
            shape = static_shape(x)
            if shape is None or x.dtype is None or len(node.outputs) < 1:
                continue
            if node.op == "LayerNormalization":
                kind = "layernorm" if _layernorm(graph, node, namer, shape) else None
            elif _groupnorm(graph, node, namer, shape):
                kind = "groupnorm"
            else:
                kind = "instancenorm" if _instancenorm(graph, node, namer, shape) else None
            if kind is not None:
                ctx.count(kind)
                changed = True
        if changed:
            graph.cleanup()
        return changed


def _standardize(e: Emit, x: gs.Tensor, shape: tuple[int, ...], axes: list[int], eps: float) -> gs.Tensor:
    """``(x - mean(x)) * (mean((x - mean(x))^2) + eps) ** -0.5`` with means over ``axes``."""
    mean = e.reduce_mean(x, shape, axes, "mean")
    d = e.node("Sub", "centered", [x, mean], shape)
    var = e.reduce_mean(e.node("Mul", "squared", [d, d], shape), shape, axes, "var")
    var_shape = static_shape(var) or ()
    ve = e.node("Add", "var_eps", [var, e.const("eps", eps)], var_shape)
    r = e.node("Pow", "rstd", [ve, e.const("minus_half", -0.5)], var_shape)
    return e.node("Mul", "normalized", [d, r], shape)


def _affine(e: Emit, y: gs.Tensor, shape: tuple[int, ...], scale: gs.Tensor | None, bias: gs.Tensor | None,
            out: gs.Tensor) -> None:  # fmt: skip
    """``y * scale + bias``, the last op writing the replaced node's output tensor."""
    if scale is None and bias is None:
        e.node("Identity", "out", [y], shape, output=out)
        return
    if scale is not None:
        y = e.node("Mul", "scaled", [y, scale], shape, output=out if bias is None else None)
    if bias is not None:
        e.node("Add", "shifted", [y, bias], shape, output=out)


def _layernorm(graph: gs.Graph, node: gs.Node, namer: Namer, shape: tuple[int, ...]) -> bool:
    rank = len(shape)
    axis = int(node.attrs.get("axis", -1)) % rank
    eps = float(node.attrs.get("epsilon", 1e-5))
    x, out = node.inputs[0], node.outputs[0]
    scale, bias = input_at(node, 1), input_at(node, 2)
    e = Emit(graph, namer, node.name, x.dtype)
    detach(node)
    y = _standardize(e, x, shape, list(range(axis, rank)), eps)
    _affine(e, y, shape, scale, bias, out)
    return True


def _channel_const(value: np.ndarray | None, channels: int, rank: int, dtype: np.dtype) -> np.ndarray | None:
    if value is None or value.size != channels:
        return None
    return value.reshape((channels,) + (1,) * (rank - 2)).astype(dtype)


def _instancenorm(graph: gs.Graph, node: gs.Node, namer: Namer, shape: tuple[int, ...]) -> bool:
    rank = len(shape)
    x, out = node.inputs[0], node.outputs[0]
    dtype = np.dtype(x.dtype)
    scale = _channel_const(const_value(input_at(node, 1)), shape[1] if rank > 1 else 0, rank, dtype)
    bias = _channel_const(const_value(input_at(node, 2)), shape[1] if rank > 1 else 0, rank, dtype)
    if rank < 3 or scale is None or bias is None:
        return False
    e = Emit(graph, namer, node.name, dtype)
    detach(node)
    y = _standardize(e, x, shape, list(range(2, rank)), float(node.attrs.get("epsilon", 1e-5)))
    _affine(e, y, shape, e.const("scale", scale), e.const("bias", bias), out)
    return True


def _groupnorm(graph: gs.Graph, node: gs.Node, namer: Namer, shape: tuple[int, ...]) -> bool:
    """PyTorch's GroupNorm export: Reshape [N, C, H, W] -> [N, G, K], InstanceNormalization, Reshape back."""
    first = producer(node.inputs[0])
    out = node.outputs[0]
    if first is None or first.op != "Reshape" or len(shape) != 3 or not single_use(graph, node.inputs[0]):
        return False
    x = first.inputs[0]
    x_shape = static_shape(x)
    if x_shape is None or len(x_shape) != 4 or x_shape[0] != shape[0] or not single_use(graph, out):
        return False
    (last,) = consumers(out)
    if last.op != "Reshape" or static_shape(last.outputs[0]) != x_shape:
        return False
    _, channels, h, w = x_shape
    groups = shape[1]
    if channels % groups or shape[2] != channels // groups * h * w:
        return False
    dtype = np.dtype(x.dtype)
    scale_g, bias_g = const_value(input_at(node, 1)), const_value(input_at(node, 2))
    if scale_g is None or bias_g is None or scale_g.size != groups or bias_g.size != groups:
        return False
    per = channels // groups
    scale = np.repeat(scale_g.reshape(-1), per).reshape(channels, 1, 1).astype(dtype)
    bias = np.repeat(bias_g.reshape(-1), per).reshape(channels, 1, 1).astype(dtype)
    eps = float(node.attrs.get("epsilon", 1e-5))
    y_out = last.outputs[0]
    e = Emit(graph, namer, node.name, dtype)
    detach(first, node, last)
    if groups == channels:
        y = _standardize(e, x, x_shape, [2, 3], eps)
    else:
        y = _group_standardize(e, x, x_shape, groups, eps)
    _affine(e, y, x_shape, e.const("scale", scale), e.const("bias", bias), y_out)
    return True


def _group_mean(e: Emit, x: gs.Tensor, shape: tuple[int, ...], groups: int, suffix: str) -> gs.Tensor:
    """Per-channel mean of the channel's group: spatial means, then a 1x1 Conv averaging each group."""
    n, c = shape[0], shape[1]
    spatial = e.reduce_mean(x, shape, [2, 3], f"{suffix}_hw")
    if groups == 1:
        return e.reduce_mean(spatial, (n, c, 1, 1), [1], suffix)
    per = c // groups
    block = np.kron(np.eye(groups), np.full((per, per), 1.0 / per))
    weight = e.const(f"{suffix}_weight", block.reshape(c, c, 1, 1))
    return e.node("Conv", suffix, [spatial, weight], (n, c, 1, 1), {"kernel_shape": [1, 1]})


def _group_standardize(e: Emit, x: gs.Tensor, shape: tuple[int, ...], groups: int, eps: float) -> gs.Tensor:
    mean = _group_mean(e, x, shape, groups, "mean")
    d = e.node("Sub", "centered", [x, mean], shape)
    var = _group_mean(e, e.node("Mul", "squared", [d, d], shape), shape, groups, "var")
    var_shape = static_shape(var) or ()
    ve = e.node("Add", "var_eps", [var, e.const("eps", eps)], var_shape)
    r = e.node("Pow", "rstd", [ve, e.const("minus_half", -0.5)], var_shape)
    return e.node("Mul", "normalized", [d, r], shape)
