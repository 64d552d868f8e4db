"""Rewrite activations spelled out in elementary ops as the ONNX activation op they compute.

Design decision -- activations stay ONNX nodes: TFLite fuses Relu, Relu6 and
ReluN1To1 into the producing conv/FC/elementwise op (``fused_activation_function``),
and Vela runs that clamp for free in the NPU's output stage. ONNX has no field
that marks an activation as fused which both ONNX Runtime and the checker
accept, so the IR keeps the activation as its own node and "fused" means: the
TFLite emitter attaches it to its producer at emission time (see
:mod:`nirc.tflite.fusion`). This pass only makes sure the activation is written
in the form the emitter recognises: ``Relu``, ``Clip`` with constant scalar
bounds, ``LeakyRelu``, ``HardSwish``, and ``Mul(x, Sigmoid(x))`` for SiLU/Swish
(which has no ONNX op and no TFLite builtin; it is lowered as LOGISTIC + MUL).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs
from nirc.passes._rewrite import (
    Namer,
    broadcasts_without_growing,
    const_value,
    detach,
    has_any_op,
    input_at,
    other_operand,
    producer,
    scalar_value,
    single_use,
    split_const,
    static_shape,
)

from nirc.ir import IRModel
from nirc.pass_base import Pass, PassContext

_OPS = ("Clip", "Max", "Mul", "Div")
_SIXTH = 1.0 / 6.0


@dataclass(frozen=True)
class CanonicalizeActivationsPass(Pass):
    """Canonicalize activations: Clip(0, inf) and Max(x, 0) to Relu, Max(x, a*x) to LeakyRelu, HardSwish.

    Rewrites, each exact (bitwise unless noted):

    * ``Clip(x, 0)`` with no max, or max = +inf → ``Relu(x)``: ``max(x, 0)``.
    * ``Clip`` bounds produced by Constant nodes become initializers (the
      emitter reads constant bounds; ``Clip(0, 6)`` stays a Clip = Relu6).
    * ``Max(x, 0)`` (a zero constant that does not broadcast x larger) → ``Relu(x)``.
    * ``Max(x, a * x)`` with a scalar ``0 < a < 1`` → ``LeakyRelu(x, alpha=a)``:
      for ``x >= 0``, ``a*x <= x``; for ``x < 0``, ``a*x > x``; the result is
      the same float product LeakyRelu computes.
    * ``x * HardSigmoid(x)`` with ``alpha = 1/6``, ``beta = 1/2`` → ``HardSwish(x)``
      (HardSwish is defined as exactly that).
    * ``x * Clip(x + 3, 0, 6) / 6`` (also ``x * (Clip(x + 3, 0, 6) / 6)`` and
      ``* (1/6)`` instead of ``/ 6``) → ``HardSwish(x)``; equal up to float
      rounding. The intermediate results must have no other reader.
    * ``Mul(Sigmoid(x), x)`` → ``Mul(x, Sigmoid(x))`` so SiLU always reads the
      same way; each SiLU seen is counted as ``silu``.
    """

    name = "canonicalize-activations"
    exact = True

    def run(self, model: IRModel, ctx: PassContext) -> bool:
        graph = model.graph
        if not has_any_op(graph, _OPS):
            return False
        namer = Namer(graph)
        rules: tuple[tuple[str, Callable[[gs.Graph, gs.Node, Namer], str | None]], ...] = (
            ("Clip", _clip),
            ("Max", _max),
            ("Mul", _mul),
            ("Div", _hardswish_from_relu6),
        )
        changed = False
        for op, rule in rules:
            for node in list(graph.nodes):
                if node.op != op or not node.outputs:
                    continue
                key = rule(graph, node, namer)
                if key is None:
                    continue
                ctx.count(key)
                changed |= key != "silu"
        if changed:
            graph.cleanup()
        return changed


def _replace(graph: gs.Graph, old: gs.Node, op: str, x: gs.Tensor, namer: Namer, **attrs: object) -> None:
    """Put a one-input ``op`` node in place of ``old`` writing the same output tensor."""
    out = old.outputs[0]
    detach(old)
    graph.nodes.append(gs.Node(op, namer.fresh(f"{old.name}_{op.lower()}"), attrs=attrs, inputs=[x], outputs=[out]))


def _same_shape(x: gs.Tensor, out: gs.Tensor) -> bool:
    shape = static_shape(x)
    return shape is not None and shape == static_shape(out)


def _clip(graph: gs.Graph, clip: gs.Node, namer: Namer) -> str | None:
    bounds = [input_at(clip, 1), input_at(clip, 2)]
    values = [scalar_value(b) if b is not None else None for b in bounds]
    if any(b is not None and v is None for b, v in zip(bounds, values, strict=True)):
        return None  # a dynamic bound: not an activation
    lo, hi = values
    if lo == 0.0 and (hi is None or (math.isinf(hi) and hi > 0)):
        _replace(graph, clip, "Relu", clip.inputs[0], namer)
        return "clip_to_relu"
    materialized = False
    for slot, bound in enumerate(bounds, start=1):
        if bound is not None and not isinstance(bound, gs.Constant):
            clip.inputs[slot] = namer.constant(f"{clip.name}_{'min' if slot == 1 else 'max'}", const_value(bound))
            materialized = True
    return "clip_bounds_materialized" if materialized else None


def _max(graph: gs.Graph, node: gs.Node, namer: Namer) -> str | None:
    if len(node.inputs) != 2 or len(node.outputs) != 1:
        return None
    split = split_const(node)
    if split is not None:
        x, c = split
        if c.size and not np.any(c) and _same_shape(x, node.outputs[0]) and _broadcast_ok(c, x):
            _replace(graph, node, "Relu", x, namer)
            return "max_to_relu"
        return None
    for x in node.inputs:
        scaled = other_operand(node, x)
        src = producer(scaled) if scaled is not None else None
        if src is None or src.op != "Mul" or other_operand(src, x) is None:
            continue
        alpha = scalar_value(other_operand(src, x))
        if alpha is not None and 0.0 < alpha < 1.0 and _same_shape(x, node.outputs[0]):
            _replace(graph, node, "LeakyRelu", x, namer, alpha=float(np.float32(alpha)))
            return "max_to_leaky_relu"
    return None


def _broadcast_ok(c: np.ndarray, x: gs.Tensor) -> bool:
    shape = static_shape(x)
    return shape is not None and broadcasts_without_growing(c.shape, shape)


def _mul(graph: gs.Graph, mul: gs.Node, namer: Namer) -> str | None:
    if len(mul.inputs) != 2 or len(mul.outputs) != 1:
        return None
    for x in mul.inputs:
        gate_t = other_operand(mul, x)
        gate = producer(gate_t) if gate_t is not None else None
        if gate is None or not gate.inputs or gate.inputs[0] is not x:
            continue
        if gate.op == "HardSigmoid" and _is_hardswish_gate(gate) and _same_shape(x, mul.outputs[0]):
            _replace(graph, mul, "HardSwish", x, namer)
            return "hardswish"
        if gate.op == "Sigmoid":
            if mul.inputs[0] is x:
                return "silu"
            mul.inputs[0], mul.inputs[1] = x, gate_t
            return "silu_reordered"
    return _hardswish_from_relu6(graph, mul, namer)


def _is_hardswish_gate(gate: gs.Node) -> bool:
    alpha = float(gate.attrs.get("alpha", 0.2))
    beta = float(gate.attrs.get("beta", 0.5))
    return math.isclose(alpha, _SIXTH, rel_tol=1e-6) and beta == 0.5


def _divides_by_six(node: gs.Node, operand: gs.Tensor) -> bool:
    """``operand / 6`` or ``operand * (1/6)``."""
    if node.op == "Div" and node.inputs[0] is operand:
        value = scalar_value(node.inputs[1])
        return bool(value == 6.0)
    if node.op == "Mul":
        other = other_operand(node, operand)
        value = scalar_value(other) if other is not None else None
        return value is not None and math.isclose(value, _SIXTH, rel_tol=1e-6)
    return False


def _relu6_of_x_plus_3(graph: gs.Graph, tensor: gs.Tensor) -> tuple[gs.Tensor, list[gs.Node]] | None:
    """``Clip(x + 3, 0, 6)`` with single-use intermediates: (x, [add, clip])."""
    clip = producer(tensor)
    if clip is None or clip.op != "Clip" or not single_use(graph, tensor):
        return None
    lo, hi = (scalar_value(input_at(clip, i)) for i in (1, 2))
    add = producer(clip.inputs[0])
    if lo != 0.0 or hi != 6.0 or add is None or add.op != "Add" or not single_use(graph, clip.inputs[0]):
        return None
    split = split_const(add)
    if split is None or split[1].size != 1 or float(split[1].reshape(-1)[0]) != 3.0:
        return None
    return split[0], [add, clip]


def _hardswish_from_relu6(graph: gs.Graph, final: gs.Node, namer: Namer) -> str | None:
    """``final`` is the last node of ``x * relu6(x + 3) / 6`` in one of its spellings."""
    if len(final.inputs) != 2 or len(final.outputs) != 1:
        return None
    for operand in final.inputs:
        inner = producer(operand)
        if inner is None or not single_use(graph, operand):
            continue
        if _divides_by_six(final, operand) and inner.op == "Mul":
            # (x * relu6(x + 3)) / 6
            for gate_t in inner.inputs:
                found = _relu6_of_x_plus_3(graph, gate_t)
                if found is not None and other_operand(inner, gate_t) is found[0]:
                    return _emit_hardswish(graph, final, found[0], [*found[1], inner], namer)
        if final.op == "Mul" and inner.op in ("Mul", "Div"):
            # x * (relu6(x + 3) / 6)
            for gate_t in inner.inputs:
                found = _relu6_of_x_plus_3(graph, gate_t) if _divides_by_six(inner, gate_t) else None
                if found is not None and other_operand(final, operand) is found[0]:
                    return _emit_hardswish(graph, final, found[0], [*found[1], inner], namer)
    return None


def _emit_hardswish(graph: gs.Graph, final: gs.Node, x: gs.Tensor, inner: list[gs.Node], namer: Namer) -> str | None:
    if not _same_shape(x, final.outputs[0]):
        return None
    _replace(graph, final, "HardSwish", x, namer)
    detach(*inner)
    return "hardswish"
