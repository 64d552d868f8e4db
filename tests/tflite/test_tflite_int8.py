"""int8 emission: accuracy vs the float ONNX model, layout, determinism, Vela placement."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper as h
from tflite_helpers import calibrate, make_model, op_names, run_litert, run_ort, snr_db

from nirc.errors import CalibrationError
from nirc.tflite import emit_tflite

SNR_MIN_DB = 25.0


def _w(rng: np.random.Generator, *shape: int) -> np.ndarray:
    fan_in = int(np.prod(shape[1:]))
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


def small_cnn() -> onnx.ModelProto:
    """conv+relu, depthwise+relu6, grouped conv, residual add, concat, pools, gemm."""
    rng = np.random.default_rng(7)
    init = {
        "w1": _w(rng, 16, 3, 3, 3), "b1": (rng.standard_normal(16) * 0.1).astype(np.float32),
        "wd": _w(rng, 16, 1, 3, 3), "bd": (rng.standard_normal(16) * 0.1).astype(np.float32),
        "wg": _w(rng, 16, 4, 3, 3), "bg": (rng.standard_normal(16) * 0.1).astype(np.float32),
        "wp": _w(rng, 16, 16, 1, 1),
        "wc": _w(rng, 8, 16, 3, 3),
        "lo": np.asarray(0.0, np.float32), "hi": np.asarray(6.0, np.float32),
        "wf": _w(rng, 10, 24 * 4 * 4), "bf": (rng.standard_normal(10) * 0.1).astype(np.float32),
        "wf2": _w(rng, 5, 24),
    }  # fmt: skip
    nodes = [
        h.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2]),
        h.make_node("Relu", ["c1"], ["r1"]),
        h.make_node("Conv", ["r1", "wd", "bd"], ["cd"], pads=[1, 1, 1, 1], group=16),
        h.make_node("Clip", ["cd", "lo", "hi"], ["rd"]),
        h.make_node("Conv", ["rd", "wg", "bg"], ["cg"], pads=[1, 1, 1, 1], group=4),
        h.make_node("Relu", ["cg"], ["rg"]),
        h.make_node("Conv", ["rg", "wp"], ["cp"]),
        h.make_node("Add", ["cp", "r1"], ["s"]),
        h.make_node("Relu", ["s"], ["rs"]),
        h.make_node("Conv", ["rs", "wc"], ["cc"], pads=[1, 1, 1, 1]),
        h.make_node("Concat", ["rs", "cc"], ["cat"], axis=1),
        h.make_node("MaxPool", ["cat"], ["mp"], kernel_shape=[2, 2], strides=[2, 2]),
        h.make_node("AveragePool", ["mp"], ["ap"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]),
        h.make_node("Flatten", ["ap"], ["fl"]),
        h.make_node("Gemm", ["fl", "wf", "bf"], ["logits"], transB=1),
        h.make_node("GlobalAveragePool", ["mp"], ["gap"]),
        h.make_node("Flatten", ["gap"], ["gf"]),
        h.make_node("Gemm", ["gf", "wf2"], ["emb"], transB=1),
    ]
    return make_model(nodes, {"x": (1, 3, 32, 32)}, ["logits", "emb"], init)


@pytest.fixture(scope="module")
def cnn() -> tuple[onnx.ModelProto, dict[str, tuple[float, float]], list[dict[str, np.ndarray]]]:
    model = small_cnn()
    rng = np.random.default_rng(0)
    calib = [{"x": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)} for _ in range(16)]
    tests = [{"x": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)} for _ in range(4)]
    return model, calibrate(model, calib), tests


@pytest.mark.parametrize("io_dtype", ["int8", "float32"])
def test_int8_cnn_snr(cnn: tuple, io_dtype: str) -> None:  # type: ignore[type-arg]
    model, ranges, tests = cnn
    tfl = emit_tflite(model, dtype="int8", ranges=ranges, io_dtype=io_dtype)  # type: ignore[arg-type]
    ops = op_names(tfl.data)
    assert "TRANSPOSE" not in ops
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "SPLIT", "CONCATENATION", "ADD", "MAX_POOL_2D"} <= set(ops)
    assert "RELU" not in ops and "RELU6" not in ops  # all fused
    assert all(io.dtype == io_dtype for io in (*tfl.inputs, *tfl.outputs))
    if io_dtype == "float32":
        assert ops[0] == "QUANTIZE" and ops[-1] == "DEQUANTIZE"
    for feeds in tests:
        want = run_ort(model, feeds)
        got = run_litert(tfl, feeds)
        for w, g in zip(want, got, strict=True):
            snr = snr_db(w, g)
            print(f"int8 SNR ({io_dtype} io): {snr:.1f} dB")
            assert snr > SNR_MIN_DB


def test_int8_deterministic(cnn: tuple) -> None:  # type: ignore[type-arg]
    model, ranges, _ = cnn
    a = emit_tflite(model, dtype="int8", ranges=ranges).data
    b = emit_tflite(model, dtype="int8", ranges=dict(reversed(list(ranges.items())))).data
    assert a == b
    assert emit_tflite(model).data == emit_tflite(model).data


def test_missing_range_names_tensor(cnn: tuple) -> None:  # type: ignore[type-arg]
    model, ranges, _ = cnn
    for name in ("x", "rg", "rs", "mp", "logits"):
        partial = {k: v for k, v in ranges.items() if k != name}
        with pytest.raises(CalibrationError, match=f"'{name}'"):
            emit_tflite(model, dtype="int8", ranges=partial)
    # Producer outputs fused into their Relu need no range of their own.
    fused_away = {k: v for k, v in ranges.items() if k not in ("c1", "cg", "s")}
    emit_tflite(model, dtype="int8", ranges=fused_away)


INT8_OPS = {
    "sigmoid": ("Sigmoid", {}),
    "tanh": ("Tanh", {}),
    "hardswish": ("HardSwish", {}),
    "leakyrelu": ("LeakyRelu", {"alpha": 0.2}),
    "softmax": ("Softmax", {"axis": 1}),
    "hardsigmoid": ("HardSigmoid", {}),
}


#: Ops that keep their input's int8 parameters; after a fixed-output op (LOGISTIC,
#: TANH, SOFTMAX) the emitter must requantize in front of them.
KEEP_QUANT_OPS = {
    "resize": ("Resize", ["y", "", "sc"], {"mode": "nearest"}),
    "maxpool": ("MaxPool", ["y"], {"kernel_shape": [2, 2], "strides": [2, 2]}),
    "global_maxpool": ("GlobalMaxPool", ["y"], {}),
    "concat": ("Concat", ["y", "c"], {"axis": 1}),
    "flatten": ("Flatten", ["y"], {}),
    "pad": ("Pad", ["y", "pads"], {}),
}


@pytest.mark.parametrize("after", sorted(KEEP_QUANT_OPS))
@pytest.mark.parametrize("name", sorted(INT8_OPS))
def test_int8_activation_then_data_movement(name: str, after: str) -> None:
    op, kw = INT8_OPS[name]
    op2, ins2, kw2 = KEEP_QUANT_OPS[after]
    rng = np.random.default_rng(3)
    nodes = [
        h.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        h.make_node(op, ["c"], ["y"], **kw),
        h.make_node(op2, ins2, ["z"], **kw2),
    ]
    init = {
        "w": _w(rng, 8, 4, 3, 3),
        "sc": np.asarray([1, 1, 2, 2], np.float32),
        "pads": np.asarray([0, 0, 1, 1, 0, 0, 1, 1], np.int64),
    }
    model = make_model(nodes, {"x": (1, 4, 8, 8)}, ["z"], init)
    feeds = [{"x": rng.standard_normal((1, 4, 8, 8)).astype(np.float32)} for _ in range(8)]
    tfl = emit_tflite(model, dtype="int8", ranges=calibrate(model, feeds))
    for f in feeds[:2]:
        assert snr_db(run_ort(model, f)[0], run_litert(tfl, f)[0]) > SNR_MIN_DB


def _vela_ops(data: bytes, tmp_path: Path) -> list[str]:
    import ethosu
    from ethosu.vela.vela import main as vela_main

    src = tmp_path / "model.tflite"
    src.write_bytes(data)
    config = Path(next(iter(ethosu.__path__))) / "config_files" / "Arm" / "vela.ini"
    out_dir = tmp_path / "vela"
    args = [
        str(src),
        *("--accelerator-config", "ethos-u65-256", "--system-config", "Ethos_U65_High_End"),
        *("--memory-mode", "Dedicated_Sram_384KB", "--config", str(config), "--output-dir", str(out_dir)),
    ]
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        rc = vela_main(args)
    assert rc in (0, None), log.getvalue()
    return op_names((out_dir / "model_vela.tflite").read_bytes())


def test_vela_all_npu(cnn: tuple, tmp_path: Path) -> None:  # type: ignore[type-arg]
    model, ranges, _ = cnn
    tfl = emit_tflite(model, dtype="int8", ranges=ranges, io_dtype="int8")
    ops = _vela_ops(tfl.data, tmp_path)
    assert ops and set(ops) == {"ethos-u"}, ops


def _feeds(model: onnx.ModelProto, rng: np.random.Generator, n: int) -> list[dict[str, np.ndarray]]:
    inits = {i.name for i in model.graph.initializer}
    shapes = {
        vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
        for vi in model.graph.input
        if vi.name not in inits
    }
    return [{k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()} for _ in range(n)]


def _op_models() -> dict[str, onnx.ModelProto]:
    from test_tflite_ops_float import CASES, GRAPHS

    return {name: fn() for name, fn in sorted({**CASES, **GRAPHS}.items())}


@pytest.mark.parametrize("name", sorted(_op_models()))
def test_int8_every_op(name: str) -> None:
    """Every float unit-test graph also emits in int8 and stays above the SNR bar."""
    model = _op_models()[name]
    rng = np.random.default_rng(11)
    feeds = _feeds(model, rng, 8)
    tfl = emit_tflite(model, dtype="int8", ranges=calibrate(model, feeds))
    for f in feeds[:2]:
        for w, g in zip(run_ort(model, f), run_litert(tfl, f), strict=True):
            assert snr_db(w, g) > SNR_MIN_DB


def npu_mix() -> onnx.ModelProto:
    """Activations, resize, pad, slice, split, softmax: the non-conv ops Vela should place on the NPU."""
    rng = np.random.default_rng(5)
    init = {
        "w1": _w(rng, 8, 3, 3, 3),
        "w2": _w(rng, 8, 8, 1, 1),
        "wd": _w(rng, 16, 1, 3, 3),
        "sc": np.asarray([1, 1, 2, 2], np.float32),
        "pads": np.asarray([0, 0, 1, 1, 0, 0, 1, 1], np.int64),
        "s0": np.asarray([0], np.int64),
        "s1": np.asarray([8], np.int64),
        "ax": np.asarray([1], np.int64),
        "wf": _w(rng, 10, 16),
        "bn_s": rng.uniform(0.5, 1.5, 16).astype(np.float32),
        "bn_b": rng.uniform(-0.2, 0.2, 16).astype(np.float32),
        "bn_m": rng.uniform(-0.2, 0.2, 16).astype(np.float32),
        "bn_v": rng.uniform(0.5, 1.5, 16).astype(np.float32),
    }
    nodes = [
        h.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        h.make_node("HardSwish", ["c1"], ["a1"]),
        h.make_node("MaxPool", ["a1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        h.make_node("Resize", ["p1", "", "sc"], ["up"], mode="nearest"),
        h.make_node("Conv", ["up", "w2"], ["c2"]),
        h.make_node("Sigmoid", ["c2"], ["g"]),
        h.make_node("Mul", ["c2", "g"], ["silu"]),
        h.make_node("Concat", ["silu", "a1"], ["cat"], axis=1),
        h.make_node("BatchNormalization", ["cat", "bn_s", "bn_b", "bn_m", "bn_v"], ["bn"]),
        h.make_node("LeakyRelu", ["bn"], ["lr"], alpha=0.1),
        h.make_node("Pad", ["lr", "pads"], ["pd"]),
        h.make_node("Conv", ["pd", "wd"], ["dw"], group=16),
        h.make_node("Split", ["dw"], ["sp0", "sp1"], axis=1, num_outputs=2),
        h.make_node("Slice", ["sp1", "s0", "s1", "ax"], ["sl"]),
        h.make_node("Add", ["sp0", "sl"], ["sum"]),
        h.make_node("Tanh", ["sum"], ["th"]),
        h.make_node("Concat", ["th", "sp0"], ["cat2"], axis=1),
        h.make_node("GlobalAveragePool", ["cat2"], ["gap"]),
        h.make_node("Flatten", ["gap"], ["fl"]),
        h.make_node("Gemm", ["fl", "wf"], ["logits"], transB=1),
        h.make_node("Softmax", ["logits"], ["prob"]),
    ]
    return make_model(nodes, {"x": (1, 3, 16, 16)}, ["prob"], init)


def test_vela_npu_mix(tmp_path: Path) -> None:
    model = npu_mix()
    rng = np.random.default_rng(2)
    feeds = _feeds(model, rng, 8)
    tfl = emit_tflite(model, dtype="int8", ranges=calibrate(model, feeds))
    ops = op_names(tfl.data)
    assert "TRANSPOSE" not in ops
    for f in feeds[:2]:
        assert snr_db(run_ort(model, f)[0], run_litert(tfl, f)[0]) > SNR_MIN_DB
    vela_ops = _vela_ops(tfl.data, tmp_path)
    assert set(vela_ops) == {"ethos-u"}, vela_ops


def test_deterministic_across_processes(tmp_path: Path) -> None:
    """Byte-identical output regardless of hash seed (no set/dict-order leaks)."""
    import hashlib
    import os
    import subprocess
    import sys

    script = (
        "import sys, hashlib, numpy as np; sys.path.insert(0, sys.argv[1]);"
        "import test_tflite_int8 as t, tflite_helpers as th; from nirc.tflite import emit_tflite;"
        "m = t.npu_mix(); f = t._feeds(m, np.random.default_rng(2), 4);"
        "print(hashlib.sha256(emit_tflite(m, dtype='int8', ranges=th.calibrate(m, f)).data).hexdigest())"
    )
    here = str(Path(__file__).parent)
    digests = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", script, here], env=env, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        digests.add(out.stdout.strip())
    assert len(digests) == 1
    assert hashlib.sha256(b"").hexdigest() not in digests
