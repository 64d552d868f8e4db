"""Channel spaces: which tensors must share one channel layout, and rewriting a model to new layouts.

Shared by ``pad-channels`` (exact: add zero channels) and ``prune-channels``
(lossy: drop channels); no pass lives here.

The question both passes ask is "if this conv writes a different set of
channels, what else must change so the model stays well formed and, for
padding, computes the same function?". The answer is a *channel space*: the
set of tensors whose channel axis (axis 1) must be laid out identically
because an op between them works channel by channel:

* unary elementwise ops, pooling, BatchNormalization, depthwise convs,
  per-channel constants (``x * c``), Flatten/Reshape of ``[N, C, 1, 1]`` to
  ``[N, C]``, spatial Pad/Resize/Reduce keep the layout of their input;
* an elementwise op with two feature-map operands (the residual ``Add``, the
  squeeze-excitation ``Mul``) ties both operands and its output together, so
  every tensor joined by Adds is padded or pruned as one.

A space's channels are *written* by producers (Conv with ``group=1`` and Gemm,
whose output channels are rows of a constant weight) and *read* by absorbers
(the same ops, whose input channels are columns of a constant weight). A
Concat along channels writes a *derived* space: its layout is the
concatenation of its inputs' layouts, so padding an input puts the zeros in
the middle of the Concat output, at the end of that input's block, and the
Concat's readers simply see the new layout.

A :data:`Layout` says, for every channel of the rewritten tensor, which
original channel it holds (``None``: a new channel whose producer weights are
all zero). A space can only change layout when every tensor in it is written
by producers (or one Concat) and every reader understands layouts; any other
op -- a graph input or output, a Softmax over channels, a Transpose, a
grouped conv -- pins the space (``Space.fixed`` says why), and a pinned
Concat output pins the spaces feeding it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs
from nirc.passes._rewrite import Namer, const_value, input_at, static_shape

from nirc.ir import GraphView

logger = logging.getLogger(__name__)

Layout = tuple[int | None, ...]
"""New channel ``i`` holds original channel ``layout[i]``; ``None`` is an added channel."""

# Elementwise ops that map every finite input to a finite output, channel by channel.
# Finiteness matters: an added channel's value is multiplied by a zero weight downstream,
# and 0 * inf would be NaN.
UNARY_OPS = frozenset(
    {
        "Relu",
        "Clip",
        "LeakyRelu",
        "Sigmoid",
        "HardSigmoid",
        "HardSwish",
        "Tanh",
        "Elu",
        "Selu",
        "Celu",
        "Softsign",
        "ThresholdedRelu",
        "Identity",
        "Neg",
        "Abs",
    }
)
POOL_OPS = frozenset({"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool"})
BINARY_OPS = frozenset({"Add", "Sub", "Mul", "Div", "Max", "Min"})
REDUCE_OPS = frozenset({"ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum"})
# Value an added channel of a per-channel constant takes: the operation's identity, so
# an added channel stays exactly 0 where its input is 0 (keeps int8 ranges unchanged).
_NEUTRAL = {"Mul": 1.0, "Div": 1.0}


def channels_of(tensor: gs.Tensor) -> int | None:
    """Channel count (axis 1) of a feature map or ``[N, C]`` matrix; None for anything else."""
    if isinstance(tensor, gs.Constant) or not tensor.name:
        return None
    shape = static_shape(tensor)
    if shape is None or len(shape) < 2:
        return None
    return int(shape[1])


def identity(channels: int) -> Layout:
    return tuple(range(channels))


def padded(channels: int, total: int) -> Layout:
    """Original channels first, then ``total - channels`` added ones."""
    return (*range(channels), *(None,) * (total - channels))


def relayout(array: np.ndarray, axis: int, layout: Layout, fill: float = 0.0) -> np.ndarray:
    """``array`` with its ``axis`` rearranged to ``layout``; added entries are ``fill``."""
    index = np.array([0 if j is None else j for j in layout], dtype=np.int64)
    out = np.take(array, index, axis=axis)
    added = [i for i, j in enumerate(layout) if j is None]
    if added:
        where: list[slice | list[int]] = [slice(None)] * array.ndim
        where[axis] = added
        out[tuple(where)] = fill
    return np.ascontiguousarray(out, dtype=array.dtype)


@dataclass
class Space:
    """Tensors that share one channel layout.

    Attributes:
        key: name of its first tensor in execution order (stable across copies of the model).
        channels: channel count of every tensor in it.
        tensors: member tensor names, in execution order.
        producers: Conv (``group=1``) / Gemm nodes writing a member: their output channels are weight rows.
        absorbers: Conv (``group=1``) / Gemm nodes reading a member as data: their input channels are
            weight columns.
        channelwise: nodes inside the space that carry per-channel constants or attributes (depthwise
            Conv, BatchNormalization, ``x * c``, PRelu, Reshape/Resize shape inputs).
        concat: the channel Concat writing a member, when the space is derived from its inputs.
        fixed: why its layout cannot change; None when it can.
    """

    key: str
    channels: int
    tensors: list[str] = field(default_factory=list)
    producers: list[str] = field(default_factory=list)
    absorbers: list[str] = field(default_factory=list)
    channelwise: list[str] = field(default_factory=list)
    concat: str | None = None
    fixed: str | None = None
    _sources: list[str] = field(default_factory=list, repr=False)

    @property
    def free(self) -> bool:
        """Written only by producers and read only by ops that follow layouts: any layout goes."""
        return self.fixed is None and self.concat is None

    @property
    def derived(self) -> bool:
        return self.fixed is None and self.concat is not None


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def add(self, item: str) -> None:
        self.parent.setdefault(item, item)

    def find(self, item: str) -> str:
        root = item
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[item] != root:
            self.parent[item], item = root, self.parent[item]
        return root

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra


def _float_const(tensor: gs.Tensor | None) -> np.ndarray | None:
    value = const_value(tensor)
    return value if value is not None and value.dtype.kind == "f" else None


def _group(node: gs.Node) -> int:
    return int(node.attrs.get("group", 1))


def _channel_axis_of_const(const_shape: Sequence[int], rank: int) -> int | None:
    """Axis of a broadcast constant that lines up with axis 1 of a rank-``rank`` tensor."""
    axis = len(const_shape) - (rank - 1)
    return axis if 0 <= axis < len(const_shape) else None


class ChannelSpaces:
    """The channel spaces of a graph (see the module docstring). Rebuild after mutating the graph."""

    def __init__(self, graph: gs.Graph) -> None:
        self.graph = graph
        self.order: list[gs.Node] = GraphView(graph).topological_order()
        self.nodes: dict[str, gs.Node] = {n.name: n for n in self.order}
        self._uf = _UnionFind()
        self._position: dict[str, int] = {}
        self._pins: dict[str, str] = {}  # tensor -> reason its space is fixed
        self._producers: dict[str, list[str]] = {}
        self._absorbers: dict[str, list[str]] = {}
        self._channelwise: dict[str, list[str]] = {}
        self._concat_of: dict[str, str] = {}  # concat output tensor -> concat node
        self._writer: dict[str, str] = {}
        for tensor in graph.inputs:
            self._track(tensor)
            if channels_of(tensor) is not None:
                self._pins.setdefault(tensor.name, f"graph input '{tensor.name}'")
        for node in self.order:
            for tensor in (*node.inputs, *node.outputs):
                self._track(tensor)
            for out in node.outputs:
                self._writer[out.name] = node.name
            self._classify(node)
        for tensor in graph.outputs:
            if tensor.name in self._position:
                self._pins.setdefault(tensor.name, f"graph output '{tensor.name}'")
        self.spaces: list[Space] = self._collect()
        self.space_of: dict[str, Space] = {t: s for s in self.spaces for t in s.tensors}
        self._propagate_concat_pins()

    # -- building -----------------------------------------------------------------
    def _track(self, tensor: gs.Tensor) -> None:
        if channels_of(tensor) is not None and tensor.name not in self._position:
            self._position[tensor.name] = len(self._position)
            self._uf.add(tensor.name)

    def _has(self, tensor: gs.Tensor | None) -> bool:
        return tensor is not None and not isinstance(tensor, gs.Constant) and tensor.name in self._position

    def _pin_all(self, node: gs.Node, why: str) -> None:
        for tensor in node.inputs:
            if self._has(tensor):
                self._pins.setdefault(tensor.name, f"read by {node.op} '{node.name}' ({why})")
        for tensor in node.outputs:
            if self._has(tensor):
                self._pins.setdefault(tensor.name, f"written by {node.op} '{node.name}' ({why})")

    def _union(self, a: gs.Tensor, b: gs.Tensor) -> None:
        self._uf.union(a.name, b.name)

    def _add(self, table: dict[str, list[str]], tensor: gs.Tensor, node: gs.Node) -> None:
        names = table.setdefault(tensor.name, [])
        if node.name not in names:
            names.append(node.name)

    def _only_data_input(self, node: gs.Node, index: int = 0) -> bool:
        """The node reads feature maps through input ``index`` alone."""
        return all(not self._has(t) for i, t in enumerate(node.inputs) if i != index)

    def _classify(self, node: gs.Node) -> None:
        """Record how ``node`` relates the channel axes of its inputs and outputs."""
        reason = self._understand(node)
        if reason is not None:
            self._pin_all(node, reason)

    def _understand(self, node: gs.Node) -> str | None:
        """Wire up a node the spaces understand; return why not otherwise."""
        op = node.op
        if not any(self._has(t) for t in (*node.inputs, *node.outputs)):
            return None  # touches no feature map
        outs = [t for t in node.outputs if self._has(t)]
        data = node.inputs[0] if node.inputs else None
        if op == "Conv":
            return self._conv(node)
        if op == "Gemm":
            return self._gemm(node)
        if op in BINARY_OPS and len(node.outputs) == 1 and outs:
            return self._binary(node)
        if len(node.outputs) != 1 or not outs or not self._has(data):
            return f"{op} is not a layout-following op here"
        out = node.outputs[0]
        assert data is not None
        same_channels = channels_of(data) == channels_of(out)
        if op in UNARY_OPS or op in POOL_OPS:
            if not same_channels or not self._only_data_input(node):
                return "changes the channel count"
            bounds = [input_at(node, i) for i in (1, 2)]
            if op == "Clip" and any(b is not None and const_value(b) is None for b in bounds):
                return "non-constant Clip bounds"
            self._union(data, out)
            return None
        if op == "PRelu":
            return self._prelu(node)
        if op == "BatchNormalization":
            if not same_channels or not self._only_data_input(node):
                return "changes the channel count"
            if any(_float_const(input_at(node, i)) is None for i in range(1, 5)):
                return "non-constant statistics"
            self._union(data, out)
            self._add(self._channelwise, out, node)
            return None
        if op == "Concat":
            return self._concat(node)
        if op in ("Flatten", "Reshape"):
            return self._squeeze_like(node)
        if op == "Resize":
            return self._resize(node)
        if op == "Pad":
            return self._pad(node)
        if op in REDUCE_OPS:
            return self._reduce(node)
        return f"{op} is not a layout-following op"

    def _conv(self, node: gs.Node) -> str | None:
        weight = _float_const(input_at(node, 1))
        bias = input_at(node, 2)
        data = node.inputs[0]
        if weight is None or (bias is not None and _float_const(bias) is None):
            return "non-constant weights"
        if len(node.outputs) != 1 or not self._has(node.outputs[0]) or not self._only_data_input(node):
            return "unsupported Conv form"
        out = node.outputs[0]
        group = _group(node)
        if group == 1:
            if self._has(data):
                self._add(self._absorbers, data, node)
            self._add(self._producers, out, node)
            return None
        if self._has(data) and group == channels_of(data) == channels_of(out):
            # Depthwise with multiplier 1: output channel c reads only input channel c.
            self._union(data, out)
            self._add(self._channelwise, out, node)
            return None
        return f"grouped Conv (group={group})"

    def _gemm(self, node: gs.Node) -> str | None:
        weight = _float_const(input_at(node, 1))
        bias = input_at(node, 2)
        data = node.inputs[0]
        if weight is None or weight.ndim != 2 or (bias is not None and _float_const(bias) is None):
            return "non-constant weights"
        if node.attrs.get("transA", 0) or len(node.outputs) != 1 or not self._only_data_input(node):
            return "unsupported Gemm form"
        out = node.outputs[0]
        if not self._has(out):
            return "unsupported Gemm output"
        c = _float_const(bias)
        if c is not None and (c.ndim > 2 or (c.ndim >= 1 and c.shape[-1] not in (1, channels_of(out)))):
            return "unsupported Gemm bias shape"
        if self._has(data):
            self._add(self._absorbers, data, node)
        self._add(self._producers, out, node)
        return None

    def _prelu(self, node: gs.Node) -> str | None:
        """``PRelu(x, slope)`` with a constant slope (scalar or per channel)."""
        data, other = node.inputs[0], node.inputs[1]
        out = node.outputs[0]
        rank = len(static_shape(out) or ())
        value = const_value(other)
        if not self._has(data) or value is None or channels_of(data) != channels_of(out):
            return "unsupported operands"
        axis = _channel_axis_of_const(value.shape, rank)
        if axis is not None and value.shape[axis] not in (1, channels_of(out)):
            return "constant does not broadcast per channel"
        self._union(data, out)
        if axis is not None and value.shape[axis] != 1:
            self._add(self._channelwise, out, node)
        return None

    def _binary(self, node: gs.Node) -> str | None:
        """Elementwise op: same-shaped feature-map operands share the output's space.

        A feature map broadcast across channels (``[N, 1, H, W]``, a spatial
        attention map) keeps its single channel, so only its own space is
        pinned; the other operand and the output may still change layout.
        """
        out = node.outputs[0]
        out_shape = static_shape(out)
        if out_shape is None or len(node.inputs) != 2:
            return "unsupported operands"
        rank = len(out_shape)
        constant = False
        broadcast: list[gs.Tensor] = []
        for index, tensor in enumerate(node.inputs):
            value = const_value(tensor)
            if value is not None:
                axis = _channel_axis_of_const(value.shape, rank)
                if axis is not None and value.shape[axis] not in (1, out_shape[1]):
                    return "constant does not broadcast per channel"
                if axis is not None and value.shape[axis] != 1:
                    constant = True
                if node.op == "Div" and index == 0:
                    return "constant divided by a feature map"
                continue
            shape = static_shape(tensor)
            if shape is None:
                return "unsupported operands"
            axis = _channel_axis_of_const(shape, rank)
            if axis is None or shape[axis] == 1:
                if self._has(tensor) and out_shape[1] != 1:
                    broadcast.append(tensor)
                continue  # does not follow the channel axis
            if not self._has(tensor) or len(shape) != rank or shape[1] != out_shape[1]:
                return "unsupported operands"
            if node.op == "Div" and index == 1:
                return "division by a feature map (an added channel would divide 0 by 0)"
            self._union(tensor, out)
        for tensor in broadcast:
            self._pins.setdefault(tensor.name, f"broadcast across channels by {node.op} '{node.name}'")
        if constant:
            self._add(self._channelwise, out, node)
        return None

    def _concat(self, node: gs.Node) -> str | None:
        out = node.outputs[0]
        rank = len(static_shape(out) or ())
        axis = int(node.attrs.get("axis", 0))
        axis = axis + rank if axis < 0 else axis
        if axis != 1:
            if any(channels_of(t) != channels_of(out) for t in node.inputs):
                return "unsupported Concat"
            for tensor in node.inputs:
                if self._has(tensor):
                    self._union(tensor, out)
                elif const_value(tensor) is not None:
                    return "constant Concat operand"
            return None
        if any(not self._has(t) for t in node.inputs):
            return "Concat with a constant operand"
        self._concat_of[out.name] = node.name
        return None

    def _squeeze_like(self, node: gs.Node) -> str | None:
        """Flatten/Reshape between ``[N, C, 1, ...]`` and ``[N, C, 1, ...]`` (e.g. before a classifier Gemm)."""
        data, out = node.inputs[0], node.outputs[0]
        a, b = static_shape(data), static_shape(out)
        if a is None or b is None or a[:2] != b[:2] or any(d != 1 for d in (*a[2:], *b[2:])):
            return "reshapes across channels"
        if node.op == "Flatten" and int(node.attrs.get("axis", 1)) != 1:
            return "reshapes across channels"
        if node.op == "Reshape":
            shape = const_value(input_at(node, 1))
            if shape is None or not self._only_data_input(node):
                return "non-constant shape"
            if len(shape) >= 2 and int(shape[1]) > 0:
                self._add(self._channelwise, out, node)
        self._union(data, out)
        return None

    def _resize(self, node: gs.Node) -> str | None:
        data, out = node.inputs[0], node.outputs[0]
        a, b = static_shape(data), static_shape(out)
        if a is None or b is None or a[:2] != b[:2] or not self._only_data_input(node):
            return "resizes across channels"
        sizes = input_at(node, 3)
        if sizes is not None:
            if const_value(sizes) is None:
                return "non-constant sizes"
            self._add(self._channelwise, out, node)
        elif node.attrs.get("axes") is not None:
            return "Resize with axes"
        self._union(data, out)
        return None

    def _pad(self, node: gs.Node) -> str | None:
        data, out = node.inputs[0], node.outputs[0]
        pads = const_value(input_at(node, 1))
        rank = len(static_shape(data) or ())
        if pads is None or input_at(node, 3) is not None or not self._only_data_input(node) or rank < 2:
            return "unsupported Pad"
        if int(pads[1]) != 0 or int(pads[rank + 1]) != 0 or int(pads[0]) != 0 or int(pads[rank]) != 0:
            return "pads the channel axis"
        self._union(data, out)
        return None

    def _reduce(self, node: gs.Node) -> str | None:
        data, out = node.inputs[0], node.outputs[0]
        axes = const_value(input_at(node, 1))
        rank = len(static_shape(data) or ())
        if axes is None or axes.size == 0 or not int(node.attrs.get("keepdims", 1)):
            return "reduces across channels"
        normal = {int(a) + rank if int(a) < 0 else int(a) for a in axes.reshape(-1)}
        if normal & {0, 1} or not self._only_data_input(node):
            return "reduces across channels"
        self._union(data, out)
        return None

    def _collect(self) -> list[Space]:
        groups: dict[str, list[str]] = {}
        for name in sorted(self._position, key=self._position.__getitem__):
            groups.setdefault(self._uf.find(name), []).append(name)
        tensors = {t.name: t for t in self.graph.tensors().values()}
        spaces = []
        for members in groups.values():
            counts = {channels_of(tensors[m]) for m in members}
            space = Space(key=members[0], channels=int(next(iter(counts)) or 0), tensors=members)
            if len(counts) != 1:
                space.fixed = f"mixed channel counts {sorted(c or 0 for c in counts)}"
            for name in members:
                for node in self._producers.get(name, []):
                    if node not in space.producers:
                        space.producers.append(node)
                for node in self._absorbers.get(name, []):
                    if node not in space.absorbers:
                        space.absorbers.append(node)
                for node in self._channelwise.get(name, []):
                    if node not in space.channelwise:
                        space.channelwise.append(node)
                if name in self._concat_of:
                    space._sources.append(self._concat_of[name])
                if space.fixed is None and name in self._pins:
                    space.fixed = self._pins[name]
            if space._sources:
                space.concat = space._sources[0]
                if len(space._sources) > 1 or space.producers:
                    space.fixed = space.fixed or "Concat output joined with other writers"
            elif space.fixed is None and not space.producers:
                space.fixed = "no Conv/Gemm writes it"
            spaces.append(space)
        return spaces

    def _propagate_concat_pins(self) -> None:
        """A Concat output whose layout cannot change pins every space feeding the Concat."""
        changed = True
        while changed:
            changed = False
            for space in self.spaces:
                if space.concat is None or space.fixed is None:
                    continue
                for tensor in self.nodes[space.concat].inputs:
                    feeding = self.space_of[tensor.name]
                    if feeding.fixed is None:
                        feeding.fixed = f"feeds Concat '{space.concat}' whose layout is pinned ({space.fixed})"
                        changed = True

    # -- queries ------------------------------------------------------------------
    def by_key(self) -> dict[str, Space]:
        return {s.key: s for s in self.spaces}

    def free_spaces(self) -> list[Space]:
        return [s for s in self.spaces if s.free]

    def concat_consumers(self, space: Space) -> list[Space]:
        """Derived spaces whose Concat reads ``space`` (directly or through other Concats)."""
        found: list[Space] = []
        todo = [space]
        while todo:
            current = todo.pop()
            for other in self.spaces:
                if other.concat is None or other in found:
                    continue
                if any(t.name in current.tensors for t in self.nodes[other.concat].inputs):
                    found.append(other)
                    todo.append(other)
        return found

    def region(self, space: Space) -> list[str]:
        """Node names a layout change of ``space`` touches: writers, members' nodes, readers, derived spaces."""
        spaces = [space, *self.concat_consumers(space)]
        touched: set[str] = set()
        for s in spaces:
            touched.update(s.producers)
            touched.update(s.absorbers)
            touched.update(self._writer[t] for t in s.tensors if t in self._writer)
        return [n.name for n in self.order if n.name in touched]

    def resolve(self, assigned: Mapping[str, Layout]) -> dict[str, Layout]:
        """Layouts of every space: ``assigned`` for free spaces (by key), derived ones computed, others identity."""
        layouts: dict[str, Layout] = {}
        for space in sorted(self.spaces, key=lambda s: self._position[s.key]):
            if space.free and space.key in assigned:
                layout = assigned[space.key]
                if len(layout) == 0 or any(j is not None and not 0 <= j < space.channels for j in layout):
                    raise ValueError(f"layout of space '{space.key}' is out of range")
                layouts[space.key] = tuple(layout)
            elif space.derived:
                assert space.concat is not None
                parts: list[int | None] = []
                offset = 0
                for tensor in self.nodes[space.concat].inputs:
                    feeding = self.space_of[tensor.name]
                    inner = layouts.get(feeding.key, identity(feeding.channels))
                    parts.extend(None if j is None else j + offset for j in inner)
                    offset += feeding.channels
                layouts[space.key] = tuple(parts)
            else:
                layouts[space.key] = identity(space.channels)
        return layouts


