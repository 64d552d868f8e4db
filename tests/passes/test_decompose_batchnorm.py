from __future__ import annotations

import numpy as np
import pytest
from nirc.passes.decompose_batchnorm import DecomposeBatchnormPass
from nirc_testing import assert_same_function, ops, parse, run_pass

HEADER = '<ir_version: 9, opset_import: ["" : 18]>'
RNG = np.random.default_rng(0)


def _bn_params(c: int) -> dict[str, np.ndarray]:
    return {
        "g": RNG.uniform(0.5, 1.5, c).astype(np.float32),
        "b": RNG.standard_normal(c).astype(np.float32),
        "m": RNG.standard_normal(c).astype(np.float32),
        "v": RNG.uniform(0.5, 1.5, c).astype(np.float32),
    }


def _conv_with_two_readers() -> object:
    return parse(
        HEADER
        + """
    g (float[1,4,6,6] x) => (float[1,8,6,6] y, float[1,8,6,6] z) {
        c = Conv <pads = [1, 1, 1, 1]> (x, w)
        y = BatchNormalization <epsilon = 0.001> (c, g, b, m, v)
        z = Relu (c)
    }""",
        w=RNG.standard_normal((8, 4, 3, 3)).astype(np.float32),
        **_bn_params(8),
    )


def test_bn_whose_conv_output_has_a_second_reader_becomes_mul_add() -> None:
    proto = _conv_with_two_readers()
    model, changed, ctx = run_pass(DecomposeBatchnormPass(), proto)
    assert changed and ops(model) == {"Conv": 1, "Mul": 1, "Add": 1, "Relu": 1}
    assert ctx.stats == {"decomposed": 1}
    out = model.to_proto()
    shapes = {i.name: list(i.dims) for i in out.graph.initializer}
    mul = next(n for n in out.graph.node if n.op_type == "Mul")
    assert shapes[mul.input[1]] == [8, 1, 1]
    assert_same_function(proto, out)


@pytest.mark.parametrize("shape", ["2,3", "2,3,5", "1,3,4,4,2"])
def test_bn_on_graph_input_of_any_rank(shape: str) -> None:
    proto = parse(
        HEADER + f"g (float[{shape}] x) => (float[{shape}] y) {{ y = BatchNormalization (x, g, b, m, v) }}",
        **_bn_params(3),
    )
    model, changed, _ = run_pass(DecomposeBatchnormPass(), proto)
    assert changed and ops(model) == {"Mul": 1, "Add": 1}
    assert_same_function(proto, model.to_proto())


def test_training_mode_bn_is_kept() -> None:
    proto = parse(
        HEADER
        + """
    g (float[2,3,4,4] x) => (float[2,3,4,4] y, float[3] rm, float[3] rv) {
        y, rm, rv = BatchNormalization <training_mode = 1> (x, g, b, m, v)
    }""",
        **_bn_params(3),
    )
    model, changed, _ = run_pass(DecomposeBatchnormPass(), proto)
    assert not changed and ops(model) == {"BatchNormalization": 1}


def test_no_bn_means_no_change() -> None:
    proto = parse(HEADER + "g (float[1,4] x) => (float[1,4] y) { y = Relu (x) }")
    _, changed, _ = run_pass(DecomposeBatchnormPass(), proto)
    assert not changed


def test_second_run_changes_nothing() -> None:
    model, _, _ = run_pass(DecomposeBatchnormPass(), _conv_with_two_readers())
    _, changed, _ = run_pass(DecomposeBatchnormPass(), model.to_proto())
    assert not changed
