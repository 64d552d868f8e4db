"""Search from the user's model: its ONNX at other widths and input resolutions.

Width: every convolution's output channels are scaled by the factor (rounded
to 8, as MobileNet does), except where the count is pinned: the image input,
the graph outputs (classes, box coordinates), and whatever a pinned tensor is
added to. Which channel counts must stay equal is found by union-find over
the graph: a depthwise conv, BatchNormalization, an activation, a pooling or a
residual ``Add`` keeps its input's channel group, a dense conv or a Gemm
starts a new one, ``Concat`` sums its inputs' groups. Weights are cut (first
channels) or repeated cyclically to the new shapes: deterministic, of the
original's statistics, and meant for training from scratch anyway.

Resolution: the input's spatial size; graphs that flatten a spatial map into a
fixed-size Gemm cannot change it and are refused for that axis only.

What the scaler does not understand (``Split``, ``Reshape`` other than a
flatten of a 1x1 map, grouped non-depthwise convs, ...) raises
:class:`ScaleError` naming the node; the searcher then varies the resolution
alone and says why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from nirc.errors import NircError
from nirc.search.families import Candidate, default_resolutions, make_divisible

_SAME_CHANNELS = frozenset({
    "Relu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "LeakyRelu", "Tanh", "Elu", "Gelu", "Erf", "Identity",
    "GlobalAveragePool", "GlobalMaxPool", "MaxPool", "AveragePool", "Resize", "Upsample", "Dropout", "Neg",
    "Softplus", "Mish", "Pad",
})  # fmt: skip
_REDUCE = frozenset({"ReduceMean", "ReduceMax", "ReduceSum"})
_BINARY = frozenset({"Add", "Sub", "Mul", "Div", "PRelu", "Max", "Min"})


class ScaleError(NircError):
    """The model cannot be rescaled along the axis asked."""

    exit_code = 2


@dataclass
class _Groups:
    """Union-find over channel groups; a root is pinned (never scaled) or scalable, with its size."""

    parent: list[int]
    size: list[int]
    pinned: list[bool]

    def new(self, size: int, pinned: bool = False) -> int:
        self.parent.append(len(self.parent))
        self.size.append(size)
        self.pinned.append(pinned)
        return len(self.parent) - 1

    def find(self, g: int) -> int:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def union(self, a: int, b: int, where: str) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        if self.size[ra] != self.size[rb]:
            raise ScaleError(f"{where}: channel counts {self.size[ra]} and {self.size[rb]} meet")
        self.parent[rb] = ra
        self.pinned[ra] = self.pinned[ra] or self.pinned[rb]
        return ra


# A tensor's channel dim is one group, or the concatenation of several (Concat's output).
_Channels = tuple[int, ...]


def _shapes(proto: onnx.ModelProto) -> dict[str, list[int]]:
    inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    out: dict[str, list[int]] = {}
    for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        out[vi.name] = [d.dim_value for d in vi.type.tensor_type.shape.dim]
    for init in proto.graph.initializer:
        out[init.name] = list(init.dims)
    return out


def scale_width(proto: onnx.ModelProto, width: float) -> onnx.ModelProto:
    """``proto`` with the scalable channel groups multiplied by ``width`` (a new model; the input is kept).

    Raises:
        ScaleError: an op the scaler does not know, or channel groups that conflict.
    """
    if width == 1.0:
        return proto
    proto = _materialize(proto)
    shapes = _shapes(proto)
    inits = {t.name: t for t in proto.graph.initializer}
    groups = _Groups([], [], [])
    chans: dict[str, _Channels] = {}
    ties: dict[str, dict[int, _Channels]] = {}  # initializer -> axis -> channel groups along it
    depthwise: dict[int, int] = {}  # node index -> its channel group (the ``group`` attribute follows it)

    def tie(name: str, axis: int, value: _Channels, where: str) -> None:
        if name not in inits:
            raise ScaleError(f"{where}: weight {name!r} is computed, not an initializer")
        axes = ties.setdefault(name, {})
        if axis in axes and [groups.find(g) for g in axes[axis]] != [groups.find(g) for g in value]:
            raise ScaleError(f"{where}: initializer {name!r} is shared by differently scaled layers")
        axes[axis] = value

    def single(value: _Channels, where: str) -> int:
        if len(value) != 1:  # a Concat's output feeding an op that needs one group (an Add, a BN)
            root = groups.new(sum(groups.size[groups.find(g)] for g in value), pinned=True)
            for g in value:
                groups.pinned[groups.find(g)] = True
            return root
        return value[0]

    for inp in proto.graph.input:
        if inp.name not in inits:
            chans[inp.name] = (groups.new(shapes[inp.name][1], pinned=True),)
    for index, node in enumerate(proto.graph.node):
        op, where = node.op_type, f"node {node.name or node.output[0]} ({node.op_type})"
        x = node.input[0] if node.input else ""
        if op == "Conv":
            weight = shapes[node.input[1]]
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            cin = chans[x]
            if group == 1:
                out = groups.new(weight[0])
                tie(node.input[1], 0, (out,), where)
                tie(node.input[1], 1, cin, where)
            elif group == weight[0] == shapes[x][1] and weight[1] == 1:  # depthwise keeps its group
                out = single(cin, where)
                tie(node.input[1], 0, (out,), where)
                depthwise[index] = out
            else:
                raise ScaleError(f"{where}: grouped convolution ({group} groups) is not scaled")
            if len(node.input) > 2 and node.input[2]:
                tie(node.input[2], 0, (out,), where)
            chans[node.output[0]] = (out,)
        elif op == "BatchNormalization":
            g = single(chans[x], where)
            for name in node.input[1:]:
                tie(name, 0, (g,), where)
            chans[node.output[0]] = (g,)
        elif op in _SAME_CHANNELS or (op in _REDUCE and 1 not in _axes(node, proto, len(shapes[x]))):
            chans[node.output[0]] = chans[x]
        elif op in _BINARY:
            maps = [i for i in node.input if i in chans]
            g = single(chans[maps[0]], where)
            for other in maps[1:]:
                g = groups.union(g, single(chans[other], where), where)
            for name in node.input:
                if name in inits and len(shapes[name]) >= 3 and shapes[name][-3] > 1:
                    tie(name, len(shapes[name]) - 3, (g,), where)
            chans[node.output[0]] = (g,)
        elif op == "Concat":
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            if axis not in (1, -3):
                raise ScaleError(f"{where}: concatenation along axis {axis}")
            chans[node.output[0]] = tuple(g for i in node.input for g in chans[i])
        elif op in ("Flatten", "Reshape"):
            if len(shapes[x]) != 4 or shapes[x][2:] != [1, 1] or len(shapes[node.output[0]]) != 2:
                raise ScaleError(f"{where}: only a flatten of a 1x1 map keeps channels apart")
            if op == "Reshape" and numpy_helper.to_array(inits[node.input[1]]).tolist()[1:] != [-1]:
                raise ScaleError(f"{where}: reshape to a fixed size; use Flatten or shape [N, -1]")
            chans[node.output[0]] = chans[x]
        elif op == "Gemm":
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            out = groups.new(shapes[node.input[1]][0 if trans_b else 1])
            tie(node.input[1], 1 if trans_b else 0, chans[x], where)
            tie(node.input[1], 0 if trans_b else 1, (out,), where)
            if len(node.input) > 2 and node.input[2]:
                tie(node.input[2], 0, (out,), where)
            chans[node.output[0]] = (out,)
        else:
            raise ScaleError(f"{where}: the width scaler does not know this op")
    for output in proto.graph.output:
        for g in chans[output.name]:
            groups.pinned[groups.find(g)] = True

    def new_size(g: int) -> int:
        root = groups.find(g)
        size = groups.size[root]
        return size if groups.pinned[root] else make_divisible(size * width)

    def indices(value: _Channels) -> np.ndarray:
        """Old channel index of each new channel along a (possibly concatenated) dim."""
        parts, offset = [], 0
        for g in value:
            old = groups.size[groups.find(g)]
            parts.append(offset + np.arange(new_size(g)) % old)
            offset += old
        return np.concatenate(parts)

    scaled = onnx.ModelProto()
    scaled.CopyFrom(proto)
    del scaled.graph.value_info[:]
    for init in scaled.graph.initializer:
        if init.name in ties:
            array = numpy_helper.to_array(init)
            for axis, value in sorted(ties[init.name].items()):
                array = np.take(array, indices(value), axis=axis)
            init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(array), init.name))
    for index, g in depthwise.items():
        attr = next(a for a in scaled.graph.node[index].attribute if a.name == "group")
        attr.i = new_size(g)
    return _reinfer(scaled)


def _materialize(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy where Constant nodes and Identity copies of initializers are initializers themselves.

    TorchScript exports share equal tensors through Identity nodes and spell shape constants as
    Constant nodes; here every weight needs its own initializer so each can take its own shape.
    """
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    inits = {t.name: t for t in out.graph.initializer}
    keep = []
    for node in out.graph.node:
        value = next((a.t for a in node.attribute if a.name == "value"), None)
        if node.op_type == "Constant" and value is not None:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(value)
        elif node.op_type == "Identity" and node.input[0] in inits:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(inits[node.input[0]])
        else:
            keep.append(node)
            continue
        tensor.name = node.output[0]
        out.graph.initializer.append(tensor)
        inits[tensor.name] = out.graph.initializer[-1]
    del out.graph.node[:]
    out.graph.node.extend(keep)
    return out


