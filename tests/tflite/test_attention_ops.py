"""Attention on the emitter: activation x activation MatMul/Einsum -> BATCH_MATMUL, Gather, token reductions.

Hand-built graphs pin each layout case (plain, K^T folded into adj_y, Q^T folded into adj_x, rank
broadcast, rank 6); the fixtures under tests/fixtures/attention are real PyTorch exports (both exporters,
see examples/build_attention_models.py).  Every case is compared with ONNX Runtime in float (LiteRT,
tight tolerance) and int8 (SNR), and the fixtures are compiled by Vela, which must place every op.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper as h
from tflite_helpers import calibrate, make_model, op_names, run_litert, run_ort, snr_db

from nirc.errors import UnsupportedOperatorError
from nirc.ir import IRModel
from nirc.pipeline import lower_canonical
from nirc.plugin import load_registry
from nirc.tflite import emit_tflite

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "attention"
FIXTURE_NAMES = sorted(p.stem for p in FIXTURES.glob("*.onnx"))
SNR_MIN_DB = 25.0


def _feeds(model: onnx.ModelProto, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    init = {i.name for i in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in init:
            continue
        shape = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        feeds[vi.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def _check_float(model: onnx.ModelProto, atol: float = 1e-4) -> list[str]:
    feeds = _feeds(model, 0)
    tfl = emit_tflite(model)
    for ref, out in zip(run_ort(model, feeds), run_litert(tfl, feeds), strict=True):
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=atol)
    return op_names(tfl.data)


def _check_int8(model: onnx.ModelProto) -> list[str]:
    ranges = calibrate(model, [_feeds(model, s) for s in range(8)])
    tfl = emit_tflite(model, dtype="int8", ranges=ranges)
    feeds = _feeds(model, 100)
    for ref, out in zip(run_ort(model, feeds), run_litert(tfl, feeds), strict=True):
        assert snr_db(ref, out) > SNR_MIN_DB
    return op_names(tfl.data)


def _attention(transpose_q: bool, transpose_k: bool) -> onnx.ModelProto:
    """softmax(Q K^T) V over [heads=2, 16 tokens, 8] with K^T (and optionally Q) spelled as Transposes.

    3-D so the graph inputs are stored in ONNX order (4-D graph inputs are NHWC by nirc's contract).
    """
    nodes = []
    q, k = "q", "k"
    if transpose_q:  # q arrives as [2, 8, 16] and is transposed back
        nodes.append(h.make_node("Transpose", ["q"], ["qt"], perm=[0, 2, 1]))
        q = "qt"
    if transpose_k:
        nodes.append(h.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]))
        k = "kt"
    nodes += [
        h.make_node("MatMul", [q, k], ["s"]),
        h.make_node("Softmax", ["s"], ["p"], axis=-1),
        h.make_node("MatMul", ["p", "v"], ["y"]),
    ]
    q_shape = (2, 8, 16) if transpose_q else (2, 16, 8)
    k_shape = (2, 16, 8) if transpose_k else (2, 8, 16)
    return make_model(nodes, {"q": q_shape, "k": k_shape, "v": (2, 16, 8)}, ["y"])


def test_k_transpose_folds_into_adj_y() -> None:
    model = _attention(False, True)
    ops = _check_float(model)
    assert ops.count("BATCH_MATMUL") == 2 and "TRANSPOSE" not in ops, ops
    assert "TRANSPOSE" not in _check_int8(model)


def test_q_and_k_transposes_fold_into_adj_x_and_adj_y() -> None:
    model = _attention(True, True)
    ops = _check_float(model)
    assert ops.count("BATCH_MATMUL") == 2 and "TRANSPOSE" not in ops, ops


def test_plain_batched_matmul_3d() -> None:
    model = make_model([h.make_node("MatMul", ["a", "b"], ["y"])], {"a": (3, 5, 7), "b": (3, 7, 4)}, ["y"])
    assert _check_float(model) == ["BATCH_MATMUL"]
    assert _check_int8(model) == ["BATCH_MATMUL"]


def test_rank_broadcast_adds_unit_batch_axes() -> None:
    model = make_model([h.make_node("MatMul", ["a", "b"], ["y"])], {"a": (2, 5, 7), "b": (7, 4)}, ["y"])
    ops = _check_float(model)
    assert "BATCH_MATMUL" in ops and "TRANSPOSE" not in ops, ops


def test_rank_six_folds_batch_axes() -> None:
    shapes = {"a": (1, 2, 1, 2, 3, 4), "b": (1, 2, 1, 2, 4, 5)}
    model = make_model([h.make_node("MatMul", ["a", "b"], ["y"])], shapes, ["y"])
    ops = _check_float(model)
    assert "BATCH_MATMUL" in ops and "TRANSPOSE" not in ops, ops


def test_head_split_reshape_needs_one_transpose_per_operand() -> None:
    """[1, 16, 32] -> [1, 16, 4, 8] -> Transpose(0, 2, 1, 3): the head split itself moves data, once."""
    nodes = [
        h.make_node("Reshape", ["x", "shape"], ["xr"]),
        h.make_node("Transpose", ["xr"], ["q"], perm=[0, 2, 1, 3]),
        h.make_node("Transpose", ["xr"], ["kt"], perm=[0, 2, 3, 1]),
        h.make_node("MatMul", ["q", "kt"], ["s"]),
        h.make_node("Reshape", ["s", "flat"], ["y"]),
    ]
    init = {"shape": np.asarray([1, 16, 4, 8], np.int64), "flat": np.asarray([1, 64, 16], np.int64)}
    model = make_model(nodes, {"x": (1, 16, 32)}, ["y"], init)
    ops = _check_float(model)
    assert ops.count("TRANSPOSE") == 1, ops  # q and K^T share it: K^T is read with adj_y
    assert "TRANSPOSE" in _check_int8(model)


@pytest.mark.parametrize(
    ("indices", "expected"),
    [
        (np.asarray(1, np.int64), ["SLICE", "RESHAPE"]),
        (np.asarray([1, 2], np.int64), ["SLICE"]),
        (np.asarray(-1, np.int64), ["SLICE", "RESHAPE"]),
        (np.asarray([2, 0], np.int64), ["GATHER"]),
    ],
)
def test_gather_constant_indices(indices: np.ndarray, expected: list[str]) -> None:
    nodes = [h.make_node("Gather", ["x", "i"], ["y"], axis=0)]
    model = make_model(nodes, {"x": (3, 4, 6)}, ["y"], {"i": indices})
    assert _check_float(model) == expected
    assert _check_int8(model) == expected


def test_gather_on_nhwc_map_slices_the_stored_axis() -> None:
    nodes = [h.make_node("Relu", ["x"], ["r"]), h.make_node("Gather", ["r", "i"], ["y"], axis=1)]
    model = make_model(nodes, {"x": (1, 6, 4, 4)}, ["y"], {"i": np.asarray([2, 3, 4], np.int64)})
    ops = _check_float(model)
    assert "GATHER" not in ops and "TRANSPOSE" not in ops, ops


# --------------------------------------------------------------------------- real exports


def _canonical(name: str) -> onnx.ModelProto:
    registry = load_registry()
    target = registry.get_target("ethos-u65")
    return lower_canonical(IRModel.load(FIXTURES / f"{name}.onnx"), target, registry).to_proto()


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_fixture_float_and_int8_match_ort(name: str) -> None:
    model = _canonical(name)
    ops = _check_float(model, atol=1e-4)
    assert ops.count("BATCH_MATMUL") == 2, ops
    # Only the head split moves data: q, k, v into head-major order and the result back.
    assert ops.count("TRANSPOSE") <= 4, ops
    _check_int8(model)


def test_fixture_set_covers_both_exporters() -> None:
    assert {n.rsplit("_", 1)[1] for n in FIXTURE_NAMES} == {"ts", "dynamo"}
    assert len(FIXTURE_NAMES) >= 6
    assert sum(p.stat().st_size for p in FIXTURES.glob("*.onnx")) < 1_000_000


# --------------------------------------------------------------------------- Einsum


@pytest.mark.parametrize(
    ("equation", "a", "b", "transposes"),
    [
        ("bqd,bkd->bqk", (2, 16, 8), (2, 12, 8), 0),  # Q K^T: K read with adj_y
        ("bdq,bkd->bqk", (2, 8, 16), (2, 12, 8), 0),  # Q^T too: adj_x
        ("bij,bjk->bik", (2, 5, 7), (2, 7, 3), 0),
        # The output in another order is a relabelling; only the graph output (ONNX order) moves it.
        ("bqk,bkd->bdq", (2, 16, 12), (2, 12, 8), 1),
    ],
)
def test_einsum_matrix_products(equation: str, a: tuple[int, ...], b: tuple[int, ...], transposes: int) -> None:
    nodes = [h.make_node("Einsum", ["a", "b"], ["y"], equation=equation)]
    model = make_model(nodes, {"a": a, "b": b}, ["y"])
    ops = _check_float(model)
    assert ops.count("BATCH_MATMUL") == 1 and ops.count("TRANSPOSE") == transposes, ops
    _check_int8(model)


def test_einsum_attention_scores_on_heads() -> None:
    """einsum('bhqd,bhkd->bhqk') after a head split: the same single head transpose as MatMul."""
    nodes = [
        h.make_node("Reshape", ["x", "shape"], ["q"]),
        h.make_node("Einsum", ["q", "q"], ["s"], equation="bhqd,bhkd->bhqk"),
        h.make_node("Reshape", ["s", "flat"], ["y"]),
    ]
    init = {"shape": np.asarray([1, 2, 16, 8], np.int64), "flat": np.asarray([1, 32, 16], np.int64)}
    model = make_model(nodes, {"x": (1, 32, 8)}, ["y"], init)
    ops = _check_float(model)
    assert ops.count("BATCH_MATMUL") == 1 and "TRANSPOSE" not in ops, ops


def test_einsum_transpose_only_is_free() -> None:
    nodes = [h.make_node("Einsum", ["x"], ["t"], equation="ij->ji"), h.make_node("Relu", ["t"], ["y"])]
    model = make_model(nodes, {"x": (4, 6)}, ["y"])
    assert _check_float(model) == ["TRANSPOSE", "RELU"]  # one move, where an op needs ONNX order


def test_einsum_trace_is_rejected_with_the_reason() -> None:
    model = make_model([h.make_node("Einsum", ["x"], ["y"], equation="ii->i")], {"x": (4, 4)}, ["y"])
    with pytest.raises(UnsupportedOperatorError, match="repeated index"):
        emit_tflite(model)


@pytest.mark.parametrize(("shape", "keepdims"), [((4, 64, 64), 1), ((4, 64, 64), 0), ((64, 32), 1)])
def test_layernorm_mean_over_tokens_is_a_vela_mean(shape: tuple[int, ...], keepdims: int) -> None:
    """ReduceMean over the last axis of a rank < 4 token tensor: Vela sees [1, a, b, c] and reduces depth
    only when a or b is 1, so the emitter reduces a [1, 1, a*b, c] view (free RESHAPEs) instead."""
    nodes = [h.make_node("ReduceMean", ["x", "axes"], ["y"], keepdims=keepdims)]
    model = make_model(nodes, {"x": shape}, ["y"], {"axes": np.asarray([-1], np.int64)})
    _check_float(model)
    ops = _check_int8(model)
    assert ops.count("MEAN") == 1 and set(ops) <= {"MEAN", "RESHAPE"}, ops


@pytest.mark.parametrize("op", ["Max", "Min"])
def test_variadic_max_min(op: str) -> None:
    nodes = [h.make_node(op, ["a", "b", "c"], ["y"])]
    model = make_model(nodes, {"a": (1, 8, 4, 4), "b": (1, 8, 4, 4)}, ["y"], {"c": np.float32(0.1)})
    builtin = "MAXIMUM" if op == "Max" else "MINIMUM"
    assert _check_float(model) == [builtin, builtin]
    assert _check_int8(model).count(builtin) == 2


def test_score_scale_folds_into_softmax_beta() -> None:
    """softmax((q k^T) * c) is SOFTMAX(q k^T, beta=c): no MUL on the N x N scores."""
    nodes = [
        h.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
        h.make_node("MatMul", ["q", "kt"], ["s"]),
        h.make_node("Mul", ["s", "c"], ["sc"]),
        h.make_node("Softmax", ["sc"], ["y"], axis=-1),
    ]
    init = {"c": np.float32(8**-0.5)}
    model = make_model(nodes, {"q": (2, 16, 8), "k": (2, 16, 8)}, ["y"], init)
    assert _check_float(model) == ["BATCH_MATMUL", "SOFTMAX"]
    assert _check_int8(model) == ["BATCH_MATMUL", "SOFTMAX"]
    negative = make_model(nodes, {"q": (2, 16, 8), "k": (2, 16, 8)}, ["y"], {"c": np.float32(-0.5)})
    assert _check_float(negative) == ["BATCH_MATMUL", "MUL", "SOFTMAX"]  # beta must be positive
