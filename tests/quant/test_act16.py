"""16-bit activation policy: which layers it promotes, what it reports, when it stops (real LiteRT and Vela)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from int16_models import outlier_model
from onnx import TensorProto, helper, numpy_helper

from nirc.backend import EmitResult, emit
from nirc.errors import BackendError
from nirc.plugin import load_registry
from nirc.quant.act16 import Act16Request, Cost, layer_group, promotable_tensors, promote, vela_cost
from nirc.quant.calibration import CalibrationSet


def _model() -> onnx.ModelProto:
    """Only t is badly served by int8; y's reader (Softmax) has no int16 form."""
    return outlier_model("Softmax")


@pytest.fixture(scope="module")
def setup() -> tuple[onnx.ModelProto, CalibrationSet, EmitResult]:
    proto = _model()
    rng = np.random.default_rng(0)
    samples = tuple({"x": rng.standard_normal((1, 8, 12, 12)).astype(np.float32)} for _ in range(8))
    calib = CalibrationSet(samples, synthetic=False, source="test")
    return proto, calib, emit(proto, dtype="int8", calib=calib)


def _emitter(proto: onnx.ModelProto, calib: CalibrationSet):  # type: ignore[no-untyped-def]
    return lambda wide: emit(proto, dtype="int8", calib=calib, wide=wide)


@pytest.fixture(scope="module")
def cost():  # type: ignore[no-untyped-def]
    return vela_cost(load_registry().get_target("ethos-u65"))


def test_parse() -> None:
    assert Act16Request.parse((), None, None) is None
    assert Act16Request.parse("auto", None, None) == Act16Request.parse(["auto"], None, None)
    auto = Act16Request.parse(("auto",), None, None)
    assert auto is not None and auto.auto and not auto.layers and auto.min_snr_db == 30.0
    named = Act16Request.parse(("a,b", "c"), None, 10.0)
    assert named is not None and named.layers == ("a", "b", "c") and not named.auto and named.max_cost_pct == 10.0
    target_only = Act16Request.parse((), 40.0, None)
    assert target_only is not None and target_only.auto and target_only.min_snr_db == 40.0


def test_layer_group_follows_fused_activation() -> None:
    proto = _model()
    promotable, blocked = promotable_tensors(proto)
    assert {"t", "y"} <= promotable and "s" in blocked and "Softmax" in blocked["s"]
    # t's reader is the 1x1 conv whose output is the fused ReLU's y; y's reader (Softmax) stays int8.
    assert layer_group(proto, "t", promotable) & promotable == {"t", "y"}
    assert layer_group(proto, "y", promotable) & promotable == {"y"}


def test_named_layer_is_promoted_and_reported(setup, cost) -> None:  # type: ignore[no-untyped-def]
    proto, calib, base = setup
    emitted, section = promote(proto, calib, base, Act16Request(layers=("t",)), _emitter(proto, calib), cost)
    assert emitted is not base
    assert section["mode"] == "layers"
    assert section["mixed"]["snr_db"] > section["int8"]["snr_db"] + 10.0
    [layer] = section["layers"]
    assert layer["tensor"] == "t" and layer["int16_tensors"] == ["t", "y"]
    assert layer["snr_gain_db"] > 5.0
    assert layer["cycles_int8"] > 0 and layer["cycles_mixed"] > 0
    assert section["mixed"]["cycles"] != section["int8"]["cycles"]


def test_named_layer_that_cannot_be_int16_is_an_error(setup, cost) -> None:  # type: ignore[no-untyped-def]
    proto, calib, base = setup
    with pytest.raises(BackendError, match=r"--activations-16 s: Softmax"):
        promote(proto, calib, base, Act16Request(layers=("s",)), _emitter(proto, calib), cost)
    with pytest.raises(BackendError, match="no such activation tensor"):
        promote(proto, calib, base, Act16Request(layers=("nope",)), _emitter(proto, calib), cost)


def test_auto_promotes_the_worst_layer_until_the_target(setup, cost) -> None:  # type: ignore[no-untyped-def]
    proto, calib, base = setup
    request = Act16Request(auto=True, min_snr_db=35.0, max_cost_pct=1000.0)
    _, section = promote(proto, calib, base, request, _emitter(proto, calib), cost)
    assert section["int8"]["snr_db"] < 35.0
    assert [layer["tensor"] for layer in section["layers"]] == ["t"]
    assert section["target_met"] is True
    assert section["steps"][0]["accepted"] is True
    assert section["not_promotable"] == {"y": "every op reading it stays int8"} or "y" not in section["not_promotable"]


