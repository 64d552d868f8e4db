"""Bring a model written at an opset newer than the canonical one down to it, without ONNX's version converter.

ONNX's converter walks one opset at a time and needs an adapter for every op that
changed on the way; it has none for ops born after the target (``Gelu`` at 20,
``Swish`` at 24, ``RMSNormalization`` at 23), so a dynamo export holding one used
to fail at the door. Most ops that changed after opset 18 only widened their type
lists (bfloat16, float8, int4) or gained an attribute whose default is the old
behaviour; nirc's models use neither, so the node is already a valid opset-18
node once such attributes, when left at their defaults, are dropped (checked
by comparing the two schemas: same inputs, outputs and attributes but for
those). The few that kept their name but changed meaning (GroupNormalization-21
scales per channel, GridSample-20 renamed its modes, DFT-20 moved ``axis``) and
attribute values new after 18 (Pad ``wrap``) are never retagged. The newer
ops are lowered to the opset-18 spelling the TorchScript exporter writes for the
same PyTorch module, so the two exporters' models meet in one form and every
pattern the passes and the emitter know (e.g. exact GELU → TFLite ``GELU``)
applies to both. Shape and type inference at the canonical opset, which follows,
rejects whatever type a node still carries that opset 18 does not know.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable

import numpy as np
import onnx
from onnx import defs, helper, numpy_helper

from nirc.errors import UnsupportedOperatorError
from nirc.ir.names import fresh_name

DEFAULT_DOMAINS = ("", "ai.onnx")
"""The ONNX default domain, under both of its spellings."""

Lowering = Callable[[onnx.NodeProto, "_Names"], list[onnx.NodeProto]]


class _Names:
    """Fresh tensor names next to the ones the model already uses."""

    def __init__(self, model: onnx.ModelProto) -> None:
        graph = model.graph
        self.used = {t for n in graph.node for t in (*n.input, *n.output)}
        self.used.update(i.name for i in graph.initializer)
        self.used.update(i.name for i in graph.input)
        self.constants: list[onnx.TensorProto] = []
        self.ranks = _ranks(model)

    def fresh(self, base: str) -> str:
        return fresh_name(self.used, base)

    def constant(self, base: str, value: np.ndarray) -> str:
        name = self.fresh(base)
        self.constants.append(numpy_helper.from_array(value, name))
        return name


def _ranks(model: onnx.ModelProto) -> dict[str, int]:
    """Tensor ranks from ONNX's shape inference at the model's own opset (best effort: missing ones are absent)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # a model the inference rejects is reported later, at the canonical opset
        inferred = model
    graph = inferred.graph
    return {
        v.name: len(v.type.tensor_type.shape.dim)
        for v in (*graph.input, *graph.value_info, *graph.output)
        if v.type.tensor_type.HasField("shape")
    }


def _attr(node: onnx.NodeProto, name: str, default: object) -> object:
    for attribute in node.attribute:
        if attribute.name == name:
            value = helper.get_attribute_value(attribute)
            return value.decode() if isinstance(value, bytes) else value
    return default


def _scalar(value: float) -> np.ndarray:
    return np.array(value, dtype=np.float32)


def _lower_gelu(node: onnx.NodeProto, names: _Names) -> list[onnx.NodeProto]:
    """``Gelu`` (opset 20) as the TorchScript exporter spells ``nn.GELU``.

    ``approximate="none"``: ``(x * (Erf(x / sqrt 2) + 1)) * 0.5``; ``"tanh"``:
    ``(x * (Tanh(sqrt(2/pi) * (x + 0.044715 x^3)) + 1)) * 0.5``. Both are the
    definitions in the ONNX spec of Gelu-20, so the rewrite is exact up to float rounding.
    """
    x, y, base = node.input[0], node.output[0], node.name or node.output[0]

    def t(suffix: str) -> str:
        return names.fresh(f"{base}_{suffix}")

    one, half = names.constant(f"{base}_one", _scalar(1.0)), names.constant(f"{base}_half", _scalar(0.5))
    if _attr(node, "approximate", "none") == "tanh":
        cubic = names.constant(f"{base}_cubic", _scalar(0.044715))
        scale = names.constant(f"{base}_scale", _scalar(math.sqrt(2.0 / math.pi)))
        parts = ("sq", "cube", "ccube", "inner", "arg", "tanh", "plus", "prod")
        sq, cube, ccube, inner, arg, th, plus, prod = (t(s) for s in parts)
        return [
            helper.make_node("Mul", [x, x], [sq], name=f"{base}_sq"),
            helper.make_node("Mul", [x, sq], [cube], name=f"{base}_cube"),
            helper.make_node("Mul", [cubic, cube], [ccube], name=f"{base}_ccube"),
            helper.make_node("Add", [x, ccube], [inner], name=f"{base}_inner"),
            helper.make_node("Mul", [scale, inner], [arg], name=f"{base}_arg"),
            helper.make_node("Tanh", [arg], [th], name=f"{base}_tanh"),
            helper.make_node("Add", [one, th], [plus], name=f"{base}_plus"),
            helper.make_node("Mul", [x, plus], [prod], name=f"{base}_prod"),
            helper.make_node("Mul", [half, prod], [y], name=f"{base}_half"),
        ]
    sqrt2 = names.constant(f"{base}_sqrt2", _scalar(math.sqrt(2.0)))
    scaled, erf, plus, prod = (t(s) for s in ("scaled", "erf", "plus", "prod"))
    return [
        helper.make_node("Div", [x, sqrt2], [scaled], name=f"{base}_div"),
        helper.make_node("Erf", [scaled], [erf], name=f"{base}_erf"),
        helper.make_node("Add", [erf, one], [plus], name=f"{base}_plus"),
        helper.make_node("Mul", [x, plus], [prod], name=f"{base}_prod"),
        helper.make_node("Mul", [prod, half], [y], name=f"{base}_half"),
    ]


