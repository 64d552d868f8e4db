"""Decode an operation's compressed weight stream and its bias/scale stream.

Why this is built the way it is: the weight stream has two layers.  The outer one
is the MLW entropy code; Vela ships its decoder (``ethosu.mlw_codec.decode``, the
same C library that encodes), and a stream that fails to decode is corrupt.  The
inner one is the order in which the NPU consumes weights: blocks of OFM channels,
sub-kernels of at most 8x8, IFM micro-blocks, depth-first or part-kernel-first
traversal, each padded with zeros.  That order is a hardware contract that Vela
implements in ``mlw_codec.reorder_encode`` and Regor in C++ (the two produce
streams that decode to identical value sequences; checked on the example models).
Rather than re-deriving the traversal by hand, the inverse permutation is
*measured*: encode a volume whose every value is a coordinate tag with Vela's own
reorder, decode it, and read off where each (o, ky, kx, i) landed.  Positions with
tag 0 are padding; a decoded real stream must be zero there, which is one of the
corruption checks.

The bias/scale stream is 10 bytes per OFM channel: 40-bit signed bias, 32-bit
unsigned scale, 6-bit shift (``weight_compressor.encode_bias``).
"""

from __future__ import annotations

import atexit
import struct
import subprocess
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from ethosu import mlw_codec
from ethosu.vela.architecture_features import Accelerator, ArchitectureFeatures

from nirc.errors import BackendError

_TAG_RANGE = 510  # tags are 1..255 and -1..-255: the codec's 9-bit signed weight range, 0 reserved for padding
_SUBKERNEL_MAX = 8  # ArchitectureFeatures.SubKernelMax


class WeightStreamError(BackendError):
    """A weight or scale stream does not decode to what the operation needs."""


# The MLW decoder calls exit() on a truncated or corrupt stream ("bitbuf_getbit:
# underrun"), which would take the host process with it.  Streams taken from a
# command stream are untrusted by definition (detecting corruption is the point),
# so they are decoded in a long-lived child process that only imports the codec;
# if it dies, the stream was corrupt and the next call starts a new one.
_WORKER_SOURCE = """
import struct, sys
import numpy as np
from ethosu import mlw_codec
inp, out = sys.stdin.buffer, sys.stdout.buffer
while True:
    head = inp.read(4)
    if len(head) < 4:
        break
    (n,) = struct.unpack("<I", head)
    values = np.asarray(mlw_codec.decode(bytearray(inp.read(n))), dtype="<i2")
    out.write(struct.pack("<I", values.size))
    out.write(values.tobytes())
    out.flush()
"""


class _DecoderProcess:
    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        atexit.register(self.close)

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.stdin:
                proc.stdin.close()
            proc.wait(timeout=10)

    def _start(self) -> subprocess.Popen[bytes]:
        if self._proc is None or self._proc.poll() is not None:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", _WORKER_SOURCE],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        return self._proc

    def decode(self, stream: bytes) -> np.ndarray:
        with self._lock:
            proc = self._start()
            assert proc.stdin is not None and proc.stdout is not None
            try:
                proc.stdin.write(struct.pack("<I", len(stream)) + stream)
                proc.stdin.flush()
                head = proc.stdout.read(4)
                if len(head) == 4:
                    (count,) = struct.unpack("<I", head)
                    data = proc.stdout.read(2 * count)
                    if len(data) == 2 * count:
                        return np.frombuffer(data, dtype="<i2").astype(np.int32)
            except (BrokenPipeError, OSError):
                pass
            proc.wait(timeout=10)
            err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
            self._proc = None
            raise WeightStreamError(f"weight stream does not decode ({err or 'decoder exited'})")


_DECODER = _DecoderProcess()

_MEMO_BYTES = 256 << 20
"""Decoded weights kept for reuse: validation runs the same streams once per input, and decoding
(a pipe round trip to the codec process, then the scatter into OHWI) was 55% of the functional
model's time on ResNet18-224."""


