"""SOFTMAX for the TOSA lift: integer ops Vela runs for TOSA, and the softmax-weighted sum in one pass.

Why its own form: TOSA has no SOFTMAX, and Vela's TOSA reader does not decompose one.
The plain form (:func:`_plain`) builds ``2^16 E / S`` per element from exp codes; every
step is an int32 tensor of the whole input, which does not fit SRAM on a detection
head (YOLOv8n-320's DFL: 134,400 elements, 1.9 of its 12.8 Mcycles).

The expectation form (:func:`_expectation`): when the only reader of the softmax is a
1x1 CONV_2D over the softmax axis (a distribution's expectation, e.g. the DFL box
decoder ``sum_i i p_i`` of ultralytics detectors), ``W p = (W E) / (1 E)``: the conv
runs on the two exp-code bytes with one extra all-ones output channel that gives
``S``, and the division happens per row on the conv's few output channels instead
of per element. Exact in real arithmetic; in int8 the probabilities are no longer
rounded to 1/256 before the conv, so the result is closer to the float model than
the TFLite graph's. A TRANSPOSE between the two that keeps the softmax axis last
moves the conv's output instead of the probabilities.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
from tosa.DType import DType
from tosa.NanPropagationMode import NanPropagationMode
from tosa.Op import Op

from nirc.tosa.serial import TosaUnsupportedError
from nirc.tosa.serial import attr as _attr


class _Lift(Protocol):
    """What this module uses of :class:`nirc.tosa.lift._Lift` (which imports this module)."""

    tensors: list[Any]
    sg: Any
    pad_folds: dict[int, int]
    absorbed: set[int]
    tables: int

    def opname(self, op: Any) -> str: ...
    def only_reader(self, index: int) -> int | None: ...
    def name(self, index: int) -> str: ...
    def new(self, base: str, shape: Sequence[int], dtype: int) -> str: ...
    def const(self, base: str, values: np.ndarray, dtype: int) -> str: ...
    def shape_const(self, base: str, values: Sequence[int]) -> str: ...
    def define(self, index: int) -> str: ...
    def op(self, code: int, inputs: Sequence[str], outputs: Sequence[str], attr: Any = None) -> None: ...
    def rescale(
        self, src: str, shape: Sequence[int], scales: np.ndarray, in_zp: int, in_type: int, out_type: int,
        out_zp: int = 0, out: str | None = None,
    ) -> str: ...  # fmt: skip
    def finish_int8(self, acc_or_int8: str, out_index: int, act: int, shape: Sequence[int]) -> None: ...


#: The row maximum's exp code, 15 bits in two int8 TABLEs (high and low byte).
_EXP_ONE = (1 << 15) - 1
#: Longest row of the expectation form: ``127 * 127 * n * 256`` (the high byte's weighted sum) fits int32.
_EXPECTATION_MAX_ROW = 512


def _row_const(lift: _Lift, base: str, value: int, rank: int) -> str:
    return lift.const(base, np.full([1] * rank, value, np.int32), DType.INT32)


def _mul(lift: _Lift, a: str, b: str, shape: Sequence[int], shift: int, base: str) -> str:
    """TOSA MUL of int32 tensors: ``round(a * b / 2^shift)`` (half up), the product taken exactly."""
    out = lift.new(base, shape, DType.INT32)
    lift.op(Op.MUL, [a, b, lift.const("mul_shift", np.asarray([shift], np.int8), DType.INT8)], [out],
            _attr("MulAttribute"))  # fmt: skip
    return out


def _binary32(lift: _Lift, code: int, a: str, b: str, shape: Sequence[int], base: str) -> str:
    out = lift.new(base, shape, DType.INT32)
    attr = {Op.ADD: "AddAttribute", Op.SUB: "SubAttribute", Op.LOGICAL_LEFT_SHIFT: "LogicalLeftShiftAttribute"}
    lift.op(code, [a, b], [out], _attr(attr[code]))
    return out


def _exp_bytes(lift: _Lift, src: str, scale: float, beta: float, shape: list[int]) -> tuple[str, str]:
    """High and low byte (int8; the low one with zero point -128) of ``E = round((2^15-1) exp(beta s d))``.

    ``d = x - max(x)`` over the last axis is in ``[-255, 0]``, so ``d + 127`` is an exact int8 code.
    """
    rank = len(shape)
    row = [*shape[:-1], 1]
    top = lift.new("sm_max", row, DType.INT8)
    lift.op(Op.REDUCE_MAX, [src], [top], _attr("ReduceMaxAttribute", rank - 1, NanPropagationMode.PROPAGATE))
    wide = lift.rescale(src, shape, np.asarray([1.0]), 0, DType.INT8, DType.INT32)
    top_wide = lift.rescale(top, row, np.asarray([1.0]), 0, DType.INT8, DType.INT32)
    diff = _binary32(lift, Op.SUB, wide, top_wide, shape, "sm_diff")
    code = lift.rescale(diff, shape, np.asarray([1.0]), 0, DType.INT32, DType.INT8, 127)
    d = scale * (np.arange(-128, 128) - 127)
    exp16 = np.round(np.exp(beta * d) * _EXP_ONE).astype(np.int64)
    out = []
    for part, entries in (("hi", exp16 >> 8), ("lo", (exp16 & 0xFF) - 128)):
        byte = lift.new(f"sm_exp_{part}", shape, DType.INT8)
        tab = lift.const(f"sm_exp_{part}_table", entries.astype(np.int8), DType.INT8)
        lift.op(Op.TABLE, [code, tab], [byte], _attr("TableAttribute"))
        out.append(byte)
    return out[0], out[1]


def _reciprocal(lift: _Lift, total: str, row: list[int]) -> str:
    """Per row, ``r`` with ``round(v * r / 2^27) = 2^16 v / S`` for ``S = total > 0`` (int32).

    ``sh = clz(S) - 1`` puts ``M = S << sh`` in ``[2^30, 2^31)``, i.e. ``m = M / 2^30`` in ``[1, 2)``.
    A TABLE indexed by ``round(M / 2^22)`` (256 buckets) gives ``x0 ~ 1/m`` to 0.4%; one Newton
    step ``x1 = x0 (2 - m x0)`` squares that error; the power of two is applied to ``x1``
    with one rounding shift. Every product fits int32 after its MUL's rounding shift.
    """
    rank = len(row)
    zeros = lift.new("sm_clz", row, DType.INT32)
    lift.op(Op.CLZ, [total], [zeros], _attr("ClzAttribute"))
    shift = _binary32(lift, Op.SUB, zeros, _row_const(lift, "one", 1, rank), row, "sm_shift")
    norm = _binary32(lift, Op.LOGICAL_LEFT_SHIFT, total, shift, row, "sm_norm")  # m * 2^30
    centred = _binary32(lift, Op.SUB, norm, _row_const(lift, "mid", 384 << 22, rank), row, "sm_centred")
    bucket = lift.rescale(centred, row, np.asarray([2.0**-22]), 0, DType.INT32, DType.INT8)
    x0_entries = np.round((1 << 17) / (np.arange(-128, 128) + 384)) - 385  # 2^9 / m, less 385
    inv8 = lift.new("sm_recip", row, DType.INT8)
    x0_tab = lift.const("sm_recip_table", np.clip(x0_entries, -128, 127).astype(np.int8), DType.INT8)
    lift.op(Op.TABLE, [bucket, x0_tab], [inv8], _attr("TableAttribute"))
    inv_code = lift.rescale(inv8, row, np.asarray([float(1 << 20)]), 0, DType.INT8, DType.INT32)
    x0 = _binary32(lift, Op.ADD, inv_code, _row_const(lift, "recip_offset", 385 << 20, rank), row, "sm_x0")
    m_x0 = _mul(lift, norm, x0, row, 31, "sm_mx0")  # m x0 * 2^28
    two_less = _binary32(lift, Op.SUB, _row_const(lift, "two", 1 << 29, rank), m_x0, row, "sm_newton")
    x1 = _mul(lift, x0, two_less, row, 28, "sm_x1")  # x1 * 2^29
    down = _binary32(lift, Op.SUB, _row_const(lift, "sixteen", 16, rank), shift, row, "sm_down")
    scaled = lift.new("sm_scaled", row, DType.INT32)  # x1 * 2^(13 + sh)
    lift.op(Op.ARITHMETIC_RIGHT_SHIFT, [x1, down], [scaled], _attr("ArithmeticRightShiftAttribute", True))
    return scaled


def _plain(lift: _Lift, op: Any) -> None:
    """SOFTMAX over the last axis, rounded once at the end: ``E x1 2^(sh - 30)`` per element, then RESCALE.

    Measured: within 2 LSB of TFLite's fixed-point SOFTMAX (98.9% of elements equal).
    8-bit exp codes (one TABLE) were 0.4 ms cheaper on YOLOv8n-320 but 4 LSB off on a
    32-way row: the rounding of many small codes adds up in ``S``.
    """
    x_i, y_index = int(op.inputs[0]), int(op.outputs[0])
    x, y = lift.tensors[x_i], lift.tensors[y_index]
    beta = float(getattr(op.builtinOptions, "beta", 1.0) or 1.0)
    shape = list(x.shape)
    row = [*shape[:-1], 1]
    hi, lo = _exp_bytes(lift, lift.name(x_i), float(x.scale[0]), beta, shape)
    halves = [lift.rescale(hi, shape, np.asarray([256.0]), 0, DType.INT8, DType.INT32),
              lift.rescale(lo, shape, np.asarray([1.0]), -128, DType.INT8, DType.INT32)]  # fmt: skip
    e32 = _binary32(lift, Op.ADD, halves[0], halves[1], shape, "sm_exp")
    total = lift.new("sm_sum", row, DType.INT32)
    lift.op(Op.REDUCE_SUM, [e32], [total], _attr("ReduceSumAttribute", len(shape) - 1))
    prob = _mul(lift, e32, _reciprocal(lift, total, row), shape, 27, "sm_prob")  # 2^16 E / S
    out_scale = np.asarray([2.0**-16 / float(y.scale[0])])
    lift.rescale(prob, shape, out_scale, 0, DType.INT32, DType.INT8, y.zp, out=lift.define(y_index))
    lift.tables += 3


def _expectation_reader(lift: _Lift, k: int, op: Any) -> tuple[int | None, int] | None:
    """``(TRANSPOSE op or None, CONV_2D op)`` when the softmax's only reader is a 1x1 conv over its last axis."""
    out = int(op.outputs[0])
    reader = lift.only_reader(out)
    transpose = None
    if reader is not None and lift.opname(lift.sg.operators[reader]) == "TRANSPOSE":
        t_op = lift.sg.operators[reader]
        perm = lift.tensors[int(t_op.inputs[1])].data
        rank = len(lift.tensors[out].shape)
        if perm is None or int(np.asarray(perm).reshape(-1)[-1]) != rank - 1 or int(t_op.inputs[0]) != out:
            return None
        transpose, reader = reader, lift.only_reader(int(t_op.outputs[0]))
    if reader is None or lift.opname(lift.sg.operators[reader]) != "CONV_2D":
        return None
    conv = lift.sg.operators[reader]
    w = lift.tensors[int(conv.inputs[1])]
    opts = conv.builtinOptions
    fed = int(lift.sg.operators[transpose].outputs[0]) if transpose is not None else out
    if int(conv.inputs[0]) != fed or w.data is None or w.shape[1:3] != (1, 1):
        return None
    if (opts.strideH, opts.strideW) != (1, 1) or lift.pad_folds.get(reader) is not None:
        return None
    if lift.tensors[fed].shape[-1] > _EXPECTATION_MAX_ROW or len(lift.tensors[out].shape) != 4:
        return None
    return transpose, reader


