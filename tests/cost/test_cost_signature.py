"""The cache key: structural (names do not matter), sensitive to everything Vela's estimate depends on."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
from onnx import numpy_helper

from nirc.cost.blocks import BlockSpec, build_block
from nirc.cost.signature import signature
from nirc.target import Target


def _renamed(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every tensor and node name replaced; the structure unchanged."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    names: dict[str, str] = {}

    def new(name: str) -> str:
        return names.setdefault(name, f"renamed_{len(names)}") if name else name

    graph = out.graph
    for value in (*graph.input, *graph.output, *graph.value_info, *graph.initializer):
        value.name = new(value.name)
    for node in graph.node:
        node.name = f"node_{node.name}"
        node.input[:] = [new(n) for n in node.input]
        node.output[:] = [new(n) for n in node.output]
    graph.name = "other"
    return out


def test_key_ignores_names(u65: Target) -> None:
    model = build_block(BlockSpec("mbconv_e6", 7, 7, 16))
    assert signature(_renamed(model), u65) == signature(model, u65)


def test_key_is_deterministic(u65: Target) -> None:
    assert signature(build_block(BlockSpec("ghost", 7, 7, 16)), u65) == signature(
        build_block(BlockSpec("ghost", 7, 7, 16)), u65
    )


def test_key_changes_with_shape(u65: Target) -> None:
    base = signature(build_block(BlockSpec("conv3x3", 7, 7, 16)), u65)
    assert signature(build_block(BlockSpec("conv3x3", 8, 7, 16)), u65) != base
    assert signature(build_block(BlockSpec("conv3x3", 7, 7, 32)), u65) != base


def test_key_changes_with_attribute(u65: Target) -> None:
    model = build_block(BlockSpec("conv3x3", 7, 7, 16))
    changed = onnx.ModelProto()
    changed.CopyFrom(model)
    conv = next(n for n in changed.graph.node if n.op_type == "Conv")
    conv.attribute.append(onnx.helper.make_attribute("dilations", [1, 1]))
    assert signature(changed, u65) != signature(model, u65)
    pads = next(a for a in conv.attribute if a.name == "pads")
    pads.ints[:] = [0, 0, 0, 0]
    assert signature(changed, u65) != signature(model, u65)


def test_key_changes_with_weight_values(u65: Target) -> None:
    model = build_block(BlockSpec("conv3x3", 7, 7, 16))
    changed = onnx.ModelProto()
    changed.CopyFrom(model)
    init = changed.graph.initializer[0]
    array = numpy_helper.to_array(init).copy()
    array.flat[0] += np.float32(0.5)
    init.CopyFrom(numpy_helper.from_array(array, init.name))
    assert signature(changed, u65) != signature(model, u65)
    # ... and the seed, which only changes values
    assert signature(build_block(BlockSpec("conv3x3", 7, 7, 16, seed=1)), u65) != signature(model, u65)


def test_key_changes_with_target(u65: Target) -> None:
    model = build_block(BlockSpec("conv3x3", 7, 7, 16))
    base = signature(model, u65)
    for field, value in (
        ("accelerator_config", "ethos-u65-512"),
        ("system_config", "Ethos_U65_Mid_End"),
        ("memory_mode", "Dedicated_Sram_512KB"),
    ):
        assert signature(model, dataclasses.replace(u65, **{field: value})) != base, field
    # a field Vela never sees (the description) does not split the cache
    assert signature(model, dataclasses.replace(u65, description="renamed")) == base
