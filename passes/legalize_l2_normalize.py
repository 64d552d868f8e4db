"""Rewrite L2 normalisation (``x / max(||x||, eps)``) into ops the NPU runs instead of a float CPU island."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs
from nirc.passes._legalize import Emit
from nirc.passes._rewrite import Namer, const_value, detach, has_any_op, input_at, producer, single_use, static_shape

from nirc.ir import IRModel
from nirc.pass_base import Pass, PassContext


@dataclass(frozen=True)
class LegalizeL2NormalizePass(Pass):
    """Legalize ``Div(x, [Expand](Clip|Max(ReduceL2(x, axes), eps)))`` as a mean of squares and an RSQRT.

    ``torch.nn.functional.normalize`` (cross-covariance attention in EdgeNeXt / XCiT,
    cosine heads) exports as that chain; Vela has no REDUCE_L2, SQRT or DIV on the
    NPU, so nirc had to run it as a float island on the CPU. Identity, with ``n``
    the number of reduced elements and ``S`` the sum of squares::

        x / max(sqrt(S), eps) = x * max(S / n, eps^2 / n) ** -0.5 * n ** -0.5

    exact up to float rounding (``sqrt`` is monotonic, so the clamp moves inside).
    Every op on the right runs on the NPU: MUL, MEAN, MAXIMUM, RSQRT (the emitter's
    form of ``Pow(v, -0.5)``). The int8 model then quantizes ``x * x`` and the
    mean; with ``--calib`` data the accuracy report shows what that costs.

    Kept: a norm of another tensor than the one divided, norms read elsewhere,
    non-constant axes or eps, unknown shapes.
    """

    name = "legalize-l2-normalize"
    exact = True

    def run(self, model: IRModel, ctx: PassContext) -> bool:
        graph = model.graph
        if not has_any_op(graph, ["ReduceL2"]):
            return False
        namer = Namer(graph)
        changed = False
        for node in list(graph.nodes):
            if node.op == "Div" and _rewrite(graph, node, namer):
                ctx.count("l2_normalize")
                changed = True
        if changed:
            graph.cleanup()
        return changed


def _clamp(node: gs.Node) -> float | None:
    """The lower bound of ``Clip(v, min)`` / ``Max(v, min)`` with a constant scalar bound and no upper bound."""
    if node.op == "Clip":
        low, high = const_value(input_at(node, 1)), input_at(node, 2)
        if low is None or low.size != 1 or high is not None:
            return None
        return float(low.reshape(-1)[0])
    if node.op == "Max" and len(node.inputs) == 2:
        low = const_value(node.inputs[1])
        return float(low.reshape(-1)[0]) if low is not None and low.size == 1 else None
    return None


def _norm_chain(graph: gs.Graph, div: gs.Node) -> tuple[list[gs.Node], gs.Node, float] | None:
    """The nodes from the divisor back to its ReduceL2 (all read only here), the ReduceL2 and eps."""
    chain: list[gs.Node] = []
    tensor = div.inputs[1]
    eps, expanded, clamped = 0.0, False, False
    for _ in range(3):
        node = producer(tensor)
        if node is None or not single_use(graph, tensor):
            return None
        if node.op == "ReduceL2":
            return chain, node, eps
        if node.op == "Expand" and not expanded:
            expanded = True
        elif not clamped and (bound := _clamp(node)) is not None and bound >= 0:
            clamped, eps = True, bound
        else:
            return None
        chain.append(node)
        tensor = node.inputs[0]
    return None


def _rewrite(graph: gs.Graph, div: gs.Node, namer: Namer) -> bool:
    found = _norm_chain(graph, div)
    if found is None:
        return False
    chain, norm, eps = found
    x, out = div.inputs[0], div.outputs[0]
    shape, out_shape = static_shape(x), static_shape(out)
    if norm.inputs[0] is not x or shape is None or out_shape != shape or x.dtype is None:
        return False
    rank = len(shape)
    axes_value = const_value(input_at(norm, 1))
    if axes_value is None or int(norm.attrs.get("keepdims", 1)) != 1:
        return False
    axes = sorted({int(a) % rank for a in axes_value.reshape(-1)}) or list(range(rank))
    count = int(np.prod([shape[a] for a in axes], dtype=np.int64))
    e = Emit(graph, namer, div.name, x.dtype)
    detach(div, norm, *chain)
    squares = e.node("Mul", "squares", [x, x], shape)
    mean = e.reduce_mean(squares, shape, axes, "mean_square")
    kept = static_shape(mean) or ()
    if eps > 0:
        mean = e.node("Max", "clamped", [mean, e.const("floor", eps * eps / count)], kept)
    inv = e.node("Pow", "rsqrt", [mean, e.const("minus_half", -0.5)], kept)
    scaled = e.node("Mul", "unit_mean", [x, inv], shape)
    e.node("Mul", "normalized", [scaled, e.const("inv_sqrt_count", 1.0 / np.sqrt(count))], shape, output=out)
    return True
