"""pad-channels: exactness of the rewrite on every coupling it handles, the cases it must leave alone,
and the oracle's veto. Most tests use a stand-in oracle so they run in milliseconds; the last ones ask
Vela itself, on models small enough to compile in well under a second."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from nirc.passes._channels import ChannelSpaces
from nirc.passes.pad_channels import ChannelDecision, PadChannelsPass, channel_alignment
from nirc_testing import assert_same_function, ops, parse

from nirc.errors import BackendError
from nirc.ir import IRModel
from nirc.pass_base import PassContext
from nirc.pass_manager import PassManager
from nirc.plugin import load_registry

HEADER = '<ir_version: 9, opset_import: ["" : 18]>'
F32 = np.float32
TARGET = load_registry().get_target("ethos-u65")
ROOT_EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@dataclass(frozen=True)
class FakeCost:
    cycles: int
    sram_used_bytes: int = 0


def _weight_elements(proto: onnx.ModelProto) -> int:
    return sum(int(np.prod(i.dims)) for i in proto.graph.initializer)


def prefers_padding(proto: onnx.ModelProto, target: object) -> FakeCost:
    """A stand-in oracle under which every padding helps (more weights, fewer 'cycles')."""
    return FakeCost(cycles=10**9 - _weight_elements(proto))


def dislikes_padding(proto: onnx.ModelProto, target: object) -> FakeCost:
    return FakeCost(cycles=_weight_elements(proto))


def _rand(*shape: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(F32)


def _run(
    proto: onnx.ModelProto,
    cost_fn: Callable[[onnx.ModelProto, object], FakeCost] | None = prefers_padding,
    **options: object,
) -> tuple[IRModel, bool, PassContext, PadChannelsPass]:
    model = IRModel.load(proto)
    ctx = PassContext(target=TARGET)
    pass_ = PadChannelsPass(cost_fn=cost_fn, **options)  # type: ignore[arg-type]
    changed = pass_.run(model, ctx)
    return model, changed, ctx, pass_


def _shape(model: IRModel, name: str) -> list[int]:
    return [int(d) for d in model.graph.tensors()[name].shape]


def _check_exact_and_idempotent(proto: onnx.ModelProto, model: IRModel) -> None:
    after = model.to_proto()
    assert_same_function(proto, after, rtol=1e-5, atol=1e-5)
    again = PadChannelsPass(cost_fn=prefers_padding)
    assert not again.run(model, PassContext(target=TARGET))
    assert not again.decisions


def _chain(mid: str, c: int = 17, outputs: str = "float[1,8,6,6] y", **extra: np.ndarray) -> onnx.ModelProto:
    return parse(
        HEADER
        + f"""
    g (float[1,4,6,6] x) => ({outputs}) {{
        a = Conv <pads = [1, 1, 1, 1]> (x, w0, b0)
        {mid}
        y = Conv <pads = [1, 1, 1, 1]> (z, w1, b1)
    }}""",
        w0=_rand(c, 4, 3, 3, seed=1),
        b0=_rand(c, seed=2),
        w1=_rand(8, c, 3, 3, seed=3),
        b1=_rand(8, seed=4),
        **extra,
    )


def test_conv_relu_conv_is_padded_to_the_brick_and_exact() -> None:
    proto = _chain("z = Relu (a)")
    model, changed, ctx, pass_ = _run(proto)
    assert changed and ops(model) == {"Conv": 2, "Relu": 1}
    assert _shape(model, "a") == [1, 32, 6, 6] and _shape(model, "z") == [1, 32, 6, 6]
    assert ctx.stats["padded_spaces"] == 1 and ctx.stats["added_channels"] == 15
    (decision,) = pass_.decisions
    assert decision.accepted and (decision.channels_before, decision.channels_after) == (17, 32)
    assert decision.layers == ("Conv_0",)
    assert decision.cycles_after is not None and decision.cycles_before is not None
    _check_exact_and_idempotent(proto, model)


_CONSTANTS = {
    "lo": np.array(0.0, F32),
    "hi": np.array(6.0, F32),
    "s": np.abs(_rand(17, 1, 1, seed=5)) + 0.5,
    "t": _rand(1, 17, 1, 1, seed=6),
    "gamma": np.abs(_rand(17, seed=5)) + 0.5,
    "beta": _rand(17, seed=6),
    "mean": _rand(17, seed=7),
    "var": np.abs(_rand(17, seed=8)) + 0.5,
    "slope": _rand(17, 1, 1, seed=9),
}


@pytest.mark.parametrize(
    "mid",
    [
        "z = Sigmoid (a)",  # f(0) = 0.5: harmless, the next conv's weights for it are zero
        "h = HardSwish (a)\n z = LeakyRelu <alpha = 0.1> (h)",
        "z = Clip (a, lo, hi)",
        "m = Mul (a, s)\n z = Add (t, m)",  # per-channel constants, either operand order
        "m = Div (a, s)\n z = Sub (m, t)",
        "z = BatchNormalization (a, gamma, beta, mean, var)",
        "z = PRelu (a, slope)",
        "z = MaxPool <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (a)",
        "z = AveragePool <kernel_shape = [3, 3], pads = [1, 1, 1, 1], count_include_pad = 1> (a)",
        "m = Relu (a)\n z = Max (a, m)",  # two feature-map operands of the same space
    ],
)
def test_layout_following_ops_inside_a_space_stay_exact(mid: str) -> None:
    used = {k: v for k, v in _CONSTANTS.items() if f"{k})" in mid or f"{k}," in mid or f"({k}" in mid}
    proto = _chain(mid, **used)
    model, changed, _, _ = _run(proto)
    assert changed
    assert all(_shape(model, t)[1] == 32 for t in ("a", "z"))
    _check_exact_and_idempotent(proto, model)


def test_residual_add_pads_both_operands_and_the_depthwise_between() -> None:
    proto = parse(
        HEADER
        + """
    g (float[1,8,8,8] x) => (float[1,16,8,8] y) {
        a = Conv <pads = [1, 1, 1, 1]> (x, w0, b0)
        r = Relu (a)
        d = Conv <group = 24, pads = [1, 1, 1, 1]> (r, wd, bd)
        d6 = Clip (d, lo, hi)
        p = Conv (d6, wp, bp)
        s = Add (r, p)
        y = Conv (s, w1)
    }""",
        w0=_rand(24, 8, 3, 3, seed=1),
        b0=_rand(24, seed=2),
        wd=_rand(24, 1, 3, 3, seed=3),
        bd=_rand(24, seed=4),
        lo=np.array(0.0, F32),
        hi=np.array(6.0, F32),
        wp=_rand(24, 24, 1, 1, seed=5),
        bp=_rand(24, seed=6),
        w1=_rand(16, 24, 1, 1, seed=7),
    )
    spaces = ChannelSpaces(IRModel.load(proto).graph)
    (space,) = spaces.free_spaces()
    assert set(space.tensors) == {"a", "r", "d", "d6", "p", "s"}
    model, changed, _, _ = _run(proto)
    assert changed
    assert all(_shape(model, t)[1] == 32 for t in ("a", "r", "d", "d6", "p", "s"))
    dw = next(n for n in model.graph.nodes if n.op == "Conv" and n.attrs.get("group", 1) > 1)
    assert dw.attrs["group"] == 32
    _check_exact_and_idempotent(proto, model)


def test_depthwise_chain_propagates_and_spatial_attention_keeps_its_single_channel() -> None:
    proto = parse(
        HEADER
        + """
    g (float[1,8,8,8] x) => (float[1,16,8,8] y) {
        a = Conv <pads = [1, 1, 1, 1]> (x, w0)
        d1 = Conv <group = 20, pads = [1, 1, 1, 1]> (a, wd1)
        r = Relu (d1)
        d2 = Conv <group = 20, strides = [1, 1], pads = [2, 2, 2, 2], dilations = [2, 2]> (r, wd2, bd2)
        att = Conv (x, wa)
        sig = Sigmoid (att)
        m = Mul (d2, sig)
        y = Conv (m, w1)
    }""",
        w0=_rand(20, 8, 3, 3, seed=1),
        wd1=_rand(20, 1, 3, 3, seed=2),
        wd2=_rand(20, 1, 3, 3, seed=3),
        bd2=_rand(20, seed=4),
        wa=_rand(1, 8, 1, 1, seed=5),
        w1=_rand(16, 20, 1, 1, seed=6),
    )
    model, changed, _, _ = _run(proto)
    assert changed
    assert _shape(model, "m")[1] == 32 and _shape(model, "sig")[1] == 1
    _check_exact_and_idempotent(proto, model)


def test_squeeze_excitation_mul_joins_the_gate_to_the_feature_map() -> None:
    proto = parse(
        HEADER
        + """
    g (float[1,8,6,6] x) => (float[1,16,6,6] y) {
        a = Conv <pads = [1, 1, 1, 1]> (x, w0, b0)
        r = Relu (a)
        p = GlobalAveragePool (r)
        q = Conv (p, wq, bq)
        qr = Relu (q)
        e = Conv (qr, we, be)
        gate = HardSigmoid (e)
        m = Mul (r, gate)
        y = Conv (m, w1)
    }""",
        w0=_rand(40, 8, 3, 3, seed=1),
        b0=_rand(40, seed=2),
        wq=_rand(10, 40, 1, 1, seed=3),
        bq=_rand(10, seed=4),
        we=_rand(40, 10, 1, 1, seed=5),
        be=_rand(40, seed=6),
        w1=_rand(16, 40, 1, 1, seed=7),
    )
    model, changed, _, pass_ = _run(proto)
    assert changed
    padded = {d.space: d.channels_after for d in pass_.decisions if d.accepted}
    assert _shape(model, "m")[1] == 48 and _shape(model, "gate")[1] == 48 and _shape(model, "qr")[1] == 16
    assert len(padded) == 2
    _check_exact_and_idempotent(proto, model)


@pytest.mark.parametrize("flatten", ["f = Flatten <axis = 1> (p)", "f = Reshape (p, shape)"])
def test_gemm_after_global_pool_and_flatten_gets_zero_columns(flatten: str) -> None:
    proto = parse(
        HEADER
        + f"""
    g (float[1,8,6,6] x) => (float[1,10] y) {{
        a = Conv <pads = [1, 1, 1, 1]> (x, w0, b0)
        r = Relu (a)
        p = GlobalAveragePool (r)
        {flatten}
        h = Gemm <transB = 1> (f, wh, bh)
        hr = Relu (h)
        y = Gemm (hr, wo, bo)
    }}""",
        w0=_rand(40, 8, 3, 3, seed=1),
        b0=_rand(40, seed=2),
        shape=np.array([1, 40], np.int64),
        wh=_rand(20, 40, seed=3),
        bh=_rand(20, seed=4),
        wo=_rand(20, 10, seed=5),
        bo=_rand(1, 10, seed=6),
    )
    model, changed, _, _ = _run(proto)
    assert changed
    assert _shape(model, "f") == [1, 48] and _shape(model, "hr") == [1, 32] and _shape(model, "y") == [1, 10]
    _check_exact_and_idempotent(proto, model)


def test_concat_inputs_are_padded_inside_the_concat_and_its_reader_follows() -> None:
    proto = parse(
        HEADER
        + """
    g (float[1,8,6,6] x) => (float[1,16,6,6] y) {
        a = Conv <pads = [1, 1, 1, 1]> (x, wa, ba)
        ar = Relu (a)
        b = Conv (x, wb)
        c = Concat <axis = 1> (ar, b)
        cr = Relu (c)
        y = Conv (cr, w1, b1)
    }""",
        wa=_rand(20, 8, 3, 3, seed=1),
        ba=_rand(20, seed=2),
        wb=_rand(12, 8, 1, 1, seed=3),
        w1=_rand(16, 32, 1, 1, seed=4),
        b1=_rand(16, seed=5),
    )
    spaces = ChannelSpaces(IRModel.load(proto).graph)
    derived = spaces.space_of["c"]
    assert derived.derived and derived.concat is not None
    model, changed, _, pass_ = _run(proto)
    assert changed
    assert _shape(model, "ar")[1] == 32 and _shape(model, "b")[1] == 16 and _shape(model, "cr")[1] == 48
    assert {d.channels_before for d in pass_.decisions} == {20, 12}
    _check_exact_and_idempotent(proto, model)


def test_concat_tail_candidate_is_offered_for_the_last_operand() -> None:
    proto = parse(
        HEADER
        + """
    g (float[1,8,6,6] x) => (float[1,16,6,6] y) {
        a = Conv (x, wa)
        b = Conv (x, wb)
        c = Concat <axis = 1> (a, b)
        y = Conv (c, w1)
    }""",
        wa=_rand(16, 8, 1, 1, seed=1),
        wb=_rand(20, 8, 1, 1, seed=2),
        w1=_rand(16, 36, 1, 1, seed=3),
    )
    from nirc.passes.pad_channels import candidate_counts

    spaces = ChannelSpaces(IRModel.load(proto).graph)
    assert candidate_counts(spaces.space_of["b"], spaces, TARGET, None) == [24, 32]


def test_concat_output_that_is_a_graph_output_pins_its_inputs() -> None:
    proto = parse(
        HEADER
        + """
    g (float[1,8,6,6] x) => (float[1,32,6,6] c, float[1,16,6,6] y) {
        a = Conv (x, wa)
        b = Conv (x, wb)
        c = Concat <axis = 1> (a, b)
        y = Conv (a, w1)
    }""",
        wa=_rand(20, 8, 1, 1, seed=1),
        wb=_rand(12, 8, 1, 1, seed=2),
        w1=_rand(16, 20, 1, 1, seed=3),
    )
    model, changed, _, pass_ = _run(proto)
    assert not changed and not pass_.decisions
    assert "Concat" in (ChannelSpaces(model.graph).space_of["a"].fixed or "")


def test_graph_output_channels_are_kept() -> None:
    proto = _chain("z = Relu (a)", outputs="float[1,8,6,6] y, float[1,17,6,6] z")
    model, changed, ctx, pass_ = _run(proto)
    assert not changed and not pass_.decisions and not ctx.stats
    assert _shape(model, "z") == [1, 17, 6, 6]


def test_graph_input_space_and_final_logits_are_kept() -> None:
    proto = parse(
        HEADER
        + """
    g (float[1,3,6,6] x) => (float[1,10,6,6] y) {
        y = Conv (x, w)
    }""",
        w=_rand(10, 3, 1, 1, seed=1),
    )
    _, changed, _, pass_ = _run(proto)
    assert not changed and not pass_.decisions


@pytest.mark.parametrize(
    ("mid", "why"),
    [
        ("t = Transpose <perm = [0, 1, 3, 2]> (a)\n z = Relu (t)", "Transpose"),
        ("z = Div (x8, a)", "divided"),
        ("z = Softmax <axis = 1> (a)", "Softmax"),
    ],
)
def test_channel_mixing_readers_pin_the_space(mid: str, why: str) -> None:
    proto = _chain(mid, x8=np.full((17, 1, 1), 2.0, F32)) if "x8" in mid else _chain(mid)
    spaces = ChannelSpaces(IRModel.load(proto).graph)
    assert why in (spaces.space_of["a"].fixed or "")
    _, changed, _, _ = _run(proto)
    assert not changed


def test_grouped_conv_reader_pins_the_space() -> None:
    proto = parse(
        HEADER
        + """
    g (float[1,4,6,6] x) => (float[1,8,6,6] y) {
        a = Conv (x, w0)
        y = Conv <group = 2> (a, w1)
    }""",
        w0=_rand(18, 4, 1, 1, seed=1),
        w1=_rand(8, 9, 1, 1, seed=2),
    )
    _, changed, _, _ = _run(proto)
    assert not changed


def test_already_aligned_model_is_untouched_without_asking_the_oracle() -> None:
    calls: list[int] = []

    def counting(proto: onnx.ModelProto, target: object) -> FakeCost:
        calls.append(1)
        return prefers_padding(proto, target)

    _, changed, ctx, _ = _run(_chain("z = Relu (a)", c=32), cost_fn=counting)
    assert not changed and not calls and not ctx.stats


def test_oracle_veto_leaves_the_model_unchanged_and_says_why() -> None:
    proto = _chain("z = Relu (a)")
    model, changed, ctx, pass_ = _run(proto, cost_fn=dislikes_padding)
    assert not changed and _shape(model, "a")[1] == 17
    (decision,) = pass_.decisions
    assert not decision.accepted and decision.channels_after == 17 and decision.candidate == 24
    assert decision.cycles_after is not None and decision.cycles_before is not None
    assert decision.cycles_after > decision.cycles_before
    assert ctx.stats["rejected_spaces"] == 1


def test_oracle_failure_on_the_model_leaves_it_unchanged() -> None:
    def broken(proto: onnx.ModelProto, target: object) -> FakeCost:
        raise BackendError("vela exploded")

    _, changed, ctx, _ = _run(_chain("z = Relu (a)"), cost_fn=broken)
    assert not changed and ctx.stats["oracle_failed"] == 1


def test_sram_drop_at_equal_latency_is_accepted_but_not_at_higher_latency() -> None:
    base = _weight_elements(_chain("z = Relu (a)"))

    def sram_only(proto: onnx.ModelProto, target: object) -> FakeCost:
        grown = _weight_elements(proto) > base
        return FakeCost(cycles=100, sram_used_bytes=50 if grown else 60)

    def slower_smaller(proto: onnx.ModelProto, target: object) -> FakeCost:
        grown = _weight_elements(proto) > base
        return FakeCost(cycles=101 if grown else 100, sram_used_bytes=50 if grown else 60)

    assert _run(_chain("z = Relu (a)"), cost_fn=sram_only)[1]
    assert not _run(_chain("z = Relu (a)"), cost_fn=slower_smaller)[1]


def test_align_option_and_no_target() -> None:
    model, changed, _, _ = _run(_chain("z = Relu (a)"), align=8)
    assert changed and _shape(model, "a")[1] == 24
    model = IRModel.load(_chain("z = Relu (a)"))
    assert not PadChannelsPass(cost_fn=prefers_padding).run(model, PassContext())
    with pytest.raises(ValueError):
        PadChannelsPass(align=0)


def test_decisions_go_to_the_context_log() -> None:
    model = IRModel.load(_chain("z = Relu (a)"))
    ctx = PassContext(target=TARGET)
    PadChannelsPass(cost_fn=prefers_padding).run(model, ctx)
    (entry,) = ctx.decisions
    assert entry["accepted"] and entry["channels"] == [17, 32]
    assert ChannelDecision.__doc__


def _two_spaces() -> onnx.ModelProto:
    return parse(
        HEADER
        + """
    g (float[1,4,6,6] x) => (float[1,8,6,6] y) {
        a = Conv <pads = [1, 1, 1, 1]> (x, w0)
        r = Relu (a)
        b = Conv (r, w1)
        s = Relu (b)
        y = Conv (s, w2)
    }""",
        w0=_rand(17, 4, 3, 3, seed=1),
        w1=_rand(20, 17, 1, 1, seed=2),
        w2=_rand(8, 20, 1, 1, seed=3),
    )


def test_subgraph_scope_costs_regions_then_checks_the_whole_model() -> None:
    seen: list[int] = []

    def recording(proto: onnx.ModelProto, target: object) -> FakeCost:
        seen.append(len(proto.graph.node))
        return prefers_padding(proto, target)

    proto = _two_spaces()
    model, changed, ctx, pass_ = _run(proto, cost_fn=recording, scope="subgraph")
    assert changed and [d.scope for d in pass_.decisions] == ["subgraph", "subgraph"]
    # First space's region: its writer, the Relu and its reader (+ the fused Relu after it).
    assert seen[0] == 4 and max(seen[:-2]) < 5
    assert seen[-2:] == [5, 5]  # the whole-model check: before and after
    assert ctx.stats["model_cycles_after"] < ctx.stats["model_cycles_before"]
    _check_exact_and_idempotent(proto, model)


def test_subgraph_gain_that_the_whole_model_does_not_confirm_is_dropped() -> None:
    def regions_like_it_model_does_not(proto: onnx.ModelProto, target: object) -> FakeCost:
        whole = len(proto.graph.node) == 5
        return (dislikes_padding if whole else prefers_padding)(proto, target)

    model, changed, _, pass_ = _run(_two_spaces(), cost_fn=regions_like_it_model_does_not, scope="subgraph")
    assert not changed and _shape(model, "a")[1] == 17
    assert [(d.scope, d.accepted) for d in pass_.decisions] == [("model", False), ("model", False)]


def test_subgraph_scope_without_a_win_never_compiles_the_whole_model() -> None:
    seen: list[int] = []

    def recording(proto: onnx.ModelProto, target: object) -> FakeCost:
        seen.append(len(proto.graph.node))
        return dislikes_padding(proto, target)

    _, changed, _, _ = _run(_two_spaces(), cost_fn=recording, scope="subgraph")
    assert not changed and 5 not in seen


@pytest.mark.parametrize("name", ["tiny_cnn", "mobilenetv2_224", "yolo_tiny", "shufflenet_tiny"])
def test_padding_every_paddable_space_of_an_example_model_is_exact(name: str) -> None:
    """Real topologies (residual chains, Split/Concat/shuffle, detection heads) with every padding forced."""
    import build_detection_models
    import build_models

    builders = {**build_models.MODELS, **build_detection_models.MODELS}
    model = IRModel.load(builders[name]())
    registry = load_registry()
    canonical = [registry.get_pass(n)() for n in TARGET.default_pipeline if n not in TARGET.hw_passes]
    PassManager(canonical).run(model, PassContext(target=TARGET))
    proto = model.to_proto()
    pass_ = PadChannelsPass(cost_fn=prefers_padding, align=16)
    assert pass_.run(model, PassContext(target=TARGET))
    assert all(d.accepted and d.channels_after % 16 == 0 for d in pass_.decisions)
    assert_same_function(proto, model.to_proto(), trials=2, rtol=1e-3, atol=1e-4)


# ----------------------------------------------------------------------------- with Vela


def misaligned_cnn(channels: tuple[int, ...] = (17, 25, 70), hw: int = 32) -> onnx.ModelProto:
    """Conv3x3+ReLU layers with the given widths and a 16-channel 1x1 head: the issue's 17/25/70 example."""
    nodes, cin, x = [], 8, "x"
    inits: dict[str, np.ndarray] = {}
    for i, c in enumerate(channels):
        inits[f"w{i}"] = (_rand(c, cin, 3, 3, seed=i) * np.sqrt(2.0 / (9 * cin))).astype(F32)
        inits[f"b{i}"] = np.zeros(c, F32)
        nodes.append(f"c{i} = Conv <pads = [1, 1, 1, 1]> ({x}, w{i}, b{i})\n r{i} = Relu (c{i})")
        x, cin = f"r{i}", c
    inits["wl"] = (_rand(16, cin, 1, 1, seed=99) * 0.1).astype(F32)
    body = "\n".join(nodes) + f"\n y = Conv ({x}, wl)"
    return parse(HEADER + f"g (float[1,8,{hw},{hw}] x) => (float[1,16,{hw},{hw}] y) {{ {body} }}", **inits)


