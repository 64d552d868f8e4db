"""Cross-layer equalisation: balance the weight ranges of consecutive linear layers through a ReLU."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx_graphsurgeon as gs
from nirc.passes._affine import conv_input_channel_index
from nirc.passes._rewrite import Namer, const_value, consumers, graph_output_names, input_at, static_shape

from nirc.ir import IRModel
from nirc.pass_base import Pass, PassContext
from nirc.verify import run_tensors

logger = logging.getLogger(__name__)

# Ops f with f(x / s) = f(x) / s per channel for every s > 0: the scale passes through them unchanged.
_HOMOGENEOUS = frozenset({"Relu", "LeakyRelu", "MaxPool", "GlobalMaxPool", "AveragePool", "GlobalAveragePool"})
_MIN_LOG2_STEP = 0.05
"""A pair counts as equalised when no channel's range would move by more than 2**0.05 (3.5%)."""

_DATA_SAMPLES = 16

Mode = Literal["measured", "always"]


@dataclass
class _Layer:
    """One Conv/Gemm with its weight and bias as float64 working copies (written back once at the end)."""

    node: gs.Node
    weight: np.ndarray
    bias: np.ndarray | None
    changed: bool = False

    def out_axis(self) -> int:
        """The weight axis of output channels: 0 for Conv and Gemm(transB=1), 1 for Gemm(transB=0)."""
        return 1 if self.node.op == "Gemm" and not self.node.attrs.get("transB", 0) else 0

    def out_ranges(self) -> np.ndarray:
        axis = self.out_axis()
        moved = np.moveaxis(np.abs(self.weight), axis, 0)
        return np.asarray(moved.reshape(moved.shape[0], -1).max(axis=1))

    def in_ranges(self) -> np.ndarray:
        w = np.abs(self.weight)
        if self.node.op == "Gemm":
            return np.asarray(w.max(axis=1 - self.in_axis()))
        idx = conv_input_channel_index(self.node, w.shape)
        per_tap = w.reshape(*idx.shape, -1).max(axis=-1)
        ranges = np.zeros(int(idx.max()) + 1)
        np.maximum.at(ranges, idx.reshape(-1), per_tap.reshape(-1))
        return ranges

    def in_axis(self) -> int:
        return 1 - self.out_axis()

    def scale_out(self, factor: np.ndarray) -> None:
        shape = [1] * self.weight.ndim
        shape[self.out_axis()] = -1
        self.weight = self.weight * factor.reshape(shape)
        if self.bias is not None:
            self.bias = self.bias * factor
        self.changed = True

    def scale_in(self, factor: np.ndarray) -> None:
        if self.node.op == "Gemm":
            shape = [1, 1]
            shape[self.in_axis()] = -1
            self.weight = self.weight * factor.reshape(shape)
        else:
            idx = conv_input_channel_index(self.node, self.weight.shape)
            self.weight = self.weight * factor[idx].reshape(*idx.shape, *(1,) * (self.weight.ndim - 2))
        self.changed = True