def _lower_swish(node: onnx.NodeProto, names: _Names) -> list[onnx.NodeProto]:
    """``Swish`` (opset 24) is ``x * Sigmoid(alpha * x)``: SiLU when alpha is 1, as ``nn.SiLU`` exports."""
    x, y, base = node.input[0], node.output[0], node.name or node.output[0]
    alpha = float(_attr(node, "alpha", 1.0))  # type: ignore[arg-type]
    nodes: list[onnx.NodeProto] = []
    gate_in = x
    if alpha != 1.0:
        gate_in = names.fresh(f"{base}_scaled")
        nodes.append(helper.make_node("Mul", [x, names.constant(f"{base}_alpha", _scalar(alpha))], [gate_in]))
    gate = names.fresh(f"{base}_gate")
    nodes.append(helper.make_node("Sigmoid", [gate_in], [gate], name=f"{base}_sigmoid"))
    nodes.append(helper.make_node("Mul", [x, gate], [y], name=f"{base}_mul"))
    return nodes


def _lower_rms_normalization(node: onnx.NodeProto, names: _Names) -> list[onnx.NodeProto]:
    """``RMSNormalization`` (opset 23): ``x / Sqrt(ReduceMean(x^2, axis..-1) + eps) * scale``, its spec's definition.

    The reduced axes are written ``[axis, ..., -1]``, which needs no rank when ``axis``
    is negative (what exporters write); a non-negative axis is left for the op check
    to name.
    """
    x, scale, y, base = node.input[0], node.input[1], node.output[0], node.name or node.output[0]
    axis = int(_attr(node, "axis", -1))  # type: ignore[call-overload]
    eps = float(_attr(node, "epsilon", 1e-5))  # type: ignore[arg-type]
    axes = list(range(axis, 0)) if axis < 0 else None
    if axes is None:
        raise _NoLowering
    sq, mean, var, rms, normed = (names.fresh(f"{base}_{s}") for s in ("sq", "mean", "var", "rms", "normed"))
    axes_name = names.constant(f"{base}_axes", np.array(axes, dtype=np.int64))
    return [
        helper.make_node("Mul", [x, x], [sq], name=f"{base}_sq"),
        helper.make_node("ReduceMean", [sq, axes_name], [mean], name=f"{base}_mean", keepdims=1),
        helper.make_node("Add", [mean, names.constant(f"{base}_eps", _scalar(eps))], [var], name=f"{base}_eps"),
        helper.make_node("Sqrt", [var], [rms], name=f"{base}_sqrt"),
        helper.make_node("Div", [x, rms], [normed], name=f"{base}_div"),
        helper.make_node("Mul", [normed, scale], [y], name=f"{base}_scale"),
    ]


def _lower_group_normalization(node: onnx.NodeProto, names: _Names) -> list[onnx.NodeProto]:
    """``GroupNormalization``-21 (per-channel scale and bias) as dynamo writes it at opset 18.

    ``x`` viewed as ``[N, G, -1]`` and instance-normalised (mean and variance over each
    group, the op's definition), viewed back, then ``* scale[c] + bias[c]``. Not
    retagged: GroupNormalization-18 reads scale and bias per *group*.
    """
    x, scale, bias, y = node.input[0], node.input[1], node.input[2], node.output[0]
    base = node.name or y
    rank = names.ranks.get(x)
    if rank is None or rank < 3:
        raise _NoLowering
    groups = int(_attr(node, "num_groups", 0))  # type: ignore[call-overload]
    eps = float(_attr(node, "epsilon", 1e-5))  # type: ignore[arg-type]
    grouped, normed, shape, back, scale4, bias4, scaled = (
        names.fresh(f"{base}_{s}") for s in ("grouped", "normed", "shape", "back", "scale_nd", "bias_nd", "scaled")
    )
    per_channel = names.constant(f"{base}_channel_shape", np.array([-1] + [1] * (rank - 2), dtype=np.int64))
    ones = np.ones(groups, dtype=np.float32)
    return [
        helper.make_node("Reshape", [x, names.constant(f"{base}_group_shape", np.array([0, groups, -1], np.int64))],
                         [grouped], name=f"{base}_group"),
        helper.make_node("InstanceNormalization", [grouped, names.constant(f"{base}_ones", ones),
                         names.constant(f"{base}_zeros", ones * 0)], [normed], name=f"{base}_norm", epsilon=eps),
        helper.make_node("Shape", [x], [shape], name=f"{base}_shape"),
        helper.make_node("Reshape", [normed, shape], [back], name=f"{base}_ungroup"),
        helper.make_node("Reshape", [scale, per_channel], [scale4], name=f"{base}_scale_nd"),
        helper.make_node("Reshape", [bias, per_channel], [bias4], name=f"{base}_bias_nd"),
        helper.make_node("Mul", [back, scale4], [scaled], name=f"{base}_scale"),
        helper.make_node("Add", [scaled, bias4], [y], name=f"{base}_bias"),
    ]  # fmt: skip


