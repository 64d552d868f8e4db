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


def _finish(op: BlockOp, values: np.ndarray) -> np.ndarray:
    """Add the OFM zero point, apply the activation clamp and saturate to the OFM type."""
    out = values + op.ofm.zero_point
    if op.activation.lut_index is not None or op.activation.function in (3, 4):
        raise SimulationError(f"op {op.index}: activation function {op.activation.function} (LUT/tanh/sigmoid)")
    if op.ofm.dtype.bits <= 16:
        out = np.clip(out, op.activation.minimum, op.activation.maximum)
    clipped: np.ndarray = np.clip(out, op.ofm.dtype.min, op.ofm.dtype.max)
    return clipped


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
        if op.ifm_upscale:
            raise SimulationError("IFM upscaling (resize/transpose-conv) is not modelled")
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
        if op.weights is None:
            raise SimulationError("no weight stream set")
        if op.weights1 is not None and op.weights1.length:
            raise SimulationError("dual-core weight streams (Ethos-U65-512) are not modelled")
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
        stream = self._read_stream(op.weights.region, op.weights.address, op.weights.length)
        weights: np.ndarray = decode_weights(stream, layout)
        return weights

    def _scales(self, op: BlockOp) -> Scales:
        if op.scales is None:
            raise SimulationError("no bias/scale stream set")
        stream = self._read_stream(op.scales.region, op.scales.address, op.scales.length)
        return decode_scales(stream, op.ofm.depth)

    def _padded_ifm(self, op: BlockOp) -> np.ndarray:
        """IFM minus its zero point, zero-padded so every kernel window is in range."""
        ifm = read_fm(self.memory, op.ifm, "IFM") - op.ifm.zero_point
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
            return _finish(op, rescale(acc, scale, shift, op.rounding))
        scales = self._scales(op)
        acc = acc + scales.bias
        return _finish(op, rescale(acc, scales.scale, scales.shift, op.rounding))

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
        ifm = read_fm(self.memory, op.ifm, "IFM")
        p = op.padding
        if op.mode == "MAX":
            lowest = np.iinfo(np.int64).min
            padded = np.pad(ifm, ((p.top, p.bottom), (p.left, p.right), (0, 0)), constant_values=lowest)
            out = None
            for _, _, view in self._windows(op, padded):
                out = view.copy() if out is None else np.maximum(out, view)
            assert out is not None
            # Max pooling rescales like a 1x1 average: subtract the IFM zero point first.
            acc = out - op.ifm.zero_point
            if op.global_scale:
                return _finish(op, rescale(acc, op.ofm_scale[0], op.ofm_scale[1], op.rounding))
            return _finish(op, acc)
        if op.mode in ("AVERAGE", "REDUCE_SUM"):
            if (p.top or p.left or p.bottom or p.right) and op.mode == "AVERAGE":
                raise SimulationError("average pooling with padding is not modelled")
            centred = ifm - op.ifm.zero_point
            padded = np.pad(centred, ((p.top, p.bottom), (p.left, p.right), (0, 0)))
            acc = np.zeros((op.ofm.height, op.ofm.width, op.ofm.depth), dtype=np.int64)
            for _, _, view in self._windows(op, padded):
                acc += view
            return self._output_stage(op, acc)
        raise SimulationError(f"pooling mode {op.mode} is not modelled")

    def _elementwise(self, op: BlockOp) -> np.ndarray:
        a = read_fm(self.memory, op.ifm, "IFM") - op.ifm.zero_point
        shape = (op.ofm.height, op.ofm.width, op.ofm.depth)
        mode = op.mode
        if mode in ("ABS", "LRELU", "CLZ"):
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
            return _finish(op, rescale(acc, scale, shift, op.rounding))
        if mode == "MUL":
            bound = _max_abs(a) * _max_abs(b)
            acc = _as_exact(a, bound) * _as_exact(b, bound)
            return _finish(op, rescale(acc, scale, shift, op.rounding))
        if mode in ("MIN", "MAX"):
            acc = np.minimum(a, b) if mode == "MIN" else np.maximum(a, b)
            if op.global_scale:
                return _finish(op, rescale(acc, scale, shift, op.rounding))
            return _finish(op, acc)
        if mode in ("SHL", "SHR"):
            raise SimulationError(f"elementwise {mode} is not modelled")
        raise SimulationError(f"elementwise {mode} is not modelled")
