"""Merge nodes that compute the same op with the same attributes on the same inputs."""

from __future__ import annotations

import hashlib
from collections.abc import Hashable
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs
from nirc.passes._rewrite import const_value, graph_output_names, is_present, replace_uses

from nirc.ir import IRModel
from nirc.pass_base import Pass, PassContext

# Ops whose two evaluations on equal inputs may differ.
_NONDETERMINISTIC = frozenset(
    {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli", "Dropout"}
)
# Constants up to this many elements are compared by value, larger ones by identity:
# hashing every conv weight on every run costs more than the rare duplicate saves.
_VALUE_COMPARE_LIMIT = 4096
_MAX_ROUNDS = 8


@dataclass(frozen=True)
class EliminateCommonSubexpressionsPass(Pass):
    """Merge nodes with the same op, domain, attributes and inputs into one (common-subexpression elimination).

    Exact: ONNX ops are pure functions of their inputs and attributes, so two
    such nodes produce identical values and every reader can use the first.
    Inputs match when they are the same tensor, or constants with the same
    dtype, shape and bytes (small constants only; large ones must be the same
    initializer). Kept: random ops and Dropout (not deterministic), nodes with
    subgraph attributes, and a duplicate whose output is a graph output when
    the survivor's is one too (both output names must stay).
    """

    name = "eliminate-common-subexpressions"
    exact = True

    def run(self, model: IRModel, ctx: PassContext) -> bool:
        graph = model.graph
        changed = False
        for _ in range(_MAX_ROUNDS):
            merged = self._one_round(model)
            if not merged:
                break
            ctx.count("merged", merged)
            changed = True
            graph.cleanup()
        return changed

    def _one_round(self, model: IRModel) -> int:
        graph = model.graph
        outputs = graph_output_names(graph)
        seen: dict[Hashable, gs.Node] = {}
        merged = 0
        for node in model.view().topological_order():
            key = _node_key(node)
            if key is None or not node.outputs:
                continue
            first = seen.get(key)
            if first is None:
                seen[key] = node
                continue
            keep, drop = first, node
            if any(t.name in outputs for t in drop.outputs):
                if any(t.name in outputs for t in keep.outputs):
                    continue
                keep, drop = drop, keep
                seen[key] = keep
            for old, new in zip(drop.outputs, keep.outputs, strict=True):
                replace_uses(old, new)
            drop.inputs.clear()
            drop.outputs.clear()
            merged += 1
        return merged


def _node_key(node: gs.Node) -> Hashable | None:
    if node.op in _NONDETERMINISTIC:
        return None
    try:
        attrs = tuple(sorted((name, _value_key(value)) for name, value in node.attrs.items()))
    except _Unhashable:
        return None
    inputs = tuple(_tensor_key(t) for t in node.inputs)
    return (node.domain or "", node.op, attrs, inputs, len(node.outputs))


class _Unhashable(Exception):
    """An attribute (a subgraph) that the key cannot represent."""


def _value_key(value: object) -> Hashable:
    if isinstance(value, gs.Graph):
        raise _Unhashable
    if isinstance(value, gs.Constant):
        return _array_key(np.asarray(value.values))
    if isinstance(value, np.ndarray):
        return _array_key(value)
    if isinstance(value, list | tuple):
        return tuple(_value_key(v) for v in value)
    if isinstance(value, Hashable):
        return (type(value).__name__, value)
    raise _Unhashable


def _array_key(array: np.ndarray) -> Hashable:
    data = np.array(array, order="C")
    return ("array", data.dtype.str, data.shape, hashlib.sha256(data.tobytes()).hexdigest())


def _tensor_key(tensor: gs.Tensor) -> Hashable:
    if not is_present(tensor):
        return ("absent",)
    if isinstance(tensor, gs.Constant):
        value = const_value(tensor)
        if value is not None and value.size <= _VALUE_COMPARE_LIMIT:
            return _array_key(value)
        return ("initializer", tensor.name)
    return ("tensor", tensor.name)
