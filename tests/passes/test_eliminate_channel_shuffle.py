from __future__ import annotations

import numpy as np
from nirc.passes.eliminate_channel_shuffle import EliminateChannelShufflePass
from nirc_testing import assert_same_function, ops, parse, run_pass

HEADER = '<ir_version: 9, opset_import: ["" : 18]>'
RNG = np.random.default_rng(0)
SHUFFLE = """
        r = Reshape (s, grouped)
        t = Transpose <perm = [0, 2, 1, 3, 4]> (r)
        y = Reshape (t, flat)"""


def _model(head: str, tail: str, outputs: str, perm: str = "[0, 2, 1, 3, 4]") -> object:
    return parse(
        HEADER
        + f"""
    g (float[1,8,5,5] x) => ({outputs}) {{
        {head}
        {SHUFFLE.replace("[0, 2, 1, 3, 4]", perm)}
        {tail}
    }}""",
        grouped=np.array([1, 2, 4, 5, 5], np.int64),
        flat=np.array([1, 8, 5, 5], np.int64),
        w0=RNG.standard_normal((8, 8, 1, 1)).astype(np.float32),
        b0=RNG.standard_normal(8).astype(np.float32),
        w1=RNG.standard_normal((6, 8, 3, 3)).astype(np.float32),
        w2=RNG.standard_normal((4, 8, 1, 1)).astype(np.float32),
        wd=RNG.standard_normal((8, 1, 3, 3)).astype(np.float32),
        wg=RNG.standard_normal((8, 4, 1, 1)).astype(np.float32),
    )


def _readers() -> object:
    return _model(
        "s = Relu (x)",
        "a = Conv <pads = [1, 1, 1, 1]> (y, w1)\n b = Conv (y, w2)",
        "float[1,6,5,5] a, float[1,4,5,5] b",
    )


def test_shuffle_read_only_by_convs_folds_into_their_weights() -> None:
    proto = _readers()
    model, changed, ctx = run_pass(EliminateChannelShufflePass(), proto)
    assert changed and ops(model) == {"Relu": 1, "Conv": 2}
    assert ctx.stats == {"folded_into_readers": 1}
    assert_same_function(proto, model.to_proto(), rtol=1e-6, atol=1e-6)


def test_shuffle_after_conv_and_activation_folds_into_the_conv() -> None:
    proto = _model("c = Conv (x, w0, b0)\n s = Relu (c)", "z = Sigmoid (y)", "float[1,8,5,5] z")
    model, changed, ctx = run_pass(EliminateChannelShufflePass(), proto)
    assert changed and ops(model) == {"Conv": 1, "Relu": 1, "Sigmoid": 1}
    assert ctx.stats == {"folded_into_producer": 1}
    assert_same_function(proto, model.to_proto(), rtol=1e-6, atol=1e-6)


def test_shuffle_into_graph_output_folds_into_producer_keeping_the_name() -> None:
    proto = _model("s = Conv (x, w0)", "", "float[1,8,5,5] y")
    model, changed, _ = run_pass(EliminateChannelShufflePass(), proto)
    assert changed
    out = model.to_proto()
    assert ops(out) == {"Conv": 1} and [o.name for o in out.graph.output] == ["y"]
    assert_same_function(proto, out, rtol=1e-6, atol=1e-6)


def test_shuffle_feeding_two_op_types_without_conv_producer_is_kept() -> None:
    proto = _model("s = Relu (x)", "a = Conv (y, w2)\n b = Sigmoid (y)", "float[1,4,5,5] a, float[1,8,5,5] b")
    model, changed, _ = run_pass(EliminateChannelShufflePass(), proto)
    assert not changed
    assert ops(model) == {"Relu": 1, "Reshape": 2, "Transpose": 1, "Conv": 1, "Sigmoid": 1}


def test_shuffle_read_by_depthwise_conv_is_kept() -> None:
    proto = _model("s = Relu (x)", "a = Conv <group = 8, pads = [1, 1, 1, 1]> (y, wd)", "float[1,8,5,5] a")
    _, changed, _ = run_pass(EliminateChannelShufflePass(), proto)
    assert not changed


def test_shufflenet_block_between_grouped_convs_is_kept() -> None:
    # Permuting a grouped conv's channels would move them across groups.
    proto = _model(
        "c = Conv <group = 2> (x, wg)\n s = Relu (c)",
        "a = Conv <group = 8, pads = [1, 1, 1, 1]> (y, wd)",
        "float[1,8,5,5] a",
    )
    _, changed, _ = run_pass(EliminateChannelShufflePass(), proto)
    assert not changed


def test_conv_producer_with_another_reader_is_kept() -> None:
    proto = _model("s = Conv (x, w0)", "z = Sigmoid (y)", "float[1,8,5,5] z, float[1,8,5,5] s")
    _, changed, _ = run_pass(EliminateChannelShufflePass(), proto)
    assert not changed


def test_reshape_transpose_reshape_that_moves_pixels_is_kept() -> None:
    proto = _model("s = Conv (x, w0)", "a = Conv (y, w2)", "float[1,4,5,5] a", perm="[0, 1, 2, 4, 3]")
    _, changed, _ = run_pass(EliminateChannelShufflePass(), proto)
    assert not changed


def test_second_run_changes_nothing() -> None:
    model, _, _ = run_pass(EliminateChannelShufflePass(), _readers())
    _, changed, _ = run_pass(EliminateChannelShufflePass(), model.to_proto())
    assert not changed
