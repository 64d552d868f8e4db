"""Opsets newer than the canonical one: lowered ops, retagged ops, and what is refused (nirc/ir/opset.py)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from nirc_testing import assert_same_function, ops, parse

from nirc.errors import ModelLoadError, UnsupportedOperatorError
from nirc.ir import CANONICAL_OPSET, IRModel

SIGNATURE = "(float[1,4,3,3] x) => (float[1,4,3,3] y)"


def _model(opset: int, body: str, signature: str = SIGNATURE, **inits: np.ndarray) -> onnx.ModelProto:
    return parse(f'<ir_version: 10, opset_import: ["" : {opset}]>\ng {signature} {{\n{body}\n}}', **inits)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_20_is_lowered_exactly(approximate: str) -> None:
    proto = _model(20, f'a = Gelu <approximate = "{approximate}"> (x)\n y = Relu (a)')
    loaded = IRModel.load(proto)
    counts = ops(loaded)
    assert "Gelu" not in counts and counts["Erf" if approximate == "none" else "Tanh"] == 1
    out = loaded.to_proto()
    assert out.opset_import[0].version == CANONICAL_OPSET
    assert_same_function(proto, out, rtol=1e-6, atol=1e-6)


def test_swish_24_and_rms_normalization_23_are_lowered_exactly() -> None:
    proto = _model(
        24,
        "a = Swish <alpha = 1.5> (x)\n y = RMSNormalization <axis = -2, epsilon = 0.001> (a, scale)",
        scale=np.linspace(0.5, 1.5, 9, dtype=np.float32).reshape(3, 3),
    )
    loaded = IRModel.load(proto)
    assert {"Swish", "RMSNormalization"}.isdisjoint(ops(loaded))
    assert ops(loaded)["Sigmoid"] == 1 and ops(loaded)["ReduceMean"] == 1
    assert_same_function(proto, loaded.to_proto(), rtol=1e-5, atol=1e-6)


def test_type_only_version_bumps_are_retagged() -> None:
    """Reshape-25, Transpose-25, Cast-25 and Conv-22 only widened their types: same nodes at opset 18."""
    proto = _model(
        25,
        "c = Conv <pads = [1,1,1,1]> (x, w)\n t = Transpose <perm = [0,1,3,2]> (c)\n"
        " r = Reshape (t, shape)\n y = Cast <to = 1, saturate = 1> (r)",
        w=np.random.default_rng(0).standard_normal((4, 4, 3, 3)).astype(np.float32),
        shape=np.array([1, 4, 3, 3], np.int64),
    )
    loaded = IRModel.load(proto)
    assert ops(loaded) == {"Conv": 1, "Transpose": 1, "Reshape": 1, "Cast": 1}
    assert_same_function(proto, loaded.to_proto(), rtol=1e-6, atol=1e-6)


def test_new_behaviour_is_refused_in_one_line_naming_each_op() -> None:
    proto = _model(
        21,
        'p = Pad <mode = "wrap"> (x, pads)\n q = Pad <mode = "wrap"> (p, pads)\n y = Identity (q)',
        signature="(float[1,4,3,3] x) => (float[1,4,7,7] y)",
        pads=np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64),
    )
    with pytest.raises(UnsupportedOperatorError) as info:
        IRModel.load(proto)
    message = str(info.value)
    assert message == "<model>: opset-21 ops with no opset-18 form: Pad(mode=wrap) x2"


def test_ops_without_an_opset_18_form_are_named_with_counts() -> None:
    proto = _model(
        26,
        "a = CumProd (x, axis)\n b = CumProd (a, axis)\n y = Relu (b)",
        axis=np.array(1, np.int64),
    )
    with pytest.raises(UnsupportedOperatorError, match=r"no opset-18 form: CumProd x2$"):
        IRModel.load(proto)


@pytest.mark.parametrize("opset", [6, onnx.defs.onnx_opset_version() + 1])
def test_opsets_outside_the_read_range_are_one_line_errors(opset: int) -> None:
    proto = _model(18, "y = Relu (x)")
    proto.opset_import[0].version = opset
    with pytest.raises(ModelLoadError, match=rf"opset {opset} is outside the opsets nirc reads \(7 to \d+"):
        IRModel.load(proto)


def test_opset_7_is_converted_up() -> None:
    proto = _model(
        7,
        "b = BatchNormalization (x, s, bias, mean, var)\n y = Relu (b)",
        s=np.full(4, 2.0, np.float32),
        bias=np.zeros(4, np.float32),
        mean=np.zeros(4, np.float32),
        var=np.ones(4, np.float32),
    )
    loaded = IRModel.load(proto).to_proto()
    assert loaded.opset_import[0].version == CANONICAL_OPSET
    assert_same_function(proto, loaded)


def test_group_normalization_21_is_lowered_not_retagged() -> None:
    """GroupNormalization-21 scales per channel; the opset-18 op of that name scales per group."""
    rng = np.random.default_rng(3)
    proto = _model(
        21,
        "n = GroupNormalization <num_groups = 2, epsilon = 0.001> (x, s, b)\n y = Relu (n)",
        s=rng.uniform(0.5, 1.5, 4).astype(np.float32),
        b=rng.standard_normal(4).astype(np.float32),
    )
    loaded = IRModel.load(proto)
    assert "GroupNormalization" not in ops(loaded) and ops(loaded)["InstanceNormalization"] == 1
    assert_same_function(proto, loaded.to_proto(), rtol=1e-5, atol=1e-5)