@dataclass(frozen=True)
class EqualizeCrossLayerPass(Pass):
    """Balance per-channel weight ranges of a linear layer and the next one through a ReLU (Nagel et al. 2019).

    Identity: for ``y = B(f(A(x)))`` where ``f`` is a chain of per-channel positively homogeneous ops
    (ReLU, LeakyReLU, max and average pooling: ``f(x / s) = f(x) / s`` for ``s > 0``), dividing A's
    output channel ``i`` (weights and bias) by ``s_i`` and multiplying B's input channel ``i`` by ``s_i``
    leaves ``y`` unchanged. With ``s_i = sqrt(r_A[i] / r_B[i])`` both ranges become ``sqrt(r_A r_B)``;
    ``r_B`` is the range of B's weights on input channel ``i``, ``r_A`` the range of channel ``i`` of
    the tensor B reads, measured on the calibration samples when there are any (that tensor has one
    per-tensor int8 scale, so a channel 100x wider than its neighbours -- common after a depthwise conv
    -- costs the others their resolution), else the range of A's weights for that channel (Nagel's
    data-free rule; with per-channel int8 weights A's own weights do not care). Chains (A -> B -> C)
    are swept until no scale moves by more than 3.5%. Exact up to float rounding.

    Refuses: a tensor between A and B with another reader or that is a graph output; ReLU6 / Clip
    (the clip bound is not homogeneous), SiLU, HardSwish; non-constant weights or biases; Gemm with
    ``transA``, or a bias that is not one value per output channel.

    Int8 is not float: balancing helps when channel ranges differ widely and can cost a little when
    they do not. ``mode="measured"`` (the default) keeps the rewrite only when the accuracy guard
    (``--calib``) measures a higher int8 SNR on every output, and leaves the model alone without
    calibration data; ``mode="always"`` applies it unconditionally.
    """

    name = "equalize-cross-layer"
    exact = True
    accuracy_guarded = True
    judges_accuracy = True

    mode: Mode = "measured"
    max_sweeps: int = 20

    def __post_init__(self) -> None:
        if self.mode not in ("measured", "always"):
            raise ValueError(f"equalize-cross-layer: mode must be 'measured' or 'always', got {self.mode!r}")
        if self.max_sweeps < 1:
            raise ValueError(f"equalize-cross-layer: max_sweeps must be at least 1, got {self.max_sweeps}")

    def run(self, model: IRModel, ctx: PassContext) -> bool:
        graph = model.graph
        if not any(n.op in ("Conv", "Gemm") for n in graph.nodes):
            return False
        if self.mode == "measured" and ctx.accuracy is None:
            logger.info("equalize-cross-layer: no calibration data to judge int8 accuracy by; model left as is")
            return False
        before = model.to_proto(check=False) if self.mode == "measured" else None
        pairs = find_pairs(graph)
        if not pairs:
            return False
        samples = _samples(ctx)
        if samples:
            _activation_ranges(model, pairs, samples)
        sweeps = equalize(pairs, self.max_sweeps)
        layers = {id(layer): layer for pair in pairs for layer in (pair.a, pair.b)}
        if not any(layer.changed for layer in layers.values()):
            return False
        _write_back(graph, list(layers.values()))
        ctx.count("pairs", len(pairs))
        ctx.count("scales_from_data" if samples else "scales_from_weights")
        ctx.count("sweeps", sweeps)
        if self.mode == "always" or before is None or ctx.accuracy is None:
            return True
        verdict = ctx.accuracy.judge(before, model.to_proto(check=False))
        kept = verdict.drop < 0.0
        ctx.decide({"pass": self.name, "pairs": len(pairs), "accuracy_guard": {**verdict.to_json(), "kept": kept}})
        ctx.count("accuracy_guard.kept" if kept else "accuracy_guard.reverted")
        if not kept:
            logger.info("equalize-cross-layer: int8 SNR does not improve (%.2f dB); reverted", -verdict.drop)
            model.graph = IRModel.from_proto(before, model.label).graph
        return kept


def _samples(ctx: PassContext) -> list[dict[str, np.ndarray]]:
    """The calibration samples (as the guard holds them: re-laid out by earlier passes), at most 16."""
    calib = ctx.accuracy.calibration if ctx.accuracy is not None else ctx.calibration
    if calib is None or calib.synthetic:
        return []
    return [dict(sample) for sample in calib.samples[:_DATA_SAMPLES]]


def _layer(node: gs.Node, cache: dict[str, _Layer]) -> _Layer | None:
    if node.name in cache:
        return cache[node.name]
    if node.op not in ("Conv", "Gemm") or node.attrs.get("transA", 0):
        return None
    weight = const_value(input_at(node, 1))
    if weight is None or weight.dtype.kind != "f":
        return None
    bias_t = input_at(node, 2)
    bias = None
    if bias_t is not None:
        value = const_value(bias_t)
        if value is None or value.dtype.kind != "f":
            return None
        bias = value.astype(np.float64)
    layer = _Layer(node, weight.astype(np.float64), bias)
    if bias is not None:
        channels = layer.weight.shape[layer.out_axis()]
        if bias.size != channels or bias.squeeze().ndim > 1:
            return None
    cache[node.name] = layer
    return layer


