"""Remove channel shuffles (Reshape→Transpose→Reshape) by permuting neighbouring conv weights."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs
from nirc.passes._rewrite import (
    Namer,
    const_value,
    consumers,
    detach,
    graph_output_names,
    has_any_op,
    input_at,
    producer,
    single_use,
    static_shape,
)

from nirc.ir import IRModel
from nirc.pass_base import Pass, PassContext

# Elementwise ops that act on each value alone, so they commute with any channel permutation.
_CHANNEL_AGNOSTIC = ("Relu", "LeakyRelu", "Sigmoid", "Tanh", "HardSwish", "HardSigmoid", "Elu", "Clip")
_MAX_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class EliminateChannelShufflePass(Pass):
    """Eliminate channel shuffles (Reshape→Transpose→Reshape permuting channels) by permuting conv weights.

    A channel shuffle (ShuffleNet: reshape [N, C, H, W] to [N, g, C/g, H, W],
    transpose (0, 2, 1, 3, 4), reshape back) only reorders channels:
    ``y[:, c] = x[:, perm[c]]``. The NPU runs the 5-D transpose badly, but a
    fixed channel permutation is free once it is folded into constant weights:

    * readers: when every reader of ``y`` is a Conv with ``group=1`` reading it
      as its data input (any number of them; no graph output, no other op),
      ``conv(y, W) = conv(x, W[:, perm^-1])``: input channel ``c`` of ``x`` is
      input channel ``perm^-1[c]`` of ``y``.
    * producer: otherwise, when ``x`` is produced by a Conv with ``group=1``
      and read only by the shuffle, possibly through single-reader
      elementwise activations (which commute with the permutation), the conv
      computes ``y`` directly with ``W[perm]`` and ``b[perm]``.

    Exact: the same products are summed; only their order in memory changes.
    The permutation is derived by running the three ops on an index tensor, so
    any Reshape→Transpose→Reshape that merely permutes channels is handled, and
    anything else (spatial moves, shape changes) is left alone. Grouped convs
    are kept: permuting their channels would move them across groups.
    """

    name = "eliminate-channel-shuffle"
    exact = True

    def run(self, model: IRModel, ctx: PassContext) -> bool:
        graph = model.graph
        if not has_any_op(graph, ["Transpose"]) or not has_any_op(graph, ["Reshape"]):
            return False
        namer = Namer(graph)
        changed = False
        for transpose in list(graph.nodes):
            chain = _shuffle_chain(graph, transpose)
            if chain is None:
                continue
            x, y, perm = chain
            if _into_readers(graph, y, x, perm, namer):
                ctx.count("folded_into_readers")
            elif _into_producer(graph, x, y, perm, namer):
                ctx.count("folded_into_producer")
            else:
                continue
            changed = True
        if changed:
            graph.cleanup()
        return changed


def _shuffle_chain(graph: gs.Graph, transpose: gs.Node) -> tuple[gs.Tensor, gs.Tensor, np.ndarray] | None:
    """``(x, y, perm)`` for ``y = Reshape(Transpose(Reshape(x)))`` with ``y[:, c] = x[:, perm[c]]``."""
    if transpose.op != "Transpose" or len(transpose.outputs) != 1 or not transpose.inputs:
        return None
    first = producer(transpose.inputs[0])
    if first is None or first.op != "Reshape" or not single_use(graph, transpose.inputs[0]):
        return None
    if not single_use(graph, transpose.outputs[0]):
        return None
    (second,) = consumers(transpose.outputs[0])
    if second.op != "Reshape" or second.inputs[0] is not transpose.outputs[0]:
        return None
    x, y = first.inputs[0], second.outputs[0]
    in_shape, mid_shape, out_shape = (static_shape(t) for t in (x, transpose.inputs[0], y))
    if in_shape is None or mid_shape is None or in_shape != out_shape or len(in_shape) != 4:
        return None
    perm_attr = transpose.attrs.get("perm", list(reversed(range(len(mid_shape)))))
    if int(np.prod(in_shape)) > _MAX_ELEMENTS:
        return None
    index = np.arange(int(np.prod(in_shape))).reshape(in_shape)
    moved = index.reshape(mid_shape).transpose([int(p) for p in perm_attr]).reshape(in_shape)
    spatial = in_shape[2] * in_shape[3]
    perm = (moved[0, :, 0, 0] // spatial) % in_shape[1]
    if not np.array_equal(moved, index[:, perm]):
        return None
    return x, y, perm


def _plain_conv(node: gs.Node) -> bool:
    """A Conv with group=1 and constant weights (and bias, if any)."""
    if node.op != "Conv" or int(node.attrs.get("group", 1)) != 1:
        return False
    bias = input_at(node, 2)
    return const_value(input_at(node, 1)) is not None and (bias is None or const_value(bias) is not None)


def _into_readers(graph: gs.Graph, y: gs.Tensor, x: gs.Tensor, perm: np.ndarray, namer: Namer) -> bool:
    readers = consumers(y)
    if not readers or y.name in graph_output_names(graph):
        return False
    for conv in readers:
        if not _plain_conv(conv) or conv.inputs[0] is not y or any(t is y for t in conv.inputs[1:]):
            return False
    inverse = np.argsort(perm)
    for conv in readers:
        weight_t = conv.inputs[1]
        conv.inputs[1] = namer.constant(f"{weight_t.name}_unshuffled", np.asarray(const_value(weight_t))[:, inverse])
        conv.inputs[0] = x
    return True


def _into_producer(graph: gs.Graph, x: gs.Tensor, y: gs.Tensor, perm: np.ndarray, namer: Namer) -> bool:
    last = producer(x)
    src, tensor = last, x
    while src is not None and src.op != "Conv":
        if src.op not in _CHANNEL_AGNOSTIC or not _constant_params(src) or not _only_reader_is_next(graph, tensor):
            return False
        tensor = src.inputs[0]
        src = producer(tensor)
    if src is None or last is None or not _plain_conv(src) or not _only_reader_is_next(graph, tensor):
        return False
    weight_t, bias_t = src.inputs[1], input_at(src, 2)
    src.inputs[1] = namer.constant(f"{weight_t.name}_shuffled", np.asarray(const_value(weight_t))[perm])
    if bias_t is not None:
        src.inputs[2] = namer.constant(f"{bias_t.name}_shuffled", np.asarray(const_value(bias_t))[perm])
    # The permuted conv (and the activations after it) now compute y's layout: the
    # last node before the shuffle writes y, and the shuffle goes.
    first_reshape = x.outputs[0]
    transpose = first_reshape.outputs[0].outputs[0]
    second_reshape = transpose.outputs[0].outputs[0]
    detach(first_reshape, transpose, second_reshape)
    last.outputs[0] = y
    return True


def _only_reader_is_next(graph: gs.Graph, tensor: gs.Tensor) -> bool:
    """The tensor has one producer output and one reader, so permuting it is invisible elsewhere."""
    src = producer(tensor)
    return src is not None and len(src.outputs) == 1 and single_use(graph, tensor)


def _constant_params(node: gs.Node) -> bool:
    """Clip's bounds (scalars by definition) must be constants; the other listed ops take one input."""
    return node.op != "Clip" or all((t := input_at(node, i)) is None or const_value(t) is not None for i in (1, 2))
