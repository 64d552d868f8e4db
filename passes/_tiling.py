"""Spatial tiling of a region of the graph: halo arithmetic and the rewrite (no pass lives here).

A *region* is a set of nodes whose every op computes an output position from a
window of input positions: convolutions (any stride, dilation, group), max and
average pooling, elementwise ops (unary, or binary between region tensors such
as a residual Add, or with per-channel constants) and channel Concat. Cut the
region's outputs into tiles along height and/or width; walking the region
backwards, each tile needs, of every tensor, the interval of rows (columns)
that its readers' windows touch, clipped to the tensor. Every op of the tile
then computes exactly its output interval from exactly its input interval:

* an interval that the clipping shortened is at the image border, so the op
  gets the original zero padding there and none elsewhere (interior tile edges
  read real halo rows, which is what the untiled op read);
* pads per tile are therefore asymmetric and are derived so that the output
  count is exactly the requested interval (see :meth:`Window.tile_pads`);
* a tensor read by several ops of the region (residual, multi-reader) is
  computed once per tile over the union of what its readers need, and each
  reader gets a Slice of it when it needs less;
* region outputs are cut into a partition (each row computed by exactly one
  tile) and concatenated back, so readers outside the region see the original
  tensor.

Every value a tile computes is computed from the same inputs, weights and
padding as in the untiled graph, so the rewrite is exact up to float
summation order. The int8 emitter calibrates each tile tensor on its own; the
Concat ties the tile outputs to one scale.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs
from nirc.passes._rewrite import Namer, identity_copy

SPATIAL_AXES = (2, 3)
"""NCHW: height, width."""

UNARY_OPS = frozenset(
    {"Relu", "Clip", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Identity", "Neg", "Abs", "Exp"}
)
BINARY_OPS = frozenset({"Add", "Sub", "Mul", "Div", "Max", "Min", "PRelu"})
POOL_OPS = frozenset({"MaxPool", "AveragePool"})


@dataclass(frozen=True)
class Interval:
    """Half-open range of positions ``[lo, hi)`` along one spatial axis."""

    lo: int
    hi: int

    @property
    def size(self) -> int:
        return max(self.hi - self.lo, 0)

    @property
    def empty(self) -> bool:
        return self.hi <= self.lo

    def hull(self, other: Interval) -> Interval:
        if self.empty:
            return other
        if other.empty:
            return self
        return Interval(min(self.lo, other.lo), max(self.hi, other.hi))

    def within(self, other: Interval) -> bool:
        return other.lo <= self.lo and self.hi <= other.hi


EMPTY = Interval(0, 0)


@dataclass(frozen=True)
class Window:
    """How an op's output positions read input positions along one axis.

    Output ``o`` reads input ``o*stride - pad_lo + j*dilation`` for ``j < kernel``;
    positions outside ``[0, size)`` are the op's padding.
    """

    kernel: int = 1
    stride: int = 1
    dilation: int = 1
    pad_lo: int = 0
    pad_hi: int = 0

    @property
    def extent(self) -> int:
        return (self.kernel - 1) * self.dilation + 1

    def reads(self, out: Interval, size: int) -> Interval:
        """Input positions the outputs ``out`` read, clipped to ``[0, size)``."""
        if out.empty:
            return EMPTY
        lo = out.lo * self.stride - self.pad_lo
        hi = (out.hi - 1) * self.stride - self.pad_lo + self.extent
        return Interval(max(lo, 0), min(hi, size))

    def tile_pads(self, out: Interval, size: int) -> tuple[int, int]:
        """Padding that makes the op, run on ``reads(out)``, yield exactly ``out``.

        Non-zero only where ``reads`` clipped, i.e. at the tensor's border, and
        never more than the op's own padding there, so every padded position is
        one the untiled op padded too.
        """
        lo = out.lo * self.stride - self.pad_lo
        hi = (out.hi - 1) * self.stride - self.pad_lo + self.extent
        return max(-lo, 0), max(hi - size, 0)


IDENTITY = Window()


def shape_of(tensor: gs.Tensor) -> list[int]:
    return [int(d) for d in tensor.shape] if tensor.shape is not None else []


def _ints(node: gs.Node, key: str, default: Sequence[int]) -> list[int]:
    value = node.attrs.get(key, default)
    return [int(v) for v in value]


def op_windows(node: gs.Node) -> tuple[Window, Window] | None:
    """(height, width) windows of a sliding-window op; identity windows for pointwise ops."""
    if node.op == "Conv" or node.op in POOL_OPS:
        if node.op == "Conv":
            weight = node.inputs[1]
            kernel = _ints(node, "kernel_shape", shape_of(weight)[2:])
        else:
            kernel = _ints(node, "kernel_shape", [])
        if len(kernel) != 2:
            return None
        strides = _ints(node, "strides", [1, 1])
        dilations = _ints(node, "dilations", [1, 1])
        pads = _ints(node, "pads", [0, 0, 0, 0])
        return (
            Window(kernel[0], strides[0], dilations[0], pads[0], pads[2]),
            Window(kernel[1], strides[1], dilations[1], pads[1], pads[3]),
        )
    return IDENTITY, IDENTITY


def why_not_tileable(node: gs.Node) -> str | None:
    """None when the node can be computed tile by tile (see the module docstring); else the reason."""
    outs = node.outputs
    if len(outs) != 1 and node.op != "Split":
        return "more than one output"
    out_shape = shape_of(outs[0])
    if any(len(shape_of(o)) != 4 or shape_of(o)[0] != 1 for o in outs):
        return "output is not a batch-1 NCHW feature map"
    if node.op == "Split":
        axis = int(node.attrs.get("axis", 0))
        if axis not in (1, -3):
            return "splits along a spatial axis"
        sizes = node.inputs[1:]
        return None if all(isinstance(t, gs.Constant) or not t.name for t in sizes) else "non-constant split sizes"
    if node.op == "Conv":
        if str(node.attrs.get("auto_pad", "NOTSET")) not in ("NOTSET", "VALID"):
            return "auto_pad SAME"
        if len(shape_of(node.inputs[1])) != 4:
            return "not a 2-D convolution"
        if len(node.inputs) > 2 and not isinstance(node.inputs[2], gs.Constant) and node.inputs[2].name:
            return "non-constant bias"
        if not isinstance(node.inputs[1], gs.Constant):
            return "non-constant weights"
        return None
    if node.op in POOL_OPS:
        if str(node.attrs.get("auto_pad", "NOTSET")) not in ("NOTSET", "VALID"):
            return "auto_pad SAME"
        if int(node.attrs.get("ceil_mode", 0)):
            return "ceil_mode"
        if len(_ints(node, "kernel_shape", [])) != 2:
            return "not a 2-D pool"
        return None
    if node.op in UNARY_OPS:
        return None if all(isinstance(t, gs.Constant) for t in node.inputs[1:]) else "non-constant parameter"
    if node.op in BINARY_OPS:
        for tensor in node.inputs:
            shape = shape_of(tensor)
            spatial = isinstance(tensor, gs.Constant) and len(shape) >= 2 and any(d != 1 for d in shape[-2:])
            if spatial and shape[-2:] != out_shape[-2:]:
                return "constant operand broadcasts spatially"
        return None
    if node.op == "Concat":
        axis = int(node.attrs.get("axis", 0))
        return None if axis in (1, -3) else "concatenates along a spatial axis"
    return f"{node.op} is not a sliding-window or pointwise op"


@dataclass
class Region:
    """Nodes to tile (in execution order) and the tensors crossing the region's boundary."""

    nodes: list[gs.Node]
    inputs: list[gs.Tensor] = field(default_factory=list)
    outputs: list[gs.Tensor] = field(default_factory=list)

    @classmethod
    def of(cls, nodes: Sequence[gs.Node], graph_outputs: set[str]) -> Region:
        inside = {id(n) for n in nodes}
        produced = {t.name for n in nodes for t in n.outputs}
        inputs: dict[str, gs.Tensor] = {}
        outputs: dict[str, gs.Tensor] = {}
        for node in nodes:
            for tensor in node.inputs:
                if isinstance(tensor, gs.Constant) or not tensor.name or tensor.name in produced:
                    continue
                if tensor.inputs and tensor.inputs[0].op == "Constant":
                    continue
                inputs.setdefault(tensor.name, tensor)
            for tensor in node.outputs:
                read_outside = any(id(r) not in inside for r in tensor.outputs)
                if read_outside or tensor.name in graph_outputs:
                    outputs[tensor.name] = tensor
        return cls(list(nodes), list(inputs.values()), list(outputs.values()))


