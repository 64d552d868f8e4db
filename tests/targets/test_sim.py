"""The Ethos-U functional model: decoding, weight order, bit-exactness against LiteRT, corruption detection."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from nirc.targets.ethos_u.sim import (
    CommandStreamError,
    SimulationError,
    compare_with_reference,
    container,
    describe,
    simulate,
)
from nirc.targets.ethos_u.sim import cmdstream as cs
from nirc.targets.ethos_u.sim import weights as weights_module
from nirc.targets.ethos_u.sim.engine import rescale
from nirc.targets.ethos_u.sim.weights import (
    WeightLayout,
    WeightStreamError,
    decode_scales,
    decode_weights,
    measured_positions,
    stream_positions,
)
from nirc.targets.ethos_u.vela_driver import compile_with_vela

from nirc.pipeline import optimize
from nirc.plugin import load_registry

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _compile(tmp: Path, target: str, **kwargs: object) -> tuple[Path, Path]:
    kwargs.setdefault("npu_format", "tflite")  # these tests check the TFLite form against the int8 TFLite
    optimize(EXAMPLES / "tiny_cnn.onnx", target, outdir=tmp, require_fit=False, **kwargs)  # type: ignore[arg-type]
    return tmp / "tiny_cnn_vela.tflite", tmp / "tiny_cnn_int8.tflite"


@pytest.fixture(scope="module")
def tiny_u65(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return _compile(tmp_path_factory.mktemp("u65") / "out", "ethos-u65-256")


@pytest.fixture(scope="module")
def tiny_u55(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return _compile(tmp_path_factory.mktemp("u55") / "out", "ethos-u55-128")


def _inputs(vela: Path, seed: int) -> dict[str, np.ndarray]:
    model = container.load(vela)
    t = model.tensors[model.inputs[0]]
    rng = np.random.default_rng(seed)
    if t.dtype == np.int8:
        return {t.name: rng.integers(-128, 128, size=t.shape, dtype=np.int8)}
    return {t.name: rng.standard_normal(t.shape).astype(t.dtype)}


def test_container_and_describe(tiny_u65: tuple[Path, Path]) -> None:
    vela, _ = tiny_u65
    model = container.load(vela)
    assert [op.opcode for op in model.ops] == ["ethos-u"]
    call = model.npu_calls[0]
    assert call.scratch_size > 0 and len(call.read_only) > 0
    text = describe(vela)
    for word in ("COP1 ethos-u65-256", "CONV", "DEPTHWISE", "ELEMENTWISE.ADD", "DMA", "NHCWB16", "part-kernel-first"):
        assert word in text
    stream = cs.decode(call.command_stream)
    assert stream.stopped and stream.config.macs == 256 and stream.config.product == 1


@pytest.mark.parametrize("fixture", ["tiny_u65", "tiny_u55"])
def test_tiny_cnn_bit_exact(fixture: str, request: pytest.FixtureRequest) -> None:
    vela, int8 = request.getfixturevalue(fixture)
    for seed in range(3):
        result = compare_with_reference(vela, int8, _inputs(vela, seed))
        assert result.bit_exact, result.first_divergence
        assert result.max_abs_diff_lsb == 0 and result.first_divergence is None


def test_without_cascading_bit_exact(tiny_u65: tuple[Path, Path], tmp_path: Path) -> None:
    _, int8 = tiny_u65
    target = load_registry().get_target("ethos-u65-256")
    res = compile_with_vela(int8, target, tmp_path, extra_args=["--disable-cascading"])
    result = compare_with_reference(res.vela_tflite, int8, _inputs(res.vela_tflite, 7))
    assert result.bit_exact, result.first_divergence


def test_simulate_returns_named_int8_outputs(tiny_u65: tuple[Path, Path]) -> None:
    vela, _ = tiny_u65
    out = simulate(vela, _inputs(vela, 0))
    assert list(out) == ["logits"] and out["logits"].dtype == np.int8 and out["logits"].shape == (1, 10)
    # bytes work as well as paths, and the result is deterministic
    again = simulate(vela.read_bytes(), _inputs(vela, 0))
    assert np.array_equal(out["logits"], again["logits"])


def test_bad_inputs_are_rejected(tiny_u65: tuple[Path, Path]) -> None:
    vela, _ = tiny_u65
    with pytest.raises(SimulationError, match="missing inputs"):
        simulate(vela, {})
    with pytest.raises(SimulationError, match="dtype"):
        simulate(vela, {"input": np.zeros((1, 32, 32, 3), np.float32)})


def test_cpu_fallback_ops_run_in_litert(tmp_path: Path) -> None:
    vela, int8 = _compile(tmp_path / "f", "ethos-u65-256", io_dtype="float32")
    model = container.load(vela)
    assert [op.opcode for op in model.ops] == ["QUANTIZE", "ethos-u", "DEQUANTIZE"]
    result = compare_with_reference(vela, int8, _inputs(vela, 1))
    assert result.bit_exact, result.first_divergence
    assert result.details["cpu_ops"] == 2


def _patched(data: bytes, blob: bytes, offset: int, value: int) -> bytes:
    start = data.find(blob)
    assert start >= 0
    out = bytearray(data)
    out[start + offset] = value
    return bytes(out)


def _detected(vela: bytes, int8: Path, inputs: dict[str, np.ndarray]) -> bool:
    try:
        return not compare_with_reference(vela, int8, inputs).bit_exact
    except (SimulationError, CommandStreamError, WeightStreamError):
        return True


def test_corrupted_command_stream_is_detected(tiny_u65: tuple[Path, Path]) -> None:
    vela, int8 = tiny_u65
    data = vela.read_bytes()
    call = container.load(data).npu_calls[0]
    stream = cs.decode(call.command_stream)
    inputs = _inputs(vela, 3)
    header = len(call.command_stream) - 4 * sum(2 if c.data is not None else 1 for c in stream.commands)
    # An unknown opcode is a decode error.
    first = stream.commands[0]
    bad = _patched(data, call.command_stream, header + 4 * first.offset, 0x3F)
    with pytest.raises(CommandStreamError):
        simulate(bad, inputs)
    # A changed zero point, OFM base or weight length is a silent corruption the comparison catches.
    for name in ("NPU_SET_OFM_ZERO_POINT", "NPU_SET_OFM_BASE0", "NPU_SET_WEIGHT_LENGTH"):
        cmd = next(c for c in stream.commands if c.name == name)
        byte = header + 4 * cmd.offset + (4 if cmd.data is not None else 2)
        bad = _patched(data, call.command_stream, byte, call.command_stream[byte] ^ 0x10)
        assert _detected(bad, int8, inputs), name


def test_corrupted_weight_stream_is_detected(tiny_u65: tuple[Path, Path]) -> None:
    vela, int8 = tiny_u65
    data = vela.read_bytes()
    call = container.load(data).npu_calls[0]
    stream = cs.decode(call.command_stream)
    inputs = _inputs(vela, 4)
    # The first conv's stream is DMA'd from read-only offset 0: 160 scale bytes, then weights.
    dma = stream.ops[0]
    assert isinstance(dma, cs.DmaOp) and dma.src.address == 0
    for offset in (200, 400, 600):
        bad = _patched(data, call.read_only, offset, call.read_only[offset] ^ 0x5A)
        assert _detected(bad, int8, inputs), offset
    for offset in (8, 9):  # top byte of channel 0's scale, its shift
        bad = _patched(data, call.read_only, offset, call.read_only[offset] ^ 0x04)
        assert _detected(bad, int8, inputs), offset


def test_weight_order_matches_vela_reorder() -> None:
    """The analytic stream order equals the one measured with Vela's own reorder_encode."""
    rng = random.Random(0)
    accelerators = ["ethos-u65-256", "ethos-u55-128", "ethos-u55-32", "ethos-u55-64", "ethos-u55-256"]
    for trial in range(40):
        depthwise = rng.random() < 0.3
        layout = WeightLayout(
            accelerator=accelerators[trial % len(accelerators)],
            ofm_depth=rng.choice([1, 3, 8, 17, 24, 40]),
            kernel_h=rng.choice([1, 2, 3, 5, 9]),
            kernel_w=rng.choice([1, 3, 8, 9]),
            ifm_depth=1 if depthwise else rng.choice([1, 3, 16, 20, 33]),
            ofm_block_depth=rng.choice([8, 16, 32]),
            depthwise=depthwise,
            part_kernel_first=not depthwise and rng.random() < 0.5,
            dilation_y=rng.choice([1, 2]),
            dilation_x=rng.choice([1, 2]),
            ifm_bits=rng.choice([8, 16]),
        )
        assert np.array_equal(stream_positions(layout), measured_positions(layout)), layout