def test_vela_estimate_improves_on_a_misaligned_cnn_and_never_regresses() -> None:
    from nirc.cost import estimate

    proto = misaligned_cnn()
    before = estimate(proto, TARGET)
    model, changed, ctx, pass_ = _run(proto, cost_fn=None)
    after = estimate(model.to_proto(), TARGET)
    assert changed and after.cycles < before.cycles
    accepted = [d for d in pass_.decisions if d.accepted]
    assert [(d.channels_before, d.channels_after) for d in accepted] == [(17, 32)]
    assert all(d.cycles_after is not None and d.cycles_before is not None for d in pass_.decisions)
    assert ctx.stats["rejected_spaces"] == 2
    assert_same_function(proto, model.to_proto(), rtol=1e-4, atol=1e-4)
    assert not PadChannelsPass().run(model, PassContext(target=TARGET))


def test_channel_alignment_table_costs_each_space_once() -> None:
    rows = channel_alignment(IRModel.load(misaligned_cnn()), TARGET)
    first = next(r for r in rows if r.out_channels == 17)
    assert first.paddable and first.out_brick_gap == 15 and first.out_block_gap == 7 and first.pad_to == 32
    assert first.pad_cycles_delta is not None and first.pad_cycles_delta < 0
    assert first.trim_cycles_delta is not None and first.trim_cycles_delta < 0
    head = next(r for r in rows if r.out_channels == 16)
    assert not head.paddable and head.note == "aligned"
    cheap = channel_alignment(IRModel.load(misaligned_cnn()), TARGET, costs=False)
    assert all(r.pad_cycles_delta is None for r in cheap)


def test_tiny_cnn_is_never_made_slower() -> None:
    from nirc.cost import estimate

    model = IRModel.load(ROOT_EXAMPLES / "tiny_cnn.onnx")
    registry = load_registry()
    canonical = [registry.get_pass(n)() for n in TARGET.default_pipeline if n not in TARGET.hw_passes]
    PassManager(canonical).run(model, PassContext(target=TARGET))
    before = estimate(model.to_proto(), TARGET)
    pass_ = PadChannelsPass()
    pass_.run(model, PassContext(target=TARGET))
    after = estimate(model.to_proto(), TARGET)
    assert after.cycles <= before.cycles
    assert {d.channels_before for d in pass_.decisions} == {24, 40}  # both costed, whatever Vela decides
