"""Compile small example models and corrupt their Vela output in place, one named field at a time.

Shared by the mutation suite and the malformed-stream tests: every helper returns a
whole new ``_vela.tflite`` as bytes, the same length as the original, with exactly
one field of one NPU command stream, weight stream, scale stream or LUT changed.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from build_models import GraphBuilder
from nirc.targets.ethos_u.sim import cmdstream as cs
from nirc.targets.ethos_u.sim import container

from nirc.pipeline import optimize

EXAMPLES = Path(__file__).resolve().parents[4] / "examples"


def lut_cnn() -> onnx.ModelProto:
    """Conv -> Sigmoid -> Conv -> HardSwish -> head: both activations become 8-bit LUTs on the NPU."""
    b = GraphBuilder("lut_cnn", (1, 3, 16, 16))

    def sigmoid(x: str, name: str) -> str:
        return b._node("Sigmoid", [x], name, b.shapes[x])

    def hardswish(x: str, name: str) -> str:
        return b._node("HardSwish", [x], name, b.shapes[x])

    x = b.conv_bn_act(b.input_name, ("c1", "c1.bn", "c1.sigmoid"), 8, 3, gain=1.0, act=sigmoid)
    x = b.conv_bn_act(x, ("c2", "c2.bn", "c2.hardswish"), 16, 3, stride=2, gain=math.sqrt(2.0), act=hardswish)
    out = b.classifier_head(x, 10, pool="pool", fc="fc")
    return b.finish(out, "two LUT activations (sigmoid, hard-swish) for the NPU mutation suite")


def cascade_cnn() -> onnx.ModelProto:
    """160x160x16 feature maps (400 KiB each) do not fit 384 KiB of SRAM: Vela cascades them in stripes."""
    b = GraphBuilder("cascade_cnn", (1, 3, 160, 160))
    x = b.conv_bn_act(b.input_name, ("c1", "c1.bn", "c1.relu"), 16, 3, gain=1.0)
    x = b.conv_bn_act(x, ("dw", "dw.bn", "dw.relu"), 16, 3, groups=16)
    x = b.conv_bn_act(x, ("pw", "pw.bn", "pw.relu"), 16, 1)
    x = b.conv_bn_act(x, ("c2", "c2.bn", "c2.relu"), 24, 3, stride=2)
    out = b.classifier_head(x, 10, pool="pool", fc="fc")
    return b.finish(out, "a cascaded stem for the NPU mutation suite")


def wide_cnn() -> onnx.ModelProto:
    """384x384 1x1 convs (144 KiB of weights each): Vela streams their weights and writes the OFM in depth slices."""
    b = GraphBuilder("wide_cnn", (1, 3, 16, 16))
    x = b.conv_bn_act(b.input_name, ("c1", "c1.bn", "c1.relu"), 64, 3, stride=2, gain=1.0)
    x = b.conv_bn_act(x, ("w1", "w1.bn", "w1.relu"), 384, 1)
    x = b.conv_bn_act(x, ("w2", "w2.bn", "w2.relu"), 384, 1)
    out = b.classifier_head(x, 10, pool="pool", fc="fc")
    return b.finish(out, "depth-sliced wide layers for the NPU mutation suite")


def compile_example(name: str, outdir: Path, target: str = "ethos-u65-256") -> tuple[Path, Path]:
    """(vela, int8) of ``tiny_cnn`` (examples/tiny_cnn.onnx) or a model above, on ``target``, unvalidated."""
    if name == "tiny_cnn":
        source = EXAMPLES / "tiny_cnn.onnx"
    else:
        source = outdir.parent / f"{name}.onnx"
        onnx.save({"lut_cnn": lut_cnn, "cascade_cnn": cascade_cnn, "wide_cnn": wide_cnn}[name](), str(source))
    optimize(source, target, outdir=outdir, require_fit=False, validate_npu="none")
    return outdir / f"{source.stem}_vela.tflite", outdir / f"{source.stem}_int8.tflite"


def feeds(vela: Path | bytes, count: int) -> list[dict[str, np.ndarray]]:
    model = container.load(vela)
    t = model.tensors[model.inputs[0]]
    return [{t.name: np.random.default_rng(s).integers(-128, 128, size=t.shape, dtype=np.int8)} for s in range(count)]


@dataclass(frozen=True)
class Artifact:
    """A Vela output with its one NPU call decoded, and where its pieces sit in the file."""

    data: bytes
    call: container.NpuCall
    stream: cs.CommandStream
    stream_at: int  # file offset of the command-stream tensor
    words_at: int  # file offset of the first register command word
    blob_at: int  # file offset of the read-only region (weights, scales, LUTs)

    @classmethod
    def load(cls, path: Path) -> Artifact:
        data = path.read_bytes()
        call = container.load(data).npu_calls[0]
        stream = cs.decode(call.command_stream)
        stream_at = data.find(call.command_stream)
        words = sum(2 if c.data is not None else 1 for c in stream.commands)
        # Every command up to NPU_OP_STOP is decoded; the register words end the payload.
        header = len(call.command_stream) - 4 * words
        blob_at = data.find(call.read_only)
        assert stream_at >= 0 and blob_at >= 0 and header >= 0
        return cls(data, call, stream, stream_at, stream_at + header, blob_at)

    def patched(self, offset: int, new: bytes) -> bytes:
        out = bytearray(self.data)
        out[offset : offset + len(new)] = new
        assert len(out) == len(self.data)
        return bytes(out)

    def command(self, name: str, nth: int = 0) -> cs.Command:
        return [c for c in self.stream.commands if c.name == name][nth]

    def with_param(self, command: cs.Command, param: int) -> bytes:
        """The file with a cmd0 command's 16-bit parameter (or a cmd1 command's) replaced."""
        at = self.words_at + 4 * command.offset + 2
        return self.patched(at, struct.pack("<H", param & 0xFFFF))

    def with_data(self, command: cs.Command, data: int) -> bytes:
        """The file with a cmd1 command's 32-bit data word replaced."""
        assert command.data is not None
        return self.patched(self.words_at + 4 * command.offset + 4, struct.pack("<I", data & 0xFFFFFFFF))

    def with_word(self, command: cs.Command, word: int) -> bytes:
        return self.patched(self.words_at + 4 * command.offset, struct.pack("<I", word))

    def blob_offset(self, user: cs.BlockOp, where: cs.AddressRange) -> int:
        """Read-only offset of what ``user`` reads at ``where``: through the last DMA there before it."""
        if where.region == 0:
            return where.address
        for op in reversed(self.stream.ops[: user.index]):
            if (
                isinstance(op, cs.DmaOp)
                and not op.dst_internal
                and op.dst.region == where.region
                and op.src.region == 0
                and op.dst.address <= where.address < op.dst.address + op.dst.length
            ):
                return op.src.address + where.address - op.dst.address
        raise LookupError(f"nothing DMAs {where} from the read-only region before op {user.index}")

    def convs(self) -> Iterator[cs.BlockOp]:
        for op in self.stream.ops:
            if isinstance(op, cs.BlockOp) and op.weights is not None and op.scales is not None:
                yield op

    def luts(self) -> Iterator[cs.DmaOp]:
        """DMAs of 256-byte tables into SHRAM (8-bit LUTs)."""
        for op in self.stream.ops:
            if isinstance(op, cs.DmaOp) and op.dst_internal and op.src.region == 0:
                yield op