def split(size: int, parts: int) -> list[Interval]:
    """``[0, size)`` cut into ``parts`` near-equal consecutive intervals (larger ones first)."""
    base, extra = divmod(size, parts)
    cuts, lo = [], 0
    for i in range(parts):
        hi = lo + base + (1 if i < extra else 0)
        cuts.append(Interval(lo, hi))
        lo = hi
    return cuts


def partition_like(size: int, anchor: Sequence[Interval], anchor_size: int) -> list[Interval]:
    """A partition of ``[0, size)`` whose cuts sit at the anchor's cuts scaled to ``size``."""
    bounds = [0] + [round(iv.hi * size / anchor_size) for iv in anchor[:-1]] + [size]
    return [Interval(bounds[i], max(bounds[i], bounds[i + 1])) for i in range(len(anchor))]


@dataclass(frozen=True)
class AxisPlan:
    """For one tile along one axis: what each tensor's computed interval is and what each read needs."""

    computed: dict[str, Interval]
    reads: dict[tuple[str, int], Interval]  # (node name, input slot) -> interval of that input
    pieces: dict[str, Interval]  # region output -> the part of the partition this tile owns


def plan_axis(region: Region, axis: int, pieces: dict[str, Interval]) -> AxisPlan:
    """Walk the region backwards: the interval of each tensor this tile must compute along ``axis``."""
    dim = SPATIAL_AXES.index(axis)
    need: dict[str, Interval] = dict(pieces)
    reads: dict[tuple[str, int], Interval] = {}
    for node in reversed(region.nodes):
        out = node.outputs[0]
        want = EMPTY
        for tensor in node.outputs:  # a Split computes all its parts over one interval
            want = want.hull(need.get(tensor.name, EMPTY))
        if want.empty:
            continue
        for tensor in node.outputs:
            need[tensor.name] = want
        window = op_windows(node)
        assert window is not None
        for slot, tensor in enumerate(node.inputs):
            if isinstance(tensor, gs.Constant) or not tensor.name:
                continue
            if (node.op == "Conv" and slot > 0) or (node.op == "Split" and slot > 0):
                continue
            size = shape_of(tensor)[axis] if len(shape_of(tensor)) == 4 else 1
            broadcast = size == 1 and shape_of(out)[axis] != 1  # e.g. an SE gate: read whole
            got = Interval(0, 1) if broadcast else window[dim].reads(want, size)
            reads[(node.name, slot)] = got
            need[tensor.name] = need.get(tensor.name, EMPTY).hull(got)
    return AxisPlan(need, reads, dict(pieces))