def _axes(node: onnx.NodeProto, proto: onnx.ModelProto, rank: int) -> set[int]:
    """The axes a Reduce* node reduces (attribute up to opset 17, input from 18), non-negative."""
    attr = next((list(a.ints) for a in node.attribute if a.name == "axes"), None)
    if attr is None and len(node.input) > 1 and node.input[1]:
        init = next((t for t in proto.graph.initializer if t.name == node.input[1]), None)
        attr = [] if init is None else [int(v) for v in numpy_helper.to_array(init).ravel()]
    if not attr:
        return set(range(rank))
    return {a % rank for a in attr}


def scale_resolution(proto: onnx.ModelProto, resolution: int) -> onnx.ModelProto:
    """``proto`` with a square input of ``resolution`` (NCHW, one image input)."""
    image = [i for i in proto.graph.input if i.name not in {t.name for t in proto.graph.initializer}]
    if len(image) != 1 or len(image[0].type.tensor_type.shape.dim) != 4:
        raise ScaleError("resolution search needs one NCHW image input")
    scaled = onnx.ModelProto()
    scaled.CopyFrom(proto)
    del scaled.graph.value_info[:]
    dims = next(i for i in scaled.graph.input if i.name == image[0].name).type.tensor_type.shape.dim
    dims[2].dim_value = resolution
    dims[3].dim_value = resolution
    try:
        return _reinfer(scaled)
    except onnx.shape_inference.InferenceError as exc:
        raise ScaleError(f"input size {resolution} breaks the graph (a flatten of a spatial map?): {exc}") from None


