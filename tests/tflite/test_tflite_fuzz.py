"""Seeded random Conv/pool geometries and Resize attribute combinations vs onnxruntime.

The padding planner (SAME / VALID / explicit PAD) and the Resize flag search are the
two places where an off-by-one hides easily; a few hundred random cases cover
strides, dilations, groups, auto_pad, ceil_mode and every coordinate transform.
Cases the emitter rejects must raise UnsupportedOperatorError; everything emitted
must match.  Cases where onnxruntime itself disagrees with ONNX shape inference
(ceil_mode corner cases) are not judged.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper as h
from tflite_helpers import make_model, run_litert, run_ort

from nirc.errors import UnsupportedOperatorError
from nirc.tflite import emit_tflite


def _compare(model: onnx.ModelProto, x: np.ndarray) -> str:
    """'ok', 'unsupported', 'skip' (reference unusable) or a mismatch description."""
    out_dims = tuple(d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim)
    if not out_dims or min(out_dims) <= 0:
        return "skip"
    try:
        want = run_ort(model, {"x": x})[0]
    except Exception:
        return "skip"
    if want.shape != out_dims:
        return "skip"
    try:
        tfl = emit_tflite(model)
    except UnsupportedOperatorError:
        return "unsupported"
    got = run_litert(tfl, {"x": x})[0]
    if got.shape == want.shape and np.allclose(got, want, rtol=1e-5, atol=1e-5):
        return "ok"
    return (
        f"mismatch: {[(a.name, onnx.helper.get_attribute_value(a)) for a in model.graph.node[0].attribute]}"
    )


def _window_case(rng: np.random.Generator) -> tuple[onnx.ModelProto, np.ndarray] | None:
    op = str(rng.choice(["Conv", "MaxPool", "AveragePool"]))
    hw = [int(v) for v in rng.integers(3, 12, 2)]
    k = [int(v) for v in rng.integers(1, 4, 2)]
    kw: dict[str, object] = {"strides": [int(v) for v in rng.integers(1, 4, 2)]}
    auto = str(rng.choice(["NOTSET", "NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"]))
    if auto == "NOTSET":
        draws = rng.integers(0, 3, 4)
        kw["pads"] = [
            int(p) if op == "Conv" else min(int(p), kk - 1) for p, kk in zip(draws, k + k, strict=True)
        ]
    else:
        kw["auto_pad"] = auto
    init: dict[str, np.ndarray] = {}
    ins = ["x"]
    if op == "Conv":
        group = int(rng.choice([1, 2, 4]))
        init["w"] = rng.standard_normal((int(rng.choice([4, 8])), 4 // group, *k)).astype(np.float32)
        kw.update(group=group, dilations=[int(v) for v in rng.integers(1, 3, 2)])
        ins.append("w")
    else:
        kw["kernel_shape"] = k
        if op == "AveragePool":
            kw["count_include_pad"] = int(rng.integers(0, 2))
        if rng.random() < 0.3:
            kw["ceil_mode"] = 1
    try:
        model = make_model([h.make_node(op, ins, ["y"], **kw)], {"x": (1, 4, *hw)}, ["y"], init)
    except Exception:
        return None
    return model, rng.standard_normal((1, 4, *hw)).astype(np.float32)


def _resize_case(rng: np.random.Generator) -> tuple[onnx.ModelProto, np.ndarray] | None:
    hw = [int(v) for v in rng.integers(1, 9, 2)]
    kw = {
        "mode": str(rng.choice(["nearest", "linear"])),
        "coordinate_transformation_mode": str(
            rng.choice(["half_pixel", "asymmetric", "align_corners", "pytorch_half_pixel"])
        ),
        "nearest_mode": str(rng.choice(["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"])),
    }
    if rng.random() < 0.5:
        init = {"s": np.asarray([1, 1, *rng.choice([0.5, 1, 2, 3, 4], 2)], np.float32)}
        ins = ["x", "", "s"]
    else:
        init = {"z": np.asarray([1, 3, *rng.integers(1, 17, 2)], np.int64)}
        ins = ["x", "", "", "z"]
    try:
        model = make_model([h.make_node("Resize", ins, ["y"], **kw)], {"x": (1, 3, *hw)}, ["y"], init)
    except Exception:
        return None
    return model, rng.standard_normal((1, 3, *hw)).astype(np.float32)


@pytest.mark.parametrize(("kind", "seed", "count"), [("window", 0, 300), ("resize", 1, 300)])
def test_random_cases(kind: str, seed: int, count: int) -> None:
    rng = np.random.default_rng(seed)
    make = _window_case if kind == "window" else _resize_case
    tally: dict[str, int] = {}
    failures = []
    for _ in range(count):
        case = make(rng)
        if case is None:
            continue
        result = _compare(*case)
        if result.startswith("mismatch"):
            failures.append(result)
            result = "mismatch"
        tally[result] = tally.get(result, 0) + 1
    print(kind, tally)
    assert not failures, failures[:5]
    assert tally.get("ok", 0) > count // 3
