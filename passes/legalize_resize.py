"""Rewrite nearest-neighbour Resizes Vela cannot run as strided Slices or chains of x2/x4/x8 Resizes."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs
from nirc.passes._legalize import Emit
from nirc.passes._rewrite import Namer, const_value, detach, has_any_op, input_at, static_shape

from nirc.ir import IRModel
from nirc.pass_base import Pass, PassContext

#: The integer upscaling factors Vela's RESIZE_NEAREST_NEIGHBOR runs on the NPU ("2x/4x/8x").
NPU_FACTORS = (8, 4, 2)


@dataclass(frozen=True)
class LegalizeResizePass(Pass):
    """Legalize nearest Resizes: integer downscales as strided Slices, large 2^k upscales as x2/x4/x8 chains.

    Vela runs RESIZE_NEAREST_NEIGHBOR only for the same factor 2, 4 or 8 on H and W.
    The rewrite first computes, per spatial axis, which input index ONNX reads for each
    output index (coordinate transformation, then the nearest mode), then:

    * when every axis reads ``start + step * i`` (an integer downscale, e.g. x0.5 with
      ``asymmetric``/``floor``): ``Slice(x, start, ..., step)``, which the emitter turns
      into a STRIDED_SLICE over H/W (on the NPU). Only elements are selected: exact.
    * when every resized axis reads ``floor(i / f)`` for the same ``f = 2^k > 8``
      (e.g. x16): a chain of nearest Resizes with factors from {8, 4, 2} whose product
      is ``f``, written in the ``asymmetric``/``floor`` form the emitter maps onto
      TFLite exactly; ``floor(floor(i / a) / b) = floor(i / (a * b))``. Exact.

    Other factors (3, 5, 6, ...), linear modes and unequal H/W factors have no exact
    NPU form and are kept (the placement report then names Vela's scale-factor
    constraint).
    """

    name = "legalize-resize"
    exact = True

    def run(self, model: IRModel, ctx: PassContext) -> bool:
        graph = model.graph
        if not has_any_op(graph, ["Resize"]):
            return False
        namer = Namer(graph)
        changed = False
        for node in list(graph.nodes):
            if node.op != "Resize":
                continue
            kind = _legalize(graph, node, namer)
            if kind is not None:
                ctx.count(kind)
                changed = True
        if changed:
            graph.cleanup()
        return changed


def _scales(node: gs.Node, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> list[float] | None:
    if node.attrs.get("axes") is not None or node.attrs.get("keep_aspect_ratio_policy", "stretch") != "stretch":
        return None
    scales = const_value(input_at(node, 2))
    if scales is not None and scales.size:
        return [float(s) for s in scales.reshape(-1)]
    if const_value(input_at(node, 3)) is None:
        return None
    return [o / i for i, o in zip(in_shape, out_shape, strict=True)]


def _source_index(node: gs.Node, in_size: int, out_size: int, scale: float) -> np.ndarray | None:
    """The input index ONNX's nearest Resize reads for each output index along one axis."""
    ctm = str(node.attrs.get("coordinate_transformation_mode", "half_pixel"))
    mode = str(node.attrs.get("nearest_mode", "round_prefer_floor"))
    x = np.arange(out_size, dtype=np.float64)
    if ctm == "asymmetric":
        v = x / scale
    elif ctm == "half_pixel":
        v = (x + 0.5) / scale - 0.5
    elif ctm == "pytorch_half_pixel":
        v = (x + 0.5) / scale - 0.5 if out_size > 1 else np.zeros_like(x)
    elif ctm == "align_corners":
        v = x * (in_size - 1) / (out_size - 1) if out_size > 1 else np.zeros_like(x)
    else:
        return None
    if mode == "round_prefer_floor":
        r = np.ceil(v - 0.5)
    elif mode == "round_prefer_ceil":
        r = np.floor(v + 0.5)
    elif mode == "floor":
        r = np.floor(v)
    elif mode == "ceil":
        r = np.ceil(v)
    else:
        return None
    index: np.ndarray = np.clip(r, 0, in_size - 1).astype(np.int64)
    return index


