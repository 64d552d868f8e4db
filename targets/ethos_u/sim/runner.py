"""Run a whole Vela-compiled model: NPU custom ops on the functional model, the rest on LiteRT.

Why this exists: the int8 TFLite that nirc emits is validated against the float
ONNX model (``nirc.validate``), but what ships is Vela's output, whose NPU part is
opaque to every TFLite runtime.  Running that output bit-exactly in Python, and
comparing it with LiteRT on the pre-Vela int8 model, checks Vela's lowering,
scheduling, cascading, memory allocation and weight encoding without an FVP.

Memory is set up the way TFLite Micro sets it up: region 0 is the read-only blob,
region 1 the tensor arena with each feature map at its offline-planned offset,
region 2 the fast scratch; everything that is not an input starts as seeded
random bytes, so a stream that reads memory nobody wrote produces wrong numbers
instead of lucky zeros.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema
from nirc.targets.ethos_u.sim import cmdstream, container
from nirc.targets.ethos_u.sim.engine import Engine, OpTrace
from nirc.targets.ethos_u.sim.memory import Memory, SimulationError
from nirc.targets.ethos_u.sim.weights import WeightStreamError

_GARBAGE_SEED = 0x5EED


@dataclass
class SimulationResult:
    """Outputs by name plus per-NPU-op traces (one list per custom op, in graph order)."""

    outputs: dict[str, np.ndarray]
    traces: list[list[OpTrace]] = field(default_factory=list)
    tensors: dict[str, np.ndarray] = field(default_factory=dict)


def _garbage(size: int, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, size=max(size, 0), dtype=np.uint8)


def _tensor_bytes(value: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(value).view(np.uint8).reshape(-1)


def run_npu_call(
    model: container.VelaModel,
    call: container.NpuCall,
    values: dict[int, np.ndarray],
    *,
    stream: cmdstream.CommandStream | None = None,
    seed: int = _GARBAGE_SEED,
    capture: bool = False,
    arenas: dict[int, np.ndarray] | None = None,
) -> list[OpTrace]:
    """Execute one ``ethos-u`` op: lay out its regions, run the stream, read its OFMs into ``values``.

    ``arenas``: the scratch regions earlier ethos-u ops of the same inference left, by
    scratch tensor. Vela's scratch tensor is one buffer of the TFLite Micro arena that
    every ethos-u op of the model shares, and a tensor live across a CPU op (a residual
    around a float island) stays in it: the next op reads it from there, not from its
    inputs. The fast scratch (SRAM) starts as garbage in every op.
    """
    stream = stream or decoded(call.command_stream)
    rng = np.random.default_rng(seed)
    io = [model.tensors[i] for i in (*call.ifms, *call.ofms)]
    separate_io = any(
        fm is not None and fm.region >= 3
        for op in stream.ops
        if isinstance(op, cmdstream.BlockOp)
        for fm in (op.ifm, op.ifm2, op.ofm)
    )
    regions: dict[int, np.ndarray] = {0: np.frombuffer(call.read_only, dtype=np.uint8).copy()}
    arena_size = call.scratch_size
    if not separate_io:
        for t in io:
            if t.arena_offset is None:
                raise SimulationError(f"tensor {t.name!r} has no offline arena offset; cannot place it in region 1")
            arena_size = max(arena_size, t.arena_offset + t.nbytes)
    regions[1] = _garbage(arena_size, rng)
    kept = None if arenas is None else arenas.get(call.scratch_tensor)
    if kept is not None:
        regions[1][: min(kept.size, arena_size)] = kept[:arena_size]
    regions[2] = _garbage(call.fast_size, rng)
    for k, t in enumerate(io):
        if separate_io:
            regions[3 + k] = _garbage(t.nbytes, rng)
    for k, index in enumerate(call.ifms):
        t = model.tensors[index]
        if index not in values:
            raise SimulationError(f"custom op {call.op.index}: input {t.name!r} has no value")
        data = _tensor_bytes(values[index])
        if data.size != t.nbytes:
            raise SimulationError(f"input {t.name!r}: {data.size} bytes, tensor needs {t.nbytes}")
        if separate_io:
            regions[3 + k][:] = data
        else:
            assert t.arena_offset is not None
            regions[1][t.arena_offset : t.arena_offset + t.nbytes] = data
    memory = Memory(regions, shram_bytes=stream.config.shram_bytes_per_core)
    engine = Engine(memory, stream.config.accelerator, capture=capture)
    try:
        engine.run(stream.ops)
    except (SimulationError, WeightStreamError, ValueError, IndexError, KeyError, TypeError, OverflowError) as exc:
        raise _failed_at(call, stream, len(engine.trace), exc) from exc
    for k, index in enumerate(call.ofms):
        t = model.tensors[index]
        if separate_io:
            raw = regions[3 + len(call.ifms) + k]
        else:
            assert t.arena_offset is not None
            raw = regions[1][t.arena_offset : t.arena_offset + t.nbytes]
        values[index] = raw.copy().view(t.dtype).reshape(t.shape)
    if arenas is not None:
        arenas[call.scratch_tensor] = regions[1]
    trace: list[OpTrace] = engine.trace
    return trace


@functools.lru_cache(maxsize=8)
def decoded(payload: bytes) -> cmdstream.CommandStream:
    """Decode each command stream once when the same artifact runs on several inputs."""
    return cmdstream.decode(payload)


def _failed_at(call: container.NpuCall, stream: cmdstream.CommandStream, done: int, exc: Exception) -> SimulationError:
    """One line naming the custom op, the NPU operation and its command word, whatever went wrong inside.

    Why: a malformed stream (an address past its region, a length that does not fit
    the shapes, a corrupted weight stream) must end as a validation failure that says
    where, never as an internal error.
    """
    if done >= len(stream.ops):
        return SimulationError(f"ethos-u op {call.op.index}: {exc}")
    op = stream.ops[done]
    where = f"op {op.index} ({op.name}, word {op.offset})"
    text = str(exc) if isinstance(exc, SimulationError) else f"{type(exc).__name__}: {exc}"
    for prefix in (where, f"op {op.index}"):  # the engine's own messages may name the op already
        if text.startswith(prefix):
            text = text[len(prefix) :].lstrip(": ")
    return SimulationError(f"ethos-u op {call.op.index}, NPU {where}: {text}")


def one_op_models(model: container.VelaModel, ops: Sequence[container.OpInfo]) -> dict[int, bytes]:
    """One-operator TFLite models (by op index), each with only the tensors and buffers its op uses.

    The flatbuffer is unpacked once for all of them (unpacking a model with megabytes
    of weights per op would dominate a per-op run), and each keeps only its own
    tensors: TFLite Micro plans arena memory for every tensor of a subgraph.
    """
    obj = schema.ModelT.InitFromPackedBuf(model.data, 0)
    sg = obj.subgraphs[0]
    models: dict[int, bytes] = {}
    for op in ops:
        used = list(dict.fromkeys(i for i in (*op.inputs, *op.outputs) if i >= 0))
        remap = {old: new for new, old in enumerate(used)}
        one = schema.ModelT()
        one.version = obj.version
        one.operatorCodes = obj.operatorCodes
        one.buffers = [schema.BufferT()]
        tensors = []
        for old in used:
            tensor = copy.copy(sg.tensors[old])
            data = obj.buffers[tensor.buffer].data if 0 < tensor.buffer < len(obj.buffers) else None
            buffer = schema.BufferT()
            buffer.data = data
            tensor.buffer = len(one.buffers)
            one.buffers.append(buffer)
            tensors.append(tensor)
        operator = copy.copy(sg.operators[op.index])
        operator.inputs = [remap[i] if i >= 0 else -1 for i in op.inputs]
        operator.outputs = [remap[i] for i in op.outputs]
        graph = schema.SubGraphT()
        graph.tensors = tensors
        graph.operators = [operator]
        graph.inputs = [remap[i] for i in dict.fromkeys(op.inputs) if i >= 0 and model.tensors[i].data is None]
        graph.outputs = [remap[i] for i in op.outputs]
        one.subgraphs = [graph]
        builder = flatbuffers.Builder(1024)
        builder.Finish(one.Pack(builder), file_identifier=b"TFL3")
        models[op.index] = bytes(builder.Output())
    return models


def _run_litert(data: bytes, feeds: list[np.ndarray], kernels: str = "reference") -> list[np.ndarray]:
    """Run a (one-op) model on LiteRT; reference kernels are the ones TFLite Micro runs on the Cortex-M."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    resolver = (
        OpResolverType.BUILTIN_REF if kernels == "reference" else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    )
    interpreter = Interpreter(model_content=data, num_threads=1, experimental_op_resolver_type=resolver)
    interpreter.allocate_tensors()
    for detail, feed in zip(interpreter.get_input_details(), feeds, strict=True):
        interpreter.set_tensor(detail["index"], feed)
    interpreter.invoke()
    outputs: list[np.ndarray] = []
    for detail in interpreter.get_output_details():
        out: np.ndarray = interpreter.get_tensor(detail["index"])
        outputs.append(out)
    return outputs


