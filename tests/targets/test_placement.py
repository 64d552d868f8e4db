"""predict_placement against Vela's real placement, placement_report and the fixes it names."""

from __future__ import annotations

from pathlib import Path

import onnx.parser
import pytest
from nirc.targets.ethos_u.constraints import (
    REGOR_RULES,
    constraint_table,
    python_checks,
    regor_stride,
    regor_transpose,
)
from nirc.targets.ethos_u.placement import (
    Placement,
    compare,
    model_placement,
    observed_placement,
    placement_report,
    placement_section,
    predict_placement,
    suggest_fix,
    summary,
)
from nirc.targets.ethos_u.spec import ETHOS_U_TARGETS
from nirc.targets.ethos_u.vela_driver import compile_with_vela

from nirc.backend import emit, input_shapes
from nirc.errors import BackendError
from nirc.ir import IRModel
from nirc.quant import load_calibration

TARGETS = {t.name: t for t in ETHOS_U_TARGETS}
U65 = TARGETS["ethos-u65-256"]
HEADER = '<ir_version: 9, opset_import: ["" : 18]>'
FLOOR = 'mode = "nearest", coordinate_transformation_mode = "asymmetric", nearest_mode = "floor"'

# Each probe: ONNX body, input shape, output shape. Comments name what Vela decides.
PROBES = {
    "resize_x3": (  # CPU: scale factor 3
        f's = Constant <value = float[4] {{1, 1, 3, 3}}> () y = Resize <{FLOOR}> (x, , s)', "1,8,4,4", "1,8,12,12"),
    "mean_prime_width": (  # CPU: a reduced axis of 4099 (prime: no a x b view below 4096)
        "a = Constant <value = int64[2] {2, 3}> () y = ReduceMean <keepdims = 1> (x, a)", "1,2,1,4099", "1,2,1,1"),
    "maxpool_300": ("y = MaxPool <kernel_shape = [300, 300]> (x)", "1,2,300,300", "1,2,1,1"),  # CPU: kernel > 256
    "maxpool_stride_4": (  # NPU (explicit PAD + VALID); the legacy rule wants strides <= 3
        "y = MaxPool <kernel_shape = [3, 3], strides = [4, 4], pads = [1, 1, 0, 0]> (x)", "1,8,16,16", "1,8,4,4"),
    "conv_relu_gelu": (  # NPU: conv, GELU (exact, from the erf pattern)
        """c = Conv <kernel_shape = [1, 1]> (x, w)
           d = Div (c, sqrt2) e = Erf (d) a = Add (e, one) m = Mul (c, a) y = Mul (m, half)""",
        "1,8,4,4", "1,8,4,4"),
    "shuffle": (  # NPU: the emitter's one 4-D TRANSPOSE (legacy's own transpose rule would disagree)
        """r = Reshape (x, grouped) t = Transpose <perm = [0, 2, 1, 3, 4]> (r) y = Reshape (t, flat)""",
        "1,8,4,4", "1,8,4,4"),
    "attention": (  # NPU: two BATCH_MATMULs (K^T read with adj_y) and an int8 SOFTMAX
        "xt = Transpose <perm = [0, 2, 1]> (x) s = MatMul (x, xt) p = Softmax <axis = -1> (s) y = MatMul (p, x)",
        "1,16,8", "1,16,8"),
    "softmax_5d": (  # NPU: Regor takes 5-D tensors (the legacy checker's 4-D limit is not Regor's)
        "r = Reshape (x, grouped) s = Softmax <axis = -1> (r) y = Reshape (s, flat)", "1,8,4,4", "1,8,4,4"),
    "gather_rows": (  # CPU: GATHER has a TFLite builtin and no NPU form
        "y = Gather <axis = 2> (x, rows)", "1,8,4,4", "1,8,4,4"),
    "sqrt": ("r = Relu (x) y = Sqrt (r)", "1,8,4,4", "1,8,4,4"),  # CPU: SQRT
}  # fmt: skip
CPU_PROBES = {"resize_x3", "mean_prime_width", "maxpool_300", "gather_rows", "sqrt"}


def _tflite(tmp_path: Path, name: str) -> Path:
    import numpy as np

    body, x, y = PROBES[name]
    proto = onnx.parser.parse_model(HEADER + f"g (float[{x}] x) => (float[{y}] y) {{ {body} }}")
    consts = {
        "w": np.random.default_rng(0).standard_normal((8, 8, 1, 1)).astype(np.float32) * 0.3,
        "sqrt2": np.array(np.sqrt(2.0), np.float32),
        "one": np.array(1.0, np.float32),
        "half": np.array(0.5, np.float32),
        "grouped": np.array([1, 2, 4, 4, 4], np.int64),
        "flat": np.array([1, 8, 4, 4], np.int64),
        "rows": np.array([3, 1, 0, 2], np.int64),
    }
    used = {i for n in proto.graph.node for i in n.input}
    for key, value in consts.items():
        if key in used:
            proto.graph.initializer.append(onnx.numpy_helper.from_array(value, key))
    proto = IRModel.load(proto).to_proto()
    calib = load_calibration(None, input_shapes(proto), count=2)
    path = tmp_path / f"{name}.tflite"
    path.write_bytes(emit(proto, dtype="int8", calib=calib).tflite.data)
    return path


