"""Lift nirc's int8 TFLite to a TOSA 1.0 (PRO-INT) graph for Vela, one-input functions as TABLE.

Why: TFLite has no generic lookup-table op, so SiLU (``x * sigmoid(x)``) reaches
Vela as LOGISTIC + MUL: the conv output is written, read twice and the MUL is a
second full pass (efficientnet_b0: 8.2 of 16.6 ms). Vela 5.2 also reads TOSA 1.0,
where TABLE is an op; Vela applies a TABLE in the producing op's output stage at
no cost (one 1x1 conv 32->64 at 56x56: 463,846 cycles with or without it) and
writes a TFLite file whose single ``ethos-u`` custom op TFLite Micro runs.

The input is the int8 TFLite nirc already emitted, so every scale is decided;
each op becomes what TOSA specifies for it:

* CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED: CONV2D / DEPTHWISE_CONV2D (int32
  accumulators, input zero point as an operand) then a per-channel RESCALE
  (``s_in * s_w[o] / s_out``, 32-bit multiplier, double rounding as TFLite), then a
  CLAMP for a fused activation. FULLY_CONNECTED is a 1x1 CONV2D between RESHAPEs.
* ADD / SUB: both inputs RESCALEd to int32 at ``2^20 * s_i / (2 max(s_1, s_2))``
  (TFLite's own scheme), ADD/SUB, RESCALE to the output.
* MUL: inputs to int32 without their zero points, MUL, RESCALE by ``s_1 s_2 / s_out``.
* every one-input function of an int8 tensor -- LOGISTIC, TANH, HARD_SWISH, GELU,
  ELU, EXP, LOG, RSQRT, LEAKY_RELU, the RELUs, an int8 QUANTIZE, any chain of
  those, and ``MUL(x, chain(x))`` (SiLU, Mish, GELU written out) -- becomes ONE
  TABLE computed from the composite real function: rounding happens once, so it
  is as exact as int8 allows (a TFLite chain rounds at each step).
* AVERAGE_POOL_2D / MAX_POOL_2D (same int8 parameters in and out, as TFLite),
  RESHAPE, CONCATENATION (RESCALE of inputs whose parameters differ), PAD,
  TRANSPOSE, unit-stride STRIDED_SLICE, SPLIT (one SLICE per part).

Anything else raises :class:`TosaUnsupportedError` naming the op: the caller keeps
the TFLite route. The TOSA graph, not the TFLite file, is then the int8 reference:
the TOSA reference model computes exactly what these ops specify (see
:mod:`nirc.tosa.reference`), and the Vela output is checked against it bit for bit.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from ai_edge_litert import schema_py_generated as tfl
from tosa import TosaTensor
from tosa.DType import DType
from tosa.NanPropagationMode import NanPropagationMode
from tosa.Op import Op
from tosa.ResizeMode import ResizeMode
from tosa.RoundingMode import RoundingMode

from nirc.tosa.serial import TosaUnsupportedError as TosaUnsupportedError  # re-exported
from nirc.tosa.serial import attr as _attr
from nirc.tosa.serial import ts
from nirc.tosa.softmax import lift_softmax
from nirc.tosa.tables import RealFn, table, unary_function

_BUILTIN: dict[int, str] = {v: k for k, v in vars(tfl.BuiltinOperator).items() if not k.startswith("_")}
_SAME = tfl.Padding.SAME
#: TFLite fused activation -> real clamp bounds.
_FUSED = {
    tfl.ActivationFunctionType.NONE: (-math.inf, math.inf),
    tfl.ActivationFunctionType.RELU: (0.0, math.inf),
    tfl.ActivationFunctionType.RELU_N1_TO_1: (-1.0, 1.0),
    tfl.ActivationFunctionType.RELU6: (0.0, 6.0),
}
_ADD_SHIFT = 20  # TFLite's int8 ADD left shift


@dataclass(frozen=True)
class TosaGraph:
    """A serialised TOSA 1.0 graph and its int8 interface.

    Attributes:
        data: the ``.tosa`` flatbuffer.
        inputs / outputs: TOSA tensor names, in the TFLite model's order.
        quant: per input/output name, ``(scale, zero_point)`` of the int8 codes.
        tables: how many TABLE ops the lift wrote, and how many TFLite ops they replace.
        staged: inputs copied by an identity TABLE first (``stage_inputs``).
        tflite_inputs / tflite_outputs: the TFLite tensor names of ``inputs`` / ``outputs``.
        split: set by :func:`nirc.tosa.partition.lift_split` when only part of the model lifted.
    """

    data: bytes
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    quant: dict[str, tuple[float, int]]
    tables: int
    ops_folded_into_tables: int
    staged: tuple[str, ...] = ()
    tflite_inputs: tuple[str, ...] = ()
    tflite_outputs: tuple[str, ...] = ()
    split: SplitRest | None = None


@dataclass(frozen=True)
class SplitRest:
    """What of a split model Vela reads as TFLite (see :mod:`nirc.tosa.partition`).

    Attributes:
        tflite: the sub-model of the ops that did not lift and all they feed.
        ops: their TFLite op names, for the report.
        inputs / outputs: the whole model's interface tensor names, in its order.
    """

    tflite: bytes
    ops: tuple[str, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class _Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: int
    scale: np.ndarray
    zp: int
    data: np.ndarray | None


#: Inputs with at most this many channels are staged (see :func:`lift`).
STAGE_MAX_CHANNELS = 4
#: ... when they take at most this much of the U65's 384 KiB SRAM arena cache.
STAGE_MAX_BYTES = 192 * 1024


def lift(tflite: bytes, *, stage_inputs: bool = True) -> TosaGraph:
    """Translate an int8 TFLite flatbuffer (one subgraph) to TOSA 1.0.

    ``stage_inputs``: a model input with few channels (an image) is first copied by an
    identity TABLE, so its readers find it in SRAM. Vela reads a 3-channel NHWC map
    from DRAM in short bursts: a 224x224x3 stem conv (3x3, stride 2, 16 channels)
    costs 825,557 cycles reading the input, 228,203 with the copy (77,316 of them the
    copy, an elementwise op that streams the map). Exact: the table is the identity;
    the input contract (shape, int8 parameters) is unchanged.

    Raises:
        TosaUnsupportedError: an op or operand type the lift does not handle.
    """
    return _Lift(tflite, stage_inputs=stage_inputs).run()


def scale32(scale: float) -> tuple[int, int]:
    """TOSA RESCALE (multiplier, shift) with ``multiplier / 2^shift == scale`` to 31 bits."""
    if scale <= 0.0:
        return 0, 2
    mantissa, exponent = math.frexp(scale)
    multiplier = round(mantissa * (1 << 31))
    if multiplier == 1 << 31:
        multiplier //= 2
        exponent += 1
    shift = 31 - exponent
    if shift > 62:
        multiplier >>= shift - 62
        shift = 62
    if shift < 2:
        raise TosaUnsupportedError(f"rescale factor {scale} is beyond TOSA's 32-bit RESCALE")
    return multiplier, shift


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", name) or "t"


class _Lift:
    def __init__(self, data: bytes, *, stage_inputs: bool = True) -> None:
        self.stage_inputs = stage_inputs
        self.renamed: dict[int, str] = {}  # tensor -> the TOSA tensor its readers use instead
        self.model = tfl.ModelT.InitFromPackedBuf(bytearray(data), 0)
        if len(self.model.subgraphs) != 1:
            raise TosaUnsupportedError("TOSA lift: only single-subgraph TFLite models")
        self.sg = self.model.subgraphs[0]
        self.g = ts.TosaSerializer(
            "", tosa_version_major=1, tosa_version_minor=0, tosa_version_patch=0, tosa_version_draft=False
        )
        self.block = self.g.currRegion.currBasicBlock
        self.tensors = [self._tensor(i) for i in range(len(self.sg.tensors))]
        self.counter = 0
        self.tables = 0
        self.folded = 0
        self.consumers: dict[int, list[int]] = {}
        for k, op in enumerate(self.sg.operators):
            for i in op.inputs:
                if i >= 0:
                    self.consumers.setdefault(int(i), []).append(k)
        self.graph_outputs = {int(i) for i in self.sg.outputs}
        self.pad_folds = self._pad_folds()  # conv op -> the PAD op it absorbs
        self.absorbed: set[int] = set()  # later ops a handler already translated (a softmax's expectation)

    # ------------------------------------------------------------------ reading
    def _tensor(self, index: int) -> _Tensor:
        t = self.sg.tensors[index]
        q = t.quantization
        scale = np.asarray(q.scale if q is not None and q.scale is not None else [1.0], np.float64)
        zp = int(q.zeroPoint[0]) if q is not None and q.zeroPoint is not None and len(q.zeroPoint) else 0
        buf = self.model.buffers[t.buffer].data if t.buffer < len(self.model.buffers) else None
        shape = tuple(int(d) for d in (t.shape if t.shape is not None else []))
        data = None
        if buf is not None and len(buf):
            np_type = {tfl.TensorType.INT8: np.int8, tfl.TensorType.INT32: np.int32, tfl.TensorType.INT64: np.int64}
            if t.type not in np_type:
                raise TosaUnsupportedError(f"TOSA lift: constant '{_name(t)}' has TFLite type {t.type}")
            data = np.frombuffer(bytes(buf), dtype=np_type[t.type]).reshape(shape)
        return _Tensor(_name(t), shape, int(t.type), scale, zp, data)

    def opname(self, op: Any) -> str:
        code = self.model.operatorCodes[op.opcodeIndex]
        return _BUILTIN.get(max(int(code.builtinCode), int(code.deprecatedBuiltinCode)), "CUSTOM")

    def only_reader(self, index: int) -> int | None:
        readers = self.consumers.get(index, [])
        return readers[0] if len(readers) == 1 and index not in self.graph_outputs else None

    # ------------------------------------------------------------------ writing
    def fresh(self, base: str) -> str:
        self.counter += 1
        return f"{_safe(base)[:48]}_{self.counter}"

    def name(self, index: int) -> str:
        return self.renamed.get(index) or self.own_name(index)

    def own_name(self, index: int) -> str:
        return f"t{index}_{_safe(self.tensors[index].name)[:40]}"

    def stage(self, index: int) -> None:
        """Readers of input ``index`` read an identity-TABLE copy of it (see :func:`lift`)."""
        t = self.tensors[index]
        if (
            not self.stage_inputs
            or len(t.shape) != 4
            or t.shape[-1] > STAGE_MAX_CHANNELS
            or int(np.prod(t.shape)) > STAGE_MAX_BYTES
            or index in self.graph_outputs
            or not self.consumers.get(index)
            or self._read_by_one_table(index)
        ):
            return
        copy = self.new("staged", t.shape, DType.INT8)
        entries = np.arange(-128, 128).astype(np.int8)
        self.op(Op.TABLE, [self.own_name(index), self.const("identity", entries, DType.INT8)], [copy],
                _attr("TableAttribute"))  # fmt: skip
        self.renamed[index] = copy

    def _read_by_one_table(self, index: int) -> bool:
        """Whether the input's only reader lifts to a TABLE, which already streams it into SRAM.

        The ``stage-inputs`` pass's LeakyRelu(alpha=1) is such a reader: a second copy before it
        would cost a copy and two more whole-model Vela compiles (staged vs plain) to undo.
        """
        reader = self.only_reader(index)
        return reader is not None and self.opname(self.sg.operators[reader]) in _TABLE_STARTS

    def const(self, base: str, values: np.ndarray, dtype: int) -> str:
        name = self.fresh(base)
        self.block.tensors[name] = _ConstTensor(name, np.asarray(values, _np(dtype)), dtype)
        self.block.addOperator(Op.CONST, [], [name])
        return name

    def shape_const(self, base: str, values: Sequence[int]) -> str:
        name = self.fresh(base)
        self.g.addConst([len(values)], DType.SHAPE, np.asarray(values, np.int64), name)
        return name

    def new(self, base: str, shape: Sequence[int], dtype: int) -> str:
        name = self.fresh(base)
        self.block.addTensor(name, list(shape), dtype, None)
        return name

    def define(self, index: int) -> str:
        t = self.tensors[index]
        name = self.name(index)
        if t.dtype != tfl.TensorType.INT8:
            raise TosaUnsupportedError(f"TOSA lift: tensor '{t.name}' is not int8")
        self.block.addTensor(name, list(t.shape), DType.INT8, None)
        return name

    def op(self, code: int, inputs: Sequence[str], outputs: Sequence[str], attr: Any = None) -> None:
        self.g.addOperator(code, list(inputs), list(outputs), attr)

    def rescale(
        self, src: str, shape: Sequence[int], scales: np.ndarray, in_zp: int, in_type: int, out_type: int,
        out_zp: int = 0, out: str | None = None,
    ) -> str:  # fmt: skip
        pairs = [scale32(float(s)) for s in np.atleast_1d(scales)]
        mult = self.const("mult", np.asarray([m for m, _ in pairs], np.int32), DType.INT32)
        shift = self.const("shift", np.asarray([s for _, s in pairs], np.int8), DType.INT8)
        izp = self.const("izp", np.asarray([in_zp], _np(in_type)), in_type)
        ozp = self.const("ozp", np.asarray([out_zp], _np(out_type)), out_type)
        out = out or self.new("rescaled", shape, out_type)
        attr = ts.TosaSerializerAttribute()
        attr.RescaleAttribute(True, RoundingMode.DOUBLE_ROUND, len(pairs) > 1, False, False)
        self.op(Op.RESCALE, [src, mult, shift, izp, ozp], [out], attr)
        return out

    def clamp(self, src: str, shape: Sequence[int], lo: int, hi: int, out: str) -> None:
        attr = ts.TosaSerializerAttribute()
        attr.ClampAttribute(self.g.builder, [lo & 0xFF], [hi & 0xFF], NanPropagationMode.PROPAGATE)
        self.op(Op.CLAMP, [src], [out], attr)

    def finish_int8(self, acc_or_int8: str, out_index: int, act: int, shape: Sequence[int]) -> None:
        """Clamp ``acc_or_int8`` (int8) for a fused activation into the TFLite output tensor."""
        out = self.define(out_index)
        lo, hi = _act_codes(act, self.tensors[out_index])
        if (lo, hi) == (-128, 127):
            self.op(Op.IDENTITY, [acc_or_int8], [out])
        else:
            self.clamp(acc_or_int8, shape, lo, hi, out)

    # ------------------------------------------------------------------ driver
    def run(self) -> TosaGraph:
        quant: dict[str, tuple[float, int]] = {}
        inputs, outputs = [], []
        for i in self.sg.inputs:
            name = self.name(int(i))
            t = self.tensors[int(i)]
            if t.dtype != tfl.TensorType.INT8:
                raise TosaUnsupportedError(f"TOSA lift: input '{t.name}' is not int8")
            self.g.addInputTensor(ts.TosaSerializerTensor(name, list(t.shape), DType.INT8))
            inputs.append(name)
            quant[name] = (float(t.scale[0]), t.zp)
            self.stage(int(i))
        skip: set[int] = set(self.pad_folds.values())
        for k, op in enumerate(self.sg.operators):
            if k in skip or k in self.absorbed:
                continue
            opname = self.opname(op)
            try:
                fused = self._table_chain(k) if opname in _CHAIN_STARTS else None
                if fused is not None:
                    skip.update(fused)
                    continue
                handler = _HANDLERS.get(opname)
                if handler is None:
                    raise TosaUnsupportedError(f"TOSA lift: TFLite {opname} is not translated")
                handler(self, k, op)
            except TosaUnsupportedError as exc:
                exc.op_index = k if exc.op_index is None else exc.op_index
                raise
        for i in self.sg.outputs:
            name = self.own_name(int(i))
            self.g.addOutputTensor(ts.TosaSerializerTensor(name, [], DType.INT8))
            outputs.append(name)
            t = self.tensors[int(i)]
            quant[name] = (float(t.scale[0]), t.zp)
        staged = tuple(self.own_name(i) for i in self.renamed)
        data = bytes(self.g.serialize())
        names = (tuple(self.tensors[int(i)].name for i in self.sg.inputs),
                 tuple(self.tensors[int(i)].name for i in self.sg.outputs))  # fmt: skip
        return TosaGraph(data, tuple(inputs), tuple(outputs), quant, self.tables, self.folded, staged, *names)

    def _pad_folds(self) -> dict[int, int]:
        """Convs whose input is a single-reader spatial PAD of real zeros: TOSA pads them itself.

        A TOSA conv skips out-of-bounds taps, which is the same as reading the input
        zero point, so ``PAD(x, zp)`` then a conv is the conv with larger ``pad``.
        Vela's TFLite reader folds such PADs too; its TOSA reader does not.
        """
        producers = {int(o): k for k, op in enumerate(self.sg.operators) for o in op.outputs}
        folds = {}
        for k, op in enumerate(self.sg.operators):
            if self.opname(op) not in ("CONV_2D", "DEPTHWISE_CONV_2D"):
                continue
            p = producers.get(int(op.inputs[0]))
            if p is None or self.opname(self.sg.operators[p]) != "PAD" or self.only_reader(int(op.inputs[0])) != k:
                continue
            pad_op = self.sg.operators[p]
            x, y = self.tensors[int(pad_op.inputs[0])], self.tensors[int(pad_op.outputs[0])]
            pads = self.tensors[int(pad_op.inputs[1])].data
            if pads is None or not _same_params(x, y) or len(x.shape) != 4:
                continue
            pads = np.asarray(pads).reshape(4, 2)
            if pads[0].any() or pads[3].any() or (pads < 0).any():
                continue
            folds[k] = p
        return folds

    def conv_input(self, k: int, op: Any) -> tuple[int, list[int]]:
        """The conv's input tensor and the extra [top, bottom, left, right] of a folded PAD."""
        p = self.pad_folds.get(k)
        if p is None:
            return int(op.inputs[0]), [0, 0, 0, 0]
        pad_op = self.sg.operators[p]
        pads = np.asarray(self.tensors[int(pad_op.inputs[1])].data).reshape(4, 2)
        return int(pad_op.inputs[0]), [int(pads[1, 0]), int(pads[1, 1]), int(pads[2, 0]), int(pads[2, 1])]

    # ------------------------------------------------------------------ tables
    def _unary(self, k: int) -> tuple[int, RealFn] | None:
        """``(input tensor, real function)`` when op ``k`` is a function of one int8 tensor.

        Besides the activations: MUL/ADD/SUB by a constant scalar (HardSigmoid's affine
        part, a rescale), with their fused activation.
        """
        op = self.sg.operators[k]
        name = self.opname(op)
        opts = op.builtinOptions
        if name in ("MUL", "ADD", "SUB"):
            return self._scalar_affine(op, name)
        if name == "QUANTIZE" and self.tensors[op.inputs[0]].dtype != tfl.TensorType.INT8:
            return None
        fn = unary_function(
            name, alpha=float(getattr(opts, "alpha", 0.0) or 0.0), approximate=bool(getattr(opts, "approximate", False))
        )
        return None if fn is None else (int(op.inputs[0]), fn)

    def _scalar_affine(self, op: Any, name: str) -> tuple[int, RealFn] | None:
        a, b = (int(i) for i in op.inputs[:2])
        scalars = [(i, d) for i in (a, b) if (d := self.tensors[i].data) is not None and d.size == 1]
        if len(scalars) != 1:
            return None
        c_index, c_code = scalars[0]
        x_index = a if c_index == b else b
        if self.tensors[x_index].data is not None:
            return None
        ct = self.tensors[c_index]
        c = float(ct.scale[0]) * (int(c_code.reshape(-1)[0]) - ct.zp)
        lo, hi = _FUSED.get(int(getattr(op.builtinOptions, "fusedActivationFunction", 0)), (None, None))
        if lo is None or hi is None:
            return None
        flip = name == "SUB" and c_index == a  # c - x
        ops: dict[str, RealFn] = {
            "MUL": lambda v: v * c,
            "ADD": lambda v: v + c,
            "SUB": (lambda v: c - v) if flip else (lambda v: v - c),
        }
        base = ops[name]
        return x_index, lambda v: np.clip(base(v), lo, hi)

    def _table_chain(self, k: int) -> set[int] | None:
        """Ops ``k..`` that are one function of op k's input: write them as one TABLE.

        Follows single-reader unary ops; ends at a MUL of the chain's input by the
        chain's output (``x * f(x)``) or at the last unary op.
        """
        first = self.sg.operators[k]
        start = self._unary(k)
        if start is None:
            return None
        x, fn = start
        ops, fns, end = [k], [fn], int(first.outputs[0])
        while True:
            nxt = self.only_reader(end)
            if nxt is None:
                break
            nop = self.sg.operators[nxt]
            nname = self.opname(nop)
            step = self._unary(nxt)
            if step is not None and step[0] == end:
                ops.append(nxt)
                fns.append(step[1])
                end = int(nop.outputs[0])
                continue
            if nname == "MUL" and sorted(int(i) for i in nop.inputs) == sorted((x, end)) and x != end:
                act = int(getattr(nop.builtinOptions, "fusedActivationFunction", 0))
                lo, hi = _FUSED.get(act, (-math.inf, math.inf))
                fns = [_times_input(_compose(fns), lo, hi)]
                ops.append(nxt)
                end = int(nop.outputs[0])
            break
        composite = _compose(fns)
        xt, yt = self.tensors[x], self.tensors[end]
        if xt.dtype != tfl.TensorType.INT8:
            return None
        entries = table(composite, float(xt.scale[0]), xt.zp, float(yt.scale[0]), yt.zp)
        tab = self.const("table", entries, DType.INT8)
        self.op(Op.TABLE, [self.name(x), tab], [self.define(end)], _attr("TableAttribute"))
        self.tables += 1
        self.folded += len(ops)
        return set(ops)


