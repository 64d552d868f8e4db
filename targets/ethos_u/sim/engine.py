"""Execute decoded NPU operations on :class:`~.memory.Memory` with exact integer arithmetic.

Why the arithmetic is what it is: Ethos-U is specified to be bit-exact with the
TFLite reference kernels for int8, and Vela derives every register value
(``scaling.py``, ``register_command_stream_generator.py``) so that the hardware
reproduces TFLite's fixed-point pipeline.  The output stage in ``TFL`` rounding
mode is therefore TFLite's ``MultiplyByQuantizedMultiplier``: a rounding doubling
high multiply by the 32-bit scale (round half away from zero at bit 31) followed
by a rounding right shift of ``shift - 31`` (again half away from zero); a shift
below 31 becomes a left shift before the multiply.  Elementwise ADD/SUB follow
TFLite's ``left_shift = 20`` (15 for 16-bit) formulation that Vela's
``advanced_elementwise_add_sub_scale`` encodes: the operand named by the IFM
scale mode is rescaled by OPA_SCALE, the other is taken at ``2**(left_shift-1)``.
These semantics are inferred from how Vela derives the registers and confirmed
against LiteRT on the example models; they are not taken from an Arm
specification (none ships with Vela).

Products are computed exactly: convolutions use float64 matrix products (exact
while every partial sum stays below 2**53, which int8/int16 operands guarantee
for any realistic kernel) and rescaling switches to Python integers when a
product could leave int64.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
from nirc.targets.ethos_u.sim.cmdstream import BlockOp, DmaOp, OpKind
from nirc.targets.ethos_u.sim.memory import Memory, SimulationError, read_fm, write_fm
from nirc.targets.ethos_u.sim.weights import Scales, WeightLayout, decode_scales, decode_weights

_EXACT_FLOAT = float(1 << 53)
_INT64_SAFE = 1 << 62


def _as_exact(values: np.ndarray, bound: int) -> np.ndarray:
    """int64 when ``bound`` fits comfortably, otherwise Python-int objects (arbitrary precision)."""
    return values.astype(np.int64) if bound < _INT64_SAFE else values.astype(object)


def _max_abs(values: np.ndarray) -> int:
    return int(np.max(np.abs(values))) if values.size else 0


def _srdhm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Round-half-away-from-zero of ``a * b / 2**31`` (TFLite SaturatingRoundingDoublingHighMul)."""
    prod = a * b
    nudge = np.where(prod >= 0, 1 << 30, 1 - (1 << 30))
    q = prod + nudge
    out: np.ndarray = np.where(q >= 0, q >> 31, -((-q) >> 31))
    return out