@pytest.fixture(scope="module")
def probes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, list[Placement]]]:
    """Each probe's TFLite and Vela's actual placement of it (one real compile each)."""
    tmp = tmp_path_factory.mktemp("placement")
    result = {}
    for name in PROBES:
        path = _tflite(tmp, name)
        vela = compile_with_vela(path, U65, tmp / f"{name}_vela")
        result[name] = (path, observed_placement(path, vela.cpu_op_list, U65))
    return result


@pytest.mark.parametrize("name", sorted(PROBES))
def test_vela_engine_prediction_equals_the_compile(probes: dict[str, tuple[Path, list[Placement]]], name: str) -> None:
    path, observed = probes[name]
    predicted = predict_placement(path, U65, engine="vela")
    assert compare(predicted, observed) == []
    assert [p.op_name for p in predicted] == [p.op_name for p in observed]
    assert any(not p.on_npu for p in observed) == (name in CPU_PROBES)


@pytest.mark.parametrize("name", sorted(PROBES))
def test_python_engine_agrees_with_the_compile(probes: dict[str, tuple[Path, list[Placement]]], name: str) -> None:
    """With Regor's wording of the stride and TRANSPOSE rules, the Python checker predicts U65 placement."""
    path, observed = probes[name]
    assert compare(predict_placement(path.read_bytes(), U65, engine="python"), observed) == []


def test_legacy_transpose_rule_alone_would_mispredict(probes: dict[str, tuple[Path, list[Placement]]]) -> None:
    """Vela's legacy constraint_transpose rejects the shuffle's [1, H*W, g, C/g] swap that Regor runs."""
    (check,) = [c for c in python_checks(probes["shuffle"][0]) if c.op_type == "TRANSPOSE"]
    assert [v.check for v in check.violations] == ["constraint_transpose"]
    (regor,) = [c for c in python_checks(probes["shuffle"][0], constraint_table(U65)) if c.op_type == "TRANSPOSE"]
    assert regor.on_npu


def test_cpu_op_names_vela_constraint_and_fix(probes: dict[str, tuple[Path, list[Placement]]]) -> None:
    expected = {
        "resize_x3": ("RESIZE_NEAREST_NEIGHBOR", "Scale-factor must be one of: 2x/4x/8x", "legalize-resize"),
        "mean_prime_width": ("MEAN", "Reduced axis must be less than 4096", "below 4096"),
        "maxpool_300": ("MAX_POOL_2D", "kernel height must be less than or equal to 256", "decompose-pooling"),
    }
    for name, (op_type, constraint, fix) in expected.items():
        (cpu,) = [p for p in probes[name][1] if not p.on_npu]
        assert cpu.op_type == op_type
        assert cpu.constraint is not None and constraint in cpu.constraint, (name, cpu.constraint)
        assert cpu.fix is not None and fix in cpu.fix, (name, cpu.fix)
        assert any(constraint in " ".join(r.split()) for r in cpu.reasons)


def test_placement_report_lists_cpu_ops_with_both_sides(probes: dict[str, tuple[Path, list[Placement]]]) -> None:
    path, observed = probes["resize_x3"]
    entries = placement_report(predict_placement(path, U65, engine="python"), observed)
    assert len(entries) == 1
    entry = entries[0]
    assert entry["op_type"] == "RESIZE_NEAREST_NEIGHBOR"
    assert entry["predicted"] == "CPU" and entry["observed"] == "CPU" and entry["agree"] is True
    assert "legalize-resize" in entry["fix"] and "2x/4x/8x" in entry["constraint"]
    assert placement_report(observed) == [{**entry, "predicted": "CPU", "observed": None, "agree": None}]
    npu_path, npu_observed = probes["conv_relu_gelu"]
    assert placement_report(predict_placement(npu_path, U65, engine="python"), npu_observed) == []
    assert summary(npu_observed) == {"ops": len(npu_observed), "npu_ops": len(npu_observed), "cpu_ops": 0}


def test_disagreement_is_reported(probes: dict[str, tuple[Path, list[Placement]]], tmp_path: Path) -> None:
    """The Python checker is the U55/U65 legacy core's: on U85, where Regor resizes by 3, it is pessimistic."""
    path, _ = probes["resize_x3"]
    u85 = TARGETS["ethos-u85-256"]
    observed = observed_placement(path, compile_with_vela(path, u85, tmp_path).cpu_op_list, u85)
    assert all(p.on_npu for p in observed)
    (entry,) = placement_report(predict_placement(path, u85, engine="python"), observed)
    assert (entry["op_type"], entry["predicted"], entry["observed"], entry["agree"]) == (
        "RESIZE_NEAREST_NEIGHBOR", "CPU", "NPU", False)  # fmt: skip
    assert entry["reasons"][0].startswith("The width and height of the IFM and OFM must match")