@dataclass(frozen=True)
class TileSpec:
    """How to cut: tiles along height and width, and the tensor whose partition anchors the others."""

    rows: int
    cols: int

    @property
    def count(self) -> int:
        return self.rows * self.cols

    def __str__(self) -> str:
        return f"{self.rows}x{self.cols}"


def output_partitions(region: Region, spec: TileSpec) -> tuple[dict[str, list[Interval]], dict[str, list[Interval]]]:
    """Row and column partitions of every region output, aligned to the largest output's cuts."""
    anchor = max(region.outputs, key=lambda t: math.prod(shape_of(t)[2:]))
    ah, aw = shape_of(anchor)[2:]
    rows_a, cols_a = split(ah, spec.rows), split(aw, spec.cols)
    rows: dict[str, list[Interval]] = {}
    cols: dict[str, list[Interval]] = {}
    for tensor in region.outputs:
        h, w = shape_of(tensor)[2:]
        rows[tensor.name] = partition_like(h, rows_a, ah)
        cols[tensor.name] = partition_like(w, cols_a, aw)
    return rows, cols


@dataclass
class TilePlan:
    """Per-axis plans for every tile row and column of one region."""

    region: Region
    spec: TileSpec
    rows: list[AxisPlan]
    cols: list[AxisPlan]

    @classmethod
    def build(cls, region: Region, spec: TileSpec) -> TilePlan:
        row_parts, col_parts = output_partitions(region, spec)
        rows = [plan_axis(region, 2, {n: p[i] for n, p in row_parts.items()}) for i in range(spec.rows)]
        cols = [plan_axis(region, 3, {n: p[j] for n, p in col_parts.items()}) for j in range(spec.cols)]
        return cls(region, spec, rows, cols)

    def halo_overhead(self) -> float:
        """Computed output positions of the region's ops over the untiled count, minus one (0.25 = +25%)."""
        total = tiled = 0
        for node in self.region.nodes:
            h, w = shape_of(node.outputs[0])[2:]
            total += h * w
            for r in self.rows:
                for c in self.cols:
                    tiled += (
                        r.computed.get(node.outputs[0].name, EMPTY).size
                        * c.computed.get(node.outputs[0].name, EMPTY).size
                    )
        return tiled / max(total, 1) - 1.0

    def tile_tensor_bytes(self) -> int:
        """Largest sum, over one tile, of int8 bytes of all tensors the tile computes (a loose bound)."""
        best = 0
        for r in self.rows:
            for c in self.cols:
                size = 0
                for node in self.region.nodes:
                    out = node.outputs[0]
                    ch = shape_of(out)[1]
                    size += ch * r.computed.get(out.name, EMPTY).size * c.computed.get(out.name, EMPTY).size
                best = max(best, size)
        return best


