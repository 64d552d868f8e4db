"""decompose-pooling: pools with kernels above Vela's 256 limit as chains of smaller pools."""

from __future__ import annotations

import pytest
from nirc.passes.decompose_pooling import MAX_KERNEL, DecomposePoolingPass
from nirc_testing import assert_same_function, ops, parse, run_pass

HEADER = '<ir_version: 9, opset_import: ["" : 18]>'


def _model(body: str, x: str, y: str) -> object:
    return parse(HEADER + f"g (float[{x}] x) => (float[{y}] y) {{ y = {body} }}")


CASES = {
    "global max 300x300 (15 x 20 tiles)": ("MaxPool <kernel_shape = [300, 300]> (x)", "1,2,300,300", "1,2,1,1"),
    "GlobalMaxPool": ("GlobalMaxPool (x)", "1,2,300,300", "1,2,1,1"),
    "prime height 257 (overlapping chain)": ("GlobalMaxPool (x)", "1,2,257,20", "1,2,1,1"),
    "tiled average 300x30": ("AveragePool <kernel_shape = [300, 30], strides = [300, 30]> (x)", "1,2,600,30",
                             "1,2,2,1"),
    "overlapping max with padding and stride": (
        "MaxPool <kernel_shape = [270, 3], strides = [2, 1], pads = [5, 1, 4, 1]> (x)", "1,2,300,10", "1,2,20,10"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_large_pool_becomes_chain_of_small_pools(case: str) -> None:
    body, x, y = CASES[case]
    proto = _model(body, x, y)
    model, changed, _ = run_pass(DecomposePoolingPass(), proto)
    assert changed
    for node in model.graph.nodes:
        assert node.op in ("MaxPool", "AveragePool")
        assert max(node.attrs["kernel_shape"]) <= MAX_KERNEL
    assert_same_function(proto, model.to_proto(), rtol=1e-5, atol=1e-6)


def test_max_pool_chain_is_bit_exact() -> None:
    proto = _model("GlobalMaxPool (x)", "1,2,257,20", "1,2,1,1")
    model, _, _ = run_pass(DecomposePoolingPass(), proto)
    assert_same_function(proto, model.to_proto(), rtol=0, atol=0)


def test_small_pools_and_overlapping_average_pools_are_kept() -> None:
    proto = parse(
        HEADER
        + """g (float[1,2,300,300] x) => (float[1,2,149,149] y, float[1,2,31,31] z) {
            y = MaxPool <kernel_shape = [3, 3], strides = [2, 2]> (x)
            z = AveragePool <kernel_shape = [270, 270], strides = [1, 1]> (x)
        }"""
    )
    model, changed, _ = run_pass(DecomposePoolingPass(), proto)
    assert not changed and ops(model) == {"MaxPool": 1, "AveragePool": 1}


def test_second_run_changes_nothing() -> None:
    model, _, _ = run_pass(DecomposePoolingPass(), _model("GlobalMaxPool (x)", "1,2,300,300", "1,2,1,1"))
    _, changed, _ = run_pass(DecomposePoolingPass(), model.to_proto())
    assert not changed
