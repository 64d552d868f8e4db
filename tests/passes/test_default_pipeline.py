"""The Ethos-U default pipeline end to end, under ``verify=True`` (ORT equivalence after every exact pass)."""

from __future__ import annotations

import time
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from nirc_testing import assert_same_function, ops, parse

from nirc.ir import IRModel
from nirc.pass_manager import PassManager
from nirc.plugin import load_registry

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = [
    "tiny_cnn",
    "vgg19_cifar100",
    "resnet50_cifar100",
    "mobilenetv1_cifar100",
    "mobilenetv2_224",
    "vgg19_224_10",
]
GONE = {"BatchNormalization", "Dropout", "Identity"}


@pytest.fixture(scope="module")
def build_models() -> ModuleType:
    import build_models as module  # examples/ is on the test path (pyproject)

    return module


def _manager() -> PassManager:
    registry = load_registry()
    names = registry.get_target("ethos-u65").default_pipeline
    return PassManager([registry.get_pass(name)() for name in names], verify=True)


@pytest.mark.parametrize("name", EXAMPLES)
def test_default_pipeline_on_example_model(build_models: ModuleType, name: str) -> None:
    model = IRModel.load(build_models.build(name))
    before = model.op_counts()
    start = time.perf_counter()
    records = _manager().run(model)
    seconds = time.perf_counter() - start
    after = model.op_counts()
    assert not GONE & set(after), after
    assert sum(after.values()) == sum(before.values()) - before["BatchNormalization"]
    assert after["Conv"] == before["Conv"]
    assert all(r.verified for r in records if r.changed and r.exact)
    print(f"{name}: {sum(before.values())} -> {sum(after.values())} nodes in {seconds:.1f}s")


def _messy_export() -> object:
    """What exporters produce and every pass in the pipeline should clean up."""
    rng = np.random.default_rng(7)
    f32 = np.float32
    return parse(
        '<ir_version: 9, opset_import: ["" : 18]>'
        + """
    g (float[1,3,8,8] x) => (float[1,10] logits, float[1,8,4,4] side) {
        zero = Constant <value = float {0.0}> ()
        p = Pad (x, pads)
        c0 = Conv <strides = [2, 2]> (p, w0)
        bn0 = BatchNormalization (c0, g8, b8, m8, v8)
        r0 = Max (bn0, zero)
        i0 = Identity (r0)
        r = Reshape (i0, grouped)
        t = Transpose <perm = [0, 2, 1, 3, 4]> (r)
        sh = Reshape (t, flat4)
        a = Add (sh, three)
        a6 = Clip (a, zero, six)
        m = Mul (sh, a6)
        hs = Div (m, six)
        c1 = Conv <pads = [1, 1, 1, 1]> (hs, w1)
        c1b = Conv <pads = [1, 1, 1, 1]> (hs, w1)
        both = Add (c1, c1b)
        side = Relu (both)
        bn1 = BatchNormalization (both, g8, b8, m8, v8)
        t1 = Transpose <perm = [0, 2, 3, 1]> (bn1)
        t2 = Transpose <perm = [0, 3, 1, 2]> (t1)
        gp = GlobalAveragePool (t2)
        s = Shape (gp)
        n = Gather <axis = 0> (s, idx0)
        nu = Unsqueeze (n, ax0)
        shape = Concat <axis = 0> (nu, minus1)
        fl = Reshape (gp, shape)
        fl2 = Reshape (fl, flat2)
        mm = MatMul (fl2, wfc)
        fc = Add (mm, bfc)
        fcbn = BatchNormalization (fc, g10, b10, m10, v10)
        logits = Div (fcbn, temperature)
    }""",
        pads=np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64),
        w0=(rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(f32),
        w1=(rng.standard_normal((8, 8, 3, 3)) * 0.1).astype(f32),
        g8=rng.uniform(0.5, 1.5, 8).astype(f32),
        b8=rng.standard_normal(8).astype(f32),
        m8=rng.standard_normal(8).astype(f32),
        v8=rng.uniform(0.5, 1.5, 8).astype(f32),
        grouped=np.array([1, 2, 4, 4, 4], np.int64),
        flat4=np.array([1, 8, 4, 4], np.int64),
        three=np.array(3.0, f32),
        six=np.array(6.0, f32),
        idx0=np.array(0, np.int64),
        ax0=np.array([0], np.int64),
        minus1=np.array([-1], np.int64),
        flat2=np.array([1, 8], np.int64),
        wfc=rng.standard_normal((8, 10)).astype(f32),
        bfc=rng.standard_normal(10).astype(f32),
        g10=rng.uniform(0.5, 1.5, 10).astype(f32),
        b10=rng.standard_normal(10).astype(f32),
        m10=rng.standard_normal(10).astype(f32),
        v10=rng.uniform(0.5, 1.5, 10).astype(f32),
        temperature=np.array(2.0, f32),
    )


def test_default_pipeline_cleans_up_an_exporter_style_graph() -> None:
    proto = _messy_export()
    model = IRModel.load(proto)
    records = _manager().run(model)
    changed = {r.name for r in records if r.changed}
    # pad-channels and stage-inputs cost candidates on a target; this manager runs without one: no change.
    # The NPU legalizations have nothing to legalize here (no normalization, large pool/stride, odd resize).
    legalizations = {"decompose-layernorm", "legalize-l2-normalize", "legalize-rsqrt", "propagate-transposes",
                     "legalize-channel-shuffle", "decompose-pooling", "legalize-reduce-sum", "legalize-reduce-mean",
                     "legalize-resize", "decompose-strided-conv"}  # fmt: skip
    # tile-activations needs an arena (a target or arena_size) to compare live bytes against.
    # merge-slices: the graph slices nothing (tests/passes/test_merge_slices.py covers it).
    # equalize-cross-layer keeps its rewrite only when int8 accuracy, measured on --calib data, rises: none here.
    unchanged = {"eliminate-dead-code", "pad-channels", "stage-inputs", "tile-activations", "substitute-blocks",
                 "merge-slices", "decompose-hard-sigmoid", "equalize-cross-layer", *legalizations}  # fmt: skip
    assert changed == {r.name for r in records} - unchanged, changed
    # c1 and c1b merge (CSE); bn1 follows an Add read twice, so it becomes Mul+Add.
    assert ops(model) == {
        "Conv": 2,
        "Relu": 2,
        "HardSwish": 1,
        "Add": 2,
        "Mul": 1,
        "AveragePool": 1,  # legalize-global-pool
        "Reshape": 1,
        "Gemm": 1,
    }
    assert_same_function(proto, model.to_proto(), rtol=1e-4, atol=1e-5)
    again = _manager().run(model)
    assert not [r.name for r in again if r.changed]
