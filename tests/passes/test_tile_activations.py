"""tile-activations: the halo arithmetic, ORT equivalence of tiled chains (stride-2 and dilated convs,
depthwise convs, residual Adds, multi-reader tensors, max/average pooling, broadcast gates, 2-D grids,
staged inputs), the oracle's veto, budget mode and its errors. Most tests use a stand-in oracle; the
last one asks Vela on a model small enough to compile in well under a second."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import pytest
from nirc.passes._tiling import (
    Interval,
    Region,
    TilePlan,
    TileSpec,
    Window,
    apply_plan,
    split,
    why_not_tileable,
)
from nirc.passes.tile_activations import TileActivationsPass, single_tensor_cuts, vela_profile
from nirc_testing import assert_same_function, ops, parse

from nirc.errors import TargetError
from nirc.ir import IRModel
from nirc.pass_base import PassContext
from nirc.plugin import load_registry

HEADER = '<ir_version: 9, opset_import: ["" : 18]>'
F32 = np.float32
TARGET = load_registry().get_target("ethos-u65-256")


def _w(*shape: int, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * 0.3).astype(F32)


@dataclass(frozen=True)
class FakeCost:
    cycles: int
    sram_used_bytes: int = 0
    dram_fm_read_bytes: int = 0


def likes_tiles(proto: onnx.ModelProto, target: object) -> FakeCost:
    """A stand-in oracle under which more Slices (tiles) mean fewer cycles."""
    return FakeCost(10_000 - 10 * sum(n.op_type == "Slice" for n in proto.graph.node))


def dislikes_tiles(proto: onnx.ModelProto, target: object) -> FakeCost:
    return FakeCost(10_000 + len(proto.graph.node))


# A chain with every kind of op the tiler handles; 33x31 makes the tiles uneven and odd-sized.
MIXED = (
    HEADER
    + """
g (float[1,3,33,31] x) => (float[1,16,9,8] y) {
  a = Conv <strides=[2,2], pads=[1,1,1,1]> (x, w1, b1)
  a1 = Relu (a)
  d = Conv <group=8, pads=[1,1,1,1]> (a1, wd)
  d1 = Clip (d, lo, hi)
  p = Conv (d1, wp)
  r = Add (p, a1)
  m = MaxPool <kernel_shape=[3,3], strides=[2,2], pads=[1,1,1,1]> (r)
  q = AveragePool <kernel_shape=[2,2], strides=[1,1], pads=[0,0,1,1], count_include_pad=0> (m)
  y = Conv <kernel_shape=[3,3], dilations=[2,2], pads=[2,2,2,2]> (q, w3)
}
"""
)


def mixed() -> onnx.ModelProto:
    return parse(
        MIXED,
        w1=_w(8, 3, 3, 3, seed=1),
        b1=_w(8, seed=2),
        wd=_w(8, 1, 3, 3, seed=3),
        wp=_w(8, 8, 1, 1, seed=4),
        w3=_w(16, 8, 3, 3, seed=5),
        lo=np.array(0, F32),
        hi=np.array(6, F32),
    )


def _tile_all(proto: onnx.ModelProto, spec: TileSpec, stage: tuple[str, ...] = ()) -> onnx.ModelProto:
    model = IRModel.load(proto)
    nodes = list(model.graph.nodes)
    assert all(why_not_tileable(n) is None for n in nodes)
    plan = TilePlan.build(Region.of(nodes, {t.name for t in model.graph.outputs}), spec)
    apply_plan(model.graph, plan, stage=stage)
    return model.to_proto()


# -- halo arithmetic -------------------------------------------------------------------------------


def test_window_reads_and_pads_only_at_the_border() -> None:
    w = Window(kernel=3, stride=2, pad_lo=1, pad_hi=1)  # 3x3/2 conv on 224 rows -> 112
    assert w.reads(Interval(0, 56), 224) == Interval(0, 112)
    assert w.tile_pads(Interval(0, 56), 224) == (1, 0)  # top border: the conv's own padding
    assert w.reads(Interval(56, 112), 224) == Interval(111, 224)  # one halo row above
    assert w.tile_pads(Interval(56, 112), 224) == (0, 0)  # bottom: the last window ends at row 223
    interior = Window(kernel=3, stride=1, pad_lo=1, pad_hi=1)
    assert interior.reads(Interval(10, 20), 64) == Interval(9, 21)
    assert interior.tile_pads(Interval(10, 20), 64) == (0, 0)
    assert interior.tile_pads(Interval(50, 64), 64) == (0, 1)


def test_split_covers_evenly() -> None:
    assert split(10, 3) == [Interval(0, 4), Interval(4, 7), Interval(7, 10)]
    assert sum(iv.size for iv in split(113, 8)) == 113


@pytest.mark.parametrize(
    "spec", [TileSpec(2, 1), TileSpec(3, 1), TileSpec(1, 3), TileSpec(3, 2), TileSpec(4, 4), TileSpec(9, 8)]
)
def test_tiled_mixed_chain_is_exact(spec: TileSpec) -> None:
    before = mixed()
    after = _tile_all(before, spec)
    assert ops(after)["Conv"] >= 3 * spec.count - 2  # empty-looking ops never vanish entirely
    assert ops(after)["Concat"] >= 1
    assert_same_function(before, after, rtol=1e-4, atol=1e-4)


def test_tiles_get_asymmetric_border_pads_and_no_interior_pads() -> None:
    body = "y = Conv <strides=[2,2], pads=[1,1,1,1]> (x, w)"
    text = HEADER + f"\ng (float[1,3,33,31] x) => (float[1,8,17,16] y) {{\n  {body}\n}}\n"
    before = parse(text, w=_w(8, 3, 3, 3, seed=1))
    after = _tile_all(before, TileSpec(3, 1))  # output rows 0-5, 6-11, 12-16
    convs = [n for n in after.graph.node if n.op_type == "Conv"]
    pads = [list(next(a.ints for a in n.attribute if a.name == "pads")) for n in convs]
    assert pads == [[1, 1, 0, 1], [0, 1, 0, 1], [0, 1, 1, 1]]  # [top, left, bottom, right]
    assert_same_function(before, after, rtol=1e-5, atol=1e-5)


def test_residual_block_with_multi_reader_tensor_and_staged_input() -> None:
    text = (
        HEADER
        + """
