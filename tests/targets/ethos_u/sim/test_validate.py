"""compare_outputs (zero tolerance, NaN-aware for float CPU outputs) and how cascaded stripes are stacked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from nirc.targets.ethos_u.sim.validate import compare_outputs


def test_equal_nans_and_infinities_of_a_float_output_are_bit_exact() -> None:
    ref = np.array([1.5, np.nan, np.inf, -np.inf, 0.0], np.float32)
    result = compare_outputs({"y": ref.copy()}, {"y": ref}, {"y": None}, "sim")
    assert result.bit_exact and not result.unexplained and result.max_abs_diff_lsb == 0.0


def test_a_nan_on_one_side_only_is_an_infinite_difference() -> None:
    ref = np.array([1.5, 2.0, np.inf], np.float32)
    out = np.array([1.5, np.nan, np.inf], np.float32)
    result = compare_outputs({"y": out}, {"y": ref}, {"y": None}, "sim")
    assert not result.bit_exact and result.unexplained and result.max_abs_diff_lsb == np.inf
    assert result.first_divergence is not None and "element [1]" in result.first_divergence
    assert result.details["outputs"]["y"]["differing"] == 1


def test_one_lsb_of_an_int8_output_fails() -> None:
    ref = np.array([[-128, 0, 127]], np.int8)
    out = ref.copy()
    out[0, 1] = 1
    result = compare_outputs({"y": out}, {"y": ref}, {"y": 0.1}, "sim")
    assert not result.bit_exact and result.max_abs_diff_lsb == 1.0


def test_cascade_stripes_are_stacked_in_row_order_even_when_vela_runs_them_bottom_up() -> None:
    """ShuffleNetV2 behind a staged image: one copy's stripes write rows 19-27, 10-18, then 0-9.

    Stacked in execution order they compared as a 207-LSB difference while every output was
    bit-exact. The stripes' OFM addresses give their rows; a rolling buffer (one address) keeps its order.
    """
    from types import SimpleNamespace

    from nirc.targets.ethos_u.sim.validate import _top_to_bottom

    def piece(base: int, rows: int, first_row: int) -> tuple[Any, np.ndarray]:
        ofm = SimpleNamespace(region=2, bases=[base, 0, 0, 0])
        return SimpleNamespace(ofm=ofm), np.full((rows, 1, 1), first_row)

    bottom_up = [piece(19 * 3248, 9, 19), piece(10 * 3248, 9, 10), piece(0, 10, 0)]
    stacked = np.concatenate([v for _, v in _top_to_bottom(bottom_up)])  # type: ignore[arg-type]
    assert [int(v) for v in stacked[[0, 10, 19], 0, 0]] == [0, 10, 19]
    rolling = [piece(0, 9, 0), piece(0, 9, 9)]
    assert [int(v[0, 0, 0]) for _, v in _top_to_bottom(rolling)] == [0, 9]  # type: ignore[arg-type]


def test_a_wide_range_logistic_differs_from_tflite_micro_only_by_the_explained_lut(tmp_path: Path) -> None:
    """Sigmoid of logits at ~4 per int8 code (a detection head): Vela's LUT is sigmoid rounded once,
    TFLite Micro's fixed-point kernel saturates one code away from the zero point. Explained, checked
    element by element, so the run passes; a corrupted LUT entry still fails (the mutation suite)."""
    import onnx
    from onnx import TensorProto
    from onnx import helper as h
    from onnx import numpy_helper as nh

    from nirc.pipeline import optimize

    weights = np.random.default_rng(5).standard_normal((16, 8, 1, 1)).astype(np.float32) * 60.0
    graph = h.make_graph(
        [h.make_node("Conv", ["x", "w"], ["c"]), h.make_node("Sigmoid", ["c"], ["y"])],
        "wide_logistic",
        [h.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16, 16])],
        [h.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 16, 16])],
        [nh.from_array(weights, "w")],
    )
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 18)])
    model.ir_version = 8
    source = tmp_path / "wide_logistic.onnx"
    onnx.save(model, source)
    result = optimize(source, "ethos-u65-256", outdir=tmp_path / "o", npu_format="tflite", accuracy=False)
    npu = result.report["validation"]["npu"]
    assert not npu["unexplained"], npu.get("first_divergence")
    rules = {e["rule"].split(":")[0] for e in npu["explained"]}
    assert rules == {"vela-exact-lut"}, npu["explained"]


def test_tiles_sharing_weights_are_compared_tile_by_tile(tmp_path: Path) -> None:
    """A 160x160x16 conv + SiLU (409 KB, over the 384 KiB SRAM) that tile-activations cuts into row tiles.

    The tiles read the same scales, so they group like one layer's cascade stripes; stacked, the
    pre-activation conv tiles were compared with the SiLU concatenation of the same shape (70 LSB
    on YOLOv8n-320 with bit-exact outputs). Each tile equals its own int8 tensor.
    """
    import sys

    import onnx

    from nirc.pipeline import optimize

    sys.path.insert(0, str(Path(__file__).resolve().parents[4] / "examples"))
    from build_models import GraphBuilder

    b = GraphBuilder("tiled_silu", (1, 3, 320, 320))
    x = b.conv_bn_silu(b.input_name, "stem", 16, 3, 2)
    x = b.conv_bn_silu(x, "down", 32, 3, 2)
    out = b.classifier_head(x, 10, pool="gap", fc="fc")
    source = tmp_path / "tiled_silu.onnx"
    onnx.save(b.finish(out, "a tiled conv + SiLU stem"), source)
    result = optimize(source, "ethos-u65-256", outdir=tmp_path / "o", npu_format="tflite", accuracy=False)
    tiled = [r for r in result.report["passes"] if r["name"] == "tile-activations" and r["changed"]]
    assert tiled, "the stem should be tiled"
    npu = result.report["validation"]["npu"]
    assert npu["bit_exact"], npu.get("first_divergence")


def test_a_fully_connected_run_as_a_map_is_compared_with_its_tensor(tmp_path: Path) -> None:
    """Vela runs a FULLY_CONNECTED over 256 rows as a 16x16 map: the same bytes as the [256, 88] tensor.

    Matched only by H x W, the result had no candidate (or, in EdgeNeXt, an unrelated 16x16x88 tensor,
    a false 137-LSB difference); matched by rows and channels it is compared with its own tensor.
    """
    import onnx
    from onnx import TensorProto
    from onnx import helper as h
    from onnx import numpy_helper as nh

    from nirc.pipeline import optimize

    rng = np.random.default_rng(0)
    nodes = [h.make_node("MatMul", ["x", "w"], ["a"]), h.make_node("Relu", ["a"], ["r"])]
    nodes.append(h.make_node("MatMul", ["r", "w2"], ["y"]))
    graph = h.make_graph(
        nodes,
        "fc256",
        [h.make_tensor_value_info("x", TensorProto.FLOAT, [1, 256, 88])],
        [h.make_tensor_value_info("y", TensorProto.FLOAT, [1, 256, 88])],
        [nh.from_array((rng.standard_normal((88, 88)) * 0.2).astype(np.float32), n) for n in ("w", "w2")],
    )
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "fc256.onnx")
    result = optimize(tmp_path / "fc256.onnx", "ethos-u65-256", outdir=tmp_path / "o", npu_format="tflite")
    npu = result.report["validation"]["npu"]
    assert npu["bit_exact"], npu.get("first_divergence")
    inter = npu["details"]["intermediates"]
    assert inter["compared"] >= 2 * npu["samples"], inter  # both FULLY_CONNECTEDs, on every input


def test_a_maximum_is_never_reported_as_a_different_mean() -> None:
    """MobileViTv2: a 4-element POOL.MAX of Vela's own lowering was compared with a MEAN of four elements.

    Reported only against what a max pool can compute (a max, or moved values); other operations unrestricted.
    """
    from types import SimpleNamespace

    from nirc.targets.ethos_u.sim.validate import _can_compute

    pool_max, conv = SimpleNamespace(name="POOL.MAX"), SimpleNamespace(name="CONV")
    assert not _can_compute(pool_max, "MEAN #360")  # type: ignore[arg-type]
    assert _can_compute(pool_max, "MAX_POOL_2D #3") and _can_compute(pool_max, "RESHAPE #4")  # type: ignore[arg-type]
    assert _can_compute(conv, "MEAN #360")  # type: ignore[arg-type]


def test_an_elementwise_result_may_match_a_tensor_of_the_same_size_in_another_shape() -> None:
    """MobileViT's LayerNorm square (80x64x4) ran as an 80x16x16 elementwise MUL: the same bytes in NHWC.

    Such a tensor is a match candidate for elementwise operations only, and never reported against.
    """
    from types import SimpleNamespace

    from nirc.targets.ethos_u.sim import cmdstream
    from nirc.targets.ethos_u.sim.validate import _reshaped

    int8 = SimpleNamespace(signed=True, bits=8)
    groups = {((1, 80 * 64, 4), "int8/rows"): [7], ((1, 1, 20480), "int8/size"): [7, 9], ((80, 16, 16), "int8"): [9]}
    values = np.zeros((80, 16, 16), np.int8)
    mul = SimpleNamespace(kind=cmdstream.OpKind.ELEMENTWISE, ofm=SimpleNamespace(dtype=int8))
    conv = SimpleNamespace(kind=cmdstream.OpKind.CONV, ofm=SimpleNamespace(dtype=int8))
    assert _reshaped(groups, values, mul) == (7,)  # type: ignore[arg-type]  # 9 is already an exact candidate
    assert _reshaped(groups, values, conv) == ()  # type: ignore[arg-type]


def test_a_batch_folds_into_the_height_of_a_candidate() -> None:
    """Vela runs a (4, 4, 256, 16) attention MUL as one 16x256x16 operation: the same NHWC bytes."""
    from nirc.targets.ethos_u.sim.validate import _shape3

    assert _shape3((4, 4, 256, 16)) == (16, 256, 16)
    assert _shape3((1, 7, 7, 64)) == (7, 7, 64) and _shape3((256, 88)) == (1, 256, 88)


def test_vela_matmul_scale_explains_only_an_exact_reproduction() -> None:
    """EfficientFormerV2's BATCH_MATMUL: Vela's multiplier 1525499041 vs TFLite's 1525499062 >> 38.

    The rule recomputes the integer product from the reference's operands (here ``A @ B^T``, adj_y)
    and explains the difference only when each multiplier reproduces its own side exactly.
    """
    from types import SimpleNamespace

    from nirc.targets.ethos_u.sim.engine import rescale
    from nirc.targets.ethos_u.sim.known import explain, tflite_multiplier

    rng = np.random.default_rng(1)
    a = rng.integers(-128, 128, (1, 8, 49, 32)).astype(np.int8)
    b = rng.integers(-128, 128, (1, 8, 49, 32)).astype(np.int8)
    tensors = {
        0: SimpleNamespace(scale=0.05, zero_point=-6, shape=a.shape),
        1: SimpleNamespace(scale=0.04, zero_point=5, shape=b.shape),
        2: SimpleNamespace(scale=0.8, zero_point=-11, shape=(1, 8, 49, 49)),
    }
    model = SimpleNamespace(tensors=tensors)
    producer = SimpleNamespace(opcode="BATCH_MATMUL", inputs=(0, 1), outputs=(2,))
    raw = np.matmul(a.astype(np.int64) + 6, np.swapaxes(b.astype(np.int64) - 5, -1, -2))
    tfl = tflite_multiplier(0.05 * 0.04 / 0.8)
    vela = (tfl[0] - 21, tfl[1])
    block = SimpleNamespace(ofm_scale=vela, rounding="TFL")

    def side(scale: tuple[int, int]) -> np.ndarray:
        return np.clip(rescale(raw, scale[0], scale[1], "TFL") - 11, -128, 127)

    produced, expected = side(vela), side(tfl)
    inputs = {0: a, 1: b}
    rule = explain(block, model, producer, inputs, produced, expected)  # type: ignore[arg-type]
    assert rule is not None and rule.startswith("vela-matmul-scale"), rule
    wrong = produced.copy()
    wrong.flat[0] += 1
    assert explain(block, model, producer, inputs, wrong, expected) is None  # type: ignore[arg-type]
