"""Global average pooling as one full-window AveragePool: Vela's cheapest form of it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs
from nirc.passes._legalize import Emit
from nirc.passes._rewrite import Namer, const_value, has_any_op, input_at, static_shape

from nirc.ir import IRModel
from nirc.pass_base import Pass, PassContext

#: Vela's VALID AVERAGE_POOL_2D: kernel height at most 256 and kernel area at most 256 * 256.
MAX_HEIGHT = 256
MAX_AREA = 256 * 256
_OPS = ("GlobalAveragePool", "ReduceMean")


@dataclass(frozen=True)
class LegalizeGlobalPoolPass(Pass):
    """Rewrite GlobalAveragePool and ReduceMean over H and W as AveragePool with an H x W kernel.

    Identity: the mean over the whole H x W map is the average pool whose single
    VALID window is the map (no padding, so every window holds H*W values); a
    ReduceMean with ``keepdims=0`` is that pool followed by a Reshape to ``[N, C]``.
    Exact up to float summation order.

    Why: in int8 nirc lowers a global mean to TFLite MEAN, which Vela 5.2 runs as a
    depthwise convolution over the map plus a MUL (and splits maps above 64 wide
    into several); an AveragePool becomes one AVERAGE_POOL_2D whose output shares
    the input's int8 parameters (TFLite's int8 average pool does not rescale).
    Measured on ethos-u65-256 (benchmarks/results/activations.md): efficientnet_b0's
    17 pools 2.93 -> 1.38 Mcycles, 16.64 -> 14.99 ms; mobilenet_v3_small 2.77 ->
    2.56 ms; int8 SNR of both unchanged (the pooled vector's coarser step is
    averaged away by the 1x1 conv that reads it). ``--skip-pass legalize-global-pool``
    keeps MEAN.

    Refuses maps beyond Vela's pooling limits (height > 256 or area > 65536; MEAN
    handles those), 1 x 1 maps (nothing to pool), non-4-D or dynamic shapes, and a
    ReduceMean over any other set of axes.
    """

    name = "legalize-global-pool"
    exact = True

    def run(self, model: IRModel, ctx: PassContext) -> bool:
        graph = model.graph
        if not has_any_op(graph, _OPS):
            return False
        namer = Namer(graph)
        changed = False
        for node in list(graph.nodes):
            kind = _spatial_mean(node)
            if kind is None:
                continue
            ctx.count(node.op)
            _rewrite(graph, node, namer, keepdims=kind)
            changed = True
        if changed:
            graph.cleanup()
        return changed


def _spatial_mean(node: gs.Node) -> bool | None:
    """``keepdims`` when ``node`` averages a 4-D map over exactly H and W within Vela's limits, else None."""
    if node.op not in _OPS or not node.inputs or len(node.outputs) != 1:
        return None
    shape = static_shape(node.inputs[0])
    if shape is None or len(shape) != 4:
        return None
    h, w = shape[2], shape[3]
    if h * w <= 1 or h > MAX_HEIGHT or h * w > MAX_AREA:
        return None
    if node.op == "GlobalAveragePool":
        return True
    axes = _axes(node)
    if axes is None or sorted(a % 4 for a in axes) != [2, 3]:
        return None
    return bool(node.attrs.get("keepdims", 1))


def _axes(node: gs.Node) -> list[int] | None:
    given = input_at(node, 1)
    if given is not None:
        value = const_value(given)
        return None if value is None else [int(v) for v in np.asarray(value).reshape(-1)]
    attr = node.attrs.get("axes")
    return None if attr is None else [int(v) for v in attr]


def _rewrite(graph: gs.Graph, node: gs.Node, namer: Namer, *, keepdims: bool) -> None:
    x = node.inputs[0]
    n, c, h, w = static_shape(x) or (0, 0, 0, 0)
    attrs = {"kernel_shape": [h, w], "strides": [1, 1]}
    if keepdims:
        node.op, node.inputs, node.attrs = "AveragePool", [x], attrs
        return
    out = node.outputs[0]
    emit = Emit(graph, namer, node.name or out.name, x.dtype)
    pooled = emit.node("AveragePool", "pool", [x], (n, c, 1, 1), attrs)
    node.op, node.inputs, node.attrs = "Reshape", [pooled, emit.ints("shape", [n, c])], {}
