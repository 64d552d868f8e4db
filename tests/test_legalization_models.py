"""NPU legalization end to end: three detection/mobile/transformer-style CNNs and one probe per lowering.

Each model goes through ``nirc.pipeline.optimize`` (default Ethos-U pipeline, Vela U65-256) and must come
out with every op on the NPU and no TRANSPOSE in the int8 TFLite, with the prediction of Vela's Python
checker agreeing with Vela's actual placement. Each emitter lowering added for legalization is compiled on
its own and must run on the NPU with int8 results close to ONNX Runtime's float ones.
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import build_detection_models
import numpy as np
import onnx
import onnx.parser
import pytest
import tflite
from nirc.targets.ethos_u.placement import compare, observed_placement, placement_report, predict_placement
from nirc.targets.ethos_u.spec import ETHOS_U_TARGETS
from nirc.targets.ethos_u.vela_driver import CpuOp, _builtin_names, compile_with_vela

from nirc.backend import emit, input_shapes, validate
from nirc.ir import IRModel
from nirc.pipeline import OptimizeResult, optimize
from nirc.quant import load_calibration

U65 = next(t for t in ETHOS_U_TARGETS if t.name == "ethos-u65-256")
HEADER = '<ir_version: 9, opset_import: ["" : 18]>'
MIN_SNR_DB = 15.0


def tflite_ops(path: Path) -> collections.Counter[str]:
    names = _builtin_names()
    model = tflite.Model.GetRootAs(path.read_bytes(), 0)
    sg = model.Subgraphs(0)
    counts: collections.Counter[str] = collections.Counter()
    for i in range(sg.OperatorsLength()):
        code = model.OperatorCodes(sg.Operators(i).OpcodeIndex())
        counts[names[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())]] += 1
    return counts


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, OptimizeResult]:
    out = tmp_path_factory.mktemp("legalized")
    results = {}
    for name, factory in build_detection_models.MODELS.items():
        # ConvNeXt holds LayerNormalization, Sqrt and Erf: the pipeline's passes legalize them.
        # "No TRANSPOSE" is a deployment constraint here: by default Vela's cheaper TRANSPOSE keeps the shuffles.
        no_transpose = {"legalize-channel-shuffle": {"forbid_transpose": True}}
        results[name] = optimize(factory(), outdir=out / name, require_fit=False, pass_options=no_transpose)
    return results


@pytest.mark.parametrize("name", sorted(build_detection_models.MODELS))
def test_model_runs_entirely_on_the_npu_without_transpose(compiled: dict[str, OptimizeResult], name: str) -> None:
    result = compiled[name]
    vela = result.report["vela"]
    assert vela["cpu_ops"] == 0 and vela["cpu_op_list"] == [], vela["cpu_op_list"]
    assert vela["npu_ops"] > 0
    ops = tflite_ops(result.outdir / "model_int8.tflite")
    assert "TRANSPOSE" not in ops, ops
    for output in result.report["validation"]["outputs"]:
        assert output["snr_db"] >= MIN_SNR_DB, output


@pytest.mark.parametrize("name", sorted(build_detection_models.MODELS))
def test_prediction_agrees_with_vela(compiled: dict[str, OptimizeResult], name: str) -> None:
    result = compiled[name]
    path = result.outdir / "model_int8.tflite"
    observed = observed_placement(path, [CpuOp(**op) for op in result.report["vela"]["cpu_op_list"]], U65)
    predicted = predict_placement(path, U65, engine="python")
    assert compare(predicted, observed) == []
    assert placement_report(predicted, observed) == []


def _changed(result: OptimizeResult) -> dict[str, dict[str, Any]]:
    stats: dict[str, dict[str, Any]] = {}
    for record in result.report["passes"]:
        if record["changed"]:
            stats.setdefault(record["name"], {}).update(record["stats"])
    return stats


def test_what_each_model_needed(compiled: dict[str, OptimizeResult]) -> None:
    yolo = tflite_ops(compiled["yolo_tiny"].outdir / "model_int8.tflite")
    assert yolo["RESIZE_NEAREST_NEIGHBOR"] == 2 and yolo["MAX_POOL_2D"] == 3 and yolo["LOGISTIC"] == yolo["MUL"]
    assert yolo["SPLIT"] == 8 and yolo["CONCATENATION"] == 13  # C2f splits/concats, SPPF and neck concats
    assert _changed(compiled["shufflenet_tiny"])["legalize-channel-shuffle"] == {"shuffle": 3}
    convnext = tflite_ops(compiled["convnext_tiny_ln"].outdir / "model_int8.tflite")
    assert convnext["GELU"] == 2 and convnext["RSQRT"] == 5 and "FULLY_CONNECTED" in convnext
    assert _changed(compiled["convnext_tiny_ln"])["propagate-transposes"] == {"regions": 2, "transposes_removed": 4}


def test_skipping_a_legalization_names_the_constraint(tmp_path: Path) -> None:
    """A x16 nearest upsample without legalize-resize: the report says which constraint and which rewrite."""
    proto = onnx.parser.parse_model(
        HEADER
        + """g (float[1,4,4,4] x) => (float[1,4,64,64] y) {
            s = Constant <value = float[4] {1, 1, 16, 16}> ()
            y = Resize <mode = "nearest", coordinate_transformation_mode = "asymmetric",
                        nearest_mode = "floor"> (x, , s)
        }"""
    )
    skipped = optimize(proto, outdir=tmp_path / "skip", skip=["legalize-resize"], require_fit=False)
    (cpu,) = skipped.report["vela"]["cpu_op_list"]
    path = skipped.outdir / "model_int8.tflite"
    entries = placement_report(
        predict_placement(path, U65, engine="python"), observed_placement(path, [CpuOp(**cpu)], U65)
    )
    assert [e["op_type"] for e in entries] == ["RESIZE_NEAREST_NEIGHBOR"] and entries[0]["agree"]
    assert "Scale-factor must be one of: 2x/4x/8x" in entries[0]["constraint"]
    assert "legalize-resize" in entries[0]["fix"]
    legal = optimize(proto, outdir=tmp_path / "legal", require_fit=False)
    assert legal.report["vela"]["cpu_ops"] == 0
    assert tflite_ops(legal.outdir / "model_int8.tflite") == {"RESIZE_NEAREST_NEIGHBOR": 2}


# --------------------------------------------------------------------------- emitter lowerings, one probe each

LOWERINGS: dict[str, tuple[str, str, str, dict[str, str], dict[str, int]]] = {
    # name: (body, x shape, y shape, constants, TFLite ops expected)
    "exact GELU": (
        "d = Div (x, sqrt2) e = Erf (d) a = Add (e, one) m = Mul (x, a) y = Mul (m, half)", "1,8,6,6", "1,8,6,6",
        {}, {"GELU": 1}),
    "GELU with its 0.5 folded away": (
        "d = Div (x, sqrt2) e = Erf (d) a = Add (e, one) y = Mul (x, a)", "1,8,6,6", "1,8,6,6", {},
        {"GELU": 1, "MUL": 1}),
    "reciprocal square root": (
        "s = Mul (x, x) e = Add (s, one) y = Pow (e, minus_half)", "1,8,6,6", "1,8,6,6", {}, {"MUL": 1, "ADD": 1,
                                                                                               "RSQRT": 1}),
    "mean over channels": (
        "a = Constant <value = int64[1] {1}> () y = ReduceMean <keepdims = 1> (x, a)", "1,32,8,8", "1,1,8,8", {},
        {"MEAN": 1, "RESHAPE": 2}),
    "mean over channels and space": (
        "a = Constant <value = int64[3] {1, 2, 3}> () y = ReduceMean <keepdims = 1> (x, a)", "1,32,8,8", "1,1,1,1",
        {}, {"MEAN": 2}),
    "global mean over a 5000-wide map": ("y = GlobalAveragePool (x)", "1,2,2,5000", "1,2,1,1", {},
                                         {"MEAN": 1, "RESHAPE": 2}),
    "9x9 SAME average pool": (
        "y = AveragePool <kernel_shape = [9, 9], pads = [4, 4, 4, 4]> (x)", "1,8,16,16", "1,8,16,16", {},
        {"PAD": 1, "AVERAGE_POOL_2D": 1, "MUL": 1}),
    "channel-strided slice": (
        "y = Slice (x, starts, ends, axes, steps)", "1,10,4,4", "1,3,4,4",
        {"starts": "1", "ends": "10", "axes": "1", "steps": "3"}, {"STRIDED_SLICE": 1, "RESHAPE": 2}),
    "log-softmax over channels": (
        "y = LogSoftmax <axis = 1> (x)", "1,10,4,4", "1,10,4,4", {}, {"SOFTMAX": 1, "LOG": 1}),
    "log-softmax of logits": ("y = LogSoftmax <axis = 1> (x)", "1,10", "1,10", {}, {"SOFTMAX": 1, "LOG": 1}),
    "MatMul by a [1, K, N] weight": ("y = MatMul (x, w3)", "1,16,32", "1,16,8", {}, {"RESHAPE": 2,
                                                                                  "FULLY_CONNECTED": 1}),
    "Sigmoid, Tanh, HardSwish, LeakyReLU, SiLU, HardSigmoid": (
        "a = Sigmoid (x) b = Tanh (a) c = HardSwish (b) d = LeakyRelu <alpha = 0.1> (c) s = Sigmoid (d) "
        "e = Mul (d, s) y = HardSigmoid (e)", "1,8,4,4", "1,8,4,4", {},
        {"LOGISTIC": 2, "MUL": 2, "TANH": 1, "HARD_SWISH": 1, "LEAKY_RELU": 1, "ADD": 1, "RELU_0_TO_1": 1}),
    "Softplus, Mish, ELU, Exp, Log": (
        "a = Softplus (x) m = Mish (x) e = Elu (a) s = Add (e, m) t = Tanh (s) p = Exp (t) y = Log (p)", "1,8,4,4",
        "1,8,4,4", {}, {"EXP": 3, "ADD": 3, "LOG": 3, "TANH": 2, "MUL": 1, "ELU": 1}),
    "channel shuffle": (
        "r = Reshape (x, grouped) t = Transpose <perm = [0, 2, 1, 3, 4]> (r) y = Reshape (t, flat)", "1,8,4,4",
        "1,8,4,4", {"grouped": "1, 2, 4, 4, 4", "flat": "1, 8, 4, 4"}, {"RESHAPE": 2, "TRANSPOSE": 1}),
}  # fmt: skip
FLOATS = {"sqrt2": float(np.sqrt(2.0)), "one": 1.0, "half": 0.5, "minus_half": -0.5}


def _probe(body: str, x: str, y: str, ints: dict[str, str]) -> onnx.ModelProto:
    proto = onnx.parser.parse_model(HEADER + f"g (float[{x}] x) => (float[{y}] y) {{ {body} }}")
    used = {i for n in proto.graph.node for i in n.input}
    for key, value in FLOATS.items():
        if key in used:
            proto.graph.initializer.append(onnx.numpy_helper.from_array(np.array(value, np.float32), key))
    if "w3" in used:
        weight = (np.random.default_rng(5).standard_normal((1, 32, 8)) * 0.2).astype(np.float32)
        proto.graph.initializer.append(onnx.numpy_helper.from_array(weight, "w3"))
    for key, text in ints.items():
        values = np.array([int(v) for v in text.split(",")], np.int64)
        proto.graph.initializer.append(onnx.numpy_helper.from_array(values, key))
    return IRModel.load(proto).to_proto()


@pytest.mark.parametrize("case", sorted(LOWERINGS))
def test_emitter_lowering_runs_on_the_npu(tmp_path: Path, case: str) -> None:
    body, x, y, ints, expected = LOWERINGS[case]
    proto = _probe(body, x, y, ints)
    calib = load_calibration(None, input_shapes(proto), count=4)
    emitted = emit(proto, dtype="int8", calib=calib)
    path = tmp_path / "probe.tflite"
    path.write_bytes(emitted.tflite.data)
    assert dict(tflite_ops(path)) == expected
    vela = compile_with_vela(path, U65, tmp_path / "vela")
    assert vela.cpu_op_list == (), vela.cpu_op_list
    (check,) = validate(proto, emitted.tflite, calib)
    assert check.snr_db >= MIN_SNR_DB, (case, check.snr_db)


# --------------------------------------------------------------------------- the builders


@pytest.mark.parametrize("name", sorted(build_detection_models.MODELS))
def test_builders_are_deterministic_valid_and_small(name: str) -> None:
    first = build_detection_models.build(name)
    assert first.SerializeToString() == build_detection_models.build(name).SerializeToString()
    onnx.checker.check_model(first, full_check=True)
    assert first.opset_import[0].version == 18
    (inp,) = first.graph.input
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim] == [1, 3, 64, 64]
    ops = collections.Counter(n.op_type for n in first.graph.node)
    signature = {
        "yolo_tiny": {"Sigmoid", "Split", "Concat", "MaxPool", "Resize"},
        "shufflenet_tiny": {"Split", "Transpose", "Reshape", "Concat"},
        "convnext_tiny_ln": {"Transpose", "LayerNormalization", "Erf", "MatMul", "Sqrt"},
    }[name]
    assert signature <= set(ops), ops
    assert len(first.graph.output) == (3 if name == "yolo_tiny" else 1)
    with pytest.raises(ValueError, match="unknown model"):
        build_detection_models.build("nope")