g (float[1,4,24,24] x) => (float[1,8,12,12] y, float[1,8,24,24] s) {
  s = Conv <pads=[1,1,1,1]> (x, w0)
  t = Relu (s)
  u = Conv <pads=[1,1,1,1]> (t, w1)
  v = Add (u, s)
  dw = Conv <group=8, strides=[2,2], pads=[1,1,1,1]> (v, w2)
  sc = Conv <strides=[2,2]> (v, w3)
  y = Add (dw, sc)
}
"""
    )
    before = parse(text, w0=_w(8, 4, 3, 3, seed=1), w1=_w(8, 8, 3, 3, seed=2), w2=_w(8, 1, 3, 3, seed=3),
                   w3=_w(8, 8, 1, 1, seed=4))  # fmt: skip
    for spec in (TileSpec(2, 1), TileSpec(3, 3)):
        after = _tile_all(before, spec, stage=("x",))
        assert ops(after)["LeakyRelu"] == 1  # one staging copy, sliced by every tile
        assert_same_function(before, after, rtol=1e-4, atol=1e-4)


def test_tiled_int8_equals_untiled_int8() -> None:
    """Every tile's copy of a tensor gets that tensor's int8 range (share_tile_ranges), so the tiled
    model computes the untiled model's int8 codes: LiteRT's outputs are equal element for element."""
    from nirc.backend import emit, input_shapes
    from nirc.quant import load_calibration
    from nirc.validate import run_tflite

    text = (
        HEADER
        + """
g (float[1,3,40,36] x) => (float[1,8,20,18] y) {
  c = Conv <pads=[1,1,1,1], strides=[2,2]> (x, w0)
  s = Sigmoid (c)
  m = Mul (c, s)
  y = Conv <group=8, pads=[1,1,1,1]> (m, w1)
}
"""
    )
    before = IRModel.load(parse(text, w0=_w(8, 3, 3, 3, seed=5), w1=_w(8, 1, 3, 3, seed=6))).to_proto()
    calib = load_calibration(None, input_shapes(before), count=4)
    plain = emit(before, dtype="int8", calib=calib).tflite
    for spec in (TileSpec(2, 1), TileSpec(3, 2)):
        tiled = emit(_tile_all(before, spec, stage=("x",)), dtype="int8", calib=calib).tflite
        for a, b in zip(run_tflite(plain, calib.samples), run_tflite(tiled, calib.samples), strict=True):
            np.testing.assert_array_equal(a[0], b[0])


def test_c2f_split_bottleneck_concat() -> None:
    """A YOLOv8 C2f block: channel Split, a residual bottleneck on one half, Concat of all parts."""
    text = (
        HEADER
        + """