def _reinfer(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Output shapes recomputed for the new sizes (the value_info of the old ones is dropped)."""
    for output in proto.graph.output:
        output.type.tensor_type.ClearField("shape")
    inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    del inferred.graph.value_info[:]
    return inferred


def input_size(proto: onnx.ModelProto) -> int:
    """The image input's height (the searcher varies square sizes below it)."""
    inits = {t.name for t in proto.graph.initializer}
    image = next((i for i in proto.graph.input if i.name not in inits), None)
    if image is None or len(image.type.tensor_type.shape.dim) != 4:
        raise ScaleError("resolution search needs one NCHW image input")
    return int(image.type.tensor_type.shape.dim[2].dim_value)


def model_variants(
    proto: onnx.ModelProto,
    stem: str,
    *,
    widths: Sequence[float] = (0.5, 0.75, 1.0),
    resolutions: Sequence[int] | None = None,
) -> tuple[list[Candidate], dict[str, onnx.ModelProto], list[str]]:
    """The user's model at each width x resolution: candidates, their ONNX by name, and notes.

    A width the scaler refuses is dropped with a note (the resolutions are still searched);
    likewise a resolution the graph cannot take.
    """
    size = input_size(proto)
    task_sizes = list(resolutions) if resolutions else default_resolutions("classification", max(32, size // 32 * 32))
    if size not in task_sizes and not resolutions:
        task_sizes.insert(0, size)
    notes: list[str] = []
    out: list[Candidate] = []
    models: dict[str, onnx.ModelProto] = {}
    for w in widths:
        try:
            wide = scale_width(proto, w)
        except ScaleError as exc:
            notes.append(f"width x{w}: {exc}")
            continue
        for r in task_sizes:
            try:
                model = wide if r == size else scale_resolution(wide, r)
            except ScaleError as exc:
                notes.append(f"width x{w}, input {r}: {exc}")
                continue
            candidate = Candidate(stem, f"w{w}", r, 0)
            out.append(candidate)
            models[candidate.name] = model
    if not out:
        raise ScaleError(f"{stem}: no variant could be built ({'; '.join(notes)})")
    return out, models, notes