def test_auto_stops_at_the_cost_limit(setup) -> None:  # type: ignore[no-untyped-def]
    proto, calib, base = setup
    request = Act16Request(auto=True, min_snr_db=35.0, max_cost_pct=5.0)
    expensive = iter([Cost(1.0, 1000), Cost(2.0, 2000)])  # int8, then the trial: +100%
    emitted, section = promote(proto, calib, base, request, _emitter(proto, calib), lambda _m: next(expensive))
    assert emitted is base and section["layers"] == []
    assert section["steps"][0]["accepted"] is False and section["steps"][0]["cost_pct"] == 100.0
    assert section["target_met"] is False


def test_auto_does_nothing_when_int8_meets_the_target(setup, cost) -> None:  # type: ignore[no-untyped-def]
    proto, calib, base = setup
    request = Act16Request(auto=True, min_snr_db=-100.0)
    emitted, section = promote(proto, calib, base, request, _emitter(proto, calib), cost)
    assert emitted is base and section["steps"] == [] and section["target_met"] is True


def test_a_tied_group_is_promotable_only_as_a_whole() -> None:
    """A Reshape shares its input's int8 parameters; its input comes from BATCH_MATMUL (int8 only)."""
    nodes = [
        helper.make_node("MatMul", ["a", "b"], ["m"]),
        helper.make_node("Reshape", ["m", "shape"], ["r"]),
        helper.make_node("Add", ["r", "r"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 2, 8, 8]) for n in ("a", "b")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.asarray([1, 2, 64], np.int64), "shape")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    proto = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    promotable, blocked = promotable_tensors(proto)
    assert "BATCH_MATMUL" in blocked["m"]
    assert blocked["r"].startswith("shares its int8 parameters with 'm'")
    assert promotable == {"y"}


def test_optimize_reports_and_compiles_the_mixed_model() -> None:
    """The pipeline: the mixed model is what is validated, compiled by Vela and run in the NPU functional model."""
    from pathlib import Path

    from ai_edge_litert.interpreter import Interpreter

    import nirc

    example = Path(__file__).resolve().parents[2] / "examples" / "tiny_cnn.onnx"
    result = nirc.optimize(example, activations_16=("auto",), min_snr=99.0, act16_max_cost=1000.0)
    section = result.report["validation"]["activations_16"]
    assert section["mode"] == "auto" and section["layers"] and section["target_met"] is False
    assert section["mixed"]["inference_time_ms"] == pytest.approx(result.report["vela"]["inference_time_ms"], abs=1e-3)
    dtypes = {d["dtype"] for d in Interpreter(model_content=result.int8_tflite).get_tensor_details()}
    assert np.int16 in dtypes
    assert result.report["validation"]["npu"]["bit_exact"] is True
    assert result.report["vela"]["cpu_ops"] == 0


def test_a_pattern_lowered_op_stays_int8() -> None:
    """Exact GELU (Div, Erf, Add, Mul, Mul) is one pattern lowering; its absorbed Erf has no rule of its own."""
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"]),
        helper.make_node("Div", ["c", "sqrt2"], ["d"]),
        helper.make_node("Erf", ["d"], ["e"]),
        helper.make_node("Add", ["e", "one"], ["p"]),
        helper.make_node("Mul", ["c", "p"], ["m"]),
        helper.make_node("Mul", ["m", "half"], ["g"]),
        helper.make_node("Conv", ["g", "w"], ["y"]),
    ]
    consts = {"sqrt2": 1.4142135, "one": 1.0, "half": 0.5}
    inits = [numpy_helper.from_array(np.asarray(v, np.float32), n) for n, v in consts.items()]
    weight = np.random.default_rng(0).standard_normal((4, 4, 1, 1)).astype(np.float32)
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(weight, "w"), *inits],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    proto = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    promotable, blocked = promotable_tensors(proto)
    assert promotable == {"c", "y"}
    assert "pattern" in blocked["g"]
