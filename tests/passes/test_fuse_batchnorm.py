from __future__ import annotations

import numpy as np
from nirc.passes.fuse_batchnorm import FuseBatchnormPass
from nirc_testing import assert_same_function, ops, parse, run_pass

RNG = np.random.default_rng(0)


def _bn_params(c: int) -> dict[str, np.ndarray]:
    return {
        "g": RNG.uniform(0.5, 1.5, c).astype(np.float32),
        "b": RNG.standard_normal(c).astype(np.float32),
        "m": RNG.standard_normal(c).astype(np.float32),
        "v": RNG.uniform(0.5, 1.5, c).astype(np.float32),
    }


def _conv_bn(extra_output: bool = False, bias: bool = False) -> object:
    outputs = "float[1,8,6,6] y" + (", float[1,8,6,6] c" if extra_output else "")
    conv_inputs = "x, w, cb" if bias else "x, w"
    text = f"""
    <ir_version: 9, opset_import: ["" : 18]>
    g (float[1,4,6,6] x) => ({outputs}) {{
        c = Conv <pads = [1,1,1,1]> ({conv_inputs})
        y = BatchNormalization <epsilon = 0.001> (c, g, b, m, v)
    }}
    """
    inits = {"w": RNG.standard_normal((8, 4, 3, 3)).astype(np.float32), **_bn_params(8)}
    if bias:
        inits["cb"] = RNG.standard_normal(8).astype(np.float32)
    return parse(text, **inits)


def test_folds_bn_into_conv() -> None:
    proto = _conv_bn()
    model, changed, ctx = run_pass(FuseBatchnormPass(), proto)
    assert changed
    assert ops(model) == {"Conv": 1}
    assert ctx.stats["folded_into_conv"] == 1
    assert_same_function(proto, model.to_proto())


def test_folds_bn_into_conv_with_bias() -> None:
    proto = _conv_bn(bias=True)
    model, changed, _ = run_pass(FuseBatchnormPass(), proto)
    assert changed and ops(model) == {"Conv": 1}
    assert_same_function(proto, model.to_proto())


def test_keeps_bn_when_conv_output_has_another_reader() -> None:
    proto = _conv_bn(extra_output=True)
    model, changed, _ = run_pass(FuseBatchnormPass(), proto)
    assert not changed
    assert ops(model) == {"Conv": 1, "BatchNormalization": 1}


def test_second_run_changes_nothing() -> None:
    model, _, _ = run_pass(FuseBatchnormPass(), _conv_bn())
    _, changed, _ = run_pass(FuseBatchnormPass(), model.to_proto())
    assert not changed
