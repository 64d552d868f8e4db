from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from nirc_testing import parse

from nirc.errors import PassError, VerificationError
from nirc.hookspecs import hookimpl
from nirc.ir import IRModel
from nirc.pass_base import Pass, PassContext
from nirc.pass_manager import PassManager
from nirc.pipeline import optimize
from nirc.plugin import PassRegistry, load_registry

TEXT = """
<ir_version: 9, opset_import: ["" : 18]>
g (float[1,3,8,8] x) => (float[1,4,8,8] y) {
    c = Conv <pads = [1,1,1,1]> (x, w)
    i = Identity (c)
    y = Relu (i)
}
"""


def _model() -> onnx.ModelProto:
    return parse(TEXT, w=np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32))


@dataclass(frozen=True)
class NudgeWeightsPass(Pass):
    """Deliberately wrong: scales conv weights by 1.01 while claiming to be exact."""

    name = "nudge-weights"
    exact = True

    def run(self, model: IRModel, ctx: PassContext) -> bool:
        for node in model.graph.nodes:
            if node.op == "Conv":
                w = node.inputs[1]
                node.inputs[1] = gs.Constant(w.name + "_nudged", (np.asarray(w.values) * 1.01).astype(np.float32))
                return True
        return False


@dataclass(frozen=True)
class BreakGraphPass(Pass):
    """Deliberately wrong: leaves a node reading an undefined tensor."""

    name = "break-graph"
    exact = True

    def run(self, model: IRModel, ctx: PassContext) -> bool:
        node = model.graph.nodes[-1]
        node.inputs[0] = gs.Variable("nowhere", dtype=np.float32, shape=[1, 4, 8, 8])
        return True


@dataclass(frozen=True)
class CrashPass(Pass):
    """Raises, like a buggy plugin would."""

    name = "crash"
    exact = False

    def run(self, model: IRModel, ctx: PassContext) -> bool:
        raise ZeroDivisionError("boom")


def _registry_with_test_passes() -> object:
    @hookimpl
    def nirc_register_passes(registry: PassRegistry) -> None:
        for cls in (NudgeWeightsPass, BreakGraphPass, CrashPass):
            registry.add_pass(cls)

    return load_registry([("test-passes", SimpleNamespace(nirc_register_passes=nirc_register_passes))])


def test_verify_catches_inexact_pass() -> None:
    model = IRModel.load(_model())
    with pytest.raises(VerificationError, match="pass nudge-weights claims to be exact"):
        PassManager([NudgeWeightsPass()], verify=True).run(model)


def test_without_verify_the_wrong_pass_goes_unnoticed() -> None:
    records = PassManager([NudgeWeightsPass()]).run(IRModel.load(_model()))
    assert records[0].changed and not records[0].verified


def test_verify_passes_exact_builtins_and_records_them() -> None:
    registry = load_registry()
    passes = [registry.get_pass(n)() for n in ("eliminate-identity", "eliminate-dead-code")]
    records = PassManager(passes, verify=True).run(IRModel.load(_model()))
    assert [(r.name, r.changed, r.verified) for r in records] == [
        ("eliminate-identity", True, True),
        ("eliminate-dead-code", False, False),
    ]
    assert records[0].stats == {"removed_identity": 1}


def test_invalid_model_names_the_pass() -> None:
    with pytest.raises(PassError, match="pass break-graph produced an invalid model"):
        PassManager([BreakGraphPass()]).run(IRModel.load(_model()))


def test_exception_in_pass_names_the_pass() -> None:
    with pytest.raises(PassError, match="pass crash failed: ZeroDivisionError: boom"):
        PassManager([CrashPass()]).run(IRModel.load(_model()))


def test_dump_ir_writes_each_step(tmp_path: Path) -> None:
    registry = load_registry()
    passes = [registry.get_pass(n)() for n in ("eliminate-identity", "fuse-batchnorm")]
    PassManager(passes, dump_ir=tmp_path).run(IRModel.load(_model()))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["00_input.onnx", "01_eliminate-identity.onnx", "02_fuse-batchnorm.onnx"]
    dumped = onnx.load(str(tmp_path / "01_eliminate-identity.onnx"))
    onnx.checker.check_model(dumped)
    assert [n.op_type for n in dumped.graph.node] == ["Conv", "Relu"]


def test_optimize_with_explicit_passes_and_verify(tmp_path: Path) -> None:
    registry = _registry_with_test_passes()
    src = tmp_path / "m.onnx"
    onnx.save(_model(), str(src))
    out = tmp_path / "out"
    with pytest.raises(VerificationError, match="nudge-weights"):
        optimize(src, "ethos-u65", outdir=out, passes=["nudge-weights"], verify=True, registry=registry)
    assert not out.exists()
    result = optimize(src, "ethos-u65", outdir=out, passes=["nudge-weights"], registry=registry)
    assert (out / "report.json").exists() and result.records[0].name == "nudge-weights"


def test_skip_pass_and_unknown_pass(tmp_path: Path) -> None:
    src = tmp_path / "m.onnx"
    onnx.save(_model(), str(src))
    result = optimize(src, "ethos-u65", outdir=tmp_path / "o", skip=["eliminate-identity"])
    assert "eliminate-identity" not in [r.name for r in result.records]
    with pytest.raises(PassError, match="unknown pass 'no-such-pass'"):
        optimize(src, "ethos-u65", outdir=tmp_path / "o2", passes=["no-such-pass"])
    assert not (tmp_path / "o2").exists()