def _expectation(lift: _Lift, op: Any, transpose: int | None, conv_k: int) -> None:
    """``conv(softmax(x))`` for a 1x1 conv over the softmax axis: ``(W E + B') / S`` per row (module docstring).

    With ``E = 256 hi + lo`` (the exp-code bytes) and an all-ones extra output channel,
    one CONV2D per byte gives ``W E`` and ``S``. Per row and output channel then
    ``2^16 (W E) / S`` plus the bias at that scale, and one per-channel RESCALE by
    ``s_w[o] 2^-16 / s_out`` applies the conv's weight scale: what the TFLite conv computes
    from the real (unrounded) probabilities.
    """
    x_i = int(op.inputs[0])
    x, p = lift.tensors[x_i], lift.tensors[int(op.outputs[0])]
    conv = lift.sg.operators[conv_k]
    w, y_index = lift.tensors[int(conv.inputs[1])], int(conv.outputs[0])
    y = lift.tensors[y_index]
    beta = float(getattr(op.builtinOptions, "beta", 1.0) or 1.0)
    shape = list(x.shape)
    n, out_ch = shape[-1], w.shape[0]
    rows = int(np.prod(shape[:-1]))
    flat, flat_out = [1, rows, 1, n], [1, rows, 1, out_ch + 1]
    src = lift.name(x_i)
    if shape != flat:
        src_flat = lift.new("sm_rows", flat, DType.INT8)
        lift.op(Op.RESHAPE, [src, lift.shape_const("sm_rows_shape", flat)], [src_flat])
        src = src_flat
    hi, lo = _exp_bytes(lift, src, float(x.scale[0]), beta, flat)
    assert w.data is not None
    weights = np.concatenate([w.data.reshape(out_ch, 1, 1, n), np.ones((1, 1, 1, n), np.int8)]).astype(np.int8)
    w_name = lift.const("sm_weights", weights, DType.INT8)
    zero_bias = lift.const("sm_bias", np.zeros(out_ch + 1, np.int32), DType.INT32)
    wzp = lift.const("wzp", np.asarray([0], np.int8), DType.INT8)
    sums = []
    for byte, zp in ((hi, 0), (lo, -128)):
        acc = lift.new("sm_wsum", flat_out, DType.INT32)
        izp = lift.const("izp", np.asarray([zp], np.int8), DType.INT8)
        lift.op(Op.CONV2D, [byte, w_name, zero_bias, izp, wzp], [acc],
                _attr("Conv2dAttribute", [0, 0, 0, 0], [1, 1], [1, 1], False, DType.INT32))  # fmt: skip
        sums.append(acc)
    high = _binary32(lift, Op.LOGICAL_LEFT_SHIFT, sums[0], _row_const(lift, "eight", 8, 4), flat_out, "sm_hi256")
    weighted = _binary32(lift, Op.ADD, high, sums[1], flat_out, "sm_we")  # W E, and S in the last channel
    row = [1, rows, 1, 1]
    numer, total = lift.new("sm_numer", [1, rows, 1, out_ch], DType.INT32), lift.new("sm_sum", row, DType.INT32)
    for dst, start, size in ((numer, 0, out_ch), (total, out_ch, 1)):
        lift.op(Op.SLICE, [weighted, lift.shape_const("start", [0, 0, 0, start]),
                           lift.shape_const("size", [1, rows, 1, size])], [dst], _attr("SliceAttribute"))  # fmt: skip
    ratio = _mul(lift, numer, _reciprocal(lift, total, row), [1, rows, 1, out_ch], 27, "sm_ratio")  # 2^16 WE/S
    bias_i = int(conv.inputs[2]) if len(conv.inputs) > 2 else -1
    bias_q = lift.tensors[bias_i].data if bias_i >= 0 else None
    if bias_q is not None and np.any(bias_q):  # int32 at s_p s_w[o]: 2^16 s_p of it at the ratio's scale
        offsets = np.round(bias_q.astype(np.float64).reshape(-1) * float(p.scale[0]) * 65536.0).astype(np.int64)
        if np.abs(offsets).max() >= 1 << 30:
            raise TosaUnsupportedError("TOSA lift: softmax expectation bias beyond int32")
        b_name = lift.const("sm_conv_bias", offsets.astype(np.int32).reshape(1, 1, 1, out_ch), DType.INT32)
        ratio = _binary32(lift, Op.ADD, ratio, b_name, [1, rows, 1, out_ch], "sm_biased")
    scales = np.broadcast_to(w.scale, (out_ch,)) * 2.0**-16 / float(y.scale[0])
    act = int(getattr(conv.builtinOptions, "fusedActivationFunction", 0))
    per_row = [*shape[:-1], out_ch]
    mid = lift.rescale(ratio, [1, rows, 1, out_ch], scales, 0, DType.INT32, DType.INT8, y.zp)
    # The int8 result leaves through an identity 1x1 depthwise conv in the softmax's own shape, as
    # the TFLite conv's result did: written by the elementwise RESCALE itself, Vela folded the
    # RESHAPE to YOLOv8n-320's [1, 4, 2100] into its OFM addressing and wrote rows 35 MB past SRAM
    # (the functional model refused to run it).
    shaped = lift.new("sm_expect", per_row, DType.INT8)
    lift.op(Op.RESHAPE, [mid, lift.shape_const("sm_expect_shape", per_row)], [shaped])
    copied = _identity_copy(lift, shaped, per_row, y.zp)
    if transpose is None:
        lift.finish_int8(copied, y_index, act, per_row)
    else:
        perm_data = lift.tensors[int(lift.sg.operators[transpose].inputs[1])].data
        perm = [int(v) for v in np.asarray(perm_data).reshape(-1)]
        moved = lift.new("sm_expect_perm", [per_row[i] for i in perm], DType.INT8)
        lift.op(Op.TRANSPOSE, [copied], [moved], _attr("TransposeAttribute", perm))
        lift.finish_int8(moved, y_index, act, list(y.shape))
    lift.absorbed.update({conv_k} | ({transpose} if transpose is not None else set()))
    lift.tables += 3


