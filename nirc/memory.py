"""Memory model: int8 activation bytes alive at each step, laid out the way Vela lays them out.

Why a model of its own: :func:`nirc.analysis.live_bytes_timeline` counts logical
int8 elements, which is what a CPU runtime (TFLite Micro) needs. Vela stores a
feature map that stays on the NPU in ``NHCWB16`` bricks, so a 24-channel tensor
takes 32 channels of memory; it aligns every buffer to 16 bytes; memory-only ops
(Reshape, Squeeze ...) share their input's buffer, a Slice feeding an NPU op
is a read offset into its input, and the producers of a Concat write straight
into the Concat's buffer. Passes that plan tiling or scheduling against the
arena need those rules, otherwise a 24-channel network looks a third smaller
than it is.

Vela does not run ops in the order of the TFLite file: its pass packing
(Regor, the C++ core of Vela 5, behaves the same) walks the graph backwards from
the outputs, entering an op's inputs in order and a tensor's producer only
after all of its readers; Concat inputs are entered last to first because
each becomes a write into the output. :func:`vela_order` reproduces that walk,
so the model can predict Vela's arena for its own order; the one knob a graph
rewrite has over it is the input order of commutative binary ops.

What the model does not cover: Vela's cascading, which keeps a chain's
intermediates as rolling stripes in SRAM (compare against Vela with
``--disable-cascading``; :func:`vela_live_bytes` parses its allocation log), and
the allocator's fragmentation (the arena is at least the peak of live bytes).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import onnx_graphsurgeon as gs

from nirc.ir import IRModel

BRICK_CHANNELS = 16
"""Channels per NHCWB16 brick (all Ethos-U generations)."""
ALIGNMENT = 16
"""Vela's allocation quantum (``Tensor.AllocationQuantum``): every buffer is a multiple of it."""

MEMORY_ONLY_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout"})
"""Ops Vela turns into a change of tensor metadata: the output shares the input's buffer."""
_NPU_READERS_OF_SLICES = frozenset(
    {
        "Conv", "MaxPool", "AveragePool", "Add", "Sub", "Mul", "Max", "Min", "Relu", "Clip", "LeakyRelu",
        "Sigmoid", "Tanh", "HardSwish", "HardSigmoid", "PRelu", "Concat",
    }
)  # fmt: skip
"""Readers that take a Slice as a read offset (Vela fuses the Slice away)."""
FUSED_ACTIVATIONS = frozenset({"Relu", "Clip", "Sigmoid", "Tanh", "LeakyRelu", "HardSwish"})
"""Unary ops Vela fuses into the op producing their input (when that output has no other reader)."""
COMMUTATIVE_OPS = frozenset({"Add", "Mul", "Max", "Min", "Sum", "Mean"})
"""Binary ops whose two inputs may be swapped without changing the result (ONNX and TFLite int8)."""


@dataclass(frozen=True)
class Buffer:
    """One allocation: a tensor, or a group of tensors sharing memory (aliases, Concat writers).

    Attributes:
        name: the tensor that owns the buffer (the Concat output, the Reshape input ...).
        tensors: every tensor stored in it.
        size: bytes it occupies (storage format, alignment).
        logical: int8 bytes of the owning tensor (elements).
        layout: ``NHWC`` or ``NHCWB16``.
        start, end: first and last step (inclusive) at which it is alive.
    """

    name: str
    tensors: tuple[str, ...]
    size: int
    logical: int
    layout: str
    start: int
    end: int


@dataclass(frozen=True)
class MemoryProfile:
    """Live bytes per step of one execution order.

    Attributes:
        order: node names in execution order (one step each).
        live: bytes alive during each step (the step's inputs and outputs together).
        buffers: the allocations, by owning tensor.
    """

    order: tuple[str, ...]
    live: tuple[int, ...]
    buffers: tuple[Buffer, ...]

    @property
    def peak(self) -> int:
        return max(self.live, default=0)

    @property
    def peak_step(self) -> int:
        """Index of the first step at the peak (-1 for an empty graph)."""
        return self.live.index(self.peak) if self.live else -1

    def alive_at(self, step: int) -> list[Buffer]:
        """Buffers alive during ``step``, largest first."""
        return sorted((b for b in self.buffers if b.start <= step <= b.end), key=lambda b: -b.size)

    def over(self, budget: int) -> list[int]:
        """Steps whose live bytes exceed ``budget``."""
        return [i for i, v in enumerate(self.live) if v > budget]


def _shape(tensor: gs.Tensor) -> list[int]:
    return [int(d) for d in tensor.shape] if tensor.shape is not None else []