class _Builder:
    """Emits the tiled nodes of one plan into a graph."""

    def __init__(self, graph: gs.Graph, plan: TilePlan, namer: Namer, stage: frozenset[str] = frozenset()) -> None:
        self.graph = graph
        self.plan = plan
        self.namer = namer
        self.stage = stage
        self.new_nodes: list[gs.Node] = []
        self._int_consts: dict[tuple[int, ...], gs.Constant] = {}
        self._copies: dict[str, gs.Tensor] = {}

    def ints(self, values: Sequence[int]) -> gs.Constant:
        key = tuple(int(v) for v in values)
        if key not in self._int_consts:
            self._int_consts[key] = self.namer.constant("tile_idx", np.asarray(key, dtype=np.int64))
        return self._int_consts[key]

    def variable(self, base: str, like: gs.Tensor, shape: Sequence[int]) -> gs.Variable:
        return gs.Variable(self.namer.fresh(base), dtype=like.dtype, shape=[int(d) for d in shape])

    def slice(
        self, src: gs.Tensor, have: tuple[Interval, Interval], want: tuple[Interval, Interval], tag: str
    ) -> gs.Tensor:
        """``src`` holds positions ``have`` (rows, cols); return a tensor holding ``want``."""
        if want == have:
            return src
        axes, starts, ends = [], [], []
        for axis, h, w in zip(SPATIAL_AXES, have, want, strict=True):
            if h == w:
                continue
            if not w.within(h):
                raise ValueError(f"tile slice {w} outside {h} of {src.name}")
            axes.append(axis)
            starts.append(w.lo - h.lo)
            ends.append(w.hi - h.lo)
        shape = shape_of(src)
        shape[2], shape[3] = want[0].size, want[1].size
        out = self.variable(f"{src.name}/{tag}", src, shape)
        node = gs.Node(
            "Slice",
            self.namer.fresh(f"{src.name}/{tag}/slice"),
            inputs=[src, self.ints(starts), self.ints(ends), self.ints(axes)],
            outputs=[out],
        )
        self.new_nodes.append(node)
        return out

    def staged(self, src: gs.Tensor) -> gs.Tensor:
        """One on-chip copy of the whole ``src`` (:func:`identity_copy`) that every tile slices.

        A copy per tile slice would read the DRAM map as slowly as the conv does
        (MobileNetV2-224's stem: 683k cycles of 1x1 MaxPool copies, 77k for one identity table).
        """
        if src.name not in self._copies:
            node, out = identity_copy(self.namer, src, src.name)
            self.new_nodes.append(node)
            self._copies[src.name] = out
        return self._copies[src.name]

    def constant_tile(self, const: gs.Constant, want: tuple[Interval, Interval], out_shape: Sequence[int]) -> gs.Tensor:
        shape = shape_of(const)
        if len(shape) < 2 or (shape[-2] == 1 and shape[-1] == 1):
            return const
        values = np.asarray(const.values)
        rows = slice(want[0].lo, want[0].hi) if shape[-2] == out_shape[2] else slice(None)
        cols = slice(want[1].lo, want[1].hi) if shape[-1] == out_shape[3] else slice(None)
        return self.namer.constant(f"{const.name}/tile", np.ascontiguousarray(values[..., rows, cols]))

    def emit_tile(self, i: int, j: int) -> dict[str, tuple[gs.Tensor, tuple[Interval, Interval]]]:
        """Clone the region for tile (i, j); returns region tensor -> (tile tensor, its intervals)."""
        rp, cp = self.plan.rows[i], self.plan.cols[j]
        tag = f"tile{i}_{j}" if self.plan.spec.cols > 1 else f"tile{i}"
        have: dict[str, tuple[gs.Tensor, tuple[Interval, Interval]]] = {}
        for tensor in self.plan.region.inputs:
            r, c = rp.computed.get(tensor.name, EMPTY), cp.computed.get(tensor.name, EMPTY)
            if r.empty or c.empty:
                continue
            shape = shape_of(tensor)
            full = (Interval(0, shape[2]), Interval(0, shape[3]))
            have[tensor.name] = (tensor, full)
            if tensor.name in self.stage and len(shape) == 4:
                have[tensor.name] = (self.staged(tensor), full)
        for node in self.plan.region.nodes:
            out = node.outputs[0]
            r_out, c_out = rp.computed.get(out.name, EMPTY), cp.computed.get(out.name, EMPTY)
            if r_out.empty or c_out.empty:
                continue
            inputs: list[gs.Tensor] = []
            for slot, tensor in enumerate(node.inputs):
                if isinstance(tensor, gs.Constant):
                    is_param = node.op in ("Conv", "Split") and slot > 0
                    inputs.append(tensor if is_param else self.constant_tile(tensor, (r_out, c_out), shape_of(out)))
                    continue
                if not tensor.name or tensor.name not in have:
                    inputs.append(tensor)  # absent optional input or Constant-node output
                    continue
                src, held = have[tensor.name]
                want = (rp.reads[(node.name, slot)], cp.reads[(node.name, slot)])
                inputs.append(self.slice(src, held, want, tag))
            attrs = dict(node.attrs)
            windows = op_windows(node)
            if node.op == "Conv" or node.op in POOL_OPS:
                assert windows is not None
                src_shape = shape_of(node.inputs[0])
                top, bottom = windows[0].tile_pads(r_out, src_shape[2])
                left, right = windows[1].tile_pads(c_out, src_shape[3])
                attrs["pads"] = [top, left, bottom, right]
                attrs.pop("auto_pad", None)
            new_outs = []
            for tensor in node.outputs:
                shape = shape_of(tensor)
                shape[2], shape[3] = r_out.size, c_out.size
                new_outs.append(self.variable(f"{tensor.name}/{tag}", tensor, shape))
                have[tensor.name] = (new_outs[-1], (r_out, c_out))
            name = self.namer.fresh(f"{node.name}/{tag}")
            self.new_nodes.append(gs.Node(node.op, name, attrs=attrs, inputs=inputs, outputs=new_outs))
        return have

    def build(self) -> None:
        spec = self.plan.spec
        tiles = {(i, j): self.emit_tile(i, j) for i in range(spec.rows) for j in range(spec.cols)}
        for node in self.plan.region.nodes:
            node.outputs.clear()  # detach the originals: the Concats below produce their outputs
        for tensor in self.plan.region.outputs:
            row_pieces: list[gs.Tensor] = []
            for i in range(spec.rows):
                col_pieces: list[gs.Tensor] = []
                for j in range(spec.cols):
                    want = (self.plan.rows[i].pieces[tensor.name], self.plan.cols[j].pieces[tensor.name])
                    if want[0].empty or want[1].empty:
                        continue
                    src, held = tiles[(i, j)][tensor.name]
                    col_pieces.append(self.slice(src, held, want, f"piece{i}_{j}"))
                if not col_pieces:
                    continue
                row_pieces.append(self._concat(col_pieces, 3, tensor, f"{tensor.name}/row{i}", last=spec.rows == 1))
            if spec.rows > 1:
                self._concat(row_pieces, 2, tensor, f"{tensor.name}/rows", last=True)

    def _concat(self, parts: list[gs.Tensor], axis: int, like: gs.Tensor, base: str, *, last: bool) -> gs.Tensor:
        if len(parts) == 1 and not last:
            return parts[0]
        if last:
            out = like
        else:
            shape = shape_of(parts[0])
            shape[axis] = sum(shape_of(p)[axis] for p in parts)
            out = self.variable(base, like, shape)
        if len(parts) == 1:
            node = gs.Node("Identity", self.namer.fresh(f"{base}/identity"), inputs=parts, outputs=[out])
        else:
            name = self.namer.fresh(f"{base}/concat")
            node = gs.Node("Concat", name, attrs={"axis": axis}, inputs=parts, outputs=[out])
        self.new_nodes.append(node)
        return out