class _ConstTensor(ts.TosaSerializerTensor):  # type: ignore[misc]
    """A constant written with one buffer copy (the serializer converts element by element)."""

    def __init__(self, name: str, values: np.ndarray, dtype: int) -> None:
        super().__init__(name, list(values.shape), dtype, None)
        self.raw = np.ascontiguousarray(values).astype(values.dtype.newbyteorder("<")).tobytes()

    def serialize(self, builder: Any) -> Any:
        fb_name = builder.CreateString(self.name)
        fb_shape = ts.TosaSerializer.serializeInt32Vec(builder, self.shape)
        builder.StartVector(1, len(self.raw), 8)  # TOSA aligns tensor data to 8 bytes
        builder.head = builder.head - len(self.raw)
        builder.Bytes[builder.head : builder.head + len(self.raw)] = self.raw
        builder.vectorNumElems = len(self.raw)
        fb_data = builder.EndVector()
        TosaTensor.Start(builder)
        TosaTensor.AddName(builder, fb_name)
        TosaTensor.AddShape(builder, fb_shape)
        TosaTensor.AddType(builder, self.dtype)
        TosaTensor.AddIsUnranked(builder, False)
        TosaTensor.AddVariable(builder, False)
        TosaTensor.AddData(builder, fb_data)
        return TosaTensor.End(builder)


