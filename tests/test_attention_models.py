"""Attention end to end: real PyTorch exports compile with every op on the NPU; CPU fallback and rejection.

The fixtures (tests/fixtures/attention, made by examples/build_attention_models.py with both exporters)
go through ``nirc.pipeline.optimize`` with Vela for ethos-u65-256.  An op with a TFLite builtin that Vela
cannot place must compile onto the CPU and be reported with Vela's reason; an op with no TFLite form is
rejected with one line (exit 3) and nothing written.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper as h
from onnx import numpy_helper

from nirc.cli import main
from nirc.errors import UnsupportedOperatorError
from nirc.pipeline import OptimizeResult, optimize

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "attention"
MIN_SNR_DB = 25.0


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, OptimizeResult]:
    out = tmp_path_factory.mktemp("attention")
    names = ("psa_ts", "psa_dynamo", "mha_ts", "sdpa_dynamo")
    return {n: optimize(FIXTURES / f"{n}.onnx", outdir=out / n, validate_npu="none") for n in names}


@pytest.mark.parametrize("name", ["psa_ts", "psa_dynamo", "mha_ts", "sdpa_dynamo"])
def test_attention_runs_entirely_on_the_npu(compiled: dict[str, OptimizeResult], name: str) -> None:
    result = compiled[name]
    vela = result.report["vela"]
    assert vela["cpu_ops"] == 0 and vela["cpu_op_list"] == [], vela["cpu_op_list"]
    assert result.report["placement"]["agree"] is True
    for output in result.report["validation"]["outputs"]:
        assert output["snr_db"] > MIN_SNR_DB, output


def _cpu_model() -> onnx.ModelProto:
    """Conv -> Relu -> Sqrt -> Conv: SQRT has a TFLite builtin and an int8 kernel, but no NPU form."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3
    w2 = rng.standard_normal((4, 8, 1, 1)).astype(np.float32) * 0.3
    nodes = [
        h.make_node("Conv", ["x", "w1"], ["c"], pads=[1, 1, 1, 1]),
        h.make_node("Relu", ["c"], ["r"]),
        h.make_node("Sqrt", ["r"], ["s"]),
        h.make_node("Conv", ["s", "w2"], ["y"]),
    ]
    graph = h.make_graph(
        nodes, "cpu_sqrt",
        [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 16, 16])],
        [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4, 16, 16])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )  # fmt: skip
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 18)])
    model.ir_version = 9
    return model


def test_op_without_npu_form_runs_on_the_cpu_with_velas_reason(tmp_path: Path) -> None:
    result = optimize(_cpu_model(), outdir=tmp_path / "o", validate_npu="none")
    assert result.report["vela"]["cpu_ops"] == 1
    (entry,) = result.report["placement"]["cpu_ops"]
    assert entry["op_type"] == "SQRT" and entry["observed"] == "CPU" and entry["agree"] is True
    assert any("Unsupported" in r or "not an NPU operator" in r for r in entry["reasons"]), entry
    assert result.report["validation"]["outputs"][0]["snr_db"] > MIN_SNR_DB


def test_op_without_tflite_form_is_one_line_exit_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = _cpu_model()
    model.graph.node[2].op_type = "Erf"  # no TFLite builtin (GELU absorbs it only inside the GELU pattern)
    model.graph.node.insert(2, h.make_node("Erf", ["r"], ["e"]))
    model.graph.node[3].input[0] = "e"
    path = tmp_path / "erf.onnx"
    onnx.save(model, str(path))
    with pytest.raises(UnsupportedOperatorError, match=r"erf\.onnx: ops with no TFLite form: Erf x2$"):
        optimize(path, outdir=tmp_path / "o")
    assert main(["optimize", str(path), "-o", str(tmp_path / "o")]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Erf x2" in err
    assert not (tmp_path / "o").exists()


def test_rejection_names_tflite_builtins_nirc_does_not_lower(tmp_path: Path) -> None:
    model = _cpu_model()
    model.graph.node[2].op_type = "Sign"
    expected = r"ops nirc does not lower yet \(TFLite has them\): Sign x1 \(SIGN\)"
    with pytest.raises(UnsupportedOperatorError, match=expected):
        optimize(model, outdir=tmp_path / "o")


def test_npu_functional_model_gap_is_a_warning_not_a_failure(tmp_path: Path) -> None:
    """The functional model may not execute Vela's MatMul sequence yet: the compile still succeeds."""
    result = optimize(FIXTURES / "psa_ts.onnx", outdir=tmp_path / "o", validate_npu="sim")
    npu = result.report["validation"]["npu"]
    assert npu is not None and ("error" in npu or npu["bit_exact"]), npu
    if "error" in npu:
        assert any("not executed" in w for w in result.warnings)