def apply_plan(
    graph: gs.Graph, plan: TilePlan, namer: Namer | None = None, *, stage: Sequence[str] = ()
) -> list[gs.Node]:
    """Replace the region by its tiles (in place); returns the new nodes in execution order.

    The new nodes take the place of the region's first node in ``graph.nodes``;
    the graph's order is then repaired with a stable topological sort.

    Args:
        stage: region inputs whose per-tile slice is copied by an identity op
            (1x1 MaxPool) before the tile reads it, so that Vela reads the
            tensor from DRAM once and the tile's sliding windows read the copy.
    """
    namer = namer or Namer(graph)
    builder = _Builder(graph, plan, namer, frozenset(stage))
    builder.build()
    region_ids = {id(n) for n in plan.region.nodes}
    first = next(i for i, n in enumerate(graph.nodes) if id(n) in region_ids)
    kept = [n for n in graph.nodes if id(n) not in region_ids]
    before = [n for n in graph.nodes[:first] if id(n) not in region_ids]
    after = kept[len(before) :]
    graph.nodes = stable_toposort([*before, *builder.new_nodes, *after])
    graph.cleanup()
    return builder.new_nodes


def stable_toposort(nodes: Sequence[gs.Node]) -> list[gs.Node]:
    """A topological order that keeps ``nodes``' order wherever it is valid (Kahn, smallest index first)."""
    import heapq

    index = {id(n): i for i, n in enumerate(nodes)}
    producer = {t.name: n for n in nodes for t in n.outputs}
    preds: dict[int, set[int]] = {id(n): set() for n in nodes}
    succs: dict[int, list[gs.Node]] = {id(n): [] for n in nodes}
    for node in nodes:
        for tensor in node.inputs:
            src = producer.get(tensor.name) if tensor.name else None
            if src is not None and src is not node and id(src) not in preds[id(node)]:
                preds[id(node)].add(id(src))
                succs[id(src)].append(node)
    ready = [(index[id(n)], n) for n in nodes if not preds[id(n)]]
    heapq.heapify(ready)
    order: list[gs.Node] = []
    while ready:
        _, node = heapq.heappop(ready)
        order.append(node)
        for nxt in succs[id(node)]:
            preds[id(nxt)].discard(id(node))
            if not preds[id(nxt)]:
                heapq.heappush(ready, (index[id(nxt)], nxt))
    if len(order) != len(nodes):
        raise ValueError("graph has a cycle")
    return order