def test_regor_rules_are_worded_as_regor_states_them() -> None:
    """Each replacement rule's docstring is a sentence of Regor's own table for the ops it judges."""
    table = constraint_table(U65)
    for op in ("CONV_2D", "MAX_POOL_2D", "AVERAGE_POOL_2D"):
        assert (regor_stride.__doc__ or "") in table.constraints(op)
    assert (regor_transpose.__doc__ or "") in " ".join(" ".join(table.constraints("TRANSPOSE")).split())
    assert set(REGOR_RULES.values()) == {regor_stride, regor_transpose}


def test_gelu_is_one_npu_op(probes: dict[str, tuple[Path, list[Placement]]]) -> None:
    assert [(p.op_type, p.on_npu) for p in probes["conv_relu_gelu"][1]] == [("CONV_2D", True), ("GELU", True)]


@pytest.mark.parametrize(
    ("op_type", "reason", "needle"),
    [
        ("STRIDED_SLICE", "Slice must represent a volume. Stride must be non-negative (and over W or H).",
         "[N, H*W, C, 1] view"),
        ("TRANSPOSE", "anything", "propagate-transposes"),
        ("SQRT", "", "legalize-rsqrt"),
        ("GATHER", "Unsupported opType", "SLICE"),
        ("AVERAGE_POOL_2D", "Kernel width and height must be less than or equal to 8", "explicit PAD"),
        ("CONV_2D", "Stride>3 is only supported IF (dilation = 1 AND padding = VALID)", "VALID"),
    ],
)  # fmt: skip
def test_suggest_fix(op_type: str, reason: str, needle: str) -> None:
    fix = suggest_fix(op_type, [reason])
    assert fix is not None and needle in fix


def test_no_fix_for_unknown_reasons() -> None:
    assert suggest_fix("CONV_2D", ["Weight tensors must be 8-bit precision"]) is None


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="no such TFLite file"):
        predict_placement(tmp_path / "missing.tflite", U65)
    with pytest.raises(ValueError, match="engine"):
        predict_placement(b"", U65, engine="guess")  # type: ignore[arg-type]


def test_report_section_with_and_without_a_compile(probes: dict[str, tuple[Path, list[Placement]]]) -> None:
    path, observed = probes["resize_x3"]
    cpu_json = [{"name": p.op_name, "op_type": p.op_type, "reason": p.reasons[0]} for p in observed if not p.on_npu]
    section = placement_section(path, U65, cpu_json)
    assert section["architecture"] == "EthosU65" and section["engine"] == "python"
    assert section["predicted"] == section["observed"] == {"ops": 1, "npu_ops": 0, "cpu_ops": 1}
    assert section["agree"] is True and section["cpu_ops"][0]["observed"] == "CPU"
    before = placement_section(path, U65)
    assert before["observed"] is None and before["agree"] is None and before["cpu_ops"][0]["predicted"] == "CPU"


def test_model_placement_emits_and_predicts() -> None:
    proto = IRModel.load(
        onnx.parser.parse_model(HEADER + "g (float[1,4,8,8] x) => (float[1,4,8,8] y) { y = HardSwish (x) }")
    ).to_proto()
    data, placements = model_placement(proto, U65)
    assert data[4:8] == b"TFL3"
    assert [(p.op_type, p.on_npu) for p in placements] == [("HARD_SWISH", True)]


def test_python_engine_follows_regor_on_batched_tensors() -> None:
    """Regor runs batch > 1 on the NPU (the legacy checker says batch 1 only), except MEAN.

    nirc's calibration takes batch 1, so this emits with fixed ranges: placement does not depend on them.
    """
    import numpy as np

    from nirc.tflite import emit_tflite

    body = """c = Conv (x, w) a = Add (c, x) m = Mul (a, x) t = Transpose <perm = [0, 1, 3, 2]> (m)
              p = MatMul (m, t) s = Softmax <axis = -1> (p) y = ReduceMean <keepdims = 1> (s, axes)"""
    proto = onnx.parser.parse_model(HEADER + f"g (float[4,8,4,4] x) => (float[4,8,4,1] y) {{ {body} }}")
    w = np.random.default_rng(0).standard_normal((8, 8, 1, 1)).astype(np.float32) * 0.3
    proto.graph.initializer.extend(
        [onnx.numpy_helper.from_array(w, "w"), onnx.numpy_helper.from_array(np.array([3], np.int64), "axes")]
    )
    proto = IRModel.load(proto).to_proto()
    ranges = {n: (-4.0, 4.0) for n in ["x", *(o for node in proto.graph.node for o in node.output)]}
    data = emit_tflite(proto, dtype="int8", ranges=ranges).data
    vela = predict_placement(data, U65, engine="vela")
    assert compare(predict_placement(data, U65, engine="python"), vela) == []
    assert {p.op_type for p in vela if not p.on_npu} == {"MEAN"}, [(p.op_type, p.reasons) for p in vela]