def apply_layouts(graph: gs.Graph, spaces: ChannelSpaces, assigned: Mapping[str, Layout]) -> int:
    """Rewrite ``graph`` so every space in ``assigned`` (free spaces, by key) has the given layout.

    Producers get weight rows (and bias entries) rearranged, added rows all
    zero; absorbers get weight columns rearranged, added columns all zero;
    per-channel constants inside a space are rearranged with the operation's
    neutral value for added channels; shapes of every tensor in a changed
    space follow. New constants are created, never edited in place (weights
    may be shared). Returns how many spaces changed.
    """
    layouts = spaces.resolve(assigned)
    changed = {k: v for k, v in layouts.items() if v != identity(spaces.by_key()[k].channels)}
    if not changed:
        return 0
    namer = Namer(graph)
    layout_of = {t: changed[s.key] for s in spaces.spaces if s.key in changed for t in s.tensors}
    touched: list[str] = []
    for space in spaces.spaces:
        if space.key in changed:
            for name in (*space.producers, *space.absorbers, *space.channelwise):
                if name not in touched:
                    touched.append(name)
    for name in touched:
        _rewrite_node(spaces.nodes[name], layout_of, namer)
    tensors = graph.tensors()
    for name, layout in layout_of.items():
        tensor = tensors[name]
        shape = list(static_shape(tensor) or ())
        shape[1] = len(layout)
        tensor.shape = shape
    return len(changed)


