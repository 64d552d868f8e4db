"""Mutation suite: every single corrupted field of a compiled example model fails NPU validation.

Each test changes one thing in Vela's output (a compressed-weight byte, one channel's
bias, scale or shift, one LUT entry, one command word) and asserts that validation
fails: either the functional model rejects the stream, or some compared tensor
differs and no known rule explains it.  The clean artifacts pass with 0 LSB.
Channels are picked where the clean run is least saturated: a change in a channel
that every input drives to the clamp is invisible to any comparison.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from mutation_helpers import Artifact, compile_example, feeds
from nirc.targets.ethos_u.sim import cmdstream as cs
from nirc.targets.ethos_u.sim import container, run
from nirc.targets.ethos_u.sim.validate import NpuValidation, validate_artifact

from nirc.errors import BackendError

SAMPLES = 4  # enough for every mutation below; the CLI default is 8


@pytest.fixture(scope="module", params=["tiny_cnn", "lut_cnn"])
def compiled(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Artifact, Path]:
    vela, int8 = compile_example(request.param, tmp_path_factory.mktemp(request.param) / "out")
    return Artifact.load(vela), int8


@pytest.fixture(scope="module")
def lut_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Artifact, Path]:
    vela, int8 = compile_example("lut_cnn", tmp_path_factory.mktemp("lut") / "out")
    return Artifact.load(vela), int8


def _validate(data: bytes, int8: Path) -> NpuValidation | BackendError:
    try:
        return validate_artifact(data, int8, feeds(data, SAMPLES))
    except BackendError as exc:
        return exc


def _assert_fails(data: bytes, int8: Path, what: str) -> None:
    outcome = _validate(data, int8)
    if isinstance(outcome, BackendError):
        assert "word" in str(outcome) or "stream" in str(outcome), f"{what}: {outcome}"
        return
    assert not outcome.bit_exact and outcome.unexplained, f"{what} was not detected"
    assert outcome.first_divergence and outcome.first_divergence.startswith("sample "), outcome.first_divergence


def _least_saturated_channel(artifact: Artifact, op: cs.BlockOp) -> int:
    traces = run(artifact.data, feeds(artifact.data, 1)[0], capture=True).traces[0]
    values = next(t.values for t in traces if t.index == op.index)
    assert values is not None
    saturated = (values == op.ofm.dtype.min) | (values == op.ofm.dtype.max)
    return int(np.argmin(saturated.reshape(-1, values.shape[-1]).mean(axis=0)))


def test_clean_artifacts_are_bit_exact(compiled: tuple[Artifact, Path]) -> None:
    artifact, int8 = compiled
    outcome = _validate(artifact.data, int8)
    assert isinstance(outcome, NpuValidation)
    assert outcome.bit_exact and outcome.max_abs_diff_lsb == 0 and not outcome.unexplained, outcome.first_divergence
    inter = outcome.details["intermediates"]
    assert inter["compared"] >= SAMPLES * 4 and inter["differing"] == 0
    assert outcome.details["reference"].startswith("TFLite Micro")


def test_a_corrupted_compressed_weight_byte_fails(compiled: tuple[Artifact, Path]) -> None:
    artifact, int8 = compiled
    ops = list(artifact.convs())
    assert len(ops) >= 3
    for op in ops:
        assert op.weights is not None
        at = artifact.blob_at + artifact.blob_offset(op, op.weights) + op.weights.length // 3
        _assert_fails(artifact.patched(at, bytes([artifact.data[at] ^ 0x5A])), int8, f"weight byte of op {op.index}")


@pytest.mark.parametrize(
    ("field", "byte", "flip"),
    [("bias +-256", 1, 0x01), ("scale (bit 26)", 8, 0x04), ("shift +-1", 9, 0x01)],
)
def test_one_channel_of_bias_scale_or_shift_fails(
    compiled: tuple[Artifact, Path], field: str, byte: int, flip: int
) -> None:
    """One channel's 10-byte entry of the scale stream: 40-bit bias, 32-bit scale, 6-bit shift."""
    artifact, int8 = compiled
    for op in artifact.convs():
        assert op.scales is not None
        channel = _least_saturated_channel(artifact, op)
        at = artifact.blob_at + artifact.blob_offset(op, op.scales) + 10 * channel + byte
        bad = artifact.patched(at, bytes([artifact.data[at] ^ flip]))
        _assert_fails(bad, int8, f"{field} of op {op.index} channel {channel}")