def _identity_copy(lift: _Lift, src: str, shape: list[int], zp: int) -> str:
    """``src`` copied by a 1x1 depthwise conv of weight 1 and an exact unit RESCALE (int8, zero point ``zp``)."""
    channels = shape[-1]
    acc = lift.new("sm_copy_acc", shape, DType.INT32)
    inputs = [
        src,
        lift.const("sm_copy_w", np.ones((1, 1, channels, 1), np.int8), DType.INT8),
        lift.const("sm_copy_b", np.zeros(channels, np.int32), DType.INT32),
        lift.const("izp", np.asarray([zp], np.int8), DType.INT8),
        lift.const("wzp", np.asarray([0], np.int8), DType.INT8),
    ]
    lift.op(Op.DEPTHWISE_CONV2D, inputs, [acc],
            _attr("DepthwiseConv2dAttribute", [0, 0, 0, 0], [1, 1], [1, 1], False, DType.INT32))  # fmt: skip
    return lift.rescale(acc, shape, np.asarray([1.0]), 0, DType.INT32, DType.INT8, zp)


def lift_softmax(lift: _Lift, k: int, op: Any) -> None:
    """SOFTMAX over the last axis: the expectation form when a 1x1 conv reads it, else the plain form."""
    shape = lift.tensors[int(op.inputs[0])].shape
    if len(shape) == 0 or shape[-1] >= 1 << 22:
        raise TosaUnsupportedError("TOSA lift: SOFTMAX over 2^22 or more elements")
    found = _expectation_reader(lift, k, op)
    if found is not None:
        _expectation(lift, op, *found)
        return
    _plain(lift, op)
