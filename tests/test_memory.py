"""nirc.memory: brick rounding and alignment, layouts, buffer sharing, Vela's execution order, and the
model checked against Vela's own allocation log on a small branchy model."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import pytest
from nirc_testing import parse

from nirc import memory
from nirc.ir import IRModel
from nirc.plugin import load_registry

HEADER = '<ir_version: 9, opset_import: ["" : 18]>'
F32 = np.float32
TARGET = load_registry().get_target("ethos-u65-256")


def _w(*shape: int, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * 0.3).astype(F32)


def test_storage_rounds_channels_to_bricks_and_bytes_to_the_quantum() -> None:
    assert memory.storage_bytes((1, 24, 10, 10), "NHCWB16") == 32 * 100
    assert memory.storage_bytes((1, 24, 10, 10), "NHWC") == 2400
    assert memory.storage_bytes((1, 3, 5, 5), "NHWC") == 80  # 75 -> 80
    assert memory.storage_bytes((1, 1000), "NHCWB16") == 1008  # not 4-D: no bricks
    assert memory.storage_bytes((0,), "NHWC") == 16


BLOCK = (
    HEADER
    + """
g (float[1,3,16,16] x) => (float[1,40] y) {
  a = Conv <pads=[1,1,1,1]> (x, w1)
  a1 = Relu (a)
  b = Conv (a1, w2)
  c = Add (b, a1)
  f = Flatten (c)
  y = Gemm <transB=1> (f, fc)
}
"""
)


def block() -> IRModel:
    return IRModel.load(parse(BLOCK, w1=_w(24, 3, 3, 3, seed=1), w2=_w(24, 24, 1, 1, seed=2), fc=_w(40, 6144, seed=3)))


def test_layouts_follow_vela() -> None:
    layout = memory.layouts(block())
    assert layout["x"] == "NHWC"  # graph input
    assert layout["a1"] == "NHCWB16"
    assert layout["c"] == "NHWC"  # read by a memory-only Flatten
    assert layout["y"] == "NHWC"


def test_profile_shares_buffers_like_vela() -> None:
    model = block()
    prof = memory.profile(model)
    owner = {t: b for b in prof.buffers for t in b.tensors}
    assert owner["a"] is owner["a1"]  # the ReLU is fused into the conv
    assert owner["f"] is owner["c"]  # Flatten is a view
    assert owner["c"] is not owner["b"]  # the Add cannot overwrite b: c is linear (Flatten), b in bricks
    assert owner["a1"].size == 32 * 256  # 24 channels stored as two bricks
    assert owner["c"].size == 24 * 256
    step = prof.order.index("Add_3")  # a1, b and c alive together
    assert prof.live[step] == 2 * 32 * 256 + 24 * 256


def test_concat_writers_share_the_output_buffer() -> None:
    text = (
        HEADER
        + """
g (float[1,16,8,8] x) => (float[1,32,8,8] y) {
  a = Conv (x, w)
  b = Conv (x, w)
  c = Concat <axis=1> (a, b)
  y = Relu (c)
}
"""
    )
    prof = memory.profile(IRModel.load(parse(text, w=_w(16, 16, 1, 1, seed=1))))
    owner = {t: b for b in prof.buffers for t in b.tensors}
    assert owner["a"] is owner["b"] is owner["c"]


BRANCHES = (
    HEADER
    + """