def test_one_lut_entry_off_by_one_fails(lut_model: tuple[Artifact, Path]) -> None:
    """A table entry near the activation input's zero point, +1: 1 LSB in the LUT op's result only."""
    artifact, int8 = lut_model
    model = container.load(int8)
    activations = [op for op in model.ops if op.opcode in ("LOGISTIC", "HARD_SWISH")]
    zero_points = [model.tensors[op.inputs[0]].zero_point for op in activations]
    tables = list(artifact.luts())
    assert len(tables) == len(zero_points) == 2
    for dma, zero_point in zip(tables, zero_points, strict=True):
        assert dma.src.length == 256 and zero_point is not None
        for delta in (0, -10, 10):
            at = artifact.blob_at + dma.src.address + zero_point + 128 + delta
            bad = artifact.patched(at, bytes([(artifact.data[at] + 1) & 0xFF]))
            _assert_fails(bad, int8, f"LUT at {dma.src.address} entry {zero_point + 128 + delta}")


Mutation = Callable[[Artifact, cs.Command], bytes]


def _any(command: cs.Command) -> bool:
    return True


#: Which commands of a name a mutation may pick: rounding TFL -> NATURAL only where it is TFL (a pool
#: or stage-inputs' identity copy already rounds NATURAL, and the mutation would change nothing).
SELECT: dict[str, Callable[[cs.Command], bool]] = {"NPU_SET_OFM_PRECISION": lambda c: c.param & 0xC000 == 0}
COMMAND_MUTATIONS: list[tuple[str, int, Mutation]] = [
    ("NPU_SET_OFM_ZERO_POINT", 0, lambda a, c: a.with_param(c, c.param + 1)),
    ("NPU_SET_OFM_ZERO_POINT", 1, lambda a, c: a.with_param(c, c.param + 1)),
    ("NPU_SET_IFM_ZERO_POINT", 0, lambda a, c: a.with_param(c, c.param + 1)),
    ("NPU_SET_IFM_ZERO_POINT", 1, lambda a, c: a.with_param(c, c.param + 1)),
    ("NPU_SET_OFM_PRECISION", 0, lambda a, c: a.with_param(c, (c.param & ~0xC000) | 0x8000)),  # TFL -> NATURAL
    ("NPU_SET_ACTIVATION_MIN", 0, lambda a, c: a.with_param(c, c.param + 40)),
    ("NPU_SET_IFM_PAD_TOP", 0, lambda a, c: a.with_param(c, c.param + 1)),
    ("NPU_SET_KERNEL_STRIDE", 0, lambda a, c: a.with_param(c, c.param ^ 1)),
    ("NPU_SET_KERNEL_STRIDE", 1, lambda a, c: a.with_param(c, c.param ^ 1)),
    ("NPU_SET_OFM_BASE0", 0, lambda a, c: a.with_data(c, (c.data or 0) + 16)),
    ("NPU_SET_OFM_BASE0", 1, lambda a, c: a.with_data(c, (c.data or 0) + 16)),
    ("NPU_SET_WEIGHT_LENGTH", 0, lambda a, c: a.with_data(c, (c.data or 0) - 16)),
    ("NPU_SET_OFM_SCALE", 0, lambda a, c: a.with_data(c, (c.data or 0) + (1 << 24))),
]


@pytest.mark.parametrize(
    ("name", "nth", "mutate"), COMMAND_MUTATIONS, ids=[f"{n}[{k}]" for n, k, _ in COMMAND_MUTATIONS]
)
def test_a_changed_command_word_fails(compiled: tuple[Artifact, Path], name: str, nth: int, mutate: Mutation) -> None:
    artifact, int8 = compiled
    command = [c for c in artifact.stream.commands if c.name == name and SELECT.get(name, _any)(c)][nth]
    _assert_fails(mutate(artifact, command), int8, f"{name}[{nth}] at word {command.offset}")