g (float[1,8,20,20] x) => (float[1,8,10,10] y) {
  a = Conv (x, w0)
  p0, p1 = Split <axis=1, num_outputs=2> (a)
  m = Conv <pads=[1,1,1,1]> (p1, w1)
  m1 = Sigmoid (m)
  m2 = Mul (m, m1)
  r = Add (p1, m2)
  c = Concat <axis=1> (p0, p1, r)
  y = Conv <strides=[2,2], pads=[1,1,1,1]> (c, w2)
}
"""
    )
    before = parse(text, w0=_w(8, 8, 1, 1, seed=1), w1=_w(4, 4, 3, 3, seed=2), w2=_w(8, 12, 3, 3, seed=3))
    for spec in (TileSpec(2, 1), TileSpec(3, 2)):
        after = _tile_all(before, spec)
        assert ops(after)["Split"] == spec.count
        assert_same_function(before, after, rtol=1e-4, atol=1e-4)


def test_broadcast_gate_from_outside_and_spatial_constant() -> None:
    text = (
        HEADER
        + """
g (float[1,8,16,16] x, float[1,8,1,1] gate) => (float[1,8,16,16] y) {
  a = Conv <pads=[1,1,1,1]> (x, w)
  b = Mul (a, gate)
  c = Add (b, bias)
  y = AveragePool <kernel_shape=[3,3], pads=[1,1,1,1], count_include_pad=1> (c)
}
"""
    )
    before = parse(text, w=_w(8, 8, 3, 3, seed=1), bias=_w(1, 8, 16, 16, seed=2))
    assert_same_function(before, _tile_all(before, TileSpec(4, 2)), rtol=1e-4, atol=1e-4)


def test_untileable_ops_are_named() -> None:
    text = HEADER + "\ng (float[1,8,16,16] x) => (float[1,8,1,1] y) {\n  y = GlobalAveragePool (x)\n}\n"
    node = IRModel.load(parse(text)).graph.nodes[0]
    assert why_not_tileable(node) == "GlobalAveragePool is not a sliding-window or pointwise op"


# -- the pass ----------------------------------------------------------------------------------------

BIG = (
    HEADER
    + """
