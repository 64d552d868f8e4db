"""legalize-channel-shuffle: channel permutations as 1x1 one-hot Convs (no TRANSPOSE left)."""

from __future__ import annotations

import numpy as np
from nirc.passes.legalize_channel_shuffle import LegalizeChannelShufflePass
from nirc_testing import assert_same_function, ops, parse, run_pass

from nirc.ir import IRModel
from nirc.pass_base import PassContext
from nirc.plugin import load_registry

HEADER = '<ir_version: 9, opset_import: ["" : 18]>'


def _shufflenet_unit() -> object:
    """ShuffleNetV2: Concat of the two branches, shuffle, then the next unit's channel Split."""
    return parse(
        HEADER
        + """g (float[1,8,3,3] a, float[1,8,3,3] b) => (float[1,8,3,3] y, float[1,8,3,3] z) {
            c = Concat <axis = 1> (a, b)
            r = Reshape (c, grouped)
            t = Transpose <perm = [0, 2, 1, 3, 4]> (r)
            s = Reshape (t, flat)
            y, z = Split <axis = 1, num_outputs = 2> (s)
        }""",
        grouped=np.array([1, 2, 8, 3, 3], np.int64),
        flat=np.array([1, 16, 3, 3], np.int64),
    )


def test_shuffle_after_concat_becomes_one_hot_conv() -> None:
    proto = _shufflenet_unit()
    model, changed, ctx = run_pass(LegalizeChannelShufflePass(), proto)
    assert changed and ctx.stats == {"shuffle": 1}
    assert ops(model) == {"Concat": 1, "Conv": 1, "Split": 1}
    conv = next(n for n in model.graph.nodes if n.op == "Conv")
    weight = np.asarray(conv.inputs[1].values)
    assert weight.shape == (16, 16, 1, 1) and weight.sum() == 16 and set(np.unique(weight)) == {0.0, 1.0}
    assert_same_function(proto, model.to_proto(), rtol=0, atol=0)  # bit-exact: x * 1 + zeros


def test_constant_channel_gather_becomes_conv() -> None:
    proto = parse(
        HEADER + "g (float[1,8,3,3] x) => (float[1,3,3,3] y) { y = Gather <axis = 1> (x, idx) }",
        idx=np.array([5, -1, 2], np.int64),
    )
    model, changed, ctx = run_pass(LegalizeChannelShufflePass(), proto)
    assert changed and ctx.stats == {"gather": 1} and ops(model) == {"Conv": 1}
    assert_same_function(proto, model.to_proto(), rtol=0, atol=0)


def test_spatial_transposes_and_spatial_gathers_are_kept() -> None:
    proto = parse(
        HEADER
        + """g (float[1,4,3,3] x) => (float[1,4,3,3] y, float[1,4,2,3] z) {
            y = Transpose <perm = [0, 1, 3, 2]> (x)
            z = Gather <axis = 2> (x, idx)
        }""",
        idx=np.array([0, 2], np.int64),
    )
    model, changed, _ = run_pass(LegalizeChannelShufflePass(), proto)
    assert not changed and ops(model) == {"Transpose": 1, "Gather": 1}


def test_second_run_changes_nothing() -> None:
    model, _, _ = run_pass(LegalizeChannelShufflePass(), _shufflenet_unit())
    _, changed, _ = run_pass(LegalizeChannelShufflePass(), model.to_proto())
    assert not changed


def _costed(pass_: LegalizeChannelShufflePass) -> tuple[bool, PassContext, IRModel]:
    """The pass with the reference target in its context, on a shuffle at 16x16 between two convs."""
    rng = np.random.default_rng(2)
    proto = parse(
        HEADER
        + """g (float[1,16,16,16] x) => (float[1,32,16,16] y) {
            c = Conv (x, w0)
            r = Reshape (c, grouped)
            t = Transpose <perm = [0, 2, 1, 3, 4]> (r)
            s = Reshape (t, flat)
            a, b = Split <axis = 1, num_outputs = 2> (s)
            e = Relu (a)
            y = Concat <axis = 1> (e, b, e, b)
        }""",
        w0=(rng.standard_normal((16, 16, 1, 1)) * 0.3).astype(np.float32),
        grouped=np.array([1, 2, 8, 16, 16], np.int64),
        flat=np.array([1, 16, 16, 16], np.int64),
    )
    model = IRModel.load(proto)
    ctx = PassContext(target=load_registry().get_target("ethos-u65"))
    return pass_.run(model, ctx), ctx, model


def test_with_a_target_the_cheaper_form_is_kept() -> None:
    """Vela prices the TRANSPOSE below the one-hot conv: the shuffle stays, and the decision says why."""
    changed, ctx, model = _costed(LegalizeChannelShufflePass())
    (decision,) = ctx.decisions
    assert decision["shuffles"] == "transpose" and decision["cycles_transpose"] < decision["cycles_convs"]
    assert not changed and ops(model)["Transpose"] == 1


def test_forbid_transpose_always_legalizes() -> None:
    changed, ctx, model = _costed(LegalizeChannelShufflePass(forbid_transpose=True))
    assert changed and ctx.stats == {"shuffle": 1} and "Transpose" not in ops(model) and not ctx.decisions
