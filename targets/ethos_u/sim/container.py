"""Read a Vela-compiled ``.tflite``: its graph, the ``ethos-u`` custom ops and their memory regions.

Why this exists: Vela replaces every NPU subgraph with one ``ethos-u`` custom operator
whose first four inputs are the command stream, the read-only (flash) blob with the
encoded weights, the scratch arena and the fast-scratch area, followed by the
subgraph's input feature maps; its outputs are the subgraph's outputs.  The feature
maps do not get regions of their own: Vela plans their place in the scratch arena
and records it in the ``OfflineMemoryAllocation`` metadata (``[version, subgraph,
count, offset per tensor]``, -1 for tensors it did not place), which TFLite Micro
honours.  The command stream then addresses them as region 1 + that offset.  This
module turns the flatbuffer into plain records the functional model works from.

The NPU's base-pointer regions follow the TFLite Micro Ethos-U kernel: region ``k``
is custom-op input ``k + 1`` (0 read-only, 1 scratch, 2 fast scratch, 3... input
feature maps) and then the outputs, which is what ``--separate-io-regions`` streams use.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from nirc.errors import BackendError

NPU_CUSTOM_CODE = "ethos-u"

_TENSOR_TYPES: dict[int, np.dtype[np.generic]] = {
    schema.TensorType.FLOAT32: np.dtype(np.float32),
    schema.TensorType.INT32: np.dtype(np.int32),
    schema.TensorType.UINT8: np.dtype(np.uint8),
    schema.TensorType.INT64: np.dtype(np.int64),
    schema.TensorType.INT16: np.dtype(np.int16),
    schema.TensorType.INT8: np.dtype(np.int8),
    schema.TensorType.BOOL: np.dtype(np.bool_),
    schema.TensorType.UINT16: np.dtype(np.uint16),
    schema.TensorType.UINT32: np.dtype(np.uint32),
}
_BUILTIN_NAMES = {value: name for name, value in vars(schema.BuiltinOperator).items() if not name.startswith("_")}


class ContainerError(BackendError):
    """The file is not a Vela output this model understands."""


@dataclass(frozen=True)
class TensorInfo:
    index: int
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype[np.generic]
    scale: float | None
    zero_point: int | None
    data: bytes | None  # constant contents, None for activations
    arena_offset: int | None  # OfflineMemoryAllocation entry, None when absent or -1

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


@dataclass(frozen=True)
class OpInfo:
    index: int
    opcode: str  # builtin name, or the custom code for custom ops
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]


@dataclass(frozen=True)
class NpuCall:
    """One ``ethos-u`` custom operator with the bytes and sizes of its regions."""

    op: OpInfo
    command_stream: bytes
    read_only: bytes
    scratch_size: int
    fast_size: int
    scratch_tensor: int
    fast_tensor: int
    ifms: tuple[int, ...]
    ofms: tuple[int, ...]


@dataclass(frozen=True)
class VelaModel:
    data: bytes
    tensors: tuple[TensorInfo, ...]
    ops: tuple[OpInfo, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    npu_calls: dict[int, NpuCall]  # by op index

    def tensor(self, name: str) -> TensorInfo:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(name)


def _offline_offsets(model: schema.Model, ntensors: int) -> list[int | None]:
    for i in range(model.MetadataLength()):
        meta = model.Metadata(i)
        if meta.Name() != b"OfflineMemoryAllocation":
            continue
        raw = model.Buffers(meta.Buffer()).DataAsNumpy()
        if not isinstance(raw, np.ndarray):
            break
        values = np.frombuffer(raw.tobytes(), dtype="<i4")
        if len(values) < 3 or int(values[2]) != ntensors or len(values) < 3 + ntensors:
            raise ContainerError("OfflineMemoryAllocation metadata does not match the subgraph's tensor count")
        return [None if int(v) < 0 else int(v) for v in values[3 : 3 + ntensors]]
    return [None] * ntensors


def _buffer_bytes(model: schema.Model, index: int) -> bytes | None:
    if index <= 0 or index >= model.BuffersLength():
        return None
    buf = model.Buffers(index)
    raw = buf.DataAsNumpy()
    if isinstance(raw, np.ndarray) and raw.size:
        return raw.tobytes()
    return None


def load(source: Path | bytes) -> VelaModel:
    """Parse a Vela output flatbuffer (path or bytes)."""
    data = Path(source).read_bytes() if isinstance(source, (str, Path)) else bytes(source)
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ContainerError("not a TFLite flatbuffer (missing TFL3 identifier)")
    try:
        model = schema.Model.GetRootAs(data, 0)
        if model.SubgraphsLength() != 1:
            raise ContainerError(f"expected one subgraph, found {model.SubgraphsLength()}")
        sg = model.Subgraphs(0)
        ntensors = sg.TensorsLength()
        offsets = _offline_offsets(model, ntensors)
        tensors = []
        for t in range(ntensors):
            tensor = sg.Tensors(t)
            dtype = _TENSOR_TYPES.get(tensor.Type())
            if dtype is None:
                raise ContainerError(f"tensor {t}: unsupported type {tensor.Type()}")
            quant = tensor.Quantization()
            scale = zp = None
            if quant is not None and quant.ScaleLength() == 1:
                scale = float(quant.Scale(0))
                zp = int(quant.ZeroPoint(0)) if quant.ZeroPointLength() else 0
            shape = tuple(int(d) for d in tensor.ShapeAsNumpy()) if tensor.ShapeLength() else ()
            name = tensor.Name()
            tensors.append(
                TensorInfo(
                    t,
                    name.decode() if isinstance(name, bytes) else str(name),
                    shape,
                    dtype,
                    scale,
                    zp,
                    _buffer_bytes(model, tensor.Buffer()),
                    offsets[t],
                )
            )
        codes = []
        for c in range(model.OperatorCodesLength()):
            oc = model.OperatorCodes(c)
            builtin = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
            if builtin == schema.BuiltinOperator.CUSTOM:
                custom = oc.CustomCode()
                codes.append(custom.decode() if isinstance(custom, bytes) else str(custom))
            else:
                codes.append(_BUILTIN_NAMES.get(builtin, f"BUILTIN_{builtin}"))
        ops = []
        for o in range(sg.OperatorsLength()):
            op = sg.Operators(o)
            ins = tuple(int(i) for i in op.InputsAsNumpy()) if op.InputsLength() else ()
            outs = tuple(int(i) for i in op.OutputsAsNumpy()) if op.OutputsLength() else ()
            ops.append(OpInfo(o, codes[op.OpcodeIndex()], ins, outs))
        inputs = tuple(int(i) for i in sg.InputsAsNumpy())
        outputs = tuple(int(i) for i in sg.OutputsAsNumpy())
    except (IndexError, ValueError, TypeError, AttributeError) as exc:
        raise ContainerError(f"malformed TFLite flatbuffer: {exc}") from exc
    calls: dict[int, NpuCall] = {}
    for op in ops:
        if op.opcode != NPU_CUSTOM_CODE:
            continue
        if len(op.inputs) < 4:
            raise ContainerError(f"op {op.index}: ethos-u custom op has {len(op.inputs)} inputs, expected >= 4")
        cs, ro, scratch, fast = (tensors[i] for i in op.inputs[:4])
        if cs.data is None:
            raise ContainerError(f"op {op.index}: command stream tensor has no data")
        calls[op.index] = NpuCall(
            op=op,
            command_stream=cs.data,
            read_only=ro.data or b"",
            scratch_size=scratch.nbytes,
            fast_size=fast.nbytes,
            scratch_tensor=scratch.index,
            fast_tensor=fast.index,
            ifms=op.inputs[4:],
            ofms=op.outputs,
        )
    return VelaModel(data, tuple(tensors), tuple(ops), inputs, outputs, calls)
