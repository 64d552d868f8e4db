"""reparam rule of substitute-blocks: RepVGG / ACNet / DBB branches summed into one conv, exact under ORT.

A stand-in oracle that charges per node makes every exact merge a win, so these tests check the rewrite
itself (op counts, ORT equivalence at rtol 1e-5, idempotence) and the cases it must refuse."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import pytest
from nirc.passes.substitute_blocks import SubstituteBlocksPass
from nirc_testing import assert_same_function, ops, parse

from nirc.ir import IRModel
from nirc.pass_base import PassContext
from nirc.plugin import load_registry

HEADER = '<ir_version: 9, opset_import: ["" : 18]>'
TARGET = load_registry().get_target("ethos-u65")


@dataclass(frozen=True)
class FakeCost:
    cycles: int
    weight_bytes: int = 0
    cpu_ops: int = 0


def per_node(proto: onnx.ModelProto, target: object) -> FakeCost:
    """Every node costs the same: fewer nodes is faster."""
    return FakeCost(cycles=1000 * len(proto.graph.node))


def _w(*shape: int, seed: int) -> np.ndarray:
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    return (np.random.default_rng(seed).standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)


def _bn(prefix: str, c: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        f"{prefix}g": rng.uniform(0.5, 1.5, c).astype(np.float32),
        f"{prefix}b": rng.normal(0, 0.1, c).astype(np.float32),
        f"{prefix}m": rng.normal(0, 0.1, c).astype(np.float32),
        f"{prefix}v": rng.uniform(0.5, 1.5, c).astype(np.float32),
    }


def _run(proto: onnx.ModelProto, **options: object) -> tuple[IRModel, bool, SubstituteBlocksPass]:
    model = IRModel.load(proto)
    pass_ = SubstituteBlocksPass(rules=("reparam",), cost_fn=per_node, **options)  # type: ignore[arg-type]
    changed = pass_.run(model, PassContext(target=TARGET))
    return model, changed, pass_


def _exact_and_idempotent(proto: onnx.ModelProto, model: IRModel) -> None:
    assert_same_function(proto, model.to_proto(), rtol=1e-5, atol=1e-5)
    again = SubstituteBlocksPass(rules=("reparam",), cost_fn=per_node)
    assert not again.run(model, PassContext(target=TARGET))


def repvgg_block(c: int = 8, stride: int = 1, identity: bool = True, hw: int = 8) -> onnx.ModelProto:
    ho = (hw - 1) // stride + 1
    last = "s1" if identity else "s"
    idn = "cn = BatchNormalization (x, ig, ib, im, iv)\n s = Add (s1, cn)" if identity else ""
    return parse(
        HEADER
        + f"""
    g (float[1,{c},{hw},{hw}] x) => (float[1,{c},{ho},{ho}] y) {{
        a = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1], strides = [{stride}, {stride}]> (x, w3)
        an = BatchNormalization (a, dg, db, dm, dv)
        b = Conv <kernel_shape = [1, 1], strides = [{stride}, {stride}]> (x, w1)
        bn = BatchNormalization (b, pg, pb, pm, pv)
        {last} = Add (an, bn)
        {idn}
        y = Relu (s)
    }}""",
        w3=_w(c, c, 3, 3, seed=1),
        w1=_w(c, c, 1, 1, seed=2),
        **_bn("d", c, 3),
        **_bn("p", c, 4),
        **(_bn("i", c, 5) if identity else {}),
    )


def test_repvgg_block_becomes_one_3x3_conv() -> None:
    proto = repvgg_block()
    model, changed, pass_ = _run(proto)
    assert changed and ops(model) == {"Conv": 1, "Relu": 1}
    (decision,) = pass_.decisions
    assert decision.rule == "reparam" and decision.chosen == "reparameterised"
    assert decision.before is not None and decision.candidates[0].cost is not None
    conv = next(n for n in model.graph.nodes if n.op == "Conv")
    assert conv.attrs["kernel_shape"] == [3, 3] and conv.attrs["pads"] == [1, 1, 1, 1]
    _exact_and_idempotent(proto, model)


def test_strided_block_without_identity_branch() -> None:
    proto = repvgg_block(stride=2, identity=False)
    model, changed, _ = _run(proto)
    assert changed and ops(model) == {"Conv": 1, "Relu": 1}
    _exact_and_idempotent(proto, model)


def test_canonical_form_identity_branch_as_mul_add() -> None:
    """After fuse-batchnorm/decompose-batchnorm the identity BN is ``x * s + t`` and the convs carry biases."""
    c = 8
    proto = parse(
        HEADER
        + f"""
    g (float[1,{c},8,8] x) => (float[1,{c},8,8] y) {{
        a = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x, w3, b3)
        b = Conv <kernel_shape = [1, 1]> (x, w1, b1)
        m = Mul (x, s)
        t = Add (m, sh)
        s1 = Add (a, b)
        y = Add (t, s1)
    }}""",
        w3=_w(c, c, 3, 3, seed=1),
        b3=_w(c, seed=2),
        w1=_w(c, c, 1, 1, seed=3),
        b1=_w(c, seed=4),
        s=np.random.default_rng(5).uniform(0.5, 1.5, (1, c, 1, 1)).astype(np.float32),
        sh=_w(1, c, 1, 1, seed=6),
    )
    model, changed, _ = _run(proto)
    assert changed and ops(model) == {"Conv": 1}
    _exact_and_idempotent(proto, model)


def test_acnet_asymmetric_branches_embed_in_3x3() -> None:
    """ACNet: 3x3 + 1x3 (pads 0,1) + 3x1 (pads 1,0) kernels are the 3x3 kernel's middle row and column."""
    c = 4
    proto = parse(
        HEADER
        + f"""
    g (float[1,{c},7,9] x) => (float[1,{c},7,9] y) {{
        a = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x, w3)
        h = Conv <kernel_shape = [1, 3], pads = [0, 1, 0, 1]> (x, wh, bh)
        v = Conv <kernel_shape = [3, 1], pads = [1, 0, 1, 0]> (x, wv)
        s = Sum (a, h, v)
        y = Relu (s)
    }}""",
        w3=_w(c, c, 3, 3, seed=1),
        wh=_w(c, c, 1, 3, seed=2),
        bh=_w(c, seed=3),
        wv=_w(c, c, 3, 1, seed=4),
    )
    model, changed, _ = _run(proto)
    assert changed and ops(model) == {"Conv": 1, "Relu": 1}
    _exact_and_idempotent(proto, model)


