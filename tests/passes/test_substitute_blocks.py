"""substitute-blocks: the pass as a whole -- oracle-decided rewrites, the decision log, the whole-model guard,
options -- and the acceptance cases on the example models with Vela (RepVGG training form -> one conv per
block, numerically equivalent; ResNeXt grouped convs -> never slower on the whole model).

Rule-by-rule exactness lives in ``block_rules/test_*.py``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from types import ModuleType

import numpy as np
import onnx
import pytest
from nirc.passes.substitute_blocks import SubstituteBlocksPass, cost_key
from nirc.targets.ethos_u.spec import CANONICAL_PIPELINE
from nirc_testing import assert_same_function, ops, parse

from nirc.cost import estimate
from nirc.ir import IRModel
from nirc.pass_base import PassContext
from nirc.pass_manager import PassManager
from nirc.plugin import load_registry

HEADER = '<ir_version: 9, opset_import: ["" : 18]>'
REGISTRY = load_registry()
TARGET = REGISTRY.get_target("ethos-u65")


@dataclass(frozen=True)
class FakeCost:
    cycles: int
    weight_bytes: int = 0
    cpu_ops: int = 0


def per_node(proto: onnx.ModelProto, target: object) -> FakeCost:
    return FakeCost(cycles=1000 * len(proto.graph.node))


def _w(*shape: int, seed: int) -> np.ndarray:
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    return (np.random.default_rng(seed).standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)


def two_blocks() -> onnx.ModelProto:
    """Two re-parameterisable blocks (3x3 + 1x1 branches, then 3x3 + identity) with a ReLU between."""
    return parse(
        HEADER
        + """
    g (float[1,8,8,8] x) => (float[1,8,8,8] y) {
        a = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x, wa, ba)
        b = Conv <kernel_shape = [1, 1]> (x, wb, bb)
        s = Add (a, b)
        r = Relu (s)
        c = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (r, wc, bc)
        t = Add (c, r)
        y = Relu (t)
    }""",
        wa=_w(8, 8, 3, 3, seed=1),
        ba=_w(8, seed=2),
        wb=_w(8, 8, 1, 1, seed=3),
        bb=_w(8, seed=4),
        wc=_w(8, 8, 3, 3, seed=5),
        bc=_w(8, seed=6),
    )


@pytest.fixture(scope="module")
def block_models() -> ModuleType:
    import build_block_models  # examples/ is on the test path (pyproject)

    return build_block_models


def _canonical(proto: onnx.ModelProto) -> IRModel:
    model = IRModel.load(proto)
    PassManager([REGISTRY.get_pass(name)() for name in CANONICAL_PIPELINE]).run(model, PassContext(target=TARGET))
    return model


# ----------------------------------------------------------------------------- with a stand-in oracle


def test_applies_cheaper_rewrites_and_logs_every_decision() -> None:
    proto = two_blocks()
    model = IRModel.load(proto)
    ctx = PassContext(target=TARGET)
    pass_ = SubstituteBlocksPass(cost_fn=per_node)
    assert pass_.run(model, ctx)
    assert ops(model) == {"Conv": 2, "Relu": 2}
    assert_same_function(proto, model.to_proto(), rtol=1e-5, atol=1e-5)
    assert [d.rule for d in pass_.decisions] == ["reparam", "reparam"]
    assert ctx.stats["reparam.applied"] == 2 and ctx.stats["oracle_calls"] == 4
    logged = [d for d in ctx.decisions if d.get("pass") == "substitute-blocks" and "summary" not in d]
    assert len(logged) == 2
    (summary,) = [d["summary"] for d in ctx.decisions if "summary" in d]
    assert summary["scope"] == "model" and summary["after"]["cycles"] < summary["before"]["cycles"]
    json.dumps(ctx.decisions)  # report.json-ready
    for record in logged:
        assert record["chosen"] == "reparameterised" and record["scope"] == "model"
        assert record["before"]["cycles"] > record["candidates"][0]["cycles"]


def test_idempotent() -> None:
    model = IRModel.load(two_blocks())
    SubstituteBlocksPass(cost_fn=per_node).run(model, PassContext(target=TARGET))
    again = SubstituteBlocksPass(cost_fn=per_node)
    assert not again.run(model, PassContext(target=TARGET))
    assert not again.decisions


def test_oracle_says_no_so_nothing_is_applied() -> None:
    def dislikes(proto: onnx.ModelProto, target: object) -> FakeCost:
        return FakeCost(cycles=10**6 - len(proto.graph.node))

    proto = two_blocks()
    model = IRModel.load(proto)
    pass_ = SubstituteBlocksPass(cost_fn=dislikes)
    assert not pass_.run(model, PassContext(target=TARGET))
    assert ops(model) == ops(IRModel.load(proto))
    assert len(pass_.decisions) == 2 and all(d.chosen is None for d in pass_.decisions)


def test_ties_go_to_fewer_weight_bytes() -> None:
    def same_cycles(proto: onnx.ModelProto, target: object) -> FakeCost:
        weights = sum(int(np.prod(i.dims)) for i in proto.graph.initializer)
        return FakeCost(cycles=5, weight_bytes=weights)

    model = IRModel.load(two_blocks())
    pass_ = SubstituteBlocksPass(cost_fn=same_cycles)
    assert pass_.run(model, PassContext(target=TARGET))
    assert "fewer weight bytes" in pass_.decisions[0].reason


def test_cpu_ops_outrank_cycles() -> None:
    assert cost_key(FakeCost(cycles=10, cpu_ops=1)) > cost_key(FakeCost(cycles=10**6, cpu_ops=0))


def test_guard_redecides_on_the_whole_model_when_subgraph_choices_do_not_pay_off() -> None:
    """Subgraphs (named ``*_sub`` by extract_subgraph) say 'merge', the whole model says 'keep'."""

    def split_opinion(proto: onnx.ModelProto, target: object) -> FakeCost:
        n = len(proto.graph.node)
        return FakeCost(cycles=n if proto.graph.name.endswith("_sub") else 10**6 - n)

    proto = two_blocks()
    model = IRModel.load(proto)
    pass_ = SubstituteBlocksPass(cost_fn=split_opinion, scope="subgraph")
    assert not pass_.run(model, PassContext(target=TARGET))
    assert ops(model) == ops(IRModel.load(proto))
    assert pass_.summary["guard"] == "re-decided on the whole model"
    assert all(d.chosen is None for d in pass_.decisions)
    assert {d.scope for d in pass_.decisions} == {"model"}
    assert len(pass_.summary["superseded"]) == 2  # the subgraph-scope choices the whole model overruled


def test_guard_keeps_subgraph_choices_that_pay_off() -> None:
    model = IRModel.load(two_blocks())
    pass_ = SubstituteBlocksPass(cost_fn=per_node, scope="subgraph")
    assert pass_.run(model, PassContext(target=TARGET))
    assert pass_.summary["guard"].startswith("kept")
    assert pass_.summary["after"]["cycles"] < pass_.summary["before"]["cycles"]


def test_without_a_target_nothing_is_costed() -> None:
    model = IRModel.load(two_blocks())
    pass_ = SubstituteBlocksPass(cost_fn=per_node)
    assert not pass_.run(model, PassContext())
    assert not pass_.decisions


def test_nothing_to_match_costs_nothing() -> None:
    calls: list[int] = []

    def counting(proto: onnx.ModelProto, target: object) -> FakeCost:
        calls.append(1)
        return FakeCost(cycles=1)

    proto = parse(
        HEADER + "g (float[1,4,6,6] x) => (float[1,4,6,6] y) { a = Conv <pads = [1, 1, 1, 1]> (x, w)\n y = Relu (a) }",
        w=_w(4, 4, 3, 3, seed=1),
    )
    assert not SubstituteBlocksPass(cost_fn=counting).run(IRModel.load(proto), PassContext(target=TARGET))
    assert not calls


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"stem": "rgb"}, "stem must be"),
        ({"rules": ("no-such-rule",)}, "unknown rule"),
        ({"rules": ("fuse-inverted-bottleneck",)}, "allow_lossy"),
        ({"scope": "everything"}, "scope"),
        ({"max_error": -1.0}, "max_error"),
    ],
)
def test_bad_options_fail_early(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SubstituteBlocksPass(**options)  # type: ignore[arg-type]


def test_exactness_and_input_changes_follow_the_options() -> None:
    assert SubstituteBlocksPass().is_exact and not SubstituteBlocksPass().changes_inputs
    assert not SubstituteBlocksPass(allow_lossy=True).is_exact
    assert SubstituteBlocksPass(stem="auto").changes_inputs and SubstituteBlocksPass(stem="auto").is_exact
    names = [r.name for r in SubstituteBlocksPass(allow_lossy=True, stem="auto").active_rules()]
    assert names[:4] == ["reparam", "large-kernel", "merge-convs", "grouped"] and "stem" in names


def test_registered_under_its_cli_name() -> None:
    assert REGISTRY.get_pass("substitute-blocks") is SubstituteBlocksPass


# ----------------------------------------------------------------------------- with Vela


def test_repvgg_training_form_becomes_one_conv_per_block(block_models: ModuleType) -> None:
    """Acceptance: RepVGG-style training form -> one 3x3 conv per block, same function, faster per Vela."""
    model = _canonical(block_models.build("repvgg_tiny"))
    before = model.to_proto()
    blocks = sum(1 for n in before.graph.node if n.op_type == "Relu")
    ctx = PassContext(target=TARGET)
    pass_ = SubstituteBlocksPass()
    assert pass_.run(model, ctx)
    after = model.to_proto()
    assert ops(after)["Conv"] == blocks and "Add" not in ops(after) and "Mul" not in ops(after)
    assert_same_function(before, after, rtol=1e-5, atol=1e-4)
    assert len(pass_.decisions) == blocks and all(d.chosen == "reparameterised" for d in pass_.decisions)
    assert all(d.before is not None and d.candidates[0].cost is not None for d in pass_.decisions)
    assert estimate(after, TARGET).cycles < estimate(before, TARGET).cycles
    assert not SubstituteBlocksPass().run(model, PassContext(target=TARGET))


def test_grouped_model_is_never_slower_on_the_whole_model(block_models: ModuleType) -> None:
    model = _canonical(block_models.build("resnext_tiny"))
    before = model.to_proto()
    pass_ = SubstituteBlocksPass(scope="subgraph")
    pass_.run(model, PassContext(target=TARGET))
    after = model.to_proto()
    assert {d.rule for d in pass_.decisions} == {"grouped"}
    assert all(c.cost is not None for d in pass_.decisions for c in d.candidates)
    assert cost_key(estimate(after, TARGET)) <= cost_key(estimate(before, TARGET))
    assert_same_function(before, after, rtol=1e-4, atol=1e-4)


def test_block_models_build_deterministically(block_models: ModuleType) -> None:
    for name in block_models.MODELS:
        first, second = block_models.build(name), block_models.build(name)
        assert first.SerializeToString() == second.SerializeToString()
        onnx.checker.check_model(first, full_check=True)


def test_parallel_costing_decides_the_same() -> None:
    w = np.random.default_rng(0).standard_normal((64, 4, 3, 3)) / 6.0
    proto = parse(
        HEADER + "g (float[1,64,8,8] x) => (float[1,64,8,8] y) { y = Conv <pads = [1, 1, 1, 1], group = 16> (x, w) }",
        w=w.astype(np.float32),
    )
    answers = []
    for jobs in (2, 1):
        pass_ = SubstituteBlocksPass(rules=("grouped",), jobs=jobs)
        pass_.run(IRModel.load(proto), PassContext(target=TARGET))
        (decision,) = pass_.decisions
        answers.append((decision.chosen, [(c.name, c.cost.cycles if c.cost else None) for c in decision.candidates]))
    assert answers[0] == answers[1]


# -- int8 accuracy guard (issue 16) ------------------------------------------------------------------
FIXTURES = __import__("pathlib").Path(__file__).resolve().parents[1] / "fixtures" / "accuracy"


def _repvgg_fixture() -> tuple[IRModel, object]:
    """timm RepVGG blocks in training form, BN re-estimated on real photo crops (examples/export_repvgg.py)."""
    from nirc.backend import input_shapes
    from nirc.pipeline import select_passes
    from nirc.quant import load_calibration

    model = IRModel.load(FIXTURES / "repvgg_narrow_64.onnx")
    PassManager(select_passes(REGISTRY, TARGET, no_hw_passes=True)).run(model, PassContext(target=TARGET))
    calib = load_calibration(FIXTURES / "repvgg_narrow_64_calib.npz", input_shapes(model.to_proto()))
    return model, calib


def test_accuracy_guard_refuses_reparam_that_costs_int8_snr() -> None:
    """Merging every RepVGG block costs this model > 0.5 dB int8 SNR: the guard refuses or falls back
    (identity kept as a residual) until the loss is within tolerance, and says so per decision."""
    from nirc.accuracy import AccuracyGuard

    model, calib = _repvgg_fixture()
    original = model.to_proto()
    unguarded = model.copy()
    assert SubstituteBlocksPass().run(unguarded, PassContext(target=TARGET))
    guard = AccuracyGuard(calib, max_snr_drop=0.5)  # type: ignore[arg-type]
    assert guard.judge(original, unguarded.to_proto()).drop > 0.5  # the float-exact rewrite hurts int8

    pass_ = SubstituteBlocksPass()
    ctx = PassContext(target=TARGET, calibration=calib, accuracy=guard)  # type: ignore[arg-type]
    assert pass_.run(model, ctx)
    assert guard.judge(original, model.to_proto()).drop <= 0.5
    assert_same_function(original, model.to_proto(), rtol=1e-3, atol=1e-4)
    decisions = [d.to_json() for d in pass_.decisions if d.candidates]
    refused = [d for d in decisions if "refused" in d.get("int8", {})]
    assert refused and all("accuracy guard refused" in d["reason"] for d in refused)
    assert any(d["chosen"] == "reparameterised-residual" for d in refused)
    assert all("int8" in d for d in decisions if d["chosen"])
    summary = pass_.summary["accuracy_guard"]
    assert summary["within_tolerance"] and summary["refused"] + summary["fallback"] == len(refused)
    assert ctx.stats["accuracy_measurements"] <= 2 * len(decisions).bit_length() + 2
    # Still faster than the unmerged model: the guard keeps what int8 allows.
    assert estimate(model.to_proto(), TARGET).cycles < estimate(original, TARGET).cycles
