"""fuse-batchnorm on ConvTranspose and Gemm producers (the Conv cases are in test_fuse_batchnorm.py)."""

from __future__ import annotations

import numpy as np
import pytest
from nirc.passes.fuse_batchnorm import FuseBatchnormPass
from nirc_testing import assert_same_function, ops, parse, run_pass

HEADER = '<ir_version: 9, opset_import: ["" : 18]>'
RNG = np.random.default_rng(1)


def _bn_params(c: int) -> dict[str, np.ndarray]:
    return {
        "g": RNG.uniform(0.5, 1.5, c).astype(np.float32),
        "b": RNG.standard_normal(c).astype(np.float32),
        "m": RNG.standard_normal(c).astype(np.float32),
        "v": RNG.uniform(0.5, 1.5, c).astype(np.float32),
    }


def _conv_transpose_bn(group: int, bias: bool) -> object:
    inputs = "x, w, cb" if bias else "x, w"
    inits = {"w": RNG.standard_normal((4, 6 // group, 3, 3)).astype(np.float32), **_bn_params(6)}
    if bias:
        inits["cb"] = RNG.standard_normal(6).astype(np.float32)
    return parse(
        HEADER
        + f"""
    g (float[1,4,5,5] x) => (float[1,6,9,9] y) {{
        c = ConvTranspose <group = {group}, strides = [2, 2], pads = [1, 1, 1, 1]> ({inputs})
        y = BatchNormalization <epsilon = 0.001> (c, g, b, m, v)
    }}""",
        **inits,
    )


@pytest.mark.parametrize(("group", "bias"), [(1, False), (2, True), (2, False)])
def test_folds_bn_into_conv_transpose(group: int, bias: bool) -> None:
    proto = _conv_transpose_bn(group, bias)
    model, changed, ctx = run_pass(FuseBatchnormPass(), proto)
    assert changed and ops(model) == {"ConvTranspose": 1}
    assert ctx.stats == {"folded_into_conv_transpose": 1}
    assert_same_function(proto, model.to_proto())


def _gemm_bn(trans_b: int, c: str, extra_output: bool = False) -> object:
    w_shape = (3, 4) if trans_b else (4, 3)
    c_arg = ", cc" if c else ""
    inits = {"w": RNG.standard_normal(w_shape).astype(np.float32), **_bn_params(3)}
    if c:
        inits["cc"] = RNG.standard_normal([int(d) for d in c.split(",")]).astype(np.float32)
    outputs = "float[2,3] y" + (", float[2,3] f" if extra_output else "")
    return parse(
        HEADER
        + f"""
    g (float[2,4] x) => ({outputs}) {{
        f = Gemm <transB = {trans_b}, alpha = 0.5, beta = 2.0> (x, w{c_arg})
        y = BatchNormalization (f, g, b, m, v)
    }}""",
        **inits,
    )


@pytest.mark.parametrize(("trans_b", "c"), [(1, "3"), (0, "1,3"), (1, ""), (0, "2,1"), (1, "2,3")])
def test_folds_bn_into_gemm(trans_b: int, c: str) -> None:
    proto = _gemm_bn(trans_b, c)
    model, changed, ctx = run_pass(FuseBatchnormPass(), proto)
    assert changed and ops(model) == {"Gemm": 1}
    assert ctx.stats == {"folded_into_gemm": 1}
    assert_same_function(proto, model.to_proto())


def test_keeps_bn_when_gemm_output_has_another_reader() -> None:
    proto = _gemm_bn(1, "3", extra_output=True)
    model, changed, _ = run_pass(FuseBatchnormPass(), proto)
    assert not changed and ops(model) == {"Gemm": 1, "BatchNormalization": 1}


def test_keeps_bn_after_conv_with_dynamic_weights() -> None:
    proto = parse(
        HEADER
        + """
    g (float[1,4,5,5] x, float[8,4,1,1] w) => (float[1,8,5,5] y) {
        c = Conv (x, w)
        y = BatchNormalization (c, g, b, m, v)
    }""",
        **_bn_params(8),
    )
    _, changed, _ = run_pass(FuseBatchnormPass(), proto)
    assert not changed


def test_second_run_changes_nothing() -> None:
    for proto in (_conv_transpose_bn(2, True), _gemm_bn(0, "1,3")):
        model, _, _ = run_pass(FuseBatchnormPass(), proto)
        _, changed, _ = run_pass(FuseBatchnormPass(), model.to_proto())
        assert not changed
