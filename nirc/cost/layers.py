"""Per-layer Vela estimates mapped back onto IR node names (for ``nirc analyze --target``).

How rows find their nodes: the emitter names every TFLite op's output after
the ONNX tensor it computes (helper ops get ``<tensor>/<role>``), Vela names its
rows after that output, and the oracle stores each row against the canonical
number of the tensor (:func:`nirc.cost.oracle.match_tensor`). What remains is
fusion: a Relu/Clip folded into its producer (conv, BN, Add) makes the fused
op write the *activation's* output tensor, so such rows are credited to the
producer that does the work, as the emitter's own fusion plan says.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import onnx

from nirc.cost.oracle import estimate, resolve_target
from nirc.cost.signature import tensor_ids
from nirc.ir import IRModel
from nirc.target import Target

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LayerCost:
    """Vela's estimate for one IR node.

    Attributes:
        cycles: sum of the op cycles of the NPU ops lowered from the node.
        mac_util: ``macs / (cycles * target.macs)``, 0 for nodes without cycles.
        macs: MACs Vela counts for those ops.
        ops: Vela operator types of those ops, in order (``Conv2D``, ``Relu``...).
    """

    cycles: int
    mac_util: float
    macs: int
    ops: tuple[str, ...]


def _fused_activations(proto: onnx.ModelProto) -> dict[str, str]:
    """Activation output tensor -> the node whose TFLite op writes it (the fused producer)."""
    from nirc.tflite.fusion import plan_fusion
    from nirc.tflite.graph import GraphInfo
    from nirc.tflite.ops import LOWERINGS

    info = GraphInfo.build(proto)
    plan = plan_fusion(info, LOWERINGS)
    return {out: info.nodes[index].name for index, (_, out) in plan.fused.items()}


def per_layer_costs(model: IRModel, target: Target | str, *, use_cache: bool = True) -> dict[str, LayerCost]:
    """Cost every node of ``model`` with one Vela compilation of the whole model.

    Nodes that no NPU op is credited to (an activation fused into its
    producer, ops folded away by the emitter, CPU-placed ops) are absent.
    """
    resolved = resolve_target(target)
    proto = model.to_proto(check=False)
    cost = estimate(proto, resolved, use_cache=use_cache, label=model.label)
    by_number = {number: name for name, number in tensor_ids(proto).items()}
    producer = {out: node.name for node in proto.graph.node for out in node.output if out}
    producer.update(_fused_activations(proto))
    cycles: dict[str, int] = {}
    macs: dict[str, int] = {}
    ops: dict[str, list[str]] = {}
    unmapped = 0
    for row in cost.layers:
        node = producer.get(by_number.get(row.tensor, ""))
        if node is None:
            unmapped += row.cycles
            continue
        cycles[node] = cycles.get(node, 0) + row.cycles
        macs[node] = macs.get(node, 0) + row.macs
        ops.setdefault(node, []).append(row.op)
    if unmapped:
        logger.warning("%s: %d Vela cycles could not be mapped to IR nodes", model.label, unmapped)
    return {
        name: LayerCost(
            cycles=cycles[name],
            mac_util=macs[name] / (cycles[name] * resolved.macs) if cycles[name] else 0.0,
            macs=macs[name],
            ops=tuple(ops[name]),
        )
        for name in (node.name for node in proto.graph.node)
        if name in cycles
    }
