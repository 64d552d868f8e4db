"""Fold multiplications and additions by per-channel constants into a neighbouring Conv or Gemm."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs
from nirc.passes._affine import (
    LINEAR_OPS,
    can_fold_output_affine,
    fold_input_scale,
    fold_input_shift,
    fold_output_affine,
    output_channels,
)
from nirc.passes._rewrite import (
    Namer,
    const_value,
    consumers,
    detach,
    has_any_op,
    input_at,
    per_channel,
    producer,
    single_use,
    split_const,
    static_shape,
)

from nirc.ir import IRModel
from nirc.pass_base import Pass, PassContext

_AFFINE_OPS = ("Mul", "Add", "Sub", "Div")
_MAX_ROUNDS = 16


@dataclass(frozen=True)
class FuseAffinePass(Pass):
    """Fold Mul/Add/Sub/Div by a per-channel or scalar constant into the adjacent Conv or Gemm.

    Into the producer (``linear(x) * c`` or ``linear(x) + c``, linear = Conv,
    ConvTranspose or Gemm whose output is read only by this node): a
    per-output-channel affine after a linear map is the same linear map with
    ``W[o] *= c[o]`` and ``b = b * c + t``. Always exact (up to rounding).

    Into the consumer (``conv(x * c)``, ``conv(x + c)``, same for Gemm's A with
    ``transA=0``; the Mul/Add result is read only by that node):

    * ``conv(x * c, W) = conv(x, W')`` with ``W'[o, j] = W[o, j] * c[channel(o, j)]``
      (grouped convs included). Exact even with zero padding, because the
      padded zeros are zero either way (``0 * c = 0``) -- provided ``c`` is finite.
    * ``conv(x + c, W) = conv(x, W) + sum_{j,k} W[o, j, k] * c[channel(o, j)]``
      only when the conv has **no padding**: a window reading padding sees
      ``0``, not ``0 + c``, so with padding the shift is not a constant bias and
      the rewrite is not exact -- such an Add is left alone. Gemm has no padding.

    ``Sub(x, c)`` and ``Div(x, c)`` are treated as ``Add(x, -c)`` and
    ``Mul(x, 1/c)``; ``Sub(c, x)`` and ``Div(c, x)`` are not affine in this
    sense and are kept. Constants that vary along any axis but the channel
    axis, or that would broadcast the tensor to a larger shape, are kept.
    """

    name = "fuse-affine"
    exact = True

    def run(self, model: IRModel, ctx: PassContext) -> bool:
        graph = model.graph
        if not has_any_op(graph, _AFFINE_OPS) or not has_any_op(graph, LINEAR_OPS):
            return False
        namer = Namer(graph)
        changed = False
        for _ in range(_MAX_ROUNDS):
            progress = False
            for node in list(graph.nodes):
                if node.op not in _AFFINE_OPS or not node.outputs:
                    continue
                if _into_producer(graph, node, namer):
                    ctx.count("folded_into_producer")
                    progress = True
                elif _into_consumer(graph, node, namer):
                    ctx.count("folded_into_consumer")
                    progress = True
            changed |= progress
            if not progress:
                break
        if changed:
            graph.cleanup()
        return changed


def _affine_operand(node: gs.Node) -> tuple[gs.Tensor, np.ndarray] | None:
    """``(x, c)`` for ``x op c`` with a float constant c; None for ``c - x``, ``c / x``."""
    split = split_const(node)
    if split is None:
        return None
    x, c = split
    if node.op in ("Sub", "Div") and node.inputs[0] is not x:
        return None
    if c.dtype.kind != "f" or not np.all(np.isfinite(c)):
        return None
    if node.op == "Div" and np.any(c == 0):
        return None
    return x, c


def _as_scale_shift(op: str, vector: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    v = vector.astype(np.float64)
    if op == "Mul":
        return v, np.zeros_like(v)
    if op == "Div":
        return 1.0 / v, np.zeros_like(v)
    if op == "Add":
        return np.ones_like(v), v
    return np.ones_like(v), -v


def _into_producer(graph: gs.Graph, node: gs.Node, namer: Namer) -> bool:
    operand = _affine_operand(node)
    if operand is None:
        return False
    x, c = operand
    src = producer(x)
    shape = static_shape(x)
    if src is None or shape is None or src.op not in LINEAR_OPS or len(src.outputs) != 1:
        return False
    if not single_use(graph, x) or not can_fold_output_affine(src):
        return False
    vector = per_channel(c, shape, axis=1)
    if vector is None or vector.size != output_channels(src):
        return False
    fold_output_affine(src, *_as_scale_shift(node.op, vector), namer)
    src.outputs[0] = node.outputs[0]
    detach(node)
    return True


def _into_consumer(graph: gs.Graph, node: gs.Node, namer: Namer) -> bool:
    operand = _affine_operand(node)
    if operand is None or len(node.outputs) != 1:
        return False
    x, c = operand
    out = node.outputs[0]
    shape = static_shape(x)
    if shape is None or len(shape) < 2 or not single_use(graph, out):
        return False
    (dst,) = consumers(out)
    if not _consumer_accepts(dst, out):
        return False
    vector = per_channel(c, shape, axis=1)
    if vector is None:
        return False
    scale, shift = _as_scale_shift(node.op, vector)
    if node.op in ("Mul", "Div"):
        fold_input_scale(dst, scale, namer)
    elif dst.op == "Conv" and _has_padding(dst):
        return False
    else:
        fold_input_shift(dst, shift, namer)
    dst.inputs[0] = x
    detach(node)
    return True


def _consumer_accepts(dst: gs.Node, tensor: gs.Tensor) -> bool:
    """Conv or Gemm (transA=0) reading ``tensor`` as its data input only, with constant weights."""
    if dst.op not in ("Conv", "Gemm") or dst.inputs[0] is not tensor:
        return False
    if any(t is tensor for t in dst.inputs[1:]):
        return False
    if dst.op == "Gemm" and dst.attrs.get("transA", 0):
        return False
    weight = const_value(input_at(dst, 1))
    bias = input_at(dst, 2)
    if weight is None or weight.dtype.kind != "f" or (bias is not None and const_value(bias) is None):
        return False
    return bool(dst.op == "Conv" or weight.ndim == 2)


def _has_padding(conv: gs.Node) -> bool:
    auto_pad = conv.attrs.get("auto_pad", "NOTSET")
    if auto_pad not in ("NOTSET", "VALID"):
        return True
    return auto_pad == "NOTSET" and any(int(p) != 0 for p in conv.attrs.get("pads", []))
