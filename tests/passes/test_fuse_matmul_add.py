from __future__ import annotations

import numpy as np
from nirc.passes.fuse_matmul_add import FuseMatmulAddPass
from nirc_testing import assert_same_function, ops, parse, run_pass

HEADER = '<ir_version: 9, opset_import: ["" : 18]>'
RNG = np.random.default_rng(0)


def _linear(
    x_shape: str = "2,4",
    y_shape: str = "2,3",
    add: str = "y = Add (m, b)",
    bias: tuple[int, ...] = (3,),
    outputs: str = "",
) -> object:
    return parse(
        HEADER
        + f"""
    g (float[{x_shape}] x) => (float[{y_shape}] y{outputs}) {{
        m = MatMul (x, w)
        {add}
    }}""",
        w=RNG.standard_normal((4, 3)).astype(np.float32),
        b=RNG.standard_normal(bias).astype(np.float32),
    )


def test_matmul_plus_bias_becomes_gemm() -> None:
    proto = _linear()
    model, changed, ctx = run_pass(FuseMatmulAddPass(), proto)
    assert changed and ops(model) == {"Gemm": 1}
    assert ctx.stats == {"fused": 1}
    assert_same_function(proto, model.to_proto(), rtol=1e-6, atol=1e-6)


def test_bias_first_and_row_bias_shapes() -> None:
    for bias in [(3,), (1, 3), (2, 3), (2, 1), ()]:
        proto = _linear(add="y = Add (b, m)", bias=bias)
        model, changed, _ = run_pass(FuseMatmulAddPass(), proto)
        assert changed and ops(model) == {"Gemm": 1}, bias
        assert_same_function(proto, model.to_proto(), rtol=1e-6, atol=1e-6)


def test_batched_matmul_is_kept() -> None:
    proto = _linear(x_shape="5,2,4", y_shape="5,2,3")
    model, changed, _ = run_pass(FuseMatmulAddPass(), proto)
    assert not changed and ops(model) == {"MatMul": 1, "Add": 1}


def test_bias_that_broadcasts_the_result_larger_is_kept() -> None:
    proto = _linear(y_shape="4,2,3", bias=(4, 1, 3))
    _, changed, _ = run_pass(FuseMatmulAddPass(), proto)
    assert not changed


def test_matmul_with_another_reader_is_kept() -> None:
    proto = _linear(outputs=", float[2,3] m")
    _, changed, _ = run_pass(FuseMatmulAddPass(), proto)
    assert not changed


def test_non_constant_weight_is_kept() -> None:
    proto = parse(
        HEADER
        + """
    g (float[2,4] x, float[4,3] w) => (float[2,3] y) {
        m = MatMul (x, w)
        y = Add (m, b)
    }""",
        b=np.ones(3, np.float32),
    )
    _, changed, _ = run_pass(FuseMatmulAddPass(), proto)
    assert not changed


def test_second_run_changes_nothing() -> None:
    model, _, _ = run_pass(FuseMatmulAddPass(), _linear())
    _, changed, _ = run_pass(FuseMatmulAddPass(), model.to_proto())
    assert not changed
