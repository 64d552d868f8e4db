"""Read-only facts about the ONNX graph the lowerings need: shapes, constants, users.

Constants include initializers, ``Constant`` nodes and every node whose inputs are
all constant (or a ``Shape`` of a statically shaped tensor): those are evaluated
here with the ONNX reference evaluator, so shape arithmetic left in the graph never
reaches the TFLite model and never counts as an unsupported operator.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from nirc.errors import BackendError, DynamicShapeError

#: Ops never folded even when their inputs are constant (non-deterministic output).
_NEVER_FOLD = frozenset(
    {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli"}
)
#: Ops folded from the shape of their input alone.
_SHAPE_ONLY = frozenset({"Shape", "Size"})


def describe(node: onnx.NodeProto, index: int) -> str:
    """How error messages name a node: its name, else its index and first output."""
    if node.name:
        return f"{node.op_type} '{node.name}'"
    out = node.output[0] if node.output else "?"
    return f"{node.op_type} #{index} (output '{out}')"


def _attr(node: onnx.NodeProto, name: str) -> onnx.AttributeProto | None:
    return next((a for a in node.attribute if a.name == name), None)


def has_attr(node: onnx.NodeProto, name: str) -> bool:
    return _attr(node, name) is not None


def attr_int(node: onnx.NodeProto, name: str, default: int) -> int:
    a = _attr(node, name)
    return default if a is None else int(a.i)


def attr_float(node: onnx.NodeProto, name: str, default: float) -> float:
    a = _attr(node, name)
    return default if a is None else float(a.f)


def attr_ints(node: onnx.NodeProto, name: str, default: Sequence[int]) -> list[int]:
    a = _attr(node, name)
    return [int(v) for v in (default if a is None else a.ints)]


def attr_str(node: onnx.NodeProto, name: str, default: str) -> str:
    a = _attr(node, name)
    return default if a is None else a.s.decode()


def _static_shape(vi: onnx.ValueInfoProto) -> tuple[tuple[int, ...] | None, int]:
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        return None, tt.elem_type
    dims: list[int] = []
    for d in tt.shape.dim:
        if not d.HasField("dim_value"):
            return None, tt.elem_type
        dims.append(int(d.dim_value))
    return tuple(dims), tt.elem_type


@dataclass
class GraphInfo:
    """Shapes, element types, constants and use lists of one ONNX graph."""

    model: onnx.ModelProto
    nodes: list[onnx.NodeProto]
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    elem_types: dict[str, int] = field(default_factory=dict)
    consts: dict[str, np.ndarray] = field(default_factory=dict)
    folded: set[int] = field(default_factory=set)
    const_names: set[str] = field(default_factory=set)
    consumers: dict[str, list[tuple[int, int]]] = field(default_factory=lambda: defaultdict(list))
    producers: dict[str, int] = field(default_factory=dict)
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)

    @classmethod
    def build(cls, model: onnx.ModelProto, *, evaluate: bool = True) -> GraphInfo:
        """Collect the facts; ``evaluate=False`` only marks foldable nodes (cheap check)."""
        g = model.graph
        info = cls(model=model, nodes=list(g.node))
        for init in g.initializer:
            arr = numpy_helper.to_array(init)
            info.consts[init.name] = arr
            info.shapes[init.name] = tuple(int(d) for d in arr.shape)
            info.elem_types[init.name] = init.data_type
            info.const_names.add(init.name)
        for vi in [*g.input, *g.value_info, *g.output]:
            shape, et = _static_shape(vi)
            if shape is not None and vi.name not in info.shapes:
                info.shapes[vi.name] = shape
            if vi.name not in info.elem_types:
                info.elem_types[vi.name] = et
        info.inputs = [vi.name for vi in g.input if vi.name not in info.consts]
        info.outputs = [vi.name for vi in g.output]
        for idx, node in enumerate(info.nodes):
            for slot, name in enumerate(node.input):
                if name:
                    info.consumers[name].append((idx, slot))
            for name in node.output:
                if name:
                    info.producers[name] = idx
        info._fold_constants(evaluate)
        return info

    # -- queries -------------------------------------------------------------------
    def shape(self, name: str) -> tuple[int, ...]:
        shape = self.shapes.get(name)
        if shape is None:
            raise DynamicShapeError(
                f"tensor '{name}' has no static shape; run shape inference (strict, data_prop) first"
            )
        return shape

    def has_shape(self, name: str) -> bool:
        return name in self.shapes

    def const(self, name: str) -> np.ndarray | None:
        return self.consts.get(name) if name else None

    def is_const(self, name: str) -> bool:
        return bool(name) and name in self.const_names

    def users(self, name: str) -> list[tuple[int, int]]:
        """(node index, input slot) of every non-folded consumer of ``name``."""
        return [(i, s) for i, s in self.consumers.get(name, []) if i not in self.folded]

    def is_graph_output(self, name: str) -> bool:
        return name in self.outputs

    def live_nodes(self) -> list[tuple[int, onnx.NodeProto]]:
        return [(i, n) for i, n in enumerate(self.nodes) if i not in self.folded]

    # -- constant folding ------------------------------------------------------------
    def foldable(self, node: onnx.NodeProto) -> bool:
        if node.domain not in ("", "ai.onnx") or node.op_type in _NEVER_FOLD:
            return False
        if node.op_type == "Constant":
            return True
        if node.op_type in _SHAPE_ONLY:
            return bool(node.input) and node.input[0] in self.shapes
        present = [n for n in node.input if n]
        return bool(present) and all(n in self.const_names for n in present)

    def _fold_constants(self, evaluate: bool) -> None:
        opset = next((o.version for o in self.model.opset_import if o.domain in ("", "ai.onnx")), 18)
        for idx, node in enumerate(self.nodes):
            if not self.foldable(node):
                continue
            self.folded.add(idx)
            self.const_names.update(n for n in node.output if n)
            if not evaluate:
                continue
            values = self._evaluate(node, opset)
            for name, value in zip(node.output, values, strict=False):
                if name:
                    arr = np.asarray(value)
                    self.consts[name] = arr
                    self.shapes[name] = tuple(int(d) for d in arr.shape)

    def _evaluate(self, node: onnx.NodeProto, opset: int) -> list[np.ndarray]:
        if node.op_type == "Shape":
            shape = self.shapes[node.input[0]]
            start = attr_int(node, "start", 0)
            sel = shape[start : attr_int(node, "end", len(shape))] if has_attr(node, "end") else shape[start:]
            return [np.asarray(sel, dtype=np.int64)]
        if node.op_type == "Size":
            return [np.asarray(int(np.prod(self.shapes[node.input[0]])), dtype=np.int64)]
        from onnx.reference import ReferenceEvaluator

        feeds = {n: self.consts[n] for n in node.input if n}
        try:
            evaluator = ReferenceEvaluator(node, opsets={"": opset})
            return [np.asarray(v) for v in evaluator.run(None, feeds)]
        except Exception as exc:  # the reference evaluator raises many types
            raise BackendError(f"cannot fold constant node {node.op_type} '{node.name}': {exc}") from exc
