"""Copy a few-channel image input with an elementwise identity, so its readers find it in SRAM."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import onnx_graphsurgeon as gs
from nirc.passes._rewrite import (
    Namer,
    consumers,
    graph_output_names,
    identity_copy,
    is_identity_copy,
    replace_uses,
    static_shape,
)

from nirc.ir import IRModel
from nirc.pass_base import Pass, PassContext

logger = logging.getLogger(__name__)

#: Inputs with at most this many channels are candidates (an RGB or RGBA image) ...
MAX_CHANNELS = 4
#: ... when the copy takes at most half of the U65's 384 KiB SRAM arena cache (int8 bytes).
MAX_BYTES = 192 * 1024


@dataclass(frozen=True)
class StageInputsPass(Pass):
    """Give a 4-D graph input with at most 4 channels one reader: ``LeakyRelu(alpha=1)``.

    Identity: ``LeakyRelu(x, alpha=1) = x`` for every x; in int8 the emitter ties the
    op's input and output parameters (``nirc.tflite.ops_act.leaky_ties``), so the
    LEAKY_RELU Vela turns into a lookup table maps every code to itself. Exact.

    Why: Vela reads a 3-channel NHWC map from DRAM in short bursts, so the stem conv
    of a 224x224 image is bound by reading its input (a 3x3 stride-2 conv to 16
    channels: 825,450 cycles). An elementwise op streams the map instead and writes
    the copy where Vela keeps small tensors, the SRAM: the same conv costs 150,781
    cycles after a 77,316-cycle copy (228,097 together; a 1x1 MaxPool copy, which
    reads the input as the conv does, costs 677,120). The TOSA route's lift does the
    same with an identity TABLE (the LEAKY_RELU lifts to exactly that table). The
    input contract (shape, layout, dtype) is unchanged.

    Decided by Vela's estimate of the whole model (the copy costs cycles when the
    first op is bound by writing its output rather than reading the image); without
    a target the pass does nothing. Refuses inputs with more than ``MAX_CHANNELS``
    channels (axis 1) or more than ``MAX_BYTES`` elements, inputs that are graph
    outputs or unread, and inputs that already have a single identity reader.
    """

    name = "stage-inputs"
    exact = True

    def run(self, model: IRModel, ctx: PassContext) -> bool:
        if ctx.target is None:
            return False
        candidates = [t.name for t in model.graph.inputs if _stageable(model.graph, t)]
        if not candidates:
            return False
        trial = IRModel.load(model.to_proto())
        for name in candidates:
            _stage(trial.graph, trial.graph.tensors()[name])
        from nirc.cost import estimate
        from nirc.errors import NircError

        try:
            before = estimate(model.to_proto(), ctx.target, label="stage-inputs").cycles
            after = estimate(trial.to_proto(), ctx.target, label="stage-inputs").cycles
        except NircError as exc:
            ctx.decide({"inputs": candidates, "staged": False, "reason": f"could not cost both forms: {exc}"})
            return False
        keep = after < before
        ctx.decide({"inputs": candidates, "staged": keep, "cycles_before": before, "cycles_staged": after})
        if not keep:
            return False
        for name in candidates:
            _stage(model.graph, model.graph.tensors()[name])
            ctx.count("staged")
        return True


def _stageable(graph: gs.Graph, x: gs.Tensor) -> bool:
    shape = static_shape(x)
    if shape is None or len(shape) != 4 or shape[1] > MAX_CHANNELS:
        return False
    if shape[0] * shape[1] * shape[2] * shape[3] > MAX_BYTES or x.name in graph_output_names(graph):
        return False
    readers = consumers(x)
    return bool(readers) and not (len(readers) == 1 and is_identity_copy(readers[0]))


def _stage(graph: gs.Graph, x: gs.Tensor) -> None:
    node, copy = identity_copy(Namer(graph), x, x.name)
    replace_uses(x, copy)
    node.inputs = [x]  # replace_uses rewired the copy's own input too
    graph.nodes.insert(0, node)
    logger.info("stage-inputs: %s is read through %s", x.name, copy.name)