class _NoLowering(Exception):
    """A lowering that does not apply to this node's attributes: the op check names it."""


# Ops born after the canonical opset, with their opset-18 spelling.
LOWERINGS: dict[str, Lowering] = {
    "Gelu": _lower_gelu,
    "Swish": _lower_swish,
    "RMSNormalization": _lower_rms_normalization,
    "GroupNormalization": _lower_group_normalization,
}

# Ops whose newer version means something else under the same name and attributes at opset 18:
# never retagged (lowered above, or refused).
_CHANGED_MEANING = frozenset({"GroupNormalization", "DFT", "GridSample"})


def downgrade(model: onnx.ModelProto, label: str, current: int, opset: int) -> onnx.ModelProto:
    """Rewrite ``model`` (default-domain opset ``current`` > ``opset``) as an opset-``opset`` model.

    Raises:
        UnsupportedOperatorError: one line naming every op type (with its count) that has
            no opset-``opset`` form: no schema there and no lowering, or an attribute the
            older op lacks set to a non-default value.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    names = _Names(out)
    nodes: list[onnx.NodeProto] = []
    blocked: Counter[str] = Counter()
    for node in out.graph.node:
        if node.domain in DEFAULT_DOMAINS and node.op_type in LOWERINGS and _needs_lowering(node, current, opset):
            try:
                nodes.extend(LOWERINGS[node.op_type](node, names))
                continue
            except _NoLowering:
                pass
        reason = _retag(node, current, opset)
        if reason is not None:
            blocked[reason] += 1
        nodes.append(node)
    if blocked:
        listed = ", ".join(f"{k} x{v}" for k, v in sorted(blocked.items()))
        raise UnsupportedOperatorError(f"{label}: opset-{current} ops with no opset-{opset} form: {listed}")
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    out.graph.initializer.extend(names.constants)
    for entry in out.opset_import:
        if entry.domain in DEFAULT_DOMAINS:
            entry.version = opset
    return out


# Attribute values given a meaning after opset 18, on attributes that existed before.
_NEW_VALUES: dict[tuple[str, str], frozenset[str]] = {
    ("Pad", "mode"): frozenset({"wrap"}),  # Pad-19
    ("Resize", "coordinate_transformation_mode"): frozenset({"half_pixel_symmetric"}),  # Resize-19
}


def _schema(op: str, opset: int) -> defs.OpSchema | None:
    try:
        return defs.get_schema(op, opset, "")
    except defs.SchemaError:
        return None


def _needs_lowering(node: onnx.NodeProto, current: int, opset: int) -> bool:
    schema = _schema(node.op_type, opset)
    return schema is None or schema.since_version != _since(node.op_type, current)


def _since(op: str, opset: int) -> int | None:
    schema = _schema(op, opset)
    return None if schema is None else schema.since_version


def _retag(node: onnx.NodeProto, current: int, opset: int) -> str | None:
    """Make ``node`` valid at ``opset`` in place; return why it cannot be (the op's label), or None."""
    if node.domain not in DEFAULT_DOMAINS:
        return None  # check_domains has already rejected foreign domains
    old, new = _schema(node.op_type, opset), _schema(node.op_type, current)
    if old is None:
        return node.op_type
    if new is None or old.since_version == new.since_version:
        return None
    if node.op_type in _CHANGED_MEANING:
        return node.op_type
    for attribute in list(node.attribute):
        if attribute.name in old.attributes:
            if _show(attribute) in _NEW_VALUES.get((node.op_type, attribute.name), ()):
                return f"{node.op_type}({attribute.name}={_show(attribute)})"
            continue
        declared = new.attributes.get(attribute.name)
        if declared is None or not _is_default(attribute, declared):
            return f"{node.op_type}({attribute.name}={_show(attribute)})"
        node.attribute.remove(attribute)
    present = len(node.input)
    if present > old.max_input:
        return f"{node.op_type}({present} inputs)"
    return None


def _is_default(attribute: onnx.AttributeProto, declared: defs.OpSchema.Attribute) -> bool:
    default = declared.default_value
    if default is None or (not default.name and default.type == onnx.AttributeProto.UNDEFINED):
        return False
    return bool(helper.get_attribute_value(attribute) == helper.get_attribute_value(default))


def _show(attribute: onnx.AttributeProto) -> str:
    value = helper.get_attribute_value(attribute)
    return value.decode() if isinstance(value, bytes) else str(value)