g (float[1,8,96,96] x) => (float[1,64,1,1] y) {
  a = Conv <pads=[1,1,1,1]> (x, w1)
  a1 = Relu (a)
  b = Conv <pads=[1,1,1,1], strides=[2,2]> (a1, w2)
  b1 = Relu (b)
  c = Conv <group=64, pads=[1,1,1,1]> (b1, w3)
  r = Add (c, b1)
  y = GlobalAveragePool (r)
}
"""
)


def big() -> onnx.ModelProto:
    return parse(BIG, w1=_w(64, 8, 3, 3, seed=1), w2=_w(64, 64, 3, 3, seed=2), w3=_w(64, 1, 3, 3, seed=3))


def _run(proto: onnx.ModelProto, target: object = TARGET, **options: object) -> tuple[IRModel, bool, PassContext]:
    model = IRModel.load(proto)
    ctx = PassContext(target=target)  # type: ignore[arg-type]
    changed = TileActivationsPass(**options).run(model, ctx)  # type: ignore[arg-type]
    return model, changed, ctx


def test_latency_mode_tiles_when_the_oracle_says_it_pays() -> None:
    model, changed, ctx = _run(big(), cost_fn=likes_tiles, max_trials=12)
    assert changed
    assert ops(model)["Slice"] > 0 and ops(model)["Concat"] > 0
    accepted = [d for d in ctx.decisions if d["accepted"]]
    assert accepted and accepted[0]["cycles"][1] < accepted[0]["cycles"][0]
    assert ctx.stats["oracle_calls"] <= 3 * 12
    assert_same_function(big(), model.to_proto(), rtol=1e-4, atol=1e-4)


def test_latency_mode_backs_off_when_the_oracle_says_no() -> None:
    before = big()
    model, changed, ctx = _run(before, cost_fn=dislikes_tiles, max_trials=6)
    assert not changed
    assert ops(model) == ops(before)
    assert ctx.decisions and not any(d["accepted"] for d in ctx.decisions)
    assert "backing off" in ctx.decisions[0]["reason"]


@dataclass(frozen=True)
class FootprintCost(FakeCost):
    dram_used_bytes: int = 0


def test_latency_mode_refuses_a_faster_plan_that_breaks_the_platform_fit() -> None:
    """Tiles may re-stream weights and grow the arena: a model that fitted must keep fitting."""
    limit = TARGET.platform_memory_bytes
    assert limit is not None

    def faster_but_bigger(proto: onnx.ModelProto, target: object) -> FootprintCost:
        slices = sum(n.op_type == "Slice" for n in proto.graph.node)
        return FootprintCost(10_000 - 10 * slices, dram_used_bytes=int(limit * 0.97) + slices)

    _, changed, ctx = _run(big(), cost_fn=faster_but_bigger, max_trials=6)
    assert not changed
    assert "near the" in ctx.decisions[0]["reason"] and "platform limit" in ctx.decisions[0]["reason"]
    # Far from the limit, the same speed-up is taken.
    _, changed, _ = _run(big(), cost_fn=likes_tiles, max_trials=6)
    assert changed


def test_nothing_to_do_without_arena_or_under_budget() -> None:
    assert not _run(big(), target=None)[1]
    small = parse(HEADER + "\ng (float[1,4,8,8] x) => (float[1,4,8,8] y) {\n  y = Conv <pads=[1,1,1,1]> (x, w)\n}\n",
                  w=_w(4, 4, 3, 3, seed=1))  # fmt: skip
    assert not _run(small, cost_fn=likes_tiles)[1]


def test_second_run_of_a_rejected_model_changes_nothing() -> None:
    model = IRModel.load(big())
    pass_ = TileActivationsPass(cost_fn=dislikes_tiles, max_trials=4)
    assert not pass_.run(model, PassContext(target=TARGET))
    assert not pass_.run(model, PassContext(target=TARGET))


def test_budget_mode_fits_the_arena_exactly() -> None:
    before = big()
    peak = vela_profile(IRModel.load(before)).peak  # 96x96x64 and its 48x48 successors: ~800 KiB
    budget = 300 * 1024
    assert peak > budget
    model, changed, ctx = _run(before, target=None, arena_size=budget, max_tiles=16)
    assert changed
    assert vela_profile(model).peak <= budget
    assert ctx.decisions[0]["accepted"] and ctx.decisions[0]["peak_bytes"][1] <= budget
    assert_same_function(before, model.to_proto(), rtol=1e-4, atol=1e-4)


def test_budget_mode_fails_early_on_an_untileable_op() -> None:
    with pytest.raises(TargetError, match=r"'GlobalAveragePool_\d+' \(GlobalAveragePool\) cannot be tiled.*B over"):
        _run(big(), target=None, arena_size=100 * 1024)


def test_budget_mode_explains_what_no_plan_can_fit() -> None:
    # The region output (48x48x64 = 144 KiB) and the input (72 KiB) must both exist: 150 KiB cannot fit.
    with pytest.raises(TargetError, match=r"cannot fit the 153600 B arena: at op .* B are live .* B over"):
        _run(big(), target=None, arena_size=150 * 1024, max_tiles=16)


def test_single_tensor_cuts_of_a_residual_block() -> None:
    model = IRModel.load(big())
    cuts = single_tensor_cuts(model)
    names = [n.name for n in model.graph.nodes]
    assert -1 in cuts  # before the first node: the graph input
    assert all(names[k] != "Conv_4" for k in cuts)  # inside the residual block two tensors are alive


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="arena_size"):
        TileActivationsPass(arena_size=0)
    with pytest.raises(ValueError, match="directions"):
        TileActivationsPass(directions=("diagonal",))


# -- with Vela -----------------------------------------------------------------------------------------


def test_with_vela_never_slower() -> None:
    """Whatever the pass decides on a 192x192 stem, Vela's estimate afterwards is not higher."""
    from nirc.cost import estimate

    text = (
        HEADER
        + """
g (float[1,3,192,192] x) => (float[1,32,1,1] y) {
  a = Conv <strides=[2,2], pads=[1,1,1,1]> (x, w1)
  a1 = Relu (a)
  b = Conv <group=32, pads=[1,1,1,1]> (a1, w2)
  b1 = Relu (b)
  c = Conv (b1, w3)
  y = GlobalAveragePool (c)
}
"""
    )
    before = parse(text, w1=_w(32, 3, 3, 3, seed=1), w2=_w(32, 1, 3, 3, seed=2), w3=_w(32, 32, 1, 1, seed=3))
    model, changed, ctx = _run(before, max_trials=6, directions=("h",), max_tiles=4)
    assert ctx.decisions
    old, new = estimate(before, TARGET), estimate(model.to_proto(), TARGET)
    assert new.cycles <= old.cycles
    assert changed == (new.cycles < old.cycles)
    if changed:
        assert_same_function(before, model.to_proto(), rtol=1e-4, atol=1e-4)


