"""legalize-global-pool: global means as one full-window AveragePool (AVERAGE_POOL_2D for Vela)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from nirc.passes.legalize_global_pool import LegalizeGlobalPoolPass
from nirc.targets.ethos_u.spec import ETHOS_U_TARGETS
from nirc.targets.ethos_u.vela_driver import compile_with_vela
from nirc_testing import assert_same_function, ops, parse, run_pass

from nirc.backend import emit, input_shapes, validate
from nirc.ir import IRModel
from nirc.quant import load_calibration

HEADER = '<ir_version: 9, opset_import: ["" : 18]>'
U65 = next(t for t in ETHOS_U_TARGETS if t.name == "ethos-u65-256")


def _means() -> onnx.ModelProto:
    return parse(
        HEADER
        + """g (float[1,8,14,10] x) => (float[1,8,1,1] a, float[1,8] b, float[1,8,1,1] c) {
            a = GlobalAveragePool (x)
            b = ReduceMean <keepdims = 0> (x, hw)
            c = ReduceMean <keepdims = 1> (x, neg)
        }""",
        hw=np.array([2, 3], np.int64),
        neg=np.array([-1, -2], np.int64),
    )


def test_global_means_become_average_pools() -> None:
    proto = _means()
    model, changed, ctx = run_pass(LegalizeGlobalPoolPass(), proto)
    assert changed and ctx.stats == {"GlobalAveragePool": 1, "ReduceMean": 2}
    assert ops(model) == {"AveragePool": 3, "Reshape": 1}
    pool = next(n for n in model.graph.nodes if n.op == "AveragePool")
    assert pool.attrs["kernel_shape"] == [14, 10]
    assert_same_function(proto, model.to_proto(), rtol=1e-5, atol=1e-6)


def test_other_means_are_kept() -> None:
    """Means over channels, maps past Vela's pooling limits and 1x1 maps stay as they are."""
    proto = parse(
        HEADER
        + """g (float[1,8,6,6] x, float[1,2,300,2] t, float[1,4,1,1] v) => (float[1,1,6,6] a, float[1,2,1,1] b,
                                                                     float[1,4,1,1] c, float[1,8,1,6] d) {
            a = ReduceMean <keepdims = 1> (x, ch)
            b = GlobalAveragePool (t)
            c = GlobalAveragePool (v)
            d = ReduceMean <keepdims = 1> (x, h)
        }""",
        ch=np.array([1], np.int64),
        h=np.array([2], np.int64),
    )
    model, changed, _ = run_pass(LegalizeGlobalPoolPass(), proto)
    assert not changed
    assert ops(model) == {"ReduceMean": 2, "GlobalAveragePool": 2}


def test_second_run_changes_nothing() -> None:
    model, changed, _ = run_pass(LegalizeGlobalPoolPass(), _means())
    assert changed
    again, changed_again, _ = run_pass(LegalizeGlobalPoolPass(), model.to_proto())
    assert not changed_again and ops(again) == ops(model)


def _squeeze_excite() -> onnx.ModelProto:
    """conv -> global pool -> 1x1 -> ReLU -> 1x1 -> Sigmoid -> broadcast Mul: a squeeze-excite block at 28x28."""
    rng = np.random.default_rng(3)
    return parse(
        HEADER
        + """g (float[1,16,28,28] x) => (float[1,32,28,28] y) {
            c = Conv <pads = [1, 1, 1, 1]> (x, w0, b0)
            r = Relu (c)
            p = GlobalAveragePool (r)
            s = Conv (p, w1, b1)
            t = Relu (s)
            u = Conv (t, w2, b2)
            g = Sigmoid (u)
            y = Mul (r, g)
        }""",
        w0=(rng.standard_normal((32, 16, 3, 3)) * 0.2).astype(np.float32),
        b0=(rng.standard_normal(32) * 0.1).astype(np.float32),
        w1=(rng.standard_normal((8, 32, 1, 1)) * 0.3).astype(np.float32),
        b1=(rng.standard_normal(8) * 0.1).astype(np.float32),
        w2=(rng.standard_normal((32, 8, 1, 1)) * 0.3).astype(np.float32),
        b2=(rng.standard_normal(32) * 0.1).astype(np.float32),
    )


def _compile(proto: onnx.ModelProto, tmp: Path) -> tuple[dict[str, int], int, float]:
    calib = load_calibration(None, input_shapes(proto), count=8)
    emitted = emit(proto, dtype="int8", calib=calib)
    tmp.mkdir(parents=True)
    path = tmp / "se.tflite"
    path.write_bytes(emitted.tflite.data)
    vela = compile_with_vela(path, U65, tmp / "vela")
    assert vela.cpu_ops == 0
    (check,) = validate(proto, emitted.tflite, calib)
    kinds = {layer.original_op for layer in vela.layers}
    return {k: 1 for k in kinds}, vela.cycles_total, check.snr_db


def test_int8_average_pool_is_cheaper_than_mean_at_the_same_snr(tmp_path: Path) -> None:
    """Vela's cycles fall and LiteRT-vs-ORT SNR stays within 1 dB on a squeeze-excite block."""
    proto = IRModel.load(_squeeze_excite()).to_proto()
    model, changed, _ = run_pass(LegalizeGlobalPoolPass(), proto)
    assert changed
    mean_ops, mean_cycles, mean_snr = _compile(proto, tmp_path / "mean")
    pool_ops, pool_cycles, pool_snr = _compile(model.to_proto(), tmp_path / "pool")
    assert "Mean" in mean_ops and "AvgPool" in pool_ops and "Mean" not in pool_ops
    print(f"MEAN {mean_cycles} cycles {mean_snr:.2f} dB; AVERAGE_POOL_2D {pool_cycles} cycles {pool_snr:.2f} dB")
    assert pool_cycles < mean_cycles, (pool_cycles, mean_cycles)
    assert pool_snr >= mean_snr - 1.0, (pool_snr, mean_snr)