def _rdbpot(x: np.ndarray, exponent: np.ndarray) -> np.ndarray:
    """Round-half-away-from-zero of ``x / 2**exponent`` (TFLite RoundingDivideByPOT)."""
    mask = (np.ones_like(x) << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    out: np.ndarray = (x >> exponent) + (remainder > threshold)
    return out


def rescale(acc: np.ndarray, scale: np.ndarray | int, shift: np.ndarray | int, rounding: str) -> np.ndarray:
    """Apply an NPU output (or operand) scale: ``acc * scale / 2**shift`` rounded per ``rounding``."""
    scale_arr = np.broadcast_to(np.asarray(scale, dtype=np.int64), acc.shape)
    shift_arr = np.broadcast_to(np.asarray(shift, dtype=np.int64), acc.shape)
    left = np.maximum(31 - shift_arr, 0)
    bound = (_max_abs(acc) << int(left.max(initial=0))) * max(_max_abs(scale_arr), 1)
    a = _as_exact(acc, bound)
    s = _as_exact(scale_arr, bound)
    sh = shift_arr.astype(a.dtype)
    if rounding == "TFL":
        right = np.maximum(sh - 31, 0)
        shifted = a * (np.ones_like(a) << np.maximum(31 - sh, 0))
        out = _rdbpot(_srdhm(shifted, s), right)
    elif rounding == "NATURAL":  # round half up
        prod = a * s
        out = (prod + ((np.ones_like(prod) << sh) >> 1)) >> sh
    elif rounding == "TRUNCATE":  # toward zero
        prod = a * s
        out = np.where(prod >= 0, prod >> sh, -((-prod) >> sh))
    else:
        raise SimulationError(f"unknown rounding mode {rounding}")
    return np.asarray(out).astype(np.int64) if out.dtype == object else out.astype(np.int64)


def _finish(op: BlockOp, values: np.ndarray, memory: Memory | None = None) -> np.ndarray:
    """Add the OFM zero point, look up the LUT if any, apply the activation clamp, saturate to the OFM type.

    An 8-bit LUT activation (function 16 + n) maps the saturated int8 result through
    the 256-byte table in SHRAM slot n; Vela DMAs the tables into the last 2 KiB of
    SHRAM (``shram_lut_address``), 256 bytes per slot. On a 32-bit OFM the table has
    256 32-bit entries (1 KiB from slot n), indexed by the result clamped to int8: Vela's
    int8 SOFTMAX looks up ``exp(x - max)`` this way (``softmax.py``, PASS 1: a SUB to
    int32 with zero point 127 and a 256-entry uint32 LUT whose entry ``i`` is for ``i - 255``).
    """
    out = values + op.ofm.zero_point
    act = op.activation
    if act.function in (3, 4):
        raise SimulationError(f"op {op.index}: built-in tanh/sigmoid activation is not modelled")
    if act.lut_index is not None and op.ofm.dtype.bits == 32 and memory is not None and act.clip_range in (0, 3):
        base = memory.shram.size - 2048 + 256 * act.lut_index
        if base + 1024 > memory.shram.size:
            raise SimulationError(f"op {op.index}: 32-bit LUT in slot {act.lut_index} runs past SHRAM")
        table32 = memory.shram[base : base + 1024].view("<i4").astype(np.int64)
        index = np.clip(out, max(act.minimum, -128), min(act.maximum, 127)) + 128
        looked_up: np.ndarray = table32[index.astype(np.int64)]
        return looked_up
    if act.lut_index is not None:
        if memory is None or op.ofm.dtype.bits != 8 or act.clip_range not in (0,):
            raise SimulationError(f"op {op.index}: LUT activation is only modelled for 8-bit and 32-bit OFMs")
        base = memory.shram.size - 2048 + 256 * act.lut_index
        table = memory.shram[base : base + 256]
        table = table.view(np.int8) if op.ofm.dtype.signed else table
        out = np.clip(out, op.ofm.dtype.min, op.ofm.dtype.max)
        out = table[(out - op.ofm.dtype.min).astype(np.int64)].astype(np.int64)
    if op.ofm.dtype.bits <= 16:
        out = np.clip(out, act.minimum, act.maximum)
    clipped: np.ndarray = np.clip(out, op.ofm.dtype.min, op.ofm.dtype.max)
    return clipped


def _clz32(values: np.ndarray) -> np.ndarray:
    """Leading zeros of each value as a 32-bit word (32 for 0), as TOSA CLZ."""
    words = values.astype(np.int64) & 0xFFFFFFFF
    out = np.full(words.shape, 32, dtype=np.int64)
    nonzero = words > 0
    out[nonzero] = 31 - np.floor(np.log2(words[nonzero].astype(np.float64))).astype(np.int64)
    # float log2 can be off by one just below a power of two: correct against the exact bounds
    high = np.left_shift(np.int64(1), 31 - out[nonzero])
    out[nonzero] += (words[nonzero] < high).astype(np.int64) - (words[nonzero] >= 2 * high).astype(np.int64)
    return out


def _shift(mode: str, a: np.ndarray, b: np.ndarray, rounding: str) -> np.ndarray:
    """SHL: ``a << b`` wrapped to 32 bits (TOSA LOGICAL_LEFT_SHIFT); SHR: ``a >> b`` arithmetic,
    rounding half up in NATURAL mode (TOSA ARITHMETIC_RIGHT_SHIFT with round), else rounding down.

    Shift amounts outside 0..31 are refused rather than guessed (masked or saturated).
    """
    b = np.broadcast_to(b, a.shape).astype(np.int64)
    if np.any((b < 0) | (b > 31)):
        raise SimulationError(f"elementwise {mode} shift amount outside 0..31")
    a = a.astype(np.int64)
    if mode == "SHL":
        wrapped = (a << b) & 0xFFFFFFFF
        out: np.ndarray = np.where(wrapped >= 1 << 31, wrapped - (1 << 32), wrapped)
        return out
    shifted: np.ndarray = a >> b
    if rounding == "NATURAL":
        shifted = shifted + np.where(b > 0, (a >> np.maximum(b - 1, 0)) & 1, 0)
    elif rounding != "TRUNCATE":
        raise SimulationError(f"elementwise SHR in rounding mode {rounding} is not modelled")
    return shifted


def _mul32_scale(op: BlockOp, scale: int) -> int:
    """A MUL of two 32-bit IFMs applies only the OFM shift: ``round(a * b / 2^shift)``.

    Inferred, not specified: Vela's int8 SOFTMAX writes its Q-format products (TFLite's
    SaturatingRoundingDoublingHighMul, ``a * b / 2^31``) as multiplier 2^30 with shift 31,
    and its plain ``* 4`` as 1 with shift 0; the sim matches TFLite Micro bit for bit on
    that SOFTMAX, and the TOSA reference model on TOSA MULs with a shift, only when the
    multiplier is taken as 1. Other multipliers are refused rather than guessed.
    """
    if scale not in (1, 1 << 30):
        raise SimulationError(f"op {op.index}: 32-bit MUL with output multiplier {scale} is not modelled")
    return 1


def _finish_raw(op: BlockOp, values: np.ndarray) -> np.ndarray:
    """CLZ and shifts write their integer result unscaled: only the OFM zero point, clamp and saturation."""
    if op.global_scale or op.ofm_scale != (1, 0):
        raise SimulationError(f"op {op.index}: {op.mode} with an output scale is not modelled")
    return _finish(op, values)


@dataclass
class OpTrace:
    """What one executed operation produced, for divergence reports and debugging."""

    index: int
    name: str
    ofm: tuple[int, int, int] | None
    note: str = ""
    values: np.ndarray | None = None  # the OFM as computed, when the engine captures


@dataclass
class Engine:
    """Runs the operations of one command stream against one :class:`Memory`."""

    memory: Memory
    accelerator: str
    trace: list[OpTrace] = field(default_factory=list)
    capture: bool = False

    def run(self, ops: list[BlockOp | DmaOp]) -> None:
        for op in ops:
            if isinstance(op, DmaOp):
                self._dma(op)
                self.trace.append(OpTrace(op.index, "DMA", None))
                continue
            try:
                result = self._block(op)
            except SimulationError as exc:
                raise SimulationError(f"op {op.index} ({op.name}, word {op.offset}): {exc}") from exc
            write_fm(self.memory, op.ofm, result, f"op {op.index} OFM")
            shape = (op.ofm.height, op.ofm.width, op.ofm.depth)
            self.trace.append(OpTrace(op.index, op.name, shape, values=result if self.capture else None))

    # -- DMA -------------------------------------------------------------------
    def _dma(self, op: DmaOp) -> None:
        if op.src_stride_mode or op.dst_stride_mode:
            raise SimulationError(f"op {op.index}: strided (2D/3D) DMA is not modelled")
        src = self.memory.span(op.src.region, op.src.address, op.src.length, internal=op.src_internal)
        dst = self.memory.span(op.dst.region, op.dst.address, op.dst.length, internal=op.dst_internal)
        dst[:] = src

    # -- block operations ------------------------------------------------------
    def _block(self, op: BlockOp) -> np.ndarray:
        if op.ifm_upscale == 3:
            raise SimulationError("IFM upscale mode 3 is reserved")
        if op.kind is OpKind.CONV:
            return self._conv(op)
        if op.kind is OpKind.DEPTHWISE:
            return self._depthwise(op)
        if op.kind is OpKind.POOL:
            return self._pool(op)
        return self._elementwise(op)

    def _read_stream(self, region: int, address: int, length: int) -> bytes:
        return bytes(self.memory.span(region, address, length).tobytes())

    def _weights(self, op: BlockOp, ifm_depth: int) -> np.ndarray:
        """OHWI weights of the operation; on Ethos-U65-512 two streams, one per MAC core.

        Vela's dual-core encoding (``weight_compressor.py``): within the operation's OFM
        depth, core ``c`` takes channels ``c, c + 2, ...`` with its own stream, encoded for
        an OFM block of ``ceil`` (core 0) or ``floor`` (core 1) of half the block depth.
        """
        if op.weights is None:
            raise SimulationError("no weight stream set")
        layout = WeightLayout(
            accelerator=self.accelerator,
            ofm_depth=op.ofm.depth,
            kernel_h=op.kernel.height,
            kernel_w=op.kernel.width,
            ifm_depth=ifm_depth,
            ofm_block_depth=op.block[2],
            depthwise=op.kind is OpKind.DEPTHWISE,
            part_kernel_first=op.kernel.part_kernel_first,
            dilation_y=op.kernel.dilation_y,
            dilation_x=op.kernel.dilation_x,
            ifm_bits=op.ifm.dtype.bits,
        )
        streams = [op.weights] + ([op.weights1] if op.weights1 is not None and op.weights1.length else [])
        if len(streams) == 1:
            single: np.ndarray = decode_weights(
                self._read_stream(op.weights.region, op.weights.address, op.weights.length), layout
            )
            return single
        depth, block = op.ofm.depth, op.block[2]
        out = np.zeros((depth, op.kernel.height, op.kernel.width, ifm_depth), dtype=np.int32)
        for core, rng in enumerate(streams):
            core_layout = dataclasses.replace(
                layout, ofm_depth=len(range(core, depth, 2)), ofm_block_depth=(block + 1 - core) // 2
            )
            out[core::2] = decode_weights(self._read_stream(rng.region, rng.address, rng.length), core_layout)
        return out

    def _scales(self, op: BlockOp) -> Scales:
        """Per-channel bias and scale; on Ethos-U65-512 one stream per core, interleaved as the weights."""
        if op.scales is None:
            raise SimulationError("no bias/scale stream set")
        depth = op.ofm.depth
        if op.scales1 is None or not op.scales1.length:
            return decode_scales(self._read_stream(op.scales.region, op.scales.address, op.scales.length), depth)
        parts = [
            decode_scales(self._read_stream(rng.region, rng.address, rng.length), len(range(core, depth, 2)))
            for core, rng in enumerate((op.scales, op.scales1))
        ]
        merged = []
        for name in ("bias", "scale", "shift"):
            values = np.zeros(depth, dtype=np.int64)
            for core, part in enumerate(parts):
                values[core::2] = getattr(part, name)
            merged.append(values)
        return Scales(*merged)

    def _read_ifm(self, op: BlockOp) -> np.ndarray:
        """The IFM as the kernel sees it: upscaled 2x when IFM_UPSCALE asks for it.

        NEAREST repeats every element 2x2 (resize); TRANSPOSE puts each element at
        the top-left of a 2x2 block of zero-point values (transpose convolution).
        The upscaled size is what kernel, stride and padding imply.
        """
        ifm: np.ndarray = read_fm(self.memory, op.ifm, "IFM")
        if not op.ifm_upscale:
            return ifm
        k = op.kernel
        height = (
            (op.ofm.height - 1) * k.stride_y + (k.height - 1) * k.dilation_y + 1 - op.padding.top - op.padding.bottom
        )
        width = (op.ofm.width - 1) * k.stride_x + (k.width - 1) * k.dilation_x + 1 - op.padding.left - op.padding.right
        if op.ifm_upscale == 1:
            up = np.repeat(np.repeat(ifm, 2, axis=0), 2, axis=1)
        else:
            up = np.full((ifm.shape[0] * 2, ifm.shape[1] * 2, ifm.shape[2]), op.ifm.zero_point, dtype=np.int64)
            up[::2, ::2] = ifm
        return up[:height, :width]

    def _padded_ifm(self, op: BlockOp) -> np.ndarray:
        """IFM minus its zero point, zero-padded so every kernel window is in range."""
        ifm = self._read_ifm(op) - op.ifm.zero_point
        p = op.padding
        return np.pad(ifm, ((p.top, p.bottom), (p.left, p.right), (0, 0)))

    def _windows(self, op: BlockOp, padded: np.ndarray) -> list[tuple[int, int, np.ndarray]]:
        """(ky, kx, (OH, OW, C) view) for every kernel element."""
        k = op.kernel
        oh, ow = op.ofm.height, op.ofm.width
        views = []
        for ky in range(k.height):
            y0 = ky * k.dilation_y
            for kx in range(k.width):
                x0 = kx * k.dilation_x
                view = padded[
                    y0 : y0 + (oh - 1) * k.stride_y + 1 : k.stride_y, x0 : x0 + (ow - 1) * k.stride_x + 1 : k.stride_x
                ]
                if view.shape[:2] != (oh, ow):
                    raise SimulationError(f"kernel window {ky},{kx} falls outside the padded IFM")
                views.append((ky, kx, view))
        return views

    def _output_stage(self, op: BlockOp, acc: np.ndarray) -> np.ndarray:
        if op.global_scale:
            scale, shift = op.ofm_scale
            return _finish(op, rescale(acc, scale, shift, op.rounding), self.memory)
        scales = self._scales(op)
        acc = acc + scales.bias
        return _finish(op, rescale(acc, scales.scale, scales.shift, op.rounding), self.memory)

    def _conv(self, op: BlockOp) -> np.ndarray:
        weights = self._weights(op, op.ifm.depth).astype(np.float64)
        padded = self._padded_ifm(op)
        bound = _max_abs(padded) * float(np.abs(weights).max(initial=0)) * weights[0].size
        if bound >= _EXACT_FLOAT:
            raise SimulationError("convolution partial sums could exceed float64's exact range")
        oh, ow, cout = op.ofm.height, op.ofm.width, op.ofm.depth
        acc = np.zeros((oh * ow, cout), dtype=np.float64)
        for ky, kx, view in self._windows(op, padded):
            acc += view.reshape(oh * ow, -1).astype(np.float64) @ weights[:, ky, kx, :].T
        return self._output_stage(op, acc.astype(np.int64).reshape(oh, ow, cout))

    def _depthwise(self, op: BlockOp) -> np.ndarray:
        if op.ifm.depth != op.ofm.depth:
            raise SimulationError(f"depthwise IFM depth {op.ifm.depth} != OFM depth {op.ofm.depth}")
        weights = self._weights(op, 1)[:, :, :, 0].astype(np.int64)  # (C, KH, KW)
        padded = self._padded_ifm(op)
        acc = np.zeros((op.ofm.height, op.ofm.width, op.ofm.depth), dtype=np.int64)
        for ky, kx, view in self._windows(op, padded):
            acc += view * weights[:, ky, kx]
        return self._output_stage(op, acc)

    def _pool(self, op: BlockOp) -> np.ndarray:
        ifm = self._read_ifm(op)
        p = op.padding
        pads = ((p.top, p.bottom), (p.left, p.right), (0, 0))
        if op.mode == "MAX":
            padded = np.pad(ifm, pads, constant_values=np.iinfo(np.int64).min)
            out: np.ndarray | None = None
            for _, _, view in self._windows(op, padded):
                out = view.copy() if out is None else np.maximum(out, view)
            assert out is not None
            # Max pooling rescales like a 1x1 average: relative to the IFM zero point.
            acc = out - op.ifm.zero_point
            if op.global_scale:
                return _finish(op, rescale(acc, op.ofm_scale[0], op.ofm_scale[1], op.rounding), self.memory)
            return _finish(op, acc, self.memory)
        if op.mode not in ("AVERAGE", "REDUCE_SUM"):
            raise SimulationError(f"pooling mode {op.mode} is not modelled")
        padded = np.pad(ifm - op.ifm.zero_point, pads)
        depth_sum = op.mode == "REDUCE_SUM" and op.ofm.depth == 1 < op.ifm.depth
        acc = np.zeros((op.ofm.height, op.ofm.width, op.ifm.depth if depth_sum else op.ofm.depth), dtype=np.int64)
        for _, _, view in self._windows(op, padded):
            acc += view
        if depth_sum:  # REDUCE_SUM to one channel sums over the IFM depth (TOSA REDUCE_SUM on the last axis)
            acc = acc.sum(axis=2, keepdims=True)
        if op.mode == "REDUCE_SUM" or not (p.top or p.left or p.bottom or p.right):
            return self._output_stage(op, acc)
        # A padded average divides by the number of valid (non-padding) elements at
        # each position, as TFLite's AVERAGE_POOL_2D does, rounding half away from
        # zero; the OFM scale (1 >> 0 from Vela) applies after.  Unpadded averages
        # carry the reciprocal of the kernel size in OFM_SCALE instead.
        ones = np.pad(np.ones((*ifm.shape[:2], 1), dtype=np.int64), pads)
        count = np.zeros((op.ofm.height, op.ofm.width, 1), dtype=np.int64)
        for _, _, view in self._windows(op, ones):
            count += view
        if np.any(count == 0):
            raise SimulationError("average pooling window with no valid element")
        half = count // 2
        avg = np.where(acc >= 0, (acc + half) // count, -((-acc + half) // count))
        if not op.global_scale:
            return _finish(op, avg, self.memory)
        return _finish(op, rescale(avg, op.ofm_scale[0], op.ofm_scale[1], op.rounding), self.memory)

    def _elementwise(self, op: BlockOp) -> np.ndarray:
        a = read_fm(self.memory, op.ifm, "IFM") - op.ifm.zero_point
        shape = (op.ofm.height, op.ofm.width, op.ofm.depth)
        mode = op.mode
        if mode == "CLZ":
            return _finish_raw(op, _clz32(np.broadcast_to(a, shape)))
        if mode in ("ABS", "LRELU"):
            raise SimulationError(f"elementwise {mode} is not modelled")
        assert op.ifm2 is not None
        if op.ifm2_scalar is not None:
            b = np.full((1, 1, 1), op.ifm2_scalar - op.ifm2.zero_point, dtype=np.int64)
        else:
            b = read_fm(self.memory, op.ifm2, "IFM2") - op.ifm2.zero_point
        a = np.broadcast_to(a, shape)
        b = np.broadcast_to(b, shape)
        if op.reverse_operands:
            a, b = b, a
        scale, shift = op.ofm_scale
        if mode in ("ADD", "SUB"):
            if op.ifm_scale_mode == 0:
                a2 = a * (op.opa_scale[0] & 0xFFFF)
                b2 = b * (op.opb_scale & 0xFFFF)
            else:
                left = 20 if op.ifm.dtype.bits == 8 else 15
                opa, opa_shift = op.opa_scale
                scaled, plain = (a, b) if op.ifm_scale_mode == 1 else (b, a)
                scaled2 = rescale(scaled * (1 << left), opa, opa_shift + left, op.ifm_rounding)
                plain2 = plain * (1 << (left - 1))
                a2, b2 = (scaled2, plain2) if op.ifm_scale_mode == 1 else (plain2, scaled2)
            acc = a2 + b2 if mode == "ADD" else a2 - b2
            return _finish(op, rescale(acc, scale, shift, op.rounding), self.memory)
        if mode == "MUL":
            bound = _max_abs(a) * _max_abs(b)
            acc = _as_exact(a, bound) * _as_exact(b, bound)
            if op.ifm.dtype.bits == 32 and op.ifm2.dtype.bits == 32:
                scale = _mul32_scale(op, scale)
            return _finish(op, rescale(acc, scale, shift, op.rounding), self.memory)
        if mode in ("MIN", "MAX"):
            acc = np.minimum(a, b) if mode == "MIN" else np.maximum(a, b)
            if op.global_scale:
                return _finish(op, rescale(acc, scale, shift, op.rounding), self.memory)
            return _finish(op, acc, self.memory)
        if mode in ("SHL", "SHR"):
            return _finish_raw(op, _shift(mode, a, b, op.rounding))
        raise SimulationError(f"elementwise {mode} is not modelled")
