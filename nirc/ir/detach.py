"""Run the front door's whole-model ONNX tools on a model without its large weights.

Why: the ONNX checker, the version converter and shape inference each serialize the model
and parse it again in C++, so with the weights inside they held up to 6.5x the weight bytes
at once (a 192 MiB MLP peaked at 1.24 GiB while loading). None of them needs the values of
a large tensor, only its type and shape: a *light* copy of the model declares each large
initializer as a graph input of the same type and shape instead (the weights stay in the
proto that was read, untouched), the tools run on that, and the weights are attached to the
result once, in the original initializer order. Small initializers (shape operands, scales)
stay in the light model, where shape inference and the converters can read their values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import onnx
from onnx import helper

DETACH_BYTES = 1 << 20
"""Initializers from this size on are detached."""


def _nbytes(tensor: onnx.TensorProto) -> int:
    if tensor.data_type in (onnx.TensorProto.UNDEFINED, onnx.TensorProto.STRING):
        return 0
    itemsize: int = helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    return int(math.prod(tensor.dims)) * itemsize


@dataclass(frozen=True)
class Detached:
    """What :func:`detach_weights` took out: the tensors, and the input model's initializer order and inputs."""

    heavy: list[onnx.TensorProto]
    order: list[str]
    inputs: frozenset[str]


def detach_weights(model: onnx.ModelProto) -> tuple[onnx.ModelProto, Detached]:
    """A light copy of ``model`` and the large initializers it declares as inputs instead.

    ``model`` itself is not modified; the detached tensors are its own (not copies).
    """
    graph = model.graph
    order = [t.name for t in graph.initializer]
    declared = frozenset(v.name for v in graph.input)
    heavy = [t for t in graph.initializer if _nbytes(t) >= DETACH_BYTES and t.data_location != t.EXTERNAL]
    if not heavy or model.functions or any(n.op_type in ("If", "Loop", "Scan") for n in graph.node):
        return model, Detached([], order, declared)  # subgraphs may read outer initializers: leave them whole
    names = {t.name for t in heavy}
    light = onnx.ModelProto()
    _copy_fields(model, light, skip="graph")
    _copy_fields(graph, light.graph, skip="initializer")
    light.graph.initializer.extend(t for t in graph.initializer if t.name not in names)
    light.graph.input.extend(
        helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in heavy if t.name not in declared
    )
    return light, Detached(heavy, order, declared)


def _copy_fields(src: Any, dst: Any, skip: str) -> None:
    """Every set field of ``src`` but ``skip`` into the empty message ``dst``."""
    for field, value in src.ListFields():
        if field.name == skip:
            continue
        if _repeated(field):
            getattr(dst, field.name).extend(value)
        elif field.message_type is not None:
            getattr(dst, field.name).CopyFrom(value)
        else:
            setattr(dst, field.name, value)


def _repeated(field: Any) -> bool:
    flag = getattr(field, "is_repeated", None)  # protobuf >= 5.29; ``label`` is gone in the newest
    return bool(flag) if flag is not None else bool(field.label == field.LABEL_REPEATED)


def attach_weights(light: onnx.ModelProto, detached: Detached) -> onnx.ModelProto:
    """``light`` (a result of the tools) with the detached tensors as initializers again, in the input's order."""
    if not detached.heavy:
        return light
    added = {t.name for t in detached.heavy} - detached.inputs
    graph = light.graph
    inputs = [v for v in graph.input if v.name not in added]
    del graph.input[:]
    graph.input.extend(inputs)
    by_name = {t.name: t for t in graph.initializer}
    by_name.update((t.name, t) for t in detached.heavy)
    ordered = [by_name.pop(name) for name in detached.order if name in by_name] + list(by_name.values())
    kept = onnx.ModelProto()
    kept.CopyFrom(light)  # the light tensors are views into ``light``: copy them out before clearing
    del kept.graph.initializer[:]
    kept.graph.initializer.extend(ordered)
    return kept