class _Memo:
    """Least recently used decoded weights, bounded by bytes (streams are hashed by value)."""

    def __init__(self) -> None:
        self.entries: OrderedDict[tuple[WeightLayout, bytes], np.ndarray] = OrderedDict()
        self.size = 0
        self.lock = threading.Lock()

    def get(self, key: tuple[WeightLayout, bytes]) -> np.ndarray | None:
        with self.lock:
            found = self.entries.get(key)
            if found is not None:
                self.entries.move_to_end(key)
            return found

    def put(self, key: tuple[WeightLayout, bytes], weights: np.ndarray) -> None:
        weights.setflags(write=False)
        with self.lock:
            if key not in self.entries:
                self.entries[key] = weights
                self.size += weights.nbytes + len(key[1])
            while self.size > _MEMO_BYTES and len(self.entries) > 1:
                (_, old), dropped = self.entries.popitem(last=False)
                self.size -= dropped.nbytes + len(old)


_WEIGHTS = _Memo()


@dataclass(frozen=True)
class WeightLayout:
    """Everything the NPU's weight order depends on for one operation."""

    accelerator: str  # e.g. "ethos-u65-256"
    ofm_depth: int
    kernel_h: int
    kernel_w: int
    ifm_depth: int  # 1 for depthwise
    ofm_block_depth: int
    depthwise: bool
    part_kernel_first: bool
    dilation_y: int
    dilation_x: int
    ifm_bits: int


def _tag_values(index: np.ndarray) -> np.ndarray:
    """Map 0..509 onto the codec's nonzero values 1..255, -1..-255."""
    return np.where(index < 255, index + 1, 254 - index).astype(np.int16)


