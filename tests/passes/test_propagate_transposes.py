"""propagate-transposes: regions between a Transpose and its inverse run in the original layout."""

from __future__ import annotations

import numpy as np
from nirc.passes.propagate_transposes import PropagateTransposesPass
from nirc_testing import assert_same_function, ops, parse, run_pass

HEADER = '<ir_version: 9, opset_import: ["" : 18]>'
RNG = np.random.default_rng(3)
F32 = np.float32


def _convnext_block() -> object:
    """dwconv -> permute -> LayerNorm (decomposed) -> Linear -> GELU -> Linear -> scale -> permute back -> +x."""
    return parse(
        HEADER
        + """g (float[1,8,5,6] x) => (float[1,8,5,6] y) {
            d = Conv <group = 8, kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x, wd)
            t = Transpose <perm = [0, 2, 3, 1]> (d)
            m = ReduceMean <keepdims = 1> (t, last)
            c = Sub (t, m)
            sq = Mul (c, c)
            v = ReduceMean <keepdims = 1> (sq, last)
            ve = Add (v, eps)
            r = Pow (ve, minus_half)
            n = Mul (c, r)
            ng = Mul (n, gamma)
            nb = Add (ng, beta)
            h = MatMul (nb, w1)
            hb = Add (h, b1)
            e0 = Div (hb, sqrt2)
            e1 = Erf (e0)
            e2 = Add (e1, one)
            e3 = Mul (hb, e2)
            g = Mul (e3, half)
            o = MatMul (g, w2)
            ob = Add (o, b2)
            s = Mul (ob, scale)
            back = Transpose <perm = [0, 3, 1, 2]> (s)
            y = Add (x, back)
        }""",
        wd=(RNG.standard_normal((8, 1, 3, 3)) * 0.3).astype(F32),
        last=np.array([-1], np.int64),
        eps=np.array(1e-6, F32),
        minus_half=np.array(-0.5, F32),
        gamma=RNG.uniform(0.5, 1.5, 8).astype(F32),
        beta=RNG.standard_normal(8).astype(F32),
        w1=(RNG.standard_normal((8, 32)) * 0.3).astype(F32),
        b1=RNG.standard_normal(32).astype(F32),
        sqrt2=np.array(np.sqrt(2.0), F32),
        one=np.array(1.0, F32),
        half=np.array(0.5, F32),
        w2=(RNG.standard_normal((32, 8)) * 0.2).astype(F32),
        b2=RNG.standard_normal(8).astype(F32),
        scale=RNG.uniform(0.1, 1.0, (1, 1, 1, 8)).astype(F32),
    )


def test_convnext_block_loses_both_transposes() -> None:
    proto = _convnext_block()
    model, changed, ctx = run_pass(PropagateTransposesPass(), proto)
    assert changed and ctx.stats == {"regions": 1, "transposes_removed": 2}
    counts = ops(model)
    assert "Transpose" not in counts and "MatMul" not in counts
    assert counts["Conv"] == 3  # the depthwise conv and the two Linears as 1x1 convs
    means = [n for n in model.graph.nodes if n.op == "ReduceMean"]
    assert all(list(np.asarray(n.inputs[1].values)) == [1] for n in means)  # last axis -> channel axis
    assert_same_function(proto, model.to_proto(), rtol=1e-4, atol=1e-4)


def test_transpose_pair_around_two_branches_and_constants() -> None:
    """Two entries with the same permutation meet in an Add; a per-position constant is permuted."""
    proto = parse(
        HEADER
        + """g (float[1,3,4,5] a, float[1,3,4,5] b) => (float[1,3,4,5] y) {
            ta = Transpose <perm = [0, 2, 3, 1]> (a)
            tb = Transpose <perm = [0, 2, 3, 1]> (b)
            s = Add (ta, tb)
            m = Mul (s, k)
            r = Relu (m)
            y = Transpose <perm = [0, 3, 1, 2]> (r)
        }""",
        k=RNG.standard_normal((4, 5, 3)).astype(F32),
    )
    model, changed, ctx = run_pass(PropagateTransposesPass(), proto)
    assert changed and ctx.stats["transposes_removed"] == 3
    assert "Transpose" not in ops(model)
    assert_same_function(proto, model.to_proto(), rtol=0, atol=0)


def test_non_inverse_exit_is_composed() -> None:
    proto = parse(
        HEADER
        + """g (float[1,3,4,5] x) => (float[1,5,3,4] y) {
            t = Transpose <perm = [0, 2, 3, 1]> (x)
            r = Sigmoid (t)
            y = Transpose <perm = [0, 2, 3, 1]> (r)
        }"""
    )
    model, changed, _ = run_pass(PropagateTransposesPass(), proto)
    assert changed and ops(model) == {"Sigmoid": 1, "Transpose": 1}
    assert_same_function(proto, model.to_proto(), rtol=0, atol=0)


def test_region_reading_an_untransposed_tensor_is_kept() -> None:
    proto = parse(
        HEADER
        + """g (float[1,3,4,5] x, float[1,4,5,3] z) => (float[1,3,4,5] y) {
            t = Transpose <perm = [0, 2, 3, 1]> (x)
            s = Add (t, z)
            y = Transpose <perm = [0, 3, 1, 2]> (s)
        }"""
    )
    model, changed, _ = run_pass(PropagateTransposesPass(), proto)
    assert not changed and ops(model)["Transpose"] == 2


def test_region_writing_a_graph_output_is_kept() -> None:
    proto = parse(
        HEADER
        + """g (float[1,3,4,5] x) => (float[1,4,5,3] r, float[1,3,4,5] y) {
            t = Transpose <perm = [0, 2, 3, 1]> (x)
            r = Relu (t)
            y = Transpose <perm = [0, 3, 1, 2]> (r)
        }"""
    )
    _, changed, _ = run_pass(PropagateTransposesPass(), proto)
    assert not changed


def test_matmul_on_a_non_channel_axis_is_kept() -> None:
    """After (0, 2, 1, 3) the last axis is W, not channels: no 1x1 conv computes it."""
    proto = parse(
        HEADER
        + """g (float[1,3,4,5] x) => (float[1,3,4,2] y) {
            t = Transpose <perm = [0, 2, 1, 3]> (x)
            m = MatMul (t, w)
            y = Transpose <perm = [0, 2, 1, 3]> (m)
        }""",
        w=RNG.standard_normal((5, 2)).astype(F32),
    )
    _, changed, _ = run_pass(PropagateTransposesPass(), proto)
    assert not changed


def test_second_run_changes_nothing() -> None:
    model, _, _ = run_pass(PropagateTransposesPass(), _convnext_block())
    _, changed, _ = run_pass(PropagateTransposesPass(), model.to_proto())
    assert not changed
