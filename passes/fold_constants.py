"""Evaluate nodes whose inputs are all constants and replace them by their result."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs
from nirc.passes._rewrite import const_value, detach, graph_output_names, is_present, replace_uses, static_shape
from onnx.reference import ReferenceEvaluator

from nirc.ir import CANONICAL_OPSET, IRModel
from nirc.pass_base import Pass, PassContext

logger = logging.getLogger(__name__)

# Results that differ from run to run, or that carry meaning beyond their value.
_NEVER_FOLD = frozenset(
    {
        "RandomNormal",
        "RandomNormalLike",
        "RandomUniform",
        "RandomUniformLike",
        "Multinomial",
        "Bernoulli",
        "Dropout",
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeLinear",
    }
)
_SHAPE_OPS = ("Shape", "Size")


@dataclass(frozen=True)
class FoldConstantsPass(Pass):
    """Replace nodes whose inputs are all constants (and Shape/Size of static tensors) by initializers.

    Exact: the value is computed once at compile time with ONNX's NumPy
    reference implementation (``onnx.reference.ReferenceEvaluator``, which is
    deterministic) instead of at every inference; ``Shape`` and ``Size`` read
    the static shape every tensor has in the IR. ``Constant`` nodes become
    initializers. Kept: random ops, Dropout, Quantize/DequantizeLinear (they
    mean something to the quantizer beyond their value), nodes with subgraphs,
    nodes that write a graph output, and folds whose result would exceed the
    constant inputs by more than ``max_growth`` elements (e.g. a
    ConstantOfShape or Expand that would bloat the model file).
    """

    name = "fold-constants"
    exact = True
    max_growth: int = 1_000_000

    def run(self, model: IRModel, ctx: PassContext) -> bool:
        graph = model.graph
        if not any(_foldable_inputs(node) for node in graph.nodes):
            return False
        outputs = graph_output_names(graph)
        changed = False
        for node in model.view().topological_order():
            if not node.outputs or any(t.name in outputs for t in node.outputs) or not _foldable_inputs(node):
                continue
            values = self._evaluate(node, ctx)
            if values is None:
                continue
            for var, value in zip(list(node.outputs), values, strict=True):
                replace_uses(var, gs.Constant(var.name, np.array(value, order="C")))
            ctx.count("constants_to_initializers" if node.op == "Constant" else "folded")
            detach(node)
            changed = True
        if changed:
            graph.cleanup()
        return changed

    def _evaluate(self, node: gs.Node, ctx: PassContext) -> list[np.ndarray] | None:
        sizes = [_size(t) for t in node.outputs]
        if any(s is None for s in sizes):
            return None
        growth = sum(s or 0 for s in sizes) - sum(
            v.size for v in (const_value(t) for t in node.inputs) if v is not None
        )
        if growth > self.max_growth:
            ctx.count("skipped_too_large")
            return None
        try:
            values = _compute(node)
        except Exception as exc:  # the reference evaluator raises whatever NumPy raises
            logger.debug("fold-constants: cannot evaluate %s (%s): %s", node.name, node.op, exc)
            return None
        for var, value in zip(node.outputs, values, strict=True):
            if var.dtype is not None and np.dtype(var.dtype) != value.dtype:
                return None
            if static_shape(var) != value.shape:
                return None
        return values


def _foldable_inputs(node: gs.Node) -> bool:
    if node.op in _NEVER_FOLD or node.domain not in (None, "", "ai.onnx"):
        return False
    if any(isinstance(v, gs.Graph) for v in node.attrs.values()):
        return False
    if node.op in _SHAPE_OPS:
        return bool(node.inputs) and static_shape(node.inputs[0]) is not None
    if node.op == "Constant":
        return True
    present = [t for t in node.inputs if is_present(t)]
    return bool(present) and all(const_value(t) is not None for t in present)


def _size(tensor: gs.Tensor) -> int | None:
    shape = static_shape(tensor)
    return None if shape is None else int(np.prod(shape, dtype=np.int64))


def _compute(node: gs.Node) -> list[np.ndarray]:
    if node.op == "Shape":
        dims = static_shape(node.inputs[0]) or ()
        start, end = node.attrs.get("start", 0), node.attrs.get("end", None)
        return [np.array(dims[start:end], dtype=np.int64)]
    if node.op == "Size":
        return [np.array(int(np.prod(static_shape(node.inputs[0]) or (), dtype=np.int64)), dtype=np.int64)]
    value = const_value(node.outputs[0]) if node.op == "Constant" else None
    if value is not None:
        return [value]
    # Evaluate a copy of the node on copies of its inputs: graphsurgeon links a
    # tensor to every node that reads it, so reusing the originals would add
    # readers to the model's own tensors.
    inputs = [
        gs.Constant(f"in{i}", np.asarray(const_value(t))) if is_present(t) else gs.Variable.empty()
        for i, t in enumerate(node.inputs)
    ]
    outputs = [gs.Variable(f"out{i}", dtype=t.dtype, shape=t.shape) for i, t in enumerate(node.outputs)]
    probe = gs.Node(node.op, "probe", attrs=dict(node.attrs), inputs=inputs, outputs=outputs)
    graph = gs.Graph(nodes=[probe], inputs=[], outputs=outputs, opset=CANONICAL_OPSET)
    results = ReferenceEvaluator(gs.export_onnx(graph)).run(None, {})
    return [np.asarray(r) for r in results]