def test_details_keep_each_input_apart(compiled: tuple[Artifact, Path]) -> None:
    """Per-input records and per-output counts describe the same inputs: nothing from one sample in another."""
    artifact, int8 = compiled
    op = next(artifact.convs())
    assert op.scales is not None
    at = artifact.blob_at + artifact.blob_offset(op, op.scales) + 10 * _least_saturated_channel(artifact, op) + 9
    outcome = _validate(artifact.patched(at, bytes([artifact.data[at] ^ 0x01])), int8)
    assert isinstance(outcome, NpuValidation)
    per_sample = outcome.details["per_sample"]
    assert [s["sample"] for s in per_sample] == list(range(SAMPLES))
    for record in per_sample:
        if record["first_divergence"]:
            assert record["first_divergence"].startswith(f"sample {record['sample']}:")
    assert outcome.first_divergence == next(s["first_divergence"] for s in per_sample if s["first_divergence"])
    assert any(not s["bit_exact"] for s in per_sample)
    for name, counts in outcome.details["outputs"].items():
        assert counts["samples_differing"] == sum(1 for s in per_sample if name in s["differing_outputs"])
        assert counts["differing"] == sum(s["differing_outputs"].get(name, 0) for s in per_sample)


def test_a_corrupted_layer_inside_a_cascade_is_found_at_that_layer(tmp_path: Path) -> None:
    """A cascaded layer exists only as stripes in a rolling buffer: stacked, they are compared as its tensor."""
    vela, int8 = compile_example("cascade_cnn", tmp_path / "out")
    artifact = Artifact.load(vela)
    clean = validate_artifact(artifact.data, int8, feeds(artifact.data, 1))
    assert clean.bit_exact and clean.details["intermediates"]["from_stripes"] >= 3
    depthwise = [op for op in artifact.convs() if op.kind is cs.OpKind.DEPTHWISE]
    assert len(depthwise) > 1  # one layer, several stripes
    op = depthwise[0]
    assert op.scales is not None and op.weights is not None
    entry = artifact.blob_at + artifact.blob_offset(op, op.scales) + 10 * _least_saturated_channel(artifact, op)
    for at, flip in ((entry + 1, 0x01), (entry + 8, 0x04)):  # one channel's bias +-256, its scale's bit 26
        bad = artifact.patched(at, bytes([artifact.data[at] ^ flip]))
        result = validate_artifact(bad, int8, feeds(bad, 1))
        assert result.unexplained and result.first_divergence is not None
        assert "'dw.relu'" in result.first_divergence and "earlier stripes" in result.first_divergence


def test_a_corrupted_depth_slice_is_found_at_its_layer(tmp_path: Path) -> None:
    """A layer whose weights are streamed in parts writes its OFM in depth slices: joined, they are its tensor."""
    vela, int8 = compile_example("wide_cnn", tmp_path / "out")
    artifact = Artifact.load(vela)
    clean = validate_artifact(artifact.data, int8, feeds(artifact.data, 1))
    assert clean.bit_exact and clean.details["intermediates"]["from_slices"] >= 1
    ops = list(artifact.convs())
    op = next(o for o in ops if o.ifm.depth in (64, 384) and o.ofm.depth < 384)  # a slice of w1 or w2
    assert op.scales is not None
    entry = artifact.blob_at + artifact.blob_offset(op, op.scales) + 10 * _least_saturated_channel(artifact, op)
    bad = artifact.patched(entry + 9, bytes([artifact.data[entry + 9] ^ 0x01]))  # one channel's shift
    result = validate_artifact(bad, int8, feeds(bad, 1))
    assert result.unexplained and result.first_divergence is not None
    assert "earlier depth slices" in result.first_divergence
    assert "tensor 'w1.relu'" in result.first_divergence or "tensor 'w2.relu'" in result.first_divergence