def _as_input(t: container.TensorInfo, value: np.ndarray) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype != t.dtype:
        raise SimulationError(f"input {t.name!r}: dtype {arr.dtype}, the model expects {t.dtype}")
    if tuple(arr.shape) != t.shape:
        if arr.size != int(np.prod(t.shape)):
            raise SimulationError(f"input {t.name!r}: shape {arr.shape}, the model expects {t.shape}")
        arr = arr.reshape(t.shape)
    return np.ascontiguousarray(arr)


def run(
    source: Path | bytes | container.VelaModel,
    inputs: Mapping[str, np.ndarray],
    *,
    keep_tensors: bool = False,
    seed: int = _GARBAGE_SEED,
    capture: bool = False,
    cpu_kernels: str = "reference",
) -> SimulationResult:
    """Simulate the whole graph; see :func:`simulate` for the plain-dict form.

    Args:
        keep_tensors: also return every activation tensor by name.
        seed: seed of the random bytes unwritten memory starts with.
        capture: keep each NPU operation's computed OFM in the traces.
        cpu_kernels: LiteRT kernels for CPU-fallback ops (``reference`` or ``optimized``).
    """
    model = source if isinstance(source, container.VelaModel) else container.load(source)
    values: dict[int, np.ndarray] = {}
    names = {model.tensors[i].name: i for i in model.inputs}
    missing = set(names) - set(inputs)
    if missing:
        raise SimulationError(f"missing inputs: {sorted(missing)}")
    for name, value in inputs.items():
        if name not in names:
            raise SimulationError(f"unknown input {name!r}; model inputs are {sorted(names)}")
        values[names[name]] = _as_input(model.tensors[names[name]], value)
    for t in model.tensors:
        if t.data is not None and t.index not in values:
            values[t.index] = np.frombuffer(t.data, dtype=t.dtype).reshape(t.shape)
    result = SimulationResult({})
    arenas: dict[int, np.ndarray] = {}
    for op in model.ops:
        call = model.npu_calls.get(op.index)
        if call is not None:
            result.traces.append(run_npu_call(model, call, values, seed=seed, capture=capture, arenas=arenas))
            continue
        feeds = []
        for i in dict.fromkeys(op.inputs):  # an op reading one tensor twice has it once among the inputs
            if i >= 0 and model.tensors[i].data is None:
                if i not in values:
                    raise SimulationError(f"op {op.index} ({op.opcode}): input {model.tensors[i].name!r} has no value")
                feeds.append(values[i])
        try:
            outs = _run_litert(one_op_models(model, [op])[op.index], feeds, cpu_kernels)
        except (RuntimeError, ValueError) as exc:
            raise SimulationError(f"CPU op {op.index} ({op.opcode}) failed in LiteRT: {exc}") from exc
        for i, out in zip(op.outputs, outs, strict=True):
            values[i] = out
    for i in model.outputs:
        if i not in values:
            raise SimulationError(f"output {model.tensors[i].name!r} was never produced")
        result.outputs[model.tensors[i].name] = values[i]
    if keep_tensors:
        result.tensors = {model.tensors[i].name: v for i, v in values.items() if model.tensors[i].data is None}
    return result


def simulate(vela_tflite: Path | bytes, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run a Vela-compiled model; inputs and outputs by tensor name, in TFLite layout and dtype."""
    return run(vela_tflite, inputs).outputs


def _describe_stream(call: container.NpuCall) -> str:
    text: str = cmdstream.describe(cmdstream.decode(call.command_stream))
    return text


def describe(vela_tflite: Path | bytes) -> str:
    """Readable dump of every op in the model, with each NPU command stream decoded."""
    model = container.load(vela_tflite)
    lines: list[str] = []
    for op in model.ops:
        ins = ", ".join(model.tensors[i].name for i in op.inputs if i >= 0)
        outs = ", ".join(model.tensors[i].name for i in op.outputs)
        lines.append(f"op {op.index}: {op.opcode} ({ins}) -> ({outs})")
        call = model.npu_calls.get(op.index)
        if call is not None:
            lines.append(
                f"  read-only {len(call.read_only)} B, scratch {call.scratch_size} B, fast scratch {call.fast_size} B"
            )
            lines.extend("  " + line for line in _describe_stream(call).splitlines())
    return "\n".join(lines)
