"""Real PyTorch exports through the front door and canonicalisation: TorchScript and dynamo meet in one form.

The fixtures under tests/fixtures/frontdoor/ come from examples/build_frontdoor_fixtures.py (both
exporters, same weights; see its docstring for what each network exercises). No torch is needed here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from nirc_testing import assert_same_function, ort_run

from nirc.backend import CalibrationOptions, emit, load_samples
from nirc.ir import CANONICAL_OPSET, IRModel
from nirc.pass_manager import PassManager
from nirc.plugin import load_registry
from nirc.validate import run_tflite

FIXTURES = Path(__file__).parent / "fixtures" / "frontdoor"
PAIRS = ("ghost", "gelu_ln", "noise", "chunk")
ALL = sorted(p.name for p in FIXTURES.glob("*.onnx"))


def _canonical(path: Path) -> IRModel:
    """The model after the target's canonicalisation and legalization passes, each checked against ORT."""
    registry = load_registry()
    target = registry.get_target("ethos-u65")
    names = [n for n in target.default_pipeline if n not in target.hw_passes]
    model = IRModel.load(path)
    PassManager([registry.get_pass(n)() for n in names], verify=True).run(model)
    return model


def _feeds(proto: onnx.ModelProto, count: int = 3) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(7)
    inits = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in inits]
    shapes = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in inputs}
    return [{n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()} for _ in range(count)]


def test_fixtures_cover_both_exporters_and_newer_opsets() -> None:
    assert {f"{n}_{e}.onnx" for n in PAIRS for e in ("ts", "dy")} <= set(ALL)
    opsets = {onnx.load(str(FIXTURES / f)).opset_import[0].version for f in ALL}
    assert min(opsets) < CANONICAL_OPSET < max(opsets)  # converted up (TorchScript 9, 17) and down (dynamo 20, 23)


@pytest.mark.parametrize("name", ALL)
def test_front_door_keeps_the_function(name: str) -> None:
    original = onnx.load(str(FIXTURES / name))
    loaded = IRModel.load(FIXTURES / name).to_proto()
    assert [(o.domain, o.version) for o in loaded.opset_import] == [("", CANONICAL_OPSET)]
    assert_same_function(original, loaded, rtol=1e-5, atol=1e-5)


def test_dynamo_gelu_is_lowered_to_the_torchscript_spelling() -> None:
    dynamo = onnx.load(str(FIXTURES / "gelu_ln_dy.onnx"))
    assert sum(n.op_type == "Gelu" for n in dynamo.graph.node) == 2
    loaded = IRModel.load(FIXTURES / "gelu_ln_dy.onnx").op_counts()
    scripted = IRModel.load(FIXTURES / "gelu_ln_ts.onnx").op_counts()
    for op in ("Erf", "Tanh", "Div", "Mul", "Add"):
        assert loaded[op] == scripted[op], op


@pytest.mark.parametrize("name", PAIRS)
def test_both_exports_meet_in_one_form(name: str) -> None:
    """Same int8 TFLite operator sequence from the TorchScript and the dynamo export of one network."""
    programs = []
    for exporter in ("ts", "dy"):
        proto = _canonical(FIXTURES / f"{name}_{exporter}.onnx").to_proto()
        noise = {"Slice", "Identity", "Flatten", "Gelu", "Expand", "Tile", "Cast"}
        assert not noise & {n.op_type for n in proto.graph.node}
        calib = load_samples(proto, CalibrationOptions(count=2))
        programs.append(_op_sequence(emit(proto, dtype="int8", calib=calib).tflite.data))
    assert programs[0] == programs[1]


@pytest.mark.parametrize(
    ("reference_name", "compiled_name"),
    [(f"{n}_ts.onnx", f"{n}_dy.onnx") for n in PAIRS] + [("norms_dy23.onnx", "norms_dy23.onnx")],
)
def test_litert_runs_the_canonical_model_like_ort_runs_the_export(reference_name: str, compiled_name: str) -> None:
    """Float32 TFLite of the canonical dynamo model (LiteRT) against the untouched TorchScript export (ORT)."""
    reference = onnx.load(str(FIXTURES / reference_name))
    proto = _canonical(FIXTURES / compiled_name).to_proto()
    tflite = emit(proto, dtype="float32", calib=None).tflite
    feeds = _feeds(reference)
    renamed = [dict(zip([i.name for i in tflite.inputs], f.values(), strict=True)) for f in feeds]
    for feed, litert in zip(feeds, run_tflite(tflite, renamed), strict=True):
        for want, got in zip(ort_run(reference, feed), litert, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def _op_sequence(data: bytes) -> list[int]:
    from tflite.Model import Model

    model = Model.GetRootAsModel(data, 0)
    codes = [max(model.OperatorCodes(i).BuiltinCode(), model.OperatorCodes(i).DeprecatedBuiltinCode())
             for i in range(model.OperatorCodesLength())]  # fmt: skip
    graph = model.Subgraphs(0)
    return [codes[graph.Operators(i).OpcodeIndex()] for i in range(graph.OperatorsLength())]
