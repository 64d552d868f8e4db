"""Flatbuffer writing: an in-memory TFLite model that serialises deterministically.

The lowerings only append tensors, buffers and operators to a :class:`ModelBuilder`;
nothing touches the flatbuffer until :meth:`ModelBuilder.serialize`.  Keeping the
model as plain Python data until the end means the output bytes depend only on the
order of appends, which follows the ONNX node order, so the same input always gives
byte-identical output (no dict-of-set iteration, no timestamps, no metadata).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

import flatbuffers
import numpy as np
from tflite.BuiltinOperator import BuiltinOperator as _BuiltinOperator
from tflite.BuiltinOptions import BuiltinOptions as _BuiltinOptions
from tflite.TensorType import TensorType as _TensorType

from nirc.errors import BackendError

BuiltinOperator: Any = _BuiltinOperator
BuiltinOptions: Any = _BuiltinOptions
TensorType: Any = _TensorType

#: TFLite flatbuffer schema version written into ``Model.version``.
SCHEMA_VERSION = 3
#: Buffers are 16-byte aligned so kernels (and Vela's reader) may map them directly.
BUFFER_ALIGNMENT = 16

_NUMPY_TO_TFLITE: dict[str, int] = {
    "float32": TensorType.FLOAT32,
    "int8": TensorType.INT8,
    "int32": TensorType.INT32,
    "int64": TensorType.INT64,
    "uint8": TensorType.UINT8,
    "int16": TensorType.INT16,
}


@dataclass(frozen=True)
class QParams:
    """Affine quantization of one tensor: ``real = scale * (q - zero_point)``.

    ``scale``/``zero_point`` have one entry per tensor (per-tensor) or one per slice
    along ``axis`` (per-channel weights).  Scales are stored already rounded to
    float32 because that is what the flatbuffer holds and what kernels compute with.
    """

    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    axis: int = 0
    bits: int = 8
    """Width of the integer type the parameters are for: 8 (int8) or 16 (int16 activations,
    symmetric, which Vela runs as 16x8 against int8 weights). Part of equality, so a tensor
    moved between widths always gets its QUANTIZE."""

    @property
    def per_tensor(self) -> bool:
        return len(self.scale) == 1

    @property
    def dtype(self) -> str:
        return "int16" if self.bits == 16 else "int8"


@dataclass(frozen=True)
class Options:
    """A builtin-options table: its schema name and the (field, value) pairs to set.

    ``name`` is the flatbuffer table name (``"Conv2DOptions"``); each field maps to the
    generated ``Add<Field>`` function of that table.  Only scalar fields are supported,
    which is all the emitter needs (shapes travel as constant input tensors, which is
    also what Vela requires for RESHAPE).
    """

    name: str
    fields: tuple[tuple[str, int | float | bool], ...] = ()


@dataclass
class _Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: str
    buffer: int
    quant: QParams | None


@dataclass
class _Operator:
    opcode: int
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    options: Options | None


@dataclass
class ModelBuilder:
    """Accumulates one subgraph; :meth:`serialize` turns it into TFLite bytes."""

    description: str = "nirc"
    tensors: list[_Tensor] = field(default_factory=list)
    buffers: list[bytes] = field(default_factory=lambda: [b""])
    operators: list[_Operator] = field(default_factory=list)
    opcodes: dict[tuple[int, int], int] = field(default_factory=dict)
    inputs: list[int] = field(default_factory=list)
    outputs: list[int] = field(default_factory=list)
    _names: dict[str, int] = field(default_factory=dict)
    _const_cache: dict[tuple[bytes, tuple[int, ...], str, QParams | None], int] = field(default_factory=dict)

    # -- tensors -----------------------------------------------------------------
    def unique_name(self, base: str) -> str:
        """TFLite does not require unique names, but debugging and Vela reports do."""
        count = self._names.get(base, 0)
        self._names[base] = count + 1
        return base if count == 0 else f"{base}_{count}"

    def add_tensor(self, name: str, shape: tuple[int, ...], dtype: str, quant: QParams | None = None) -> int:
        """Add a tensor without data (an activation) and return its index."""
        if dtype not in _NUMPY_TO_TFLITE:
            raise BackendError(f"tensor {name!r}: unsupported dtype {dtype}")
        self.tensors.append(_Tensor(self.unique_name(name), tuple(int(d) for d in shape), dtype, 0, quant))
        return len(self.tensors) - 1

    def add_constant(self, name: str, array: np.ndarray, quant: QParams | None = None) -> int:
        """Add a constant tensor; identical constants share one tensor and buffer."""
        arr = np.ascontiguousarray(array)
        dtype = str(arr.dtype)
        if dtype not in _NUMPY_TO_TFLITE:
            raise BackendError(f"constant {name!r}: unsupported dtype {dtype}")
        data = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        key = (data, tuple(arr.shape), dtype, quant)
        cached = self._const_cache.get(key)
        if cached is not None:
            return cached
        self.buffers.append(data)
        self.tensors.append(
            _Tensor(self.unique_name(name), tuple(arr.shape), dtype, len(self.buffers) - 1, quant)
        )
        index = len(self.tensors) - 1
        self._const_cache[key] = index
        return index

    def shape_of(self, tensor: int) -> tuple[int, ...]:
        return self.tensors[tensor].shape

    def quant_of(self, tensor: int) -> QParams | None:
        return self.tensors[tensor].quant

    def dtype_of(self, tensor: int) -> str:
        return self.tensors[tensor].dtype

    def name_of(self, tensor: int) -> str:
        return self.tensors[tensor].name

    # -- operators ---------------------------------------------------------------
    def add_operator(
        self,
        builtin: int,
        inputs: list[int] | tuple[int, ...],
        outputs: list[int] | tuple[int, ...],
        options: Options | None = None,
        version: int = 1,
    ) -> None:
        key = (builtin, version)
        if key not in self.opcodes:
            self.opcodes[key] = len(self.opcodes)
        self.operators.append(_Operator(self.opcodes[key], tuple(inputs), tuple(outputs), options))

    # -- serialisation ------------------------------------------------------------
    def serialize(self) -> bytes:
        b = flatbuffers.Builder(1024 + sum(len(d) for d in self.buffers))
        buffer_offsets = [self._write_buffer(b, data) for data in self.buffers]
        tensor_offsets = [self._write_tensor(b, t) for t in self.tensors]
        operator_offsets = [self._write_operator(b, op) for op in self.operators]

        sg_tensors = _offset_vector(b, tensor_offsets)
        sg_inputs = _int32_vector(b, self.inputs)
        sg_outputs = _int32_vector(b, self.outputs)
        sg_ops = _offset_vector(b, operator_offsets)
        sg_name = b.CreateString("main")
        _table("SubGraph").Start(b)
        _table("SubGraph").AddTensors(b, sg_tensors)
        _table("SubGraph").AddInputs(b, sg_inputs)
        _table("SubGraph").AddOutputs(b, sg_outputs)
        _table("SubGraph").AddOperators(b, sg_ops)
        _table("SubGraph").AddName(b, sg_name)
        subgraph = _table("SubGraph").End(b)

        opcode_offsets = []
        for builtin, version in self.opcodes:
            oc = _table("OperatorCode")
            oc.Start(b)
            # The deprecated int8 field must hold the code when it fits, or old
            # readers (and Vela's) see ADD (0) for every op.
            oc.AddDeprecatedBuiltinCode(b, min(builtin, BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES))
            oc.AddBuiltinCode(b, builtin)
            oc.AddVersion(b, version)
            opcode_offsets.append(oc.End(b))

        opcodes_vec = _offset_vector(b, opcode_offsets)
        subgraphs_vec = _offset_vector(b, [subgraph])
        buffers_vec = _offset_vector(b, buffer_offsets)
        description = b.CreateString(self.description)
        model = _table("Model")
        model.Start(b)
        model.AddVersion(b, SCHEMA_VERSION)
        model.AddOperatorCodes(b, opcodes_vec)
        model.AddSubgraphs(b, subgraphs_vec)
        model.AddDescription(b, description)
        model.AddBuffers(b, buffers_vec)
        b.Finish(model.End(b), file_identifier=b"TFL3")
        return bytes(b.Output())

    @staticmethod
    def _write_buffer(b: flatbuffers.Builder, data: bytes) -> int:
        buf = _table("Buffer")
        if not data:
            buf.Start(b)
            return int(buf.End(b))
        b.StartVector(1, len(data), BUFFER_ALIGNMENT)
        b.head = b.head - len(data)
        b.Bytes[b.head : b.head + len(data)] = data
        vec = b.EndVector()
        buf.Start(b)
        buf.AddData(b, vec)
        return int(buf.End(b))

    @staticmethod
    def _write_tensor(b: flatbuffers.Builder, t: _Tensor) -> int:
        quant = _write_quant(b, t.quant) if t.quant is not None else None
        name = b.CreateString(t.name)
        shape = _int32_vector(b, list(t.shape))
        tab = _table("Tensor")
        tab.Start(b)
        tab.AddShape(b, shape)
        tab.AddType(b, _NUMPY_TO_TFLITE[t.dtype])
        tab.AddBuffer(b, t.buffer)
        tab.AddName(b, name)
        if quant is not None:
            tab.AddQuantization(b, quant)
        return int(tab.End(b))

    @staticmethod
    def _write_operator(b: flatbuffers.Builder, op: _Operator) -> int:
        options_offset = None
        options_type = BuiltinOptions.NONE
        if op.options is not None:
            mod = _table(op.options.name)
            mod.Start(b)
            for fname, value in op.options.fields:
                getattr(mod, f"Add{fname}")(b, value)
            options_offset = mod.End(b)
            options_type = getattr(BuiltinOptions, op.options.name)
        inputs = _int32_vector(b, list(op.inputs))
        outputs = _int32_vector(b, list(op.outputs))
        tab = _table("Operator")
        tab.Start(b)
        tab.AddOpcodeIndex(b, op.opcode)
        tab.AddInputs(b, inputs)
        tab.AddOutputs(b, outputs)
        if options_offset is not None:
            tab.AddBuiltinOptionsType(b, options_type)
            tab.AddBuiltinOptions(b, options_offset)
        return int(tab.End(b))


def _table(name: str) -> Any:
    """The generated module of one schema table (``tflite.Conv2DOptions`` ...)."""
    return importlib.import_module(f"tflite.{name}")


def _int32_vector(b: flatbuffers.Builder, values: list[int]) -> int:
    return int(b.CreateNumpyVector(np.asarray(values, dtype=np.int32)))


def _offset_vector(b: flatbuffers.Builder, offsets: list[int]) -> int:
    b.StartVector(4, len(offsets), 4)
    for off in reversed(offsets):
        b.PrependUOffsetTRelative(off)
    return int(b.EndVector())


def _write_quant(b: flatbuffers.Builder, q: QParams) -> int:
    scale = b.CreateNumpyVector(np.asarray(q.scale, dtype=np.float32))
    zero_point = b.CreateNumpyVector(np.asarray(q.zero_point, dtype=np.int64))
    tab = _table("QuantizationParameters")
    tab.Start(b)
    tab.AddScale(b, scale)
    tab.AddZeroPoint(b, zero_point)
    tab.AddQuantizedDimension(b, q.axis)
    return int(tab.End(b))