def _name(t: Any) -> str:
    raw = t.name
    return raw.decode() if isinstance(raw, bytes) else str(raw or "")


def _np(dtype: int) -> Any:
    return {DType.INT8: np.int8, DType.INT32: np.int32, DType.INT16: np.int16}[dtype]


def _compose(fns: list[RealFn]) -> RealFn:
    def run(v: np.ndarray) -> np.ndarray:
        for f in fns:
            v = f(v)
        return v

    return run


def _times_input(fn: RealFn, lo: float, hi: float) -> RealFn:
    """``x * fn(x)`` then a fused activation's clamp: SiLU, Mish, GELU written out."""
    return lambda v: np.clip(v * fn(v), lo, hi)


def _act_codes(act: int, out: _Tensor) -> tuple[int, int]:
    if act not in _FUSED:
        raise TosaUnsupportedError(f"TOSA lift: fused activation {act} on '{out.name}'")
    lo, hi = _FUSED[act]
    s = float(out.scale[0])
    qlo = -128 if math.isinf(lo) else max(-128, out.zp + round(lo / s))
    qhi = 127 if math.isinf(hi) else min(127, out.zp + round(hi / s))
    return qlo, qhi


def _same_pads(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _pads(
    op_padding: int, shape: Sequence[int], kh: int, kw: int, sh: int, sw: int, dh: int = 1, dw: int = 1
) -> list[int]:
    if op_padding != _SAME:
        return [0, 0, 0, 0]
    top, bottom = _same_pads(shape[1], kh, sh, dh)
    left, right = _same_pads(shape[2], kw, sw, dw)
    return [top, bottom, left, right]


def _exact_window(
    lift: _Lift, src: str, shape: Sequence[int], pads: list[int], kernel: tuple[int, int],
    stride: tuple[int, int], dilation: tuple[int, int] = (1, 1),
) -> tuple[str, list[int]]:  # fmt: skip
    """TOSA wants ``(in + pads - dilated kernel)`` divisible by the stride; TFLite floors.

    The rows (columns) the floor drops are never read: take them off the end padding,
    or when there is not enough of it, SLICE them off the input.
    """
    pads = list(pads)
    cut = [0, 0]
    for axis in range(2):
        span = shape[1 + axis] - 1 + pads[2 * axis] + pads[2 * axis + 1] - (kernel[axis] - 1) * dilation[axis]
        extra = span % stride[axis]
        take = min(extra, pads[2 * axis + 1])
        pads[2 * axis + 1] -= take
        cut[axis] = extra - take
    if not any(cut):
        return src, pads
    size = [shape[0], shape[1] - cut[0], shape[2] - cut[1], shape[3]]
    out = lift.new("window", size, DType.INT8)
    start, extent = lift.shape_const("window_start", [0, 0, 0, 0]), lift.shape_const("window_size", size)
    lift.op(Op.SLICE, [src, start, extent], [out], _attr("SliceAttribute"))
    return out, pads


# ---------------------------------------------------------------------- op handlers
def _conv(lift: _Lift, k: int, op: Any) -> None:
    name = lift.opname(op)
    x_index, extra = lift.conv_input(k, op)
    padded = lift.tensors[op.inputs[0]]  # what the TFLite conv reads (after a folded PAD)
    x, w = lift.tensors[x_index], lift.tensors[op.inputs[1]]
    y_index = int(op.outputs[0])
    y = lift.tensors[y_index]
    if w.data is None:
        raise TosaUnsupportedError(f"TOSA lift: {name} '{y.name}' has non-constant weights")
    bias_index = int(op.inputs[2]) if len(op.inputs) > 2 else -1
    opts = op.builtinOptions
    src = lift.name(x_index)
    out_ch = y.shape[-1]
    if name == "FULLY_CONNECTED":
        k = w.shape[1]
        rows = int(np.prod(x.shape)) // k
        flat = lift.new("fc_in", [rows, 1, 1, k], DType.INT8)
        lift.op(Op.RESHAPE, [src, lift.shape_const("fc_shape", [rows, 1, 1, k])], [flat])
        src, weights, shape4 = flat, w.data.reshape(out_ch, 1, 1, k), [rows, 1, 1, out_ch]
        code, attr_args = Op.CONV2D, ([0, 0, 0, 0], [1, 1], [1, 1])
    elif name == "CONV_2D":
        weights, shape4 = w.data, list(y.shape)
        pads = _pads(opts.padding, padded.shape, w.shape[1], w.shape[2], opts.strideH, opts.strideW,
                     opts.dilationHFactor, opts.dilationWFactor)  # fmt: skip
        pads = [a + b for a, b in zip(pads, extra, strict=True)]
        src, pads = _exact_window(lift, src, x.shape, pads, (w.shape[1], w.shape[2]), (opts.strideH, opts.strideW),
                                  (opts.dilationHFactor, opts.dilationWFactor))  # fmt: skip
        code, attr_args = Op.CONV2D, (pads, [opts.strideH, opts.strideW], [opts.dilationHFactor, opts.dilationWFactor])
    else:
        _, kh, kw, cm = w.shape
        c = x.shape[-1]
        weights, shape4 = w.data.reshape(kh, kw, c, cm // c), list(y.shape)
        pads = _pads(opts.padding, padded.shape, kh, kw, opts.strideH, opts.strideW, opts.dilationHFactor,
                     opts.dilationWFactor)  # fmt: skip
        pads = [a + b for a, b in zip(pads, extra, strict=True)]
        src, pads = _exact_window(lift, src, x.shape, pads, (kh, kw), (opts.strideH, opts.strideW),
                                  (opts.dilationHFactor, opts.dilationWFactor))  # fmt: skip
        code = Op.DEPTHWISE_CONV2D
        attr_args = (pads, [opts.strideH, opts.strideW], [opts.dilationHFactor, opts.dilationWFactor])
    bias = lift.tensors[bias_index].data if bias_index >= 0 else None
    bias = np.zeros(out_ch, np.int32) if bias is None else bias.astype(np.int32).reshape(-1)
    w_name = lift.const("weights", np.ascontiguousarray(weights, np.int8), DType.INT8)
    b_name = lift.const("bias", bias, DType.INT32)
    izp = lift.const("izp", np.asarray([x.zp], np.int8), DType.INT8)
    wzp = lift.const("wzp", np.asarray([0], np.int8), DType.INT8)
    acc = lift.new("acc", shape4, DType.INT32)
    conv_attr = "Conv2dAttribute" if code == Op.CONV2D else "DepthwiseConv2dAttribute"
    lift.op(code, [src, w_name, b_name, izp, wzp], [acc], _attr(conv_attr, *attr_args, False, DType.INT32))
    w_scale = np.broadcast_to(w.scale, (out_ch,))
    scales = float(x.scale[0]) * w_scale / float(y.scale[0])
    act = int(getattr(opts, "fusedActivationFunction", 0))
    lo, hi = _act_codes(act, y)
    if name == "FULLY_CONNECTED":
        mid = lift.rescale(acc, shape4, scales, 0, DType.INT32, DType.INT8, y.zp)
        if (lo, hi) != (-128, 127):
            clamped = lift.new("fc_act", shape4, DType.INT8)
            lift.clamp(mid, shape4, lo, hi, clamped)
            mid = clamped
        lift.op(Op.RESHAPE, [mid, lift.shape_const("fc_out", list(y.shape))], [lift.define(y_index)])
        return
    if (lo, hi) == (-128, 127):
        lift.rescale(acc, shape4, scales, 0, DType.INT32, DType.INT8, y.zp, out=lift.define(y_index))
        return
    mid = lift.rescale(acc, shape4, scales, 0, DType.INT32, DType.INT8, y.zp)
    lift.clamp(mid, shape4, lo, hi, lift.define(y_index))


def _batch_matmul(lift: _Lift, k: int, op: Any) -> None:
    """BATCH_MATMUL of two int8 activations: MATMUL over ``[B, M, K] x [B, K, N]`` with both zero points,
    then one RESCALE by ``s_a s_b / s_out`` -- TFLite's int32 accumulation and single rounding.

    ``adj_x``/``adj_y`` become a TRANSPOSE of the operand's last two axes; batch axes must agree
    (no broadcasting), as nirc's attention lowering emits them.
    """
    a_i, b_i, y_index = int(op.inputs[0]), int(op.inputs[1]), int(op.outputs[0])
    a, b, y = lift.tensors[a_i], lift.tensors[b_i], lift.tensors[y_index]
    opts = op.builtinOptions
    if len(a.shape) < 2 or len(b.shape) < 2 or a.shape[:-2] != b.shape[:-2]:
        raise TosaUnsupportedError("TOSA lift: BATCH_MATMUL with broadcast batch axes")
    if a.data is not None or b.data is not None or len(a.scale) != 1 or len(b.scale) != 1:
        raise TosaUnsupportedError("TOSA lift: BATCH_MATMUL of a constant or per-channel operand")
    batch = int(np.prod(a.shape[:-2]))

    def operand(index: int, t: _Tensor, adjoint: bool) -> tuple[str, int, int]:
        src, rows, cols = lift.name(index), t.shape[-2], t.shape[-1]
        if adjoint:
            perm = [*range(len(t.shape) - 2), len(t.shape) - 1, len(t.shape) - 2]
            moved = lift.new("mm_adj", [t.shape[i] for i in perm], DType.INT8)
            lift.op(Op.TRANSPOSE, [src], [moved], _attr("TransposeAttribute", perm))
            src, rows, cols = moved, cols, rows
        flat = lift.new("mm_in", [batch, rows, cols], DType.INT8)
        lift.op(Op.RESHAPE, [src, lift.shape_const("mm_shape", [batch, rows, cols])], [flat])
        return flat, rows, cols

    left, m, inner = operand(a_i, a, bool(getattr(opts, "adjX", False)))
    right, inner_b, n = operand(b_i, b, bool(getattr(opts, "adjY", False)))
    if inner != inner_b:
        raise TosaUnsupportedError("TOSA lift: BATCH_MATMUL with mismatched inner axes")
    acc = lift.new("mm_acc", [batch, m, n], DType.INT32)
    zps = [lift.const("mm_zp", np.asarray([t.zp], np.int8), DType.INT8) for t in (a, b)]
    lift.op(Op.MATMUL, [left, right, *zps], [acc], _attr("MatMulAttribute"))
    scale = float(a.scale[0]) * float(b.scale[0]) / float(y.scale[0])
    mid = lift.rescale(acc, [batch, m, n], np.asarray([scale]), 0, DType.INT32, DType.INT8, y.zp)
    lift.op(Op.RESHAPE, [mid, lift.shape_const("mm_out", list(y.shape))], [lift.define(y_index)])


def _broadcast_rank(
    lift: _Lift, name: str, shape: tuple[int, ...], rank: int, dtype: int
) -> tuple[str, tuple[int, ...]]:
    if len(shape) == rank:
        return name, shape
    full = (1,) * (rank - len(shape)) + shape
    out = lift.new("rank", full, dtype)
    lift.op(Op.RESHAPE, [name, lift.shape_const("rank_shape", list(full))], [out])
    return out, full


def _binary(lift: _Lift, k: int, op: Any) -> None:
    name = lift.opname(op)
    a_i, b_i = int(op.inputs[0]), int(op.inputs[1])
    y_index = int(op.outputs[0])
    a, b, y = lift.tensors[a_i], lift.tensors[b_i], lift.tensors[y_index]
    rank = len(y.shape)
    srcs = []
    if name == "MUL":
        in_scales = [1.0, 1.0]
        out_scale = float(a.scale[0]) * float(b.scale[0]) / float(y.scale[0])
    else:
        twice = 2.0 * max(float(a.scale[0]), float(b.scale[0]))
        in_scales = [(1 << _ADD_SHIFT) * float(a.scale[0]) / twice, (1 << _ADD_SHIFT) * float(b.scale[0]) / twice]
        out_scale = twice / ((1 << _ADD_SHIFT) * float(y.scale[0]))
    for index, t, s in ((a_i, a, in_scales[0]), (b_i, b, in_scales[1])):
        src = lift.name(index)
        if t.data is not None:
            src = lift.const("operand", np.asarray(t.data, np.int8), DType.INT8)
        wide = lift.rescale(src, t.shape, np.asarray([s]), t.zp, DType.INT8, DType.INT32)
        srcs.append(_broadcast_rank(lift, wide, t.shape, rank, DType.INT32)[0])
    acc = lift.new("sum", y.shape, DType.INT32)
    if name == "MUL":
        lift.op(
            Op.MUL, [*srcs, lift.const("mul_shift", np.asarray([0], np.int8), DType.INT8)], [acc], _attr("MulAttribute")
        )
    else:
        lift.op(
            Op.ADD if name == "ADD" else Op.SUB, srcs, [acc], _attr("AddAttribute" if name == "ADD" else "SubAttribute")
        )
    act = int(getattr(op.builtinOptions, "fusedActivationFunction", 0))
    lo, hi = _act_codes(act, y)
    if (lo, hi) == (-128, 127):
        lift.rescale(acc, y.shape, np.asarray([out_scale]), 0, DType.INT32, DType.INT8, y.zp, out=lift.define(y_index))
        return
    mid = lift.rescale(acc, y.shape, np.asarray([out_scale]), 0, DType.INT32, DType.INT8, y.zp)
    lift.clamp(mid, y.shape, lo, hi, lift.define(y_index))


def _same_params(a: _Tensor, b: _Tensor) -> bool:
    return a.zp == b.zp and bool(np.isclose(float(a.scale[0]), float(b.scale[0]), rtol=1e-6, atol=0))


def _requant(lift: _Lift, index: int, target: _Tensor) -> str:
    t = lift.tensors[index]
    if _same_params(t, target):
        return lift.name(index)
    entries = table(lambda v: v, float(t.scale[0]), t.zp, float(target.scale[0]), target.zp)
    out = lift.new("requant", t.shape, DType.INT8)
    lift.op(
        Op.TABLE, [lift.name(index), lift.const("requant_table", entries, DType.INT8)], [out], _attr("TableAttribute")
    )
    lift.tables += 1
    return out


def _pool(lift: _Lift, k: int, op: Any) -> None:
    name = lift.opname(op)
    x_i, y_index = int(op.inputs[0]), int(op.outputs[0])
    x, y = lift.tensors[x_i], lift.tensors[y_index]
    opts = op.builtinOptions
    pads = _pads(opts.padding, x.shape, opts.filterHeight, opts.filterWidth, opts.strideH, opts.strideW)
    kernel, stride = [opts.filterHeight, opts.filterWidth], [opts.strideH, opts.strideW]
    src, pads = _exact_window(
        lift, _requant(lift, x_i, y), x.shape, pads, (kernel[0], kernel[1]), (stride[0], stride[1])
    )
    act = int(opts.fusedActivationFunction)
    lo, hi = _act_codes(act, y)
    out = lift.define(y_index) if (lo, hi) == (-128, 127) else lift.new("pooled", y.shape, DType.INT8)
    if name == "MAX_POOL_2D":
        lift.op(
            Op.MAX_POOL2D, [src], [out], _attr("MaxPool2dAttribute", kernel, stride, pads, NanPropagationMode.PROPAGATE)
        )
    else:
        zp = lift.const("pool_zp", np.asarray([y.zp], np.int8), DType.INT8)
        lift.op(Op.AVG_POOL2D, [src, zp, zp], [out], _attr("AvgPool2dAttribute", kernel, stride, pads, DType.INT32))
    if (lo, hi) != (-128, 127):
        lift.clamp(out, y.shape, lo, hi, lift.define(y_index))


def _reshape(lift: _Lift, k: int, op: Any) -> None:
    y_index = int(op.outputs[0])
    y = lift.tensors[y_index]
    src = _requant(lift, int(op.inputs[0]), y)
    lift.op(Op.RESHAPE, [src, lift.shape_const("shape", list(y.shape))], [lift.define(y_index)])


def _mean(lift: _Lift, k: int, op: Any) -> None:
    """MEAN of an int8 tensor over constant axes: REDUCE_SUM of ``x - zp`` in int32 per axis, then one RESCALE.

    ``s_in / (count s_out)`` with the output's zero point: the mean rounded once (TFLite's
    kernel rescales the sum the same way). LayerNorm and GroupNorm decompositions use it
    (MobileViT), so one MEAN no longer keeps a model in the TFLite form.
    """
    x_i, y_index = int(op.inputs[0]), int(op.outputs[0])
    x, y = lift.tensors[x_i], lift.tensors[y_index]
    axes_data = lift.tensors[int(op.inputs[1])].data
    if axes_data is None or len(x.scale) != 1:
        raise TosaUnsupportedError("TOSA lift: MEAN over non-constant axes or a per-channel input")
    rank = len(x.shape)
    axes = sorted({int(a) % rank for a in np.asarray(axes_data).reshape(-1)})
    count = int(np.prod([x.shape[a] for a in axes])) if axes else 1
    if count * 255 >= 1 << 31:
        raise TosaUnsupportedError("TOSA lift: MEAN over too many elements for an int32 sum")
    current = lift.rescale(lift.name(x_i), list(x.shape), np.asarray([1.0]), x.zp, DType.INT8, DType.INT32)
    shape = list(x.shape)
    for axis in axes:
        shape[axis] = 1
        summed = lift.new("mean_sum", shape, DType.INT32)
        lift.op(Op.REDUCE_SUM, [current], [summed], _attr("ReduceSumAttribute", axis))
        current = summed
    scale = float(x.scale[0]) / (count * float(y.scale[0]))
    mid = lift.rescale(current, shape, np.asarray([scale]), 0, DType.INT32, DType.INT8, y.zp)
    lift.op(Op.RESHAPE, [mid, lift.shape_const("mean_out", list(y.shape))], [lift.define(y_index)])


def _concat(lift: _Lift, k: int, op: Any) -> None:
    y_index = int(op.outputs[0])
    y = lift.tensors[y_index]
    axis = int(op.builtinOptions.axis) % len(y.shape)
    if int(op.builtinOptions.fusedActivationFunction) != 0:
        raise TosaUnsupportedError("TOSA lift: CONCATENATION with a fused activation")
    srcs = [_requant(lift, int(i), y) for i in op.inputs]
    lift.op(Op.CONCAT, srcs, [lift.define(y_index)], _attr("ConcatAttribute", axis))


def _pad(lift: _Lift, k: int, op: Any) -> None:
    y_index = int(op.outputs[0])
    x_i, y = int(op.inputs[0]), lift.tensors[y_index]
    pads = lift.tensors[op.inputs[1]].data
    if pads is None:
        raise TosaUnsupportedError("TOSA lift: PAD with non-constant paddings")
    value = y.zp
    if lift.opname(op) == "PADV2" and len(op.inputs) > 2:
        const = lift.tensors[op.inputs[2]].data
        value = int(np.asarray(const).reshape(-1)[0]) if const is not None else y.zp
    src = _requant(lift, x_i, y)
    pad_shape = lift.shape_const("padding", [int(v) for v in np.asarray(pads).reshape(-1)])
    fill = lift.const("pad_const", np.asarray([value], np.int8), DType.INT8)
    lift.op(Op.PAD, [src, pad_shape, fill], [lift.define(y_index)], _attr("PadAttribute"))


def _transpose(lift: _Lift, k: int, op: Any) -> None:
    y_index = int(op.outputs[0])
    perm = lift.tensors[op.inputs[1]].data
    if perm is None:
        raise TosaUnsupportedError("TOSA lift: TRANSPOSE with a non-constant permutation")
    src = _requant(lift, int(op.inputs[0]), lift.tensors[y_index])
    perms = [int(v) for v in np.asarray(perm).reshape(-1)]
    lift.op(Op.TRANSPOSE, [src], [lift.define(y_index)], _attr("TransposeAttribute", perms))


def _strided_slice(lift: _Lift, k: int, op: Any) -> None:
    y_index = int(op.outputs[0])
    x_i = int(op.inputs[0])
    x, y = lift.tensors[x_i], lift.tensors[y_index]
    begin, strides = lift.tensors[op.inputs[1]].data, lift.tensors[op.inputs[3]].data
    opts = op.builtinOptions
    masks = (opts.ellipsisMask, opts.newAxisMask, opts.shrinkAxisMask, getattr(opts, "offset", False))
    if begin is None or strides is None or any(masks) or any(int(s) != 1 for s in np.asarray(strides).reshape(-1)):
        raise TosaUnsupportedError("TOSA lift: STRIDED_SLICE other than a unit-stride box")
    starts = [
        0 if (opts.beginMask >> d) & 1 else int(b) % max(x.shape[d], 1)
        for d, b in enumerate(np.asarray(begin).reshape(-1))
    ]
    src = _requant(lift, x_i, y)
    lift.op(Op.SLICE, [src, lift.shape_const("start", starts), lift.shape_const("size", list(y.shape))],
            [lift.define(y_index)], _attr("SliceAttribute"))  # fmt: skip


def _slice(lift: _Lift, k: int, op: Any) -> None:
    y_index = int(op.outputs[0])
    begin = lift.tensors[op.inputs[1]].data
    if begin is None:
        raise TosaUnsupportedError("TOSA lift: SLICE with non-constant begin")
    src = _requant(lift, int(op.inputs[0]), lift.tensors[y_index])
    starts = [int(v) for v in np.asarray(begin).reshape(-1)]
    size = lift.shape_const("size", list(lift.tensors[y_index].shape))
    lift.op(Op.SLICE, [src, lift.shape_const("start", starts), size], [lift.define(y_index)], _attr("SliceAttribute"))


def _resize(lift: _Lift, k: int, op: Any) -> None:
    """Integer-factor nearest upsampling (YOLO's neck) as TOSA RESIZE.

    TOSA samples input row ``(oy * d + offset) / n`` and NEAREST rounds it; TFLite's
    nearest takes ``floor(oy / f)`` for an integer factor ``f`` (asymmetric and
    half-pixel alike). With ``n = 2f, d = 2, offset = 1 - f, border = f - 1`` the
    rounded sample is exactly ``floor(oy / f)`` for every ``oy``, and it is the one
    parameterisation Vela 5.2 places on the NPU (measured: ``n = f, d = 1`` and
    ``offset = -f`` are refused). Bilinear is not lifted: Vela wants its int32 result
    rescaled by the bare upscale factors, which these parameters do not give.
    """
    name = lift.opname(op)
    if name != "RESIZE_NEAREST_NEIGHBOR":
        raise TosaUnsupportedError(f"TOSA lift: TFLite {name} is not translated")
    x_i, y_index = int(op.inputs[0]), int(op.outputs[0])
    x, y = lift.tensors[x_i], lift.tensors[y_index]
    if getattr(op.builtinOptions, "alignCorners", False):
        raise TosaUnsupportedError(f"TOSA lift: {name} with align_corners")
    (ih, iw), (oh, ow) = x.shape[1:3], y.shape[1:3]
    if oh % ih or ow % iw:
        raise TosaUnsupportedError(f"TOSA lift: {name} by a non-integer factor")
    fy, fx = oh // ih, ow // iw
    scale = [2 * fy, 2, 2 * fx, 2]
    src = _requant(lift, x_i, y)
    shapes = [
        lift.shape_const("scale", scale),
        lift.shape_const("offset", [1 - fy, 1 - fx]),
        lift.shape_const("border", [fy - 1, fx - 1]),
    ]
    lift.op(Op.RESIZE, [src, *shapes], [lift.define(y_index)], _attr("ResizeAttribute", ResizeMode.NEAREST))


def _split(lift: _Lift, k: int, op: Any) -> None:
    """SPLIT / SPLIT_V: one SLICE per output along the (constant) axis."""
    name = lift.opname(op)
    x_i, axis_i = (int(op.inputs[1]), int(op.inputs[0])) if name == "SPLIT" else (int(op.inputs[0]), int(op.inputs[2]))
    axis_data = lift.tensors[axis_i].data
    if axis_data is None:
        raise TosaUnsupportedError(f"TOSA lift: {name} with a non-constant axis")
    x = lift.tensors[x_i]
    axis = int(np.asarray(axis_data).reshape(-1)[0]) % len(x.shape)
    start = 0
    for out in op.outputs:
        y = lift.tensors[int(out)]
        starts = [0] * len(x.shape)
        starts[axis] = start
        src = _requant(lift, x_i, y)
        lift.op(Op.SLICE, [src, lift.shape_const("start", starts), lift.shape_const("size", list(y.shape))],
                [lift.define(int(out))], _attr("SliceAttribute"))  # fmt: skip
        start += y.shape[axis]


def _unary_op(lift: _Lift, k: int, op: Any) -> None:
    raise TosaUnsupportedError(f"TOSA lift: {lift.opname(op)} on a non-int8 tensor")


_TABLE_STARTS = frozenset(
    ("LOGISTIC", "TANH", "HARD_SWISH", "RELU", "RELU6", "RELU_N1_TO_1", "RELU_0_TO_1", "ELU", "EXP", "LOG", "RSQRT",
     "QUANTIZE", "LEAKY_RELU", "GELU")
)  # fmt: skip
_CHAIN_STARTS = _TABLE_STARTS | {"MUL", "ADD", "SUB"}  # the latter when one operand is a constant scalar
_HANDLERS: dict[str, Callable[[_Lift, int, Any], None]] = {
    "CONV_2D": _conv,
    "DEPTHWISE_CONV_2D": _conv,
    "FULLY_CONNECTED": _conv,
    "ADD": _binary,
    "SUB": _binary,
    "MUL": _binary,
    "AVERAGE_POOL_2D": _pool,
    "MAX_POOL_2D": _pool,
    "RESHAPE": _reshape,
    "CONCATENATION": _concat,
    "PAD": _pad,
    "PADV2": _pad,
    "TRANSPOSE": _transpose,
    "STRIDED_SLICE": _strided_slice,
    "SLICE": _slice,
    "SPLIT": _split,
    "SOFTMAX": lift_softmax,
    "BATCH_MATMUL": _batch_matmul,
    "MEAN": _mean,
    "SPLIT_V": _split,
    "RESIZE_NEAREST_NEIGHBOR": _resize,
    **dict.fromkeys(_TABLE_STARTS, _unary_op),
}