g (float[1,16,32,32] x) => (float[1,16,32,32] y, float[1,48,32,32] z) {
  a1 = Conv (x, w1)
  a2 = Conv (a1, w2)
  b1 = Conv (x, w1)
  b2 = Conv (b1, w2)
  y = Add (a2, b2)
  c1 = Conv (x, w1)
  c2 = Conv (c1, w2)
  z = Concat <axis=1> (a2, c2, b2)
}
"""
)


def branches() -> IRModel:
    return IRModel.load(parse(BRANCHES, w1=_w(64, 16, 1, 1, seed=1), w2=_w(16, 64, 1, 1, seed=2)))


def test_vela_order_walks_back_from_the_outputs() -> None:
    model = branches()
    names = [n.name for n in memory.vela_order(model)]
    # Concat(a2, c2, b2): c2 is written in place (run first); a2 and b2 are also read by the Add, so
    # they are copied, and Vela enters the copies in order: b runs before a. Measured with Vela 5.2.
    assert names == ["Conv_5", "Conv_6", "Conv_2", "Conv_3", "Conv_0", "Conv_1", "Concat_7", "Add_4"]
    single = IRModel.load(parse(BRANCHES.replace(", float[1,48,32,32] z", "").replace("z = Concat", "q = Concat"),
                                w1=_w(64, 16, 1, 1, seed=1), w2=_w(16, 64, 1, 1, seed=2)))  # fmt: skip
    single.graph.cleanup()
    order = [n.name for n in memory.vela_order(single)]
    assert order.index("Conv_3") < order.index("Conv_1")  # Add(a2, b2): the second input's branch first
    flipped = [n.name for n in memory.vela_order(single, flipped=["Add_4"])]
    assert flipped.index("Conv_1") < flipped.index("Conv_3")


def test_parse_vela_allocation_counts_a_reused_buffer_once() -> None:
    log = """Allocation, memory Dram, usage mask: FeatureMap
Start Time - End Time  : Start Addr -   End Addr: Tensor Size: Memory Usage: Format         : Name
         0 -          3:        0x0 -    0x100:         256:         512: NHWC           : x
         2 -          5:      0x100 -    0x200:         256:         512: NHCWB16        : a
         2 -          5:      0x100 -    0x200:         256:         512: NHCWB16        : a_reused
Allocation Peak Tensor Size: 512 bytes == 0.5 KiB
################################################################################
Allocation, memory Sram, usage mask: Staging
Start Time - End Time  : Start Addr -   End Addr: Tensor Size: Memory Usage: Format         : Name
         0 -          1:        0x0 -     0x40:          64:          64: Unknown        : WB_single_64_op0
         4 -          5:       0x40 -     0x80:          64:          64: NHCWB16        : b
"""
    tensors = memory.parse_vela_allocation(log)
    assert [t.name for t in tensors] == ["x", "a", "a_reused", "b"]
    assert memory.vela_live_bytes(tensors) == [256, 256, 512, 512, 320, 320]


@pytest.mark.parametrize("build", [branches, block])
def test_model_matches_vela_allocation(build: object, tmp_path: Path) -> None:
    """Vela with the arena in SRAM and cascading off allocates every tensor whole: same order, same peak."""
    from nirc.targets.ethos_u.vela_driver import compile_with_vela

    from nirc.backend import emit, input_shapes
    from nirc.quant import load_calibration

    model: IRModel = build()  # type: ignore[operator]
    proto = model.to_proto()
    calib = load_calibration(None, input_shapes(proto), count=2, seed=0)
    tflite = emit(proto, dtype="int8", calib=calib, method="minmax").tflite
    path = tmp_path / "m.tflite"
    path.write_bytes(tflite.data)
    target = dataclasses.replace(TARGET, memory_mode="Shared_Sram")
    extra = ["--verbose-allocation", "--disable-cascading"]
    result = compile_with_vela(path, target, tmp_path / "vela", extra_args=extra)
    vela = memory.parse_vela_allocation(result.log_path.read_text())
    order = memory.vela_order(model)
    concats = {n.outputs[0].name for n in order if n.op == "Concat"}  # Vela names its in-place writers after it
    ran = [name for name in dict.fromkeys(layer.name for layer in result.layers) if name not in concats]
    produced = [n.outputs[0].name for n in order if n.op != "Concat"]
    assert [name for name in produced if name in ran] == [name for name in ran if name in produced]
    assert memory.profile(model, order).peak == max(memory.vela_live_bytes(vela))


def test_alive_at_and_over() -> None:
    prof = memory.profile(branches())
    assert prof.over(prof.peak) == []
    assert prof.peak_step in prof.over(prof.peak - 1)
    assert sum(b.size for b in prof.alive_at(prof.peak_step)) == prof.peak
    assert isinstance(prof.buffers[0], memory.Buffer)
    assert onnx.__version__
