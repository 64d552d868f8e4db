"""Activation ranges through ONNX Runtime, checked against independent numpy computations."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from nirc.errors import CalibrationError
from nirc.quant import CalibrationSet, collect_ranges

SHAPE = (1, 4, 6, 6)
SCALE = np.float32(1.5)
OFFSET = np.float32(0.25)
SHIFT = np.float32(5.0)


def _graph(shape: tuple[int, ...] = SHAPE) -> onnx.ModelProto:
    """x -> Mul -> m -> Relu -> r -> Add(x) -> a -> Sub -> y; r + 5 -> shifted; Shape(r) -> int64."""
    nodes = [
        helper.make_node("Mul", ["x", "scale"], ["m"]),
        helper.make_node("Relu", ["m"], ["r"]),
        helper.make_node("Add", ["r", "x"], ["a"]),
        helper.make_node("Sub", ["a", "offset"], ["y"]),
        helper.make_node("Add", ["r", "shift"], ["shifted"]),
        helper.make_node("Shape", ["r"], ["shape"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, shape),
            helper.make_tensor_value_info("shifted", TensorProto.FLOAT, shape),
            helper.make_tensor_value_info("shape", TensorProto.INT64, [4]),
        ],
        [
            helper.make_tensor("scale", TensorProto.FLOAT, [], [float(SCALE)]),
            helper.make_tensor("offset", TensorProto.FLOAT, [], [float(OFFSET)]),
            helper.make_tensor("shift", TensorProto.FLOAT, [], [float(SHIFT)]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    return model


def _numpy_tensors(x: np.ndarray) -> dict[str, np.ndarray]:
    m = x * SCALE
    r = np.maximum(m, np.float32(0))
    a = r + x
    return {"x": x, "m": m, "r": r, "a": a, "y": a - OFFSET, "shifted": r + SHIFT}


def _samples(xs: list[np.ndarray]) -> CalibrationSet:
    return CalibrationSet(samples=tuple({"x": x} for x in xs), synthetic=False, source="test")


def _normal(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(SHAPE, dtype=np.float32) for _ in range(n)]


def _with_outliers(n: int) -> list[np.ndarray]:
    xs = _normal(n, seed=1)
    xs[0][0, 0, 0, 0] = 40.0
    xs[1][0, 1, 2, 3] = -35.0
    return xs


def _fake_quant_mse(x: np.ndarray, lo: float, hi: float) -> float:
    """Int8 asymmetric quantize-dequantize (TFLite convention), written independently of nirc."""
    scale = (hi - lo) / 255.0
    zero_point = np.clip(np.round(-128.0 - lo / scale), -128, 127)
    q = np.clip(np.round(x / scale) + zero_point, -128, 127)
    return float(np.mean((x - (q - zero_point) * scale) ** 2))


def test_minmax_equals_numpy_over_all_samples() -> None:
    xs = _normal(5)
    ranges = collect_ranges(_graph(), _samples(xs), method="minmax")
    per_sample = [_numpy_tensors(x) for x in xs]
    assert list(ranges) == ["x", "m", "r", "a", "y", "shifted"]  # float tensors in graph order, no int64/weights
    for name, (lo, hi) in ranges.items():
        values = np.stack([t[name] for t in per_sample])
        assert (lo, hi) == (min(float(values.min()), 0.0), max(float(values.max()), 0.0)), name


def test_ranges_always_include_zero() -> None:
    ranges = collect_ranges(_graph(), _samples(_normal(3)))
    assert ranges["shifted"][0] == 0.0 and ranges["shifted"][1] > SHIFT  # all values >= 5
    assert ranges["r"][0] == 0.0
    for method in ("percentile", "mse"):
        for lo, hi in collect_ranges(_graph(), _samples(_normal(3)), method=method).values():  # type: ignore[arg-type]
            assert lo <= 0.0 <= hi


def test_plain_sequence_of_samples_is_accepted() -> None:
    xs = _normal(2)
    assert collect_ranges(_graph(), [{"x": x} for x in xs]) == collect_ranges(_graph(), _samples(xs))


def test_percentile_is_narrower_than_minmax_with_outliers() -> None:
    samples = _samples(_with_outliers(8))
    minmax = collect_ranges(_graph(), samples, method="minmax")
    pct = collect_ranges(_graph(), samples, method="percentile", percentile=99.9)
    assert minmax["x"] == (-35.0, 40.0)
    assert minmax["x"][0] < pct["x"][0] < 0.0 < pct["x"][1] < minmax["x"][1]
    assert pct["x"][1] < 5.0  # the outliers are 2 of 1152 values: far beyond the 99.9th percentile


def test_percentile_matches_numpy_within_a_bin() -> None:
    xs = _with_outliers(8)
    values = np.concatenate([x.ravel() for x in xs]).astype(np.float64)
    pct = collect_ranges(_graph(), _samples(xs), method="percentile", percentile=99.0, bins=4096)["x"]
    bin_width = (40.0 + 35.0) / 4096
    assert pct[0] == pytest.approx(np.percentile(values, 1.0), abs=2 * bin_width)
    assert pct[1] == pytest.approx(np.percentile(values, 99.0), abs=2 * bin_width)


def test_percentile_100_is_minmax() -> None:
    samples = _samples(_with_outliers(4))
    assert collect_ranges(_graph(), samples, method="percentile", percentile=100.0) == collect_ranges(
        _graph(), samples, method="minmax"
    )


def test_mse_is_deterministic_and_within_minmax() -> None:
    samples = _samples(_with_outliers(6))
    first = collect_ranges(_graph(), samples, method="mse")
    second = collect_ranges(_graph(), samples, method="mse", threads=2)
    minmax = collect_ranges(_graph(), samples, method="minmax")
    assert first == second
    for name, (lo, hi) in first.items():
        mm_lo, mm_hi = minmax[name]
        assert mm_lo <= lo <= 0.0 <= hi <= mm_hi, name


def test_mse_range_quantizes_heavy_tailed_data_better_than_minmax() -> None:
    # Clipping only pays when the few tail values are outweighed by the rounding error of all
    # the others, so the tensor must be large (16 x 16k values) as real activations are.
    shape = (1, 16, 32, 32)
    rng = np.random.default_rng(7)
    xs = [rng.standard_t(df=3, size=shape).astype(np.float32) for _ in range(16)]
    samples = _samples(xs)
    values = np.concatenate([x.ravel() for x in xs]).astype(np.float64)
    mse_lo, mse_hi = collect_ranges(_graph(shape), samples, method="mse")["x"]
    mm_lo, mm_hi = collect_ranges(_graph(shape), samples, method="minmax")["x"]
    at_mse = _fake_quant_mse(values, mse_lo, mse_hi)
    at_minmax = _fake_quant_mse(values, mm_lo, mm_hi)
    assert at_mse <= at_minmax
    assert at_mse < 0.9 * at_minmax  # not a tie: clipping the t(3) tails pays off (measured: 0.67x)
    assert mm_lo < mse_lo < 0.0 < mse_hi < mm_hi


def test_mse_search_finds_the_brute_force_optimum() -> None:
    shape = (1, 16, 32, 32)
    rng = np.random.default_rng(9)
    xs = [rng.laplace(size=shape).astype(np.float32) for _ in range(4)]
    values = np.concatenate([x.ravel() for x in xs]).astype(np.float64)
    lo, hi = collect_ranges(_graph(shape), _samples(xs), method="mse")["x"]
    grid = [(a, b) for a in np.linspace(values.min(), -1.0, 40) for b in np.linspace(1.0, values.max(), 40)]
    brute = min(_fake_quant_mse(values, a, b) for a, b in grid)
    assert _fake_quant_mse(values, lo, hi) <= 1.02 * brute


def test_mse_keeps_the_full_range_of_uniform_data() -> None:
    rng = np.random.default_rng(8)
    xs = [rng.uniform(-1.0, 3.0, SHAPE).astype(np.float32) for _ in range(8)]
    lo, hi = collect_ranges(_graph(), _samples(xs), method="mse")["x"]
    mm_lo, mm_hi = collect_ranges(_graph(), _samples(xs), method="minmax")["x"]
    assert hi - lo > 0.95 * (mm_hi - mm_lo)  # nothing to gain from clipping a flat distribution


def test_constant_zero_tensor() -> None:
    xs = [np.zeros(SHAPE, np.float32) for _ in range(2)]
    for method in ("minmax", "percentile", "mse"):
        ranges = collect_ranges(_graph(), _samples(xs), method=method)  # type: ignore[arg-type]
        assert ranges["x"] == (0.0, 0.0) and ranges["shifted"] == (0.0, float(SHIFT))


def test_bad_arguments_and_data() -> None:
    with pytest.raises(CalibrationError, match="unknown range method 'kl'"):
        collect_ranges(_graph(), _samples(_normal(1)), method="kl")  # type: ignore[arg-type]
    with pytest.raises(CalibrationError, match=r"percentile must be in \(50, 100\]"):
        collect_ranges(_graph(), _samples(_normal(1)), method="percentile", percentile=10.0)
    with pytest.raises(CalibrationError, match="no calibration samples"):
        collect_ranges(_graph(), [])
    with pytest.raises(CalibrationError, match=r"sample 0 has no data for input 'x'"):
        collect_ranges(_graph(), [{"image": _normal(1)[0]}])
    with pytest.raises(CalibrationError, match=r"calibration sample 0: .*"):
        collect_ranges(_graph(), [{"x": np.zeros((1, 4, 5, 5), np.float32)}])


def test_non_finite_activation_names_the_tensor() -> None:
    graph = helper.make_graph(
        [helper.make_node("Log", ["x"], ["log_x"])],
        "log",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("log_x", TensorProto.FLOAT, [1, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    with pytest.raises(CalibrationError, match=r"tensor 'log_x' has NaN or infinite values"):
        collect_ranges(model, [{"x": np.array([[1.0, -1.0, 2.0]], np.float32)}])


def test_the_callers_model_is_not_modified() -> None:
    model = _graph()
    before = model.SerializeToString()
    collect_ranges(model, _samples(_normal(1)), method="mse")
    assert model.SerializeToString() == before


def test_tile_copies_share_one_range() -> None:
    """tile-activations' copies of a tensor (``T/tile<i>[_<j>]``) get the union of their ranges; others keep theirs."""
    from nirc.quant.ranges import share_tile_ranges

    ranges = {
        "c/tile0": (-1.0, 2.0),
        "c/tile1": (-3.0, 1.0),
        "d/tile0_1": (0.0, 4.0),
        "d/tile1_0": (0.0, 5.0),
        "e/tile0": (-0.5, 0.5),  # one copy: nothing to share
        "c": (-9.0, 9.0),
        "x/tile0/staged": (-2.0, 2.0),  # not a tile copy's own name
    }
    shared = share_tile_ranges(ranges)
    assert shared["c/tile0"] == shared["c/tile1"] == (-3.0, 2.0)
    assert shared["d/tile0_1"] == shared["d/tile1_0"] == (0.0, 5.0)
    for name in ("e/tile0", "c", "x/tile0/staged"):
        assert shared[name] == ranges[name]