def _next_linear(graph: gs.Graph, node: gs.Node) -> gs.Node | None:
    """The Conv/Gemm reached from ``node``'s output through single-reader homogeneous ops, or None."""
    outputs = graph_output_names(graph)
    tensor = node.outputs[0]
    while True:
        readers = consumers(tensor)
        if len(readers) != 1 or tensor.name in outputs:
            return None
        (reader,) = readers
        if reader.inputs[0] is not tensor or len(reader.outputs) != 1:
            return None
        if reader.op in ("Conv", "Gemm"):
            return reader
        if reader.op == "Flatten" and _flattens_channels_only(reader):
            tensor = reader.outputs[0]
            continue
        if reader.op not in _HOMOGENEOUS:
            return None
        tensor = reader.outputs[0]


def _flattens_channels_only(node: gs.Node) -> bool:
    """Flatten(axis=1) of an N x C x 1 x 1 tensor: channel c stays feature c."""
    shape = static_shape(node.inputs[0])
    return shape is not None and node.attrs.get("axis", 1) == 1 and all(d == 1 for d in shape[2:])


def find_pairs(graph: gs.Graph) -> list[_Pair]:
    """Every (A, B) whose channels correspond one to one through homogeneous ops."""
    cache: dict[str, _Layer] = {}
    pairs = []
    for node in graph.nodes:
        if node.op not in ("Conv", "Gemm") or len(node.outputs) != 1:
            continue
        nxt = _next_linear(graph, node)
        if nxt is None:
            continue
        a, b = _layer(node, cache), _layer(nxt, cache)
        if a is None or b is None or a is b:
            continue
        if a.weight.shape[a.out_axis()] != b.in_ranges().size:
            continue
        pairs.append(_Pair(a, b))
    return pairs


@dataclass
class _Pair:
    """A feeds B; ``act`` is the per-channel range of the tensor B reads, when calibration data gave one."""

    a: _Layer
    b: _Layer
    act: np.ndarray | None = None

    def left_ranges(self) -> np.ndarray:
        return self.act if self.act is not None else self.a.out_ranges()


def equalize(pairs: list[_Pair], max_sweeps: int) -> int:
    """Sweep the pairs until no scale moves more than 2**_MIN_LOG2_STEP; returns the sweeps that changed."""
    for sweep in range(max_sweeps):
        moved = False
        for pair in pairs:
            r_a, r_b = pair.left_ranges(), pair.b.in_ranges()
            live = (r_a > 0) & (r_b > 0)
            s = np.ones_like(r_a)
            s[live] = np.sqrt(r_a[live] / r_b[live])
            if np.max(np.abs(np.log2(s))) < _MIN_LOG2_STEP:
                continue
            pair.a.scale_out(1.0 / s)
            pair.b.scale_in(s)
            if pair.act is not None:
                pair.act = pair.act / s
            moved = True
        if not moved:
            return sweep
    return max_sweeps


def _activation_ranges(model: IRModel, pairs: list[_Pair], samples: Sequence[Mapping[str, np.ndarray]]) -> None:
    """Per-channel max |x| of every B's input on the samples: the per-tensor int8 scale follows the widest."""
    names = [pair.b.node.inputs[0].name for pair in pairs]
    values = run_tensors(model.to_proto(check=False), samples, names)
    for pair, name in zip(pairs, names, strict=True):
        x = np.abs(values[name].astype(np.float64))
        pair.act = np.moveaxis(x, 1, 0).reshape(x.shape[1], -1).max(axis=1)


def _write_back(graph: gs.Graph, layers: list[_Layer]) -> None:
    namer = Namer(graph)
    for layer in layers:
        if not layer.changed:
            continue
        node = layer.node
        old_w = node.inputs[1]
        dtype = np.asarray(const_value(old_w)).dtype
        node.inputs[1] = namer.constant(f"{old_w.name}_equalized", layer.weight.astype(dtype))
        if layer.bias is not None:
            old_b = node.inputs[2]
            shape = np.asarray(const_value(old_b)).shape
            node.inputs[2] = namer.constant(f"{old_b.name}_equalized", layer.bias.reshape(shape).astype(dtype))
    graph.cleanup()