def _legalize(graph: gs.Graph, node: gs.Node, namer: Namer) -> str | None:
    x, out = node.inputs[0], node.outputs[0]
    in_shape, out_shape = static_shape(x), static_shape(out)
    if in_shape is None or out_shape is None or len(in_shape) != 4 or x.dtype is None:
        return None
    if node.attrs.get("mode", "nearest") != "nearest" or int(node.attrs.get("antialias", 0)):
        return None
    if in_shape[:2] != out_shape[:2]:
        return None
    scales = _scales(node, in_shape, out_shape)
    if scales is None:
        return None
    found = [_source_index(node, in_shape[a], out_shape[a], scales[a]) for a in (2, 3)]
    index = [ix for ix in found if ix is not None]
    if len(index) != 2:
        return None
    slice_params = [_arithmetic(ix) for ix in index]
    if all(p is not None for p in slice_params) and out_shape != in_shape:
        if any(o > i for i, o in zip(in_shape[2:], out_shape[2:], strict=True)):
            return None
        starts = [p[0] for p in slice_params if p is not None]
        steps = [p[1] for p in slice_params if p is not None]
        ends = [s + st * (n - 1) + 1 for s, st, n in zip(starts, steps, out_shape[2:], strict=True)]
        e = Emit(graph, namer, node.name, x.dtype)
        detach(node)
        e.node("Slice", "slice", [x, e.ints("starts", starts), e.ints("ends", ends), e.ints("axes", [2, 3]),
                                  e.ints("steps", steps)], out_shape, output=out)  # fmt: skip
        return "slice"
    factor = _common_upscale(index, in_shape, out_shape)
    if factor is None or factor in NPU_FACTORS:
        return None
    pieces = _power_of_two_chain(factor)
    if pieces is None:
        return None
    e = Emit(graph, namer, node.name, x.dtype)
    detach(node)
    current, (n, c, h, w) = x, in_shape
    for i, f in enumerate(pieces):
        fh = f if out_shape[2] != in_shape[2] else 1
        fw = f if out_shape[3] != in_shape[3] else 1
        h, w = h * fh, w * fw
        scales_t = e.const(f"scales{i}", np.asarray([1, 1, fh, fw], np.float32), np.float32)
        roi = gs.Variable("", dtype=None, shape=None)
        attrs = {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}
        last = i == len(pieces) - 1
        current = e.node("Resize", f"x{f}", [current, roi, scales_t], (n, c, h, w), attrs, out if last else None)
    return "chain"


def _arithmetic(index: np.ndarray) -> tuple[int, int] | None:
    """``(start, step)`` when ``index[i] = start + step * i`` with ``step >= 1``."""
    if index.size == 1:
        return int(index[0]), 1
    step = int(index[1] - index[0])
    if step < 1 or not np.array_equal(index, index[0] + step * np.arange(index.size)):
        return None
    return int(index[0]), step


def _common_upscale(index: list[np.ndarray], in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> int | None:
    """The one integer factor ``f`` with ``index = floor(i / f)`` on every resized axis."""
    factors = set()
    for ix, i, o in zip(index, in_shape[2:], out_shape[2:], strict=True):
        if o == i and np.array_equal(ix, np.arange(i)):
            continue
        if o % i:
            return None
        f = o // i
        if not np.array_equal(ix, np.arange(o) // f):
            return None
        factors.add(f)
    return factors.pop() if len(factors) == 1 else None


def _power_of_two_chain(factor: int) -> list[int] | None:
    """Factors from NPU_FACTORS (largest first) multiplying to ``factor``, a power of two."""
    if factor < 2 or factor & (factor - 1):
        return None
    pieces = []
    remaining = int(math.log2(factor))
    for f in NPU_FACTORS:
        bits = int(math.log2(f))
        while remaining >= bits:
            pieces.append(f)
            remaining -= bits
    return pieces