def test_dbb_branches_1x1_then_unpadded_kxk_and_avgpool() -> None:
    """DBB: 1x1 -> BN -> 3x3 (pad 0) and 1x1 -> AvgPool(count_include_pad), summed with a 3x3 (pad 0)."""
    c = 4
    proto = parse(
        HEADER
        + f"""
    g (float[1,{c},8,8] x) => (float[1,{c},6,6] y) {{
        a = Conv <kernel_shape = [3, 3]> (x, w3)
        p = Conv <kernel_shape = [1, 1]> (x, w1, b1)
        pn = BatchNormalization (p, dg, db, dm, dv)
        q = Conv <kernel_shape = [3, 3]> (pn, w33)
        r = Conv <kernel_shape = [1, 1]> (x, w1b)
        rp = AveragePool <kernel_shape = [3, 3]> (r)
        s1 = Add (a, q)
        y = Add (s1, rp)
    }}""",
        w3=_w(c, c, 3, 3, seed=1),
        w1=_w(c, c, 1, 1, seed=2),
        b1=_w(c, seed=3),
        w33=_w(c, c, 3, 3, seed=4),
        w1b=_w(c, c, 1, 1, seed=5),
        **_bn("d", c, 6),
    )
    model, changed, _ = _run(proto)
    assert changed and ops(model) == {"Conv": 1}
    _exact_and_idempotent(proto, model)


def test_depthwise_branches_stay_depthwise() -> None:
    """MobileOne-style: depthwise 3x3 + depthwise 1x1 + BN identity -> one depthwise conv (group = C)."""
    c = 8
    proto = parse(
        HEADER
        + f"""
    g (float[1,{c},8,8] x) => (float[1,{c},8,8] y) {{
        a = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1], group = {c}> (x, w3)
        b = Conv <kernel_shape = [1, 1], group = {c}> (x, w1)
        cn = BatchNormalization (x, ig, ib, im, iv)
        s1 = Add (a, b)
        y = Add (s1, cn)
    }}""",
        w3=_w(c, 1, 3, 3, seed=1),
        w1=_w(c, 1, 1, 1, seed=2),
        **_bn("i", c, 3),
    )
    model, changed, _ = _run(proto)
    assert changed and ops(model) == {"Conv": 1}
    conv = next(n for n in model.graph.nodes if n.op == "Conv")
    assert conv.attrs["group"] == c
    _exact_and_idempotent(proto, model)


