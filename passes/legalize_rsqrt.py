"""Rewrite divisions by square roots, reciprocal square roots and squares into ops the NPU runs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs
from nirc.passes._rewrite import Namer, detach, has_any_op, producer, scalar_value

from nirc.ir import IRModel
from nirc.pass_base import Pass, PassContext

_OPS = ("Div", "Reciprocal", "Pow")


@dataclass(frozen=True)
class LegalizeRsqrtPass(Pass):
    """Legalize ``a / Sqrt(b)`` as ``a * Pow(b, -0.5)`` and ``Pow(x, 2)`` as ``Mul(x, x)``.

    Vela has no SQRT, DIV (on U55/U65) or POW on the NPU, but it has RSQRT and MUL;
    the emitter lowers ``Pow(v, -0.5)`` to RSQRT. Rewrites:

    * ``Div(a, Sqrt(b))`` -> ``Mul(a, Pow(b, -0.5))``: ``a / sqrt(b) = a * b^-1/2``,
      exact up to float rounding (how normalizations written out by hand, e.g.
      ConvNeXt's channels-first LayerNorm, divide by the standard deviation).
    * ``Reciprocal(Sqrt(b))`` and ``Div(1, Sqrt(b))`` -> ``Pow(b, -0.5)``.
    * ``Pow(x, 2)`` -> ``Mul(x, x)``: the same correctly rounded product.

    The Sqrt itself is removed once nothing else reads it.
    """

    name = "legalize-rsqrt"
    exact = True
    legalizes = frozenset({"Sqrt", "Reciprocal"})

    def run(self, model: IRModel, ctx: PassContext) -> bool:
        graph = model.graph
        if not has_any_op(graph, _OPS):
            return False
        namer = Namer(graph)
        changed = False
        for node in list(graph.nodes):
            if node.op == "Pow" and _square(graph, node):
                ctx.count("square")
                changed = True
            elif node.op in ("Div", "Reciprocal") and _rsqrt(graph, node, namer):
                ctx.count("rsqrt")
                changed = True
        if changed:
            graph.cleanup()
        return changed


def _sqrt_input(tensor: gs.Tensor) -> gs.Tensor | None:
    """``b`` when ``tensor = Sqrt(b)``."""
    src = producer(tensor)
    if src is None or src.op != "Sqrt" or len(src.outputs) != 1:
        return None
    b: gs.Tensor = src.inputs[0]
    return b


def _rsqrt(graph: gs.Graph, node: gs.Node, namer: Namer) -> bool:
    divisor = node.inputs[-1]
    b = _sqrt_input(divisor)
    if b is None or b.dtype is None or len(node.outputs) != 1:
        return False
    numerator = node.inputs[0] if node.op == "Div" else None
    if numerator is not None and numerator is divisor:
        return False
    dtype = np.dtype(b.dtype)
    out = node.outputs[0]
    half = namer.constant(f"{node.name}_minus_half", np.asarray(-0.5, dtype))
    unit = numerator is None or scalar_value(numerator) == 1.0
    if unit and (numerator is None or _broadcasts_to(b, out)):
        detach(node)
        graph.nodes.append(gs.Node("Pow", namer.fresh(f"{node.name}_rsqrt"), inputs=[b, half], outputs=[out]))
    elif numerator is not None:
        rsqrt = gs.Variable(namer.fresh(f"{node.name}_rsqrt"), dtype=dtype, shape=b.shape)
        detach(node)
        graph.nodes.append(gs.Node("Pow", namer.fresh(f"{node.name}_rsqrt"), inputs=[b, half], outputs=[rsqrt]))
        graph.nodes.append(gs.Node("Mul", node.name, inputs=[numerator, rsqrt], outputs=[out]))
    else:
        return False
    return True  # the Sqrt goes with graph.cleanup() once nothing else reads it


def _broadcasts_to(b: gs.Tensor, out: gs.Tensor) -> bool:
    """``Pow(b, -0.5)`` alone has ``out``'s shape (the constant 1 broadcast nothing larger)."""
    return b.shape is not None and out.shape is not None and list(b.shape) == list(out.shape)


def _square(graph: gs.Graph, node: gs.Node) -> bool:
    if len(node.inputs) != 2 or len(node.outputs) != 1 or scalar_value(node.inputs[1]) != 2.0:
        return False
    x = node.inputs[0]
    out = node.outputs[0]
    if x.shape is None or out.shape is None or list(x.shape) != list(out.shape):
        return False  # a non-scalar exponent constant broadcast x larger
    name = node.name
    detach(node)
    graph.nodes.append(gs.Node("Mul", name, inputs=[x, x], outputs=[out]))
    return True
