"""stem rule of substitute-blocks: the few-channel first conv on a channel-padded or space-to-depth input.

The rewrite changes the input the user feeds, so equivalence is checked with the documented transform
(:meth:`InputLayout.adapt`) applied to the original input. Vela decides on small stems (64x64x3)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from nirc.passes.block_rules.base import InputLayout
from nirc.passes.substitute_blocks import SubstituteBlocksPass, adapt_inputs
from nirc_testing import ort_run, parse

from nirc.ir import IRModel
from nirc.pass_base import PassContext
from nirc.plugin import load_registry

HEADER = '<ir_version: 9, opset_import: ["" : 18]>'
TARGET = load_registry().get_target("ethos-u65")


def stem(c: int = 3, hw: int = 64, stride: int = 2, k: int = 3, cout: int = 16, tail: str = "") -> onnx.ModelProto:
    p = k // 2
    ho = (hw + 2 * p - k) // stride + 1
    w = np.random.default_rng(0).standard_normal((cout, c, k, k)) / np.sqrt(c * k * k)
    b = np.random.default_rng(1).standard_normal(cout) * 0.1
    return parse(
        HEADER
        + f"""
    g (float[1,{c},{hw},{hw}] x) => (float[1,{cout},{ho},{ho}] y) {{
        a = Conv <kernel_shape = [{k}, {k}], pads = [{p}, {p}, {p}, {p}], strides = [{stride}, {stride}]> (x, w, b)
        y = Relu (a)
        {tail}
    }}""",
        w=w.astype(np.float32),
        b=b.astype(np.float32),
    )


def _same_with_layout(before: onnx.ModelProto, after: onnx.ModelProto, layout: InputLayout) -> None:
    onnx.checker.check_model(after, full_check=True)
    rng = np.random.default_rng(7)
    for _ in range(3):
        x = rng.standard_normal(layout.old_shape).astype(np.float32)
        (ref,) = ort_run(before, {layout.input: x})
        (got,) = ort_run(after, adapt_inputs([layout], {layout.input: x}))
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("mode", "shape", "kind"),
    [("pad-channels", [1, 8, 64, 64], "pad-channels"), ("space-to-depth", [1, 12, 32, 32], "space-to-depth")],
)
def test_stem_layout_is_exact_and_faster(mode: str, shape: list[int], kind: str) -> None:
    proto = stem()
    model = IRModel.load(proto)
    pass_ = SubstituteBlocksPass(stem=mode)  # type: ignore[arg-type]
    ctx = PassContext(target=TARGET)
    assert pass_.run(model, ctx)
    (layout,) = pass_.input_layouts
    assert layout.kind == kind and list(layout.new_shape) == shape and layout.old_shape == (1, 3, 64, 64)
    after = model.to_proto()
    assert [d.dim_value for d in after.graph.input[0].type.tensor_type.shape.dim] == shape
    _same_with_layout(proto, after, layout)
    (decision,) = pass_.decisions
    assert decision.before is not None and decision.input_layout == layout
    chosen = next(c for c in decision.candidates if c.name == decision.chosen)
    assert chosen.cost is not None and chosen.cost.cycles < decision.before.cycles
    record = next(d for d in ctx.decisions if d.get("rule") == "stem")
    assert record["input_layout"]["new_shape"] == shape and "feed" in record["input_layout"]
    # Idempotent: the input has 8 or 12 channels now, not a stem any more.
    assert not SubstituteBlocksPass(stem=mode).run(model, PassContext(target=TARGET))  # type: ignore[arg-type]


def test_auto_picks_the_cheapest_layout_measured() -> None:
    """On ethos-u65-256 padding to 8 channels beats space-to-depth (facts: -42% vs -23% at 224x224)."""
    model = IRModel.load(stem())
    pass_ = SubstituteBlocksPass(stem="auto")
    assert pass_.run(model, PassContext(target=TARGET))
    (decision,) = pass_.decisions
    assert {c.name for c in decision.candidates} == {"pad-channels-8", "pad-channels-16", "space-to-depth"}
    assert decision.chosen == "pad-channels-8"


def test_space_to_depth_with_odd_stride_or_size_is_not_offered() -> None:
    model = IRModel.load(stem(stride=1, hw=32))
    pass_ = SubstituteBlocksPass(stem="space-to-depth")
    assert not pass_.run(model, PassContext(target=TARGET))
    (decision,) = pass_.decisions
    assert decision.reason == "no candidate replacement for this block"


def test_default_leaves_the_input_alone() -> None:
    model = IRModel.load(stem())
    pass_ = SubstituteBlocksPass()
    assert not pass_.run(model, PassContext(target=TARGET)) and not pass_.changes_inputs


def test_input_read_by_two_nodes_is_not_a_stem() -> None:
    proto = stem(hw=16, tail="z = Relu (x)").SerializeToString()
    model_proto = onnx.ModelProto()
    model_proto.ParseFromString(proto)
    model_proto.graph.output.append(onnx.helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, [1, 3, 16, 16]))
    model = IRModel.load(model_proto)
    pass_ = SubstituteBlocksPass(stem="auto")
    assert not pass_.run(model, PassContext(target=TARGET)) and not pass_.decisions


def test_adapt_matches_onnx_space_to_depth() -> None:
    layout = InputLayout("x", "space-to-depth", (1, 3, 4, 6), (1, 12, 2, 3), 2)
    x = np.arange(72, dtype=np.float32).reshape(1, 3, 4, 6)
    node = onnx.helper.make_node("SpaceToDepth", ["x"], ["y"], blocksize=2)
    graph = onnx.helper.make_graph(
        [node],
        "s2d",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 4, 6])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 12, 2, 3])],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)], ir_version=9)
    (ref,) = ort_run(model, {"x": x})
    np.testing.assert_array_equal(layout.adapt(x), ref)