def storage_bytes(shape: Sequence[int], layout: str, *, brick: int = BRICK_CHANNELS, alignment: int = ALIGNMENT) -> int:
    """Bytes an int8 tensor of ONNX ``shape`` (NCHW for 4-D) occupies in Vela's ``layout``.

    ``NHCWB16`` rounds the channel axis up to whole bricks; both layouts round the
    total up to ``alignment`` (a zero-sized tensor still takes one quantum).
    """
    dims = [int(d) for d in shape]
    if layout == "NHCWB16" and len(dims) == 4:
        dims[1] = -(-dims[1] // brick) * brick
    raw = max(math.prod(dims), 1)
    return -(-raw // alignment) * alignment


class _Graph:
    """Producer/reader tables over one order, shared by the layout, alias and order rules."""

    def __init__(self, model: IRModel) -> None:
        self.graph = model.graph
        self.nodes: list[gs.Node] = list(model.graph.nodes)
        self.producer: dict[str, gs.Node] = {}
        self.readers: dict[str, list[gs.Node]] = {}
        self.tensors: dict[str, gs.Tensor] = {}
        for tensor in model.graph.inputs:
            self.tensors[tensor.name] = tensor
        for node in self.nodes:
            for out in node.outputs:
                self.producer[out.name] = node
                self.tensors[out.name] = out
            for inp in self.variable_inputs(node):
                self.readers.setdefault(inp.name, []).append(node)
                self.tensors.setdefault(inp.name, inp)
        self.inputs = {t.name for t in model.graph.inputs}
        self.outputs = [t.name for t in model.graph.outputs]

    @staticmethod
    def variable_inputs(node: gs.Node) -> list[gs.Tensor]:
        return [t for t in node.inputs if not isinstance(t, gs.Constant) and t.name and not _is_constant_node_out(t)]


def _is_constant_node_out(tensor: gs.Tensor) -> bool:
    return len(tensor.inputs) == 1 and tensor.inputs[0].op == "Constant"


def _concat_channel_offsets_aligned(node: gs.Node, brick: int) -> bool:
    axis = int(node.attrs.get("axis", 0))
    shapes = [_shape(t) for t in node.inputs]
    rank = len(shapes[0]) if shapes and shapes[0] else 0
    if rank != 4 or axis % rank != 1:
        return True
    return all(s[1] % brick == 0 for s in shapes[:-1])


def layouts(model: IRModel, *, brick: int = BRICK_CHANNELS) -> dict[str, str]:
    """Vela's storage layout of every activation tensor (its ``check_format_restrictions``).

    Linear ``NHWC`` for graph inputs and outputs, non-4-D tensors, tensors that a
    memory-only op reads or writes, and tensors that a Concat writes or a Slice
    reads at a channel offset that is not a whole brick; ``NHCWB16`` otherwise.
    """
    g = _Graph(model)
    result: dict[str, str] = {}
    for name, tensor in g.tensors.items():
        shape = _shape(tensor)
        linear = name in g.inputs or name in g.outputs or len(shape) != 4
        linked = [g.producer[name]] if name in g.producer else []
        linked += g.readers.get(name, [])
        for node in linked:
            if node.op in MEMORY_ONLY_OPS or node.op in ("Transpose", "Gemm", "MatMul", "Softmax"):
                linear = True
            if node.op == "Concat" and not _concat_channel_offsets_aligned(node, brick):
                linear = True  # a write (or read) at a channel offset inside a brick
            if node.op == "Slice" and node is not g.producer.get(name) and not _slice_keeps_bricks(node, brick):
                linear = True
        result[name] = "NHWC" if linear else "NHCWB16"
    return result


def _slice_keeps_bricks(node: gs.Node, brick: int) -> bool:
    """A Slice that cuts the channel axis at a non-brick offset forces its input linear."""
    if len(node.inputs) < 4 or not isinstance(node.inputs[3], gs.Constant):
        return True
    axes = [int(a) for a in node.inputs[3].values.reshape(-1)]
    starts = node.inputs[1].values.reshape(-1) if isinstance(node.inputs[1], gs.Constant) else None
    if 1 not in axes or starts is None:
        return True
    return int(starts[axes.index(1)]) % brick == 0


def _aliases(g: _Graph, fmt: dict[str, str]) -> dict[str, str]:
    """Tensor -> representative of the buffer it lives in (union-find over Vela's sharing rules).

    Shared: a memory-only op's output and input; a Slice read through an offset
    and its input; an activation Vela fuses into its producer and the producer's
    output; a Concat's output and the inputs its producers write into it; an
    elementwise op's output and an input it overwrites (Vela's IFM reuse: same
    shape and layout, the op is the input's only reader, not a graph input).
    """
    parent: dict[str, str] = {}

    def find(name: str) -> str:
        while parent.get(name, name) != name:
            name = parent[name]
        return name

    def union(a: str, b: str) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[ra] = rb

    def sole_reader(name: str) -> bool:
        return len(g.readers.get(name, [])) == 1 and name not in g.outputs and name not in g.inputs

    for node in g.nodes:
        ins = _Graph.variable_inputs(node)
        if not ins or len(node.outputs) != 1:
            continue
        out = node.outputs[0].name
        if node.op in MEMORY_ONLY_OPS:
            union(out, ins[0].name)
        elif node.op == "Slice":
            readers = g.readers.get(out, [])
            if readers and out not in g.outputs and all(r.op in _NPU_READERS_OF_SLICES for r in readers):
                union(out, ins[0].name)
        elif node.op in FUSED_ACTIVATIONS and _fusable(g, ins[0].name):
            union(ins[0].name, out)  # the producer writes the activated values directly
        elif node.op == "Concat":
            for inp in ins:
                src = g.producer.get(inp.name)
                if src is not None and sole_reader(inp.name) and src.op not in MEMORY_ONLY_OPS:
                    union(inp.name, out)  # the producer writes its slice of the output directly
        elif node.op in _ELEMENTWISE and out not in g.outputs:
            shape = _shape(node.outputs[0])
            for inp in ins[:2]:
                if sole_reader(inp.name) and _shape(inp) == shape and fmt.get(inp.name) == fmt.get(out):
                    union(out, inp.name)
                    break
    return {name: find(name) for name in g.tensors}


_ELEMENTWISE = frozenset({"Add", "Sub", "Mul", "Max", "Min", "Div", "PRelu", "HardSigmoid", *FUSED_ACTIVATIONS})


def _fusable(g: _Graph, name: str) -> bool:
    src = g.producer.get(name)
    return (
        src is not None
        and src.op not in MEMORY_ONLY_OPS
        and src.op not in ("Concat", "Slice", "Split")
        and len(g.readers.get(name, [])) == 1
        and name not in g.outputs
    )


def profile(
    model: IRModel,
    order: Sequence[gs.Node] | None = None,
    *,
    brick: int = BRICK_CHANNELS,
    alignment: int = ALIGNMENT,
) -> MemoryProfile:
    """Live activation bytes at each step of ``order`` (default: the IR's node order).

    A buffer is alive from the step that first writes it (graph inputs: from the
    first step) through its last reader (graph outputs: to the last step); during
    a step the node's inputs and outputs are alive together. Memory-only and
    fused-Slice outputs cost nothing of their own; Concat inputs that only the
    Concat reads are written into its buffer.
    """
    g = _Graph(model)
    steps = list(order) if order is not None else g.nodes
    position = {node.name: i for i, node in enumerate(steps)}
    last = max(len(steps) - 1, 0)
    fmt = layouts(model, brick=brick)
    owner_of = _aliases(g, fmt)
    members: dict[str, list[str]] = {}
    start: dict[str, int] = {}
    end: dict[str, int] = {}
    for name in g.tensors:
        owner = owner_of.get(name, name)
        members.setdefault(owner, []).append(name)
        if name in g.inputs:
            born = 0
        elif name in g.producer:
            born = position[g.producer[name].name]
        else:
            continue
        dies = max((position[r.name] for r in g.readers.get(name, [])), default=born)
        if name in g.outputs:
            dies = last
        start[owner] = min(start.get(owner, born), born)
        end[owner] = max(end.get(owner, dies), dies)
    buffers = []
    for owner, names in members.items():
        if owner not in start:
            continue
        sizes = {
            n: storage_bytes(_shape(g.tensors[n]), fmt.get(n, "NHWC"), brick=brick, alignment=alignment) for n in names
        }
        big = max(sorted(names), key=lambda n: sizes[n])
        shape = _shape(g.tensors[big])
        buffers.append(
            Buffer(
                name=owner,
                tensors=tuple(sorted(names)),
                size=sizes[big],
                logical=math.prod(shape) if shape else 0,
                layout=fmt.get(big, "NHWC"),
                start=start[owner],
                end=end[owner],
            )
        )
    delta = [0] * (len(steps) + 1)
    for buf in buffers:
        delta[buf.start] += buf.size
        delta[buf.end + 1] -= buf.size
    live, running = [], 0
    for i in range(len(steps)):
        running += delta[i]
        live.append(running)
    return MemoryProfile(order=tuple(n.name for n in steps), live=tuple(live), buffers=tuple(buffers))


def _writes_in_place(g: _Graph, name: str) -> bool:
    src = g.producer.get(name)
    return (
        src is not None
        and src.op not in MEMORY_ONLY_OPS
        and len(g.readers.get(name, [])) == 1
        and name not in g.outputs
        and name not in g.inputs
    )


def vela_order(model: IRModel, *, flipped: Iterable[str] = ()) -> list[gs.Node]:
    """The order Vela runs the nodes in, whatever the order of the TFLite file.

    Vela's pass packing visits the graph backwards from the graph outputs (in
    order): it enters an op's inputs first to last, and a tensor's producer
    only once every reader of the tensor has been entered; a Concat's inputs are
    entered last to first (each becomes a write into its output). Execution is
    the reverse of that visit. Measured with Vela 5.2: ``Add(a, b)`` runs ``b``'s
    branch first; ``Concat(a, b, c)`` runs ``a``'s first.

    Args:
        flipped: names of commutative binary nodes to treat as if their two inputs
            were swapped (to evaluate a candidate without rewriting the graph).
    """
    g = _Graph(model)
    flips = set(flipped)
    remaining: dict[str, int] = {}
    for name, readers in g.readers.items():
        remaining[name] = len(readers) + (1 if name in g.outputs else 0)
    for name in g.outputs:
        remaining.setdefault(name, 1)
    pending_outputs: dict[str, int] = {}
    reverse: list[gs.Node] = []
    done: set[str] = set()

    def entered(node: gs.Node) -> list[gs.Tensor]:
        ins = _Graph.variable_inputs(node)
        if node.op == "Concat":
            # An input only the Concat reads is written in place by its producer; any other is copied
            # by an op of its own. Vela enters the copies first (in input order), then the in-place
            # writers last to first.
            copied = [t for t in ins if not _writes_in_place(g, t.name)]
            direct = [t for t in ins if _writes_in_place(g, t.name)]
            return copied + list(reversed(direct))
        if node.name in flips and len(ins) == 2:
            return list(reversed(ins))
        return ins

    # Iterative DFS: a stack of tensors to "enter" once each.
    stack: list[str] = list(reversed(g.outputs))
    while stack:
        name = stack.pop()
        remaining[name] -= 1
        if remaining[name] > 0:
            continue
        node = g.producer.get(name)
        if node is None or node.name in done:
            continue
        outs = [o.name for o in node.outputs]
        need = sum(1 for o in outs if remaining.get(o, 0) > 0 or o in g.readers or o in g.outputs)
        pending_outputs[node.name] = pending_outputs.get(node.name, 0) + 1
        if pending_outputs[node.name] < max(need, 1):
            continue
        done.add(node.name)
        reverse.append(node)
        stack.extend(t.name for t in reversed(entered(node)))
    missing = [n for n in g.nodes if n.name not in done]  # unreachable from the outputs: Vela drops them
    return list(reversed(reverse)) + missing


# --------------------------------------------------------------------------- checking against Vela

_ALLOC_LINE = re.compile(
    r"^\s*(\d+)\s*-\s*(\d+):\s*0x([0-9a-fA-F]+)\s*-\s*0x([0-9a-fA-F]+):\s*(\d+):\s*(\d+):\s*(\S+)\s*:\s*(.+?)\s*$"
)


@dataclass(frozen=True)
class VelaTensor:
    """One line of Vela's ``--verbose-allocation`` table."""

    memory: str
    name: str
    start_time: int
    end_time: int
    address: int
    size: int
    layout: str


def parse_vela_allocation(log: str) -> list[VelaTensor]:
    """Feature-map allocations from a Vela log written with ``--verbose-allocation``.

    Sections ``Allocation, memory <M>, usage mask: FeatureMap`` and ``... Staging``
    are read; weight buffers (``WB_*``), LUTs and read-only tensors are left out.
    """
    found: list[VelaTensor] = []
    memory: str | None = None
    for line in log.splitlines():
        if line.startswith("Allocation, memory"):
            head = line.split(",")
            memory = head[1].split()[-1] if len(head) > 1 else None
            continue
        if line.startswith(("Tensor Allocation for read-only", "####", "Performance")):
            memory = None if not line.startswith("####") else memory
            if line.startswith("Tensor Allocation"):
                memory = None
            continue
        if memory is None:
            continue
        match = _ALLOC_LINE.match(line)
        if not match:
            continue
        t0, t1, a0, _a1, size, _usage, layout, name = match.groups()
        if name.startswith("WB_") or layout == "Unknown":
            continue
        found.append(VelaTensor(memory, name, int(t0), int(t1), int(a0, 16), int(size), layout))
    return found


def vela_live_bytes(tensors: Sequence[VelaTensor]) -> list[int]:
    """Feature-map bytes alive at each of Vela's time indices (all memories together)."""
    if not tensors:
        return []
    horizon = max(t.end_time for t in tensors) + 1
    delta = [0] * (horizon + 1)
    # Vela lists a reused buffer once per tensor, at one address and time range: count it once.
    unique = {(t.memory, t.address, t.start_time, t.end_time): t for t in tensors}
    for t in unique.values():
        delta[t.start_time] += t.size
        delta[t.end_time + 1] -= t.size
    live, running = [], 0
    for i in range(horizon):
        running += delta[i]
        live.append(running)
    return live