def _new_const(namer: Namer, old: gs.Tensor, value: np.ndarray) -> gs.Constant:
    return namer.constant(f"{old.name or 'const'}_relaid", value)


def _rewrite_node(node: gs.Node, layout_of: Mapping[str, Layout], namer: Namer) -> None:
    data = node.inputs[0] if node.inputs else None
    out = node.outputs[0]
    lin = layout_of.get(data.name) if data is not None and not isinstance(data, gs.Constant) else None
    lout = layout_of.get(out.name)
    op = node.op
    if op == "Conv":
        weight = _float_const(input_at(node, 1))
        bias_t = input_at(node, 2)
        bias = _float_const(bias_t)
        assert weight is not None
        if _group(node) == 1:
            if lout is not None:
                weight = relayout(weight, 0, lout)
                bias = relayout(bias, 0, lout) if bias is not None else None
            if lin is not None:
                weight = relayout(weight, 1, lin)
        else:  # depthwise: input and output share a space
            layout = lout if lout is not None else lin
            assert layout is not None
            weight = relayout(weight, 0, layout)
            bias = relayout(bias, 0, layout) if bias is not None else None
            node.attrs["group"] = len(layout)
        node.inputs[1] = _new_const(namer, node.inputs[1], weight)
        if bias is not None and bias_t is not None:
            node.inputs[2] = _new_const(namer, bias_t, bias)
    elif op == "Gemm":
        weight = _float_const(input_at(node, 1))
        assert weight is not None
        trans_b = bool(node.attrs.get("transB", 0))
        out_axis, in_axis = (0, 1) if trans_b else (1, 0)
        if lout is not None:
            weight = relayout(weight, out_axis, lout)
        if lin is not None:
            weight = relayout(weight, in_axis, lin)
        node.inputs[1] = _new_const(namer, node.inputs[1], weight)
        bias_t = input_at(node, 2)
        bias = _float_const(bias_t)
        if lout is not None and bias is not None and bias_t is not None and bias.ndim >= 1 and bias.shape[-1] > 1:
            node.inputs[2] = _new_const(namer, bias_t, relayout(bias, bias.ndim - 1, lout))
    elif op == "BatchNormalization":
        assert lout is not None
        for index, fill in ((1, 0.0), (2, 0.0), (3, 0.0), (4, 1.0)):
            tensor = node.inputs[index]
            value = _float_const(tensor)
            assert value is not None
            node.inputs[index] = _new_const(namer, tensor, relayout(value, 0, lout, fill))
    elif op in BINARY_OPS or op == "PRelu":
        assert lout is not None
        rank = len(static_shape(out) or ())
        for index, tensor in enumerate(node.inputs):
            value = const_value(tensor)
            if value is None:
                continue
            axis = _channel_axis_of_const(value.shape, rank)
            if axis is None or value.shape[axis] == 1:
                continue
            fill = _NEUTRAL.get(op, 0.0)
            node.inputs[index] = _new_const(namer, tensor, relayout(value, axis, lout, fill))
    elif op == "Reshape":
        assert lout is not None
        shape = np.array(const_value(node.inputs[1]), dtype=np.int64)
        shape[1] = len(lout)
        node.inputs[1] = _new_const(namer, node.inputs[1], shape)
    elif op == "Resize":
        assert lout is not None
        sizes = np.array(const_value(node.inputs[3]), dtype=np.int64)
        sizes[1] = len(lout)
        node.inputs[3] = _new_const(namer, node.inputs[3], sizes)
    else:  # pragma: no cover - ChannelSpaces records only the ops handled above
        raise AssertionError(f"no layout rewrite for {op}")


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def round_down(value: int, multiple: int) -> int:
    return value // multiple * multiple


def describe(spaces: Iterable[Space]) -> list[str]:
    """One line per space, for logs and debugging."""
    lines = []
    for s in spaces:
        state = "free" if s.free else ("derived" if s.derived else f"fixed: {s.fixed}")
        lines.append(f"{s.key}: {s.channels} ch, producers={s.producers}, absorbers={s.absorbers} [{state}]")
    return lines