def _encoded(layout: WeightLayout, volume: np.ndarray) -> bytes:
    """``volume`` (OHWI) as the MLW stream of the NPU's weight order."""
    from ethosu import mlw_codec

    positions = stream_positions(layout)
    values = np.where(positions >= 0, volume.ravel()[np.maximum(positions, 0)], 0)
    return bytes(mlw_codec.encode([int(v) for v in values]))


def test_equal_streams_decode_once_and_the_memo_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Validation runs the same streams on every input: a repeat is the decoded array itself, read-only."""
    layout = WeightLayout("ethos-u65-256", 24, 3, 3, 16, 16, False, False, 1, 1, 8)
    rng = np.random.default_rng(1)
    volumes = [rng.integers(-128, 128, size=(24, 3, 3, 16)) for _ in range(3)]
    streams = [_encoded(layout, v) for v in volumes]
    first = decode_weights(streams[0], layout)
    assert np.array_equal(first, volumes[0]) and not first.flags.writeable
    assert decode_weights(bytes(streams[0]), layout) is first
    other = WeightLayout("ethos-u65-256", 24, 3, 3, 16, 16, False, True, 1, 1, 8)
    assert decode_weights(_encoded(other, volumes[0]), other) is not first  # the layout is part of the key
    monkeypatch.setattr(weights_module, "_MEMO_BYTES", first.nbytes + len(streams[0]))
    for stream, volume in zip(streams, volumes, strict=True):
        assert np.array_equal(decode_weights(stream, layout), volume)
    assert weights_module._WEIGHTS.size <= first.nbytes + len(streams[0]) and len(weights_module._WEIGHTS.entries) == 1


def test_scale_stream_decoding() -> None:
    entry = (-5).to_bytes(5, "little", signed=True) + (1 << 30).to_bytes(4, "little") + bytes([37])
    scales = decode_scales(entry * 2, 2)
    assert (
        scales.bias.tolist() == [-5, -5]
        and scales.scale.tolist() == [1 << 30] * 2
        and scales.shift.tolist() == [37] * 2
    )
    with pytest.raises(WeightStreamError):
        decode_scales(entry, 2)


def test_tfl_rounding_is_tflite_double_rounding() -> None:
    # x * 2**30 / 2**32 = x / 4, rounded at bit 31 and again at the end, ties away from zero (TFLite reference).
    acc = np.array([2, -2, 6, -6, 5, -5], dtype=np.int64)
    # 5/4: 2.5 -> 3, then 1.5 -> 2; -5/4: gemmlowp's high multiply takes -2.5 to -2, then -1.
    assert rescale(acc, 1 << 30, 32, "TFL").tolist() == [1, -1, 2, -2, 2, -1]
    # NATURAL rounds ties up.
    assert rescale(acc, 1 << 30, 32, "NATURAL").tolist() == [1, 0, 2, -1, 1, -1]
    # Double rounding: first to bit 31, then the remaining shift (differs from one rounding here).
    assert rescale(np.array([-84209]), 1684336665, 41, "TFL").tolist() == [-65]


def test_payload_errors() -> None:
    with pytest.raises(CommandStreamError, match="FourCC"):
        cs.parse_payload(b"XXXX" + bytes(12))
    with pytest.raises(CommandStreamError, match="whole number"):
        cs.parse_payload(b"COP1\x00")
