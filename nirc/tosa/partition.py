"""Split an int8 TFLite into a part Vela reads as TOSA and the rest it reads as TFLite; stitch the results.

Why: the lift is all-or-nothing per model, so one op it cannot express (YOLOv8n's
SOFTMAX in the box head) kept every SiLU of the model as LOGISTIC + MUL. Vela reads
either format and writes both as TFLite holding ``ethos-u`` custom ops, so each part
can take the reader that suits it: the ops that lift go to Vela as TOSA (SiLU as a
free TABLE), the others -- and everything they feed -- stay TFLite, where Vela's own
TFLite reader still runs them on the NPU (SOFTMAX) or leaves them on the CPU.

The TOSA part is closed under producers: an op is in it only if it lifts and all its
inputs come from the part or the model's inputs, so the two parts run one after the
other. Both are compiled with ``--separate-io-regions``: a part's input and output
feature maps are then addressed through their own base pointers (regions 3...),
not at offsets Vela planned in its own arena, so the two compiled parts can share
one TFLite file whose tensors TFLite Micro places. :func:`stitch` joins them by
tensor name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from ai_edge_litert import schema_py_generated as tfl

from nirc.errors import BackendError
from nirc.tosa.lift import SplitRest, TosaGraph, TosaUnsupportedError, lift
from nirc.tosa.marker import load_model as _load
from nirc.tosa.marker import meta_name as _meta_name
from nirc.tosa.marker import pack_model as _pack

#: Vela flag both parts are compiled with (see the module docstring).
SEPARATE_IO = ("--separate-io-regions", "--cop-format", "COP2")
_OFFLINE_PLAN = b"OfflineMemoryAllocation"


@dataclass(frozen=True)
class Parts:
    """The two sub-models of a split int8 TFLite.

    Attributes:
        npu: the part the lift translates (a TFLite model: its inputs and outputs are
            tensors of the original model, by name).
        rest: the remaining ops; reads model inputs and ``npu``'s outputs by name,
            writes the model's outputs.
        npu_ops / rest_ops: indices of the original model's operators in each part.
    """

    npu: bytes
    rest: bytes
    npu_ops: tuple[int, ...]
    rest_ops: tuple[int, ...]


def _tname(t: tfl.TensorT) -> str:
    raw = t.name
    return raw.decode() if isinstance(raw, bytes) else str(raw or "")


def submodel(data: bytes, ops: Iterable[int], outputs: Sequence[int] | None = None) -> bytes:
    """The model restricted to operators ``ops`` (original order), with only the tensors and buffers they use.

    Inputs are the non-constant tensors the ops read and no kept op writes; outputs are
    ``outputs`` when given, else the tensors the kept ops write that the model outputs
    or a dropped op reads.
    """
    model = _load(data)
    sg = model.subgraphs[0]
    keep = sorted(set(ops))
    kept = [sg.operators[k] for k in keep]
    written = {int(o) for op in kept for o in op.outputs}
    read = [int(i) for op in kept for i in op.inputs if int(i) >= 0]
    dropped_reads = {
        int(i) for k, op in enumerate(sg.operators) if k not in set(keep) for i in op.inputs if int(i) >= 0
    }

    def is_const(i: int) -> bool:
        buf = model.buffers[sg.tensors[i].buffer].data if sg.tensors[i].buffer < len(model.buffers) else None
        return buf is not None and len(buf) > 0

    inputs = list(dict.fromkeys(i for i in read if i not in written and not is_const(i)))
    if outputs is None:
        graph_outputs = {int(i) for i in sg.outputs}
        outputs = [i for i in sorted(written) if i in graph_outputs or i in dropped_reads]
        order = {int(i): n for n, i in enumerate(sg.outputs)}
        outputs.sort(key=lambda i: (order.get(i, len(order)), i))
    used = list(dict.fromkeys([*inputs, *read, *written, *outputs]))
    remap = {old: new for new, old in enumerate(used)}
    buffers: list[tfl.BufferT] = [tfl.BufferT()]
    tensors = []
    for old in used:
        t = sg.tensors[old]
        if is_const(old):
            buffers.append(model.buffers[t.buffer])
            t.buffer = len(buffers) - 1
        else:
            t.buffer = 0
        tensors.append(t)
    for op in kept:
        op.inputs = [remap[int(i)] if int(i) >= 0 else -1 for i in op.inputs]
        op.outputs = [remap[int(o)] for o in op.outputs]
    sg.tensors, sg.operators = tensors, kept
    sg.inputs, sg.outputs = [remap[i] for i in inputs], [remap[i] for i in outputs]
    model.buffers = buffers
    model.metadata, model.signatureDefs, model.subgraphs = None, None, [sg]
    return _pack(model)


def consumers(data: bytes) -> list[list[int]]:
    """Per operator, the operators that read one of its outputs."""
    sg = _load(data).subgraphs[0]
    readers: dict[int, list[int]] = {}
    for k, op in enumerate(sg.operators):
        for i in op.inputs:
            readers.setdefault(int(i), []).append(k)
    return [sorted({r for o in op.outputs for r in readers.get(int(o), [])}) for op in sg.operators]


def without_descendants(ops: set[int], start: int, readers: Sequence[Sequence[int]]) -> set[int]:
    """``ops`` minus ``start`` and everything downstream of it."""
    gone, todo = set(), [start]
    while todo:
        k = todo.pop()
        if k in gone:
            continue
        gone.add(k)
        todo.extend(readers[k])
    return ops - gone


def split(data: bytes, blocked: int, lifts: Callable[[bytes], int | None]) -> Parts | None:
    """The largest producer-closed set of ops that lifts, and the rest; None if either is empty
    or has more than :data:`MAX_INTERFACE` input or output.

    ``blocked``: an operator the lift refused. ``lifts(sub_model)`` lifts a candidate part
    and returns the index (in that sub-model) of the next op it refuses, or None.
    """
    readers = consumers(data)
    n = len(readers)
    part = without_descendants(set(range(n)), blocked, readers)
    while part:
        order = sorted(part)
        refused = lifts(submodel(data, order))
        if refused is None:
            break
        part = without_descendants(part, order[refused], readers)
    if not part or len(part) == n:
        return None
    rest = sorted(set(range(n)) - part)
    model = _load(data)
    outputs = [int(i) for i in model.subgraphs[0].outputs]
    parts = Parts(submodel(data, sorted(part)), submodel(data, rest, outputs), tuple(sorted(part)), tuple(rest))
    if any(len(names) != MAX_INTERFACE for half in (parts.npu, parts.rest) for names in io_names(half)):
        return None  # see MAX_INTERFACE
    return parts


#: Each part may have one input and one output feature map. Vela 5.2's ``--separate-io-regions``
#: packs all inputs into region 3 and all outputs into region 4 (measured: a second input read
#: at region 3 + the first one's size), while TFLite Micro's Ethos-U kernel gives every custom-op
#: tensor its own base pointer (region 3 + k): the two agree only for one input and one output.
MAX_INTERFACE = 1


def io_names(data: bytes) -> tuple[list[str], list[str]]:
    """Input and output tensor names of a one-subgraph TFLite model."""
    sg = _load(data).subgraphs[0]
    return [_tname(sg.tensors[int(i)]) for i in sg.inputs], [_tname(sg.tensors[int(i)]) for i in sg.outputs]


def stitch(first: bytes, second: bytes, inputs: Sequence[str], outputs: Sequence[str]) -> bytes:
    """One TFLite model running compiled part ``first`` then ``second``, joined by tensor name.

    Both are Vela outputs whose interface tensors carry the original model's names.
    ``inputs`` / ``outputs``: the original model's interface, in its order. Vela's
    offline memory plans are concatenated (each part's scratch tensors where its own
    plan put them; interface tensors unplanned, which ``--separate-io-regions`` allows).
    """
    a, b = _load(first), _load(second)
    sa, sb = a.subgraphs[0], b.subgraphs[0]
    if len(a.subgraphs) != 1 or len(b.subgraphs) != 1:
        raise BackendError("stitching Vela outputs: only one-subgraph models")
    codes: list[tfl.OperatorCodeT] = []

    def code_index(model: tfl.ModelT, index: int) -> int:
        code = model.operatorCodes[index]
        key = (code.builtinCode, code.deprecatedBuiltinCode, code.customCode, code.version)
        for n, c in enumerate(codes):
            if (c.builtinCode, c.deprecatedBuiltinCode, c.customCode, c.version) == key:
                return n
        codes.append(code)
        return len(codes) - 1

    buffers: list[tfl.BufferT] = [tfl.BufferT()]
    tensors: list[tfl.TensorT] = []
    by_name: dict[str, int] = {}
    plans: list[int] = []
    operators: list[tfl.OperatorT] = []
    for model, sg in ((a, sa), (b, sb)):
        plan = _offline_plan(model)
        remap: dict[int, int] = {}
        for i, t in enumerate(sg.tensors):
            name = _tname(t)
            if name in by_name and (i in set(sg.inputs) or i in set(sg.outputs)):
                remap[i] = by_name[name]
                continue
            data = model.buffers[t.buffer].data if t.buffer < len(model.buffers) else None
            if data is not None and len(data):
                buffers.append(model.buffers[t.buffer])
                t.buffer = len(buffers) - 1
            else:
                t.buffer = 0
            remap[i] = len(tensors)
            tensors.append(t)
            plans.append(plan[i] if plan is not None and i < len(plan) else -1)
            if i in set(sg.inputs) or i in set(sg.outputs):
                by_name[name] = remap[i]
        for op in sg.operators:
            op.opcodeIndex = code_index(model, op.opcodeIndex)
            op.inputs = [remap[int(i)] if int(i) >= 0 else -1 for i in op.inputs]
            op.outputs = [remap[int(o)] for o in op.outputs]
            operators.append(op)
    missing = [n for n in (*inputs, *outputs) if n not in by_name]
    if missing:
        raise BackendError(f"stitching Vela outputs: interface tensors {missing} not found")
    sa.tensors, sa.operators = tensors, operators
    sa.inputs, sa.outputs = [by_name[n] for n in inputs], [by_name[n] for n in outputs]
    a.operatorCodes, a.buffers, a.signatureDefs = codes, buffers, None
    a.metadata = None
    if any(p >= 0 for p in plans):
        buffers.append(tfl.BufferT())
        buffers[-1].data = np.asarray([0, 0, len(plans), *plans], "<i4").view(np.uint8)
        meta = tfl.MetadataT()
        meta.name, meta.buffer = _OFFLINE_PLAN, len(buffers) - 1
        a.metadata = [meta]
    return _pack(a)


def _offline_plan(model: tfl.ModelT) -> list[int] | None:
    for meta in model.metadata or []:
        if _meta_name(meta) == _OFFLINE_PLAN:
            raw = np.asarray(model.buffers[meta.buffer].data, np.uint8).tobytes()
            words = np.frombuffer(raw, "<i4")
            return [int(v) for v in words[3 : 3 + int(words[2])]]
    return None


def lift_split(data: bytes, *, stage_inputs: bool = True) -> TosaGraph:
    """:func:`nirc.tosa.lift.lift`, or when it refuses an op, the lift of the part before it.

    Raises:
        TosaUnsupportedError: the refusal could not be pinned on one op, or nothing before it lifts.
    """
    try:
        return lift(data, stage_inputs=stage_inputs)
    except TosaUnsupportedError as exc:
        if exc.op_index is None:
            raise
        parts = split(data, exc.op_index, _refused)
        if parts is None:
            raise
    graph = lift(parts.npu, stage_inputs=stage_inputs)
    model = _load(data)
    sg = model.subgraphs[0]
    names = [_op_name(model, sg.operators[k]) for k in parts.rest_ops]
    inputs, outputs = io_names(data)
    rest = SplitRest(parts.rest, tuple(names), tuple(inputs), tuple(outputs))
    return dataclasses.replace(graph, split=rest)


def _refused(data: bytes) -> int | None:
    try:
        lift(data)
    except TosaUnsupportedError as exc:
        if exc.op_index is None:
            raise
        return exc.op_index
    return None


_BUILTIN: dict[int, str] = {v: k for k, v in vars(tfl.BuiltinOperator).items() if not k.startswith("_")}


def _op_name(model: tfl.ModelT, op: tfl.OperatorT) -> str:
    code = model.operatorCodes[op.opcodeIndex]
    return _BUILTIN.get(max(int(code.builtinCode), int(code.deprecatedBuiltinCode)), "CUSTOM")


def rename_interface(data: bytes, names: dict[str, str]) -> bytes:
    """The model with its input/output tensors renamed (``old -> new``): Vela keeps TOSA's names."""
    model = _load(data)
    sg = model.subgraphs[0]
    for i in (*sg.inputs, *sg.outputs):
        t = sg.tensors[int(i)]
        t.name = names.get(_tname(t), _tname(t))
    return _pack(model)
