"""decompose-hard-sigmoid: HardSigmoid after a conv as Mul + Add + Clip(0, 1), folded by fuse-affine."""

from __future__ import annotations

import numpy as np
from nirc.passes.decompose_hard_sigmoid import DecomposeHardSigmoidPass
from nirc.passes.fuse_affine import FuseAffinePass
from nirc_testing import assert_same_function, ops, parse, run_pass

from nirc.ir import IRModel
from nirc.pass_base import PassContext

HEADER = '<ir_version: 9, opset_import: ["" : 18]>'
RNG = np.random.default_rng(4)


def _se_gate() -> object:
    """MobileNetV3's squeeze-excite gate: 1x1 conv -> HardSigmoid -> broadcast Mul."""
    return parse(
        HEADER
        + """g (float[1,16,1,1] p, float[1,16,8,8] x) => (float[1,16,8,8] y) {
            c = Conv (p, w, b)
            h = HardSigmoid <alpha = 0.16666667, beta = 0.5> (c)
            y = Mul (x, h)
        }""",
        w=(RNG.standard_normal((16, 16, 1, 1)) * 0.5).astype(np.float32),
        b=(RNG.standard_normal(16) * 0.5).astype(np.float32),
    )


def test_hard_sigmoid_after_conv_folds_into_it() -> None:
    proto = _se_gate()
    model, changed, ctx = run_pass(DecomposeHardSigmoidPass(), proto)
    assert changed and ctx.stats == {"decomposed": 1}
    assert ops(model) == {"Conv": 1, "Mul": 2, "Add": 1, "Clip": 1}
    assert_same_function(proto, model.to_proto(), rtol=1e-5, atol=1e-6)
    assert FuseAffinePass().run(model, PassContext())
    assert ops(model) == {"Conv": 1, "Clip": 1, "Mul": 1}  # the gate Mul stays
    assert_same_function(proto, model.to_proto(), rtol=1e-5, atol=1e-5)


def test_hard_sigmoid_elsewhere_is_kept() -> None:
    """Read twice, or not after a linear op: nothing would fold."""
    proto = parse(
        HEADER
        + """g (float[1,4,3,3] x) => (float[1,4,3,3] y, float[1,4,3,3] c, float[1,4,3,3] z) {
            c = Conv (x, w)
            y = HardSigmoid (c)
            r = Relu (x)
            z = HardSigmoid (r)
        }""",
        w=(RNG.standard_normal((4, 4, 1, 1))).astype(np.float32),
    )
    model, changed, _ = run_pass(DecomposeHardSigmoidPass(), proto)
    assert not changed and ops(model)["HardSigmoid"] == 2


def test_second_run_changes_nothing() -> None:
    model, changed, _ = run_pass(DecomposeHardSigmoidPass(), _se_gate())
    assert changed
    again = IRModel.load(model.to_proto())
    assert not DecomposeHardSigmoidPass().run(again, PassContext())