def test_refuses_1x1_with_bias_before_padded_3x3_in_a_branch() -> None:
    """DBB's 1x1 -> 3x3 (pad 1) branch: the 1x1's bias would appear in the 3x3's zero border. Kept, with the reason."""
    c = 4
    proto = parse(
        HEADER
        + f"""
    g (float[1,{c},8,8] x) => (float[1,{c},8,8] y) {{
        a = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x, w3)
        p = Conv <kernel_shape = [1, 1]> (x, w1, b1)
        q = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (p, w33)
        y = Add (a, q)
    }}""",
        w3=_w(c, c, 3, 3, seed=1),
        w1=_w(c, c, 1, 1, seed=2),
        b1=_w(c, seed=3),
        w33=_w(c, c, 3, 3, seed=4),
    )
    model, changed, pass_ = _run(proto)
    assert not changed and ops(model)["Conv"] == 3
    (decision,) = pass_.decisions
    assert decision.chosen is None and "bias" in decision.reason and not decision.candidates


@pytest.mark.parametrize(
    ("body", "why"),
    [
        # branches read different tensors (a plain residual block): not a reparam block at all
        ("r = Relu (x)\n a = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (r, w3)\n y = Add (a, x)", None),
        # a nonlinearity inside a branch
        ("a = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x, w3)\n r = Relu (a)\n y = Add (r, x)", None),
        # a branch tensor is also read outside the block
        ("a = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x, w3)\n y = Add (a, x)\n z = Relu (a)", None),
        # padded AveragePool excluding padding from its divisor is not a conv
        ("a = AveragePool <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x)\n y = Add (a, x)", "padding"),
        # dilated branch
        (
            "a = Conv <kernel_shape = [3, 3], pads = [2, 2, 2, 2], dilations = [2, 2]> (x, w3)\n y = Add (a, x)",
            "dilation",
        ),
    ],
)
def test_negative_cases_are_kept(body: str, why: str | None) -> None:
    outputs = "float[1,4,8,8] y, float[1,4,8,8] z" if "z =" in body else "float[1,4,8,8] y"
    proto = parse(HEADER + f"g (float[1,4,8,8] x) => ({outputs}) {{\n {body}\n }}", w3=_w(4, 4, 3, 3, seed=1))
    model, changed, pass_ = _run(proto)
    assert not changed and ops(model) == ops(proto)
    if why is None:
        assert not pass_.decisions
    else:
        (decision,) = pass_.decisions
        assert why in decision.reason


def test_oracle_veto_keeps_the_branches() -> None:
    def prefers_branches(proto: onnx.ModelProto, target: object) -> FakeCost:
        return FakeCost(cycles=10**6 - len(proto.graph.node))

    proto = repvgg_block()
    model = IRModel.load(proto)
    pass_ = SubstituteBlocksPass(rules=("reparam",), cost_fn=prefers_branches)
    assert not pass_.run(model, PassContext(target=TARGET))
    assert ops(model) == ops(IRModel.load(proto))
    (decision,) = pass_.decisions
    assert decision.chosen is None and "no candidate beats" in decision.reason
    assert decision.before is not None and decision.candidates[0].cost is not None


def test_residual_candidate_keeps_the_identity_branch_and_is_exact() -> None:
    """The accuracy-preferred variant: 3x3 + 1x1 merged, the identity BN kept as a depthwise 1x1 conv added after."""
    from nirc.passes._rewrite import Namer
    from nirc.passes.block_rules.reparam import ReparamRule

    proto = repvgg_block()
    model = IRModel.load(proto)
    rule = ReparamRule()
    (match,) = list(rule.matches(model.graph))
    by_name = {c.name: c for c in rule.candidates(model.graph, match, None)}  # type: ignore[arg-type]
    assert set(by_name) == {"reparameterised", "reparameterised-residual"}
    residual = by_name["reparameterised-residual"]
    assert residual.accuracy_preferred and residual.exact and not by_name["reparameterised"].accuracy_preferred
    residual.build(model.graph, Namer(model.graph))
    model.graph.cleanup().toposort()
    assert ops(model) == {"Conv": 2, "Add": 1, "Relu": 1}
    assert sorted(n.attrs.get("group", 1) for n in model.graph.nodes if n.op == "Conv") == [1, 8]
    assert_same_function(proto, model.to_proto(), rtol=1e-5, atol=1e-5)
    # Idempotent: the residual form offers no residual candidate of its own (only the full merge).
    (again,) = list(rule.matches(model.graph))
    assert [c.name for c in rule.candidates(model.graph, again, None)] == ["reparameterised"]  # type: ignore[arg-type]


def test_no_residual_candidate_without_an_identity_branch() -> None:
    from nirc.passes.block_rules.reparam import ReparamRule

    model = IRModel.load(repvgg_block(stride=2, identity=False))
    rule = ReparamRule()
    (match,) = list(rule.matches(model.graph))
    assert [c.name for c in rule.candidates(model.graph, match, None)] == ["reparameterised"]  # type: ignore[arg-type]
