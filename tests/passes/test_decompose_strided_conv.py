"""decompose-strided-conv: stride > 3 convolutions as a stride <= 3 Conv plus a strided Slice."""

from __future__ import annotations

import numpy as np
import pytest
from nirc.passes.decompose_strided_conv import DecomposeStridedConvPass
from nirc_testing import assert_same_function, ops, parse, run_pass

HEADER = '<ir_version: 9, opset_import: ["" : 18]>'
RNG = np.random.default_rng(11)


def _w(*shape: int) -> np.ndarray:
    return (RNG.standard_normal(shape) * 0.2).astype(np.float32)


CASES = {
    # name: (conv, x, y, initializers, native strides, slice steps)
    "5x5 stride 4 with pads (Vela fails on it)": (
        "Conv <kernel_shape = [5, 5], strides = [4, 4], pads = [1, 1, 2, 2]> (x, w)", "1,4,32,32", "1,8,8,8",
        {"w": _w(8, 4, 5, 5)}, [2, 2], [2, 2]),
    "depthwise stride 4 with bias (CPU in Vela)": (
        "Conv <group = 4, kernel_shape = [3, 3], strides = [4, 4], pads = [1, 1, 1, 1]> (x, w, b)", "1,4,32,32",
        "1,4,8,8", {"w": _w(4, 1, 3, 3), "b": _w(4)}, [2, 2], [2, 2]),
    "patchify stem 4x4 stride 4": (
        "Conv <kernel_shape = [4, 4], strides = [4, 4]> (x, w)", "1,3,64,64", "1,32,16,16", {"w": _w(32, 3, 4, 4)},
        [2, 2], [2, 2]),
    "prime stride 5 on H only": (
        "Conv <kernel_shape = [3, 3], strides = [5, 3], pads = [1, 1, 1, 1]> (x, w)", "1,3,30,30", "1,8,6,10",
        {"w": _w(8, 3, 3, 3)}, [1, 3], [5, 1]),
    "auto_pad SAME_UPPER stride 4": (
        'Conv <kernel_shape = [3, 3], strides = [4, 4], auto_pad = "SAME_UPPER"> (x, w)', "1,4,30,30", "1,8,8,8",
        {"w": _w(8, 4, 3, 3)}, [2, 2], [2, 2]),
    "stride 6, dilation 2": (
        "Conv <kernel_shape = [3, 3], strides = [6, 6], dilations = [2, 2]> (x, w)", "1,2,37,37", "1,4,6,6",
        {"w": _w(4, 2, 3, 3)}, [3, 3], [2, 2]),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_strided_conv_becomes_conv_and_slice(case: str) -> None:
    conv, x, y, inits, native, steps = CASES[case]
    proto = parse(HEADER + f"g (float[{x}] x) => (float[{y}] y) {{ y = {conv} }}", **inits)
    model, changed, ctx = run_pass(DecomposeStridedConvPass(), proto)
    assert changed and ctx.stats == {"decomposed": 1} and ops(model) == {"Conv": 1, "Slice": 1}
    conv_node = next(n for n in model.graph.nodes if n.op == "Conv")
    slice_node = next(n for n in model.graph.nodes if n.op == "Slice")
    assert list(conv_node.attrs["strides"]) == native
    assert list(np.asarray(slice_node.inputs[4].values)) == steps
    assert_same_function(proto, model.to_proto(), rtol=1e-5, atol=1e-5)


def test_strides_up_to_three_and_runtime_weights_are_kept() -> None:
    proto = parse(
        HEADER
        + """g (float[1,4,32,32] x, float[8,4,3,3] v) => (float[1,8,11,11] y, float[1,8,8,8] z) {
            y = Conv <kernel_shape = [3, 3], strides = [3, 3], pads = [1, 1, 1, 1]> (x, w)
            z = Conv <kernel_shape = [3, 3], strides = [4, 4], pads = [1, 1, 1, 1]> (x, v)
        }""",
        w=_w(8, 4, 3, 3),
    )
    model, changed, _ = run_pass(DecomposeStridedConvPass(), proto)
    assert not changed and ops(model) == {"Conv": 2}


def test_second_run_changes_nothing() -> None:
    conv, x, y, inits, _, _ = CASES["patchify stem 4x4 stride 4"]
    proto = parse(HEADER + f"g (float[{x}] x) => (float[{y}] y) {{ y = {conv} }}", **inits)
    model, _, _ = run_pass(DecomposeStridedConvPass(), proto)
    _, changed, _ = run_pass(DecomposeStridedConvPass(), model.to_proto())
    assert not changed