def _guarded(max_drop: float) -> tuple[IRModel, bool, PassContext]:
    from nirc.accuracy import AccuracyGuard
    from nirc.quant import CalibrationSet

    rng = np.random.default_rng(0)
    calib = CalibrationSet(
        tuple({"x": rng.standard_normal((1, 8, 96, 96)).astype(np.float32)} for _ in range(8)), False, "test"
    )
    model = IRModel.load(big())
    ctx = PassContext(target=TARGET, accuracy=AccuracyGuard(calib, max_snr_drop=max_drop))  # type: ignore[arg-type]
    changed = TileActivationsPass(cost_fn=likes_tiles, max_trials=12).run(model, ctx)
    return model, changed, ctx


def test_accuracy_guard_keeps_a_tiling_within_tolerance_and_refuses_one_beyond() -> None:
    """Tiles meet at a Concat with one int8 range: here tiling costs ~0.2 dB SNR, exact in float."""
    model, changed, ctx = _guarded(0.5)
    assert changed
    (decision,) = [d for d in ctx.decisions if d["accepted"]]
    drop = decision["int8"]["snr_drop_db"]
    assert 0.05 < drop <= 0.5 and decision["int8"]["within_tolerance"]

    model, changed, ctx = _guarded(drop / 2)
    assert not changed and ops(model) == ops(IRModel.load(big()))
    assert ctx.stats["accuracy_refused"] == 1 and not any(d["accepted"] for d in ctx.decisions)
    assert any("refused by the accuracy guard" in d["reason"] for d in ctx.decisions)


def _long() -> onnx.ModelProto:
    """BIG followed by a tail of small 1x1 convs: the candidates change only the head."""
    tail = "\n".join(f"  t{i + 1} = Conv (t{i}, wt{i})" for i in range(12))
    text = BIG.replace("=> (float[1,64,1,1] y)", "=> (float[1,64,1,1] t12)").replace(
        "  y = GlobalAveragePool (r)\n", f"  t0 = GlobalAveragePool (r)\n{tail}\n"
    )
    weights = {f"wt{i}": _w(64, 64, 1, 1, seed=10 + i) for i in range(12)}
    return parse(text, w1=_w(64, 8, 3, 3, seed=1), w2=_w(64, 64, 3, 3, seed=2), w3=_w(64, 1, 3, 3, seed=3),
                 **weights)  # fmt: skip


def test_trials_are_ranked_on_the_window_they_change_and_the_winner_confirmed_whole() -> None:
    total = len(IRModel.load(_long()).graph.nodes)
    sizes: list[int] = []

    def recording(proto: onnx.ModelProto, target: object) -> FakeCost:
        sizes.append(len(proto.graph.node))
        return likes_tiles(proto, target)

    whole_model, changed_whole, ctx_whole = _run(_long(), cost_fn=likes_tiles, max_trials=6, window=False)
    model, changed, ctx = _run(_long(), cost_fn=recording, max_trials=6)
    assert changed and changed_whole
    assert ctx.stats["oracle_calls"] == 2  # the model and the winner, whole
    assert ctx.stats["oracle_window_calls"] >= 4 and ctx_whole.stats["oracle_calls"] >= 5
    windows = [n for n in sizes if n < total]
    assert len(windows) == ctx.stats["oracle_window_calls"]
    assert all(n < total for n in sizes[1:-1])  # every trial in between compiled only the window
    keys = ("region", "tiles", "staged", "cycles", "accepted")
    assert [{k: d[k] for k in keys} for d in ctx.decisions] == [{k: d[k] for k in keys} for d in ctx_whole.decisions]
    assert ops(model) == ops(whole_model)
    assert_same_function(_long(), model.to_proto(), rtol=1e-4, atol=1e-4)
