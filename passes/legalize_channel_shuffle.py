"""Turn remaining channel shuffles and constant channel Gathers into 1x1 Convs with one-hot weights."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs
from nirc.passes._rewrite import Namer, const_value, has_any_op, static_shape
from nirc.passes.eliminate_channel_shuffle import _shuffle_chain

from nirc.ir import IRModel
from nirc.pass_base import Pass, PassContext

_MAX_CHANNELS = 4096


@dataclass(frozen=True)
class LegalizeChannelShufflePass(Pass):
    """Legalize channel permutations as 1x1 Convs: no TRANSPOSE reaches the TFLite model.

    ``y[:, j] = x[:, perm[j]]`` on a 4-D map is ``Conv(x, W)`` with the 1x1 weight
    ``W[j, perm[j]] = 1`` and zeros elsewhere: each output is one input times 1 plus
    zeros, exact in float, and exact in int8 too (the weight quantizes to 127 with
    scale 1/127, and the output keeps the input's calibrated range). Rewrites:

    * a channel shuffle ``Reshape -> Transpose -> Reshape`` (ShuffleNet) that
      ``eliminate-channel-shuffle`` could not fold into neighbouring conv weights
      (e.g. after a Concat, before a Split);
    * ``Gather(x, indices, axis=1)`` with constant 1-D indices.

    Chosen by cost: a shuffle also has a second NPU form, the single 4-D TRANSPOSE the
    emitter writes for it (Vela 5.2 runs TRANSPOSE on the NPU). Measured (U65-256):
    ShuffleNetV2-style 8x8x48 and 4x4x96 shuffles cost 13,227 cycles as convs, 1,440
    as TRANSPOSEs; torchvision shufflenet_v2_x1_0 3.71 ms with the convs (MACs 145 M ->
    303 M), 3.04 ms with TRANSPOSEs. With a target, the pass costs the model both ways
    with Vela (the cached oracle) and keeps the shuffles as TRANSPOSEs unless the convs
    are cheaper (``ctx.decide`` records both). ``forbid_transpose=True``
    (``--pass-option legalize-channel-shuffle.forbid_transpose=true``) is the
    deployment constraint "no TRANSPOSE": every shuffle becomes convs, as it also does
    without a target. Gathers have no other NPU form and always become convs.
    """

    name = "legalize-channel-shuffle"
    exact = True
    legalizes = frozenset({"Gather"})
    forbid_transpose: bool = False

    def run(self, model: IRModel, ctx: PassContext) -> bool:
        graph = model.graph
        if not has_any_op(graph, ["Transpose", "Gather"]):
            return False
        shuffles = self.forbid_transpose or ctx.target is None or _convs_are_cheaper(model, ctx)
        changed = _legalize(graph, ctx, shuffles=shuffles)
        if changed:
            graph.cleanup()
        return changed


def _legalize(graph: gs.Graph, ctx: PassContext | None, *, shuffles: bool) -> bool:
    namer = Namer(graph)
    changed = False
    for node in list(graph.nodes):
        if node.op == "Transpose" and shuffles:
            chain = _shuffle_chain(graph, node)
            if chain is not None and _as_conv(graph, chain[0], chain[1], chain[2], namer, node.name):
                changed = True
                if ctx is not None:
                    ctx.count("shuffle")
        elif node.op == "Gather" and _gather(graph, node, namer):
            changed = True
            if ctx is not None:
                ctx.count("gather")
    return changed


def _convs_are_cheaper(model: IRModel, ctx: PassContext) -> bool:
    """Vela's cycles for the model with its shuffles as convs against as TRANSPOSEs."""
    from nirc.cost import estimate
    from nirc.errors import NircError

    if ctx.target is None:
        return True
    as_transpose = IRModel.load(model.to_proto())
    _legalize(as_transpose.graph, None, shuffles=False)
    as_conv = IRModel.load(as_transpose.to_proto())
    if not _legalize(as_conv.graph, None, shuffles=True):
        return False  # no shuffle to choose for
    as_conv.graph.cleanup()
    as_transpose.graph.cleanup()
    try:
        conv = estimate(as_conv.to_proto(), ctx.target, label="legalize-channel-shuffle").cycles
        transpose = estimate(as_transpose.to_proto(), ctx.target, label="legalize-channel-shuffle").cycles
    except NircError as exc:  # a form Vela or the emitter cannot take: stay transpose-free
        ctx.decide({"shuffles": "convs", "reason": f"could not cost both forms: {exc}"})
        return True
    ctx.decide({"shuffles": "convs" if conv < transpose else "transpose", "cycles_convs": conv,
                "cycles_transpose": transpose})  # fmt: skip
    return conv < transpose


def _convertible(x: gs.Tensor, perm: np.ndarray) -> bool:
    shape = static_shape(x)
    if shape is None or len(shape) != 4 or x.dtype is None or const_value(x) is not None:
        return False
    return 0 < len(perm) <= _MAX_CHANNELS and int(perm.min()) >= 0 and int(perm.max()) < shape[1]


def _as_conv(graph: gs.Graph, x: gs.Tensor, y: gs.Tensor, perm: np.ndarray, namer: Namer, base: str) -> bool:
    """Make a 1x1 Conv write ``y`` from ``x`` (the nodes that wrote ``y`` go with cleanup)."""
    perm = np.asarray(perm, np.int64)
    if not _convertible(x, perm):
        return False
    channels = (static_shape(x) or (0, 0))[1]
    weight = np.zeros((len(perm), channels, 1, 1), dtype=np.dtype(x.dtype))
    weight[np.arange(len(perm)), perm, 0, 0] = 1
    for src in list(y.inputs):
        src.outputs.clear()
    conv = gs.Node("Conv", namer.fresh(f"{base}_as_conv"), attrs={"kernel_shape": [1, 1]},
                   inputs=[x, namer.constant(f"{base}_one_hot", weight)], outputs=[y])  # fmt: skip
    graph.nodes.append(conv)
    return True


def _gather(graph: gs.Graph, node: gs.Node, namer: Namer) -> bool:
    """``Gather(x, indices, axis=1)`` with constant 1-D indices on a 4-D map."""
    if int(node.attrs.get("axis", 0)) not in (1, -3) or len(node.inputs) != 2 or len(node.outputs) != 1:
        return False
    indices = const_value(node.inputs[1])
    shape = static_shape(node.inputs[0])
    if indices is None or indices.ndim != 1 or shape is None or len(shape) != 4:
        return False
    return _as_conv(graph, node.inputs[0], node.outputs[0], np.where(indices < 0, indices + shape[1], indices),
                    namer, node.name)  # fmt: skip