def _untag(values: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_tag_values`; padding (0) maps to -1."""
    return np.where(values > 0, values - 1, np.where(values < 0, 254 - values, -1)).astype(np.int64)


def _reorder_decode(layout: WeightLayout, volume: np.ndarray) -> np.ndarray:
    cfg = ArchitectureFeatures.accelerator_configs[Accelerator(layout.accelerator)]
    encoded, _ = mlw_codec.reorder_encode(
        cfg.ifm_ublock.depth,
        cfg.ofm_ublock.depth,
        volume,
        layout.ofm_block_depth,
        layout.depthwise,
        layout.part_kernel_first,
        layout.ifm_bits,
        _SUBKERNEL_MAX // layout.dilation_y,
        _SUBKERNEL_MAX // layout.dilation_x,
    )
    return np.asarray(mlw_codec.decode(bytearray(encoded)), dtype=np.int16)


def measured_positions(layout: WeightLayout) -> np.ndarray:
    """The stream order measured with Vela's own reorder (slow: one encode per coordinate digit).

    For each value of the decoded stream, the flat OHWI index it holds, or -1 for
    padding.  This is the reference :func:`stream_positions` is tested against.
    """
    shape = (layout.ofm_depth, layout.kernel_h, layout.kernel_w, layout.ifm_depth)
    axes = [
        np.arange(shape[0]).reshape(-1, 1, 1, 1),
        (np.arange(shape[1]).reshape(-1, 1) * shape[2] + np.arange(shape[2])).reshape(1, shape[1], shape[2], 1),
        np.arange(shape[3]).reshape(1, 1, 1, -1),
    ]
    sizes = [shape[0], shape[1] * shape[2], shape[3]]
    coords: list[np.ndarray] = []
    for axis, size in zip(axes, sizes, strict=True):
        full = np.broadcast_to(axis, shape)
        value: np.ndarray | None = None
        scale = 1
        while True:
            digit = (full // scale) % _TAG_RANGE
            decoded = _untag(_reorder_decode(layout, np.ascontiguousarray(_tag_values(digit))))
            value = decoded if value is None else np.where((value < 0) | (decoded < 0), -1, value + decoded * scale)
            scale *= _TAG_RANGE
            if scale >= size:
                break
        coords.append(value)
    o, khw, i = coords
    flat = (o * (shape[1] * shape[2]) + khw) * shape[3] + i
    return np.where(o < 0, -1, flat)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _block_pattern(
    layout: WeightLayout, ofm_block_depth: int, ifm_block_depth: int, ifm_ublock: int, ofm_ublock: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Stream order inside one (OFM block, IFM block) pair: relative o, ky, kx, relative i per value.

    The NPU walks sub-kernels of at most 8x8 (less with dilation); inside one it
    walks OFM micro-blocks and kernel elements, with the IFM micro-blocks either
    outside (part-kernel-first) or inside (depth-first) that walk.  Kernel
    elements are padded to a multiple of 4 (2 for 16-bit IFMs) for
    part-kernel-first and depthwise; ``ky`` beyond the sub-kernel marks padding.
    """
    decomp_h = _SUBKERNEL_MAX // layout.dilation_y
    decomp_w = _SUBKERNEL_MAX // layout.dilation_x
    part = layout.part_kernel_first
    outer_depth = ifm_block_depth if part else 1
    inner_depth = 1 if part else ifm_block_depth
    ifm_ub_elems = 1 if layout.depthwise else ifm_ublock
    parts_o, parts_y, parts_x, parts_i = [], [], [], []
    for sub_y in range(0, layout.kernel_h, decomp_h):
        sub_h = min(layout.kernel_h - sub_y, decomp_h)
        for sub_x in range(0, layout.kernel_w, decomp_w):
            sub_w = min(layout.kernel_w - sub_x, decomp_w)
            elements = sub_w * sub_h
            if part:
                elements = _round_up(elements, 4 if layout.ifm_bits == 8 else 2)
            elif layout.depthwise:
                elements = _round_up(elements, 4)
            # Loop nest, outermost first: IFM ublock (part-kernel), OFM ublock, element,
            # IFM ublock (depth-first), OFM within ublock, IFM within ublock.
            iu_outer = np.arange(0, outer_depth, ifm_ublock).reshape(-1, 1, 1, 1, 1, 1)
            ou = np.arange(0, ofm_block_depth, ofm_ublock).reshape(1, -1, 1, 1, 1, 1)
            element = np.arange(elements).reshape(1, 1, -1, 1, 1, 1)
            iu_inner = np.arange(0, inner_depth, ifm_ublock).reshape(1, 1, 1, -1, 1, 1)
            oz = np.arange(ofm_ublock).reshape(1, 1, 1, 1, -1, 1)
            iz = np.arange(ifm_ub_elems).reshape(1, 1, 1, 1, 1, -1)
            grid = np.broadcast_shapes(iu_outer.shape, ou.shape, element.shape, iu_inner.shape, oz.shape, iz.shape)
            ky = element // sub_w
            kx = element % sub_w
            parts_o.append(np.broadcast_to(ou + oz, grid).ravel())
            parts_y.append(np.broadcast_to(np.where(ky < sub_h, sub_y + ky, -1), grid).ravel())
            parts_x.append(np.broadcast_to(sub_x + kx, grid).ravel())
            parts_i.append(np.broadcast_to(iu_outer + iu_inner + iz, grid).ravel())
    return (np.concatenate(parts_o), np.concatenate(parts_y), np.concatenate(parts_x), np.concatenate(parts_i))


@lru_cache(maxsize=256)
def stream_positions(layout: WeightLayout) -> np.ndarray:
    """For each value of the decoded stream, the flat OHWI index it holds, or -1 for padding.

    Computed from the traversal rules (see :func:`_block_pattern`), vectorised over
    blocks: all full OFM blocks and all full IFM blocks share one pattern, so only
    the clipped last blocks need their own.  Tests check it equals
    :func:`measured_positions` (Vela's reorder) over many layouts.
    """
    cfg = ArchitectureFeatures.accelerator_configs[Accelerator(layout.accelerator)]
    ifm_ublock, ofm_ublock = cfg.ifm_ublock.depth, cfg.ofm_ublock.depth
    # IFM block depth: 16 for part-kernel-first (measured: for 8- and 16-bit IFMs alike), else 32 / 16.
    ifm_block_depth = 16 if layout.part_kernel_first else 32 if layout.ifm_bits == 8 else 16
    o_total, i_total = layout.ofm_depth, layout.ifm_depth
    ofm_bd = layout.ofm_block_depth
    ifm_starts = [0] if layout.depthwise else list(range(0, i_total, ifm_block_depth))
    segments: list[np.ndarray] = []
    cache: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
    for o_start in range(0, o_total, ofm_bd):
        o_depth = min(ofm_bd, o_total - o_start)
        # Group the IFM blocks that share a pattern (all but a clipped last one).
        groups: list[tuple[int, list[int]]] = []
        for i_start in ifm_starts:
            if layout.depthwise:
                i_depth = ifm_ublock
            elif layout.part_kernel_first:
                i_depth = min(ifm_block_depth, i_total - i_start)
            else:
                i_depth = ifm_block_depth
            if groups and groups[-1][0] == i_depth:
                groups[-1][1].append(i_start)
            else:
                groups.append((i_depth, [i_start]))
        for i_depth, starts in groups:
            key = (o_depth, i_depth)
            if key not in cache:
                cache[key] = _block_pattern(layout, o_depth, i_depth, ifm_ublock, ofm_ublock)
            po, py, px, pi = cache[key]
            o = o_start + po
            i = np.asarray(starts).reshape(-1, 1) + pi
            valid = (o < o_total) & (py >= 0) & (i < i_total)
            flat = ((o * layout.kernel_h + py) * layout.kernel_w + px) * i_total + i
            if layout.depthwise:
                valid = (o < o_total) & (py >= 0) & (i == 0)
            segments.append(np.where(valid, flat, -1).ravel())
    positions = np.concatenate(segments) if segments else np.zeros(0, dtype=np.int64)
    positions.setflags(write=False)
    return positions


def decode_weights(stream: bytes, layout: WeightLayout) -> np.ndarray:
    """Decode one stream into an OHWI int32 array (I = 1 for depthwise); read-only, shared by equal streams."""
    key = (layout, bytes(stream))
    known = _WEIGHTS.get(key)
    if known is not None:
        return known
    values = _DECODER.decode(stream)
    positions = stream_positions(layout)
    if values.size != positions.size:
        raise WeightStreamError(f"weight stream decodes to {values.size} values, the operation needs {positions.size}")
    pad = positions < 0
    if pad.any() and np.any(values[pad] != 0):
        raise WeightStreamError("weight stream has nonzero values in padding positions")
    shape = (layout.ofm_depth, layout.kernel_h, layout.kernel_w, layout.ifm_depth)
    weights = np.zeros(int(np.prod(shape)), dtype=np.int32)
    weights[positions[~pad]] = values[~pad]
    weights = weights.reshape(shape)
    _WEIGHTS.put(key, weights)
    return weights


@dataclass(frozen=True)
class Scales:
    bias: np.ndarray  # int64, per OFM channel
    scale: np.ndarray  # int64 (unsigned 32-bit values)
    shift: np.ndarray  # int64, 0..63


def decode_scales(stream: bytes, depth: int) -> Scales:
    """Unpack ``depth`` 10-byte bias/scale entries."""
    if len(stream) < 10 * depth:
        raise WeightStreamError(f"scale stream has {len(stream)} bytes, {depth} channels need {10 * depth}")
    raw = np.frombuffer(stream[: 10 * depth], dtype=np.uint8).reshape(depth, 10).astype(np.int64)
    bias = np.zeros(depth, dtype=np.int64)
    for b in range(5):
        bias |= raw[:, b] << (8 * b)
    bias = np.where(bias >= 1 << 39, bias - (1 << 40), bias)
    scale = np.zeros(depth, dtype=np.int64)
    for b in range(4):
        scale |= raw[:, 5 + b] << (8 * b)
    if np.any(raw[:, 9] & 0xC0):
        raise WeightStreamError("scale stream entry has reserved bits set")
    return Scales(bias, scale, raw[:, 9] & 0x3F)
