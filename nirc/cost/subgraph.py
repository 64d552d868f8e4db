"""Cut a set of nodes out of a model as a standalone model the oracle can cost.

Why: a search over rewrites of one region only needs that region's cost, and
compiling a few nodes is far faster than compiling the network. The cut keeps
the real weights (Vela's weight compression depends on them) and the node
order, so equal regions of different models get equal cache keys.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeAlias

import onnx
import onnx_graphsurgeon as gs
from onnx import helper

from nirc.cost.oracle import ModelLike, as_proto
from nirc.errors import ModelLoadError
from nirc.ir.load import CANONICAL_OPSET, infer_static_shapes

NodeRef: TypeAlias = "str | gs.Node | onnx.NodeProto"


def _node_name(ref: NodeRef) -> str:
    if isinstance(ref, str):
        return ref
    name = ref.name
    if not name:
        raise ModelLoadError("extract_subgraph: nodes must be named (IRModel names every node)")
    return str(name)


def _typed_values(proto: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    graph = proto.graph
    return {v.name: v for v in (*graph.input, *graph.value_info, *graph.output) if v.type.tensor_type.HasField("shape")}


def extract_subgraph(model: ModelLike, nodes: Iterable[NodeRef]) -> onnx.ModelProto:
    """A model made of ``nodes`` of ``model``.

    Its inputs are the tensors entering the node set (produced outside it or
    graph inputs, constants excepted: initializers and ``Constant`` nodes
    feeding the set are copied in); its outputs are the tensors the set
    produces that are read outside it or are outputs of ``model``.

    Args:
        model: the model (its shapes are inferred if the proto carries none).
        nodes: node names, graphsurgeon nodes or NodeProtos of ``model``.

    Raises:
        ModelLoadError: an unknown or unnamed node, or an empty selection.
    """
    proto = as_proto(model)
    wanted = [_node_name(n) for n in nodes]
    if not wanted:
        raise ModelLoadError("extract_subgraph: no nodes selected")
    graph = proto.graph
    by_name = {n.name: n for n in graph.node if n.name}
    missing = [n for n in wanted if n not in by_name]
    if missing:
        raise ModelLoadError(f"extract_subgraph: no node named {missing[0]!r} in the model")
    selected = set(wanted)
    producers = {out: node for node in graph.node for out in node.output if out}
    # Constant nodes feeding the set come along: a constant is not an input to feed at run time.
    for name in list(wanted):
        for tensor in by_name[name].input:
            producer = producers.get(tensor)
            if producer is not None and producer.op_type == "Constant" and producer.name not in selected:
                selected.add(producer.name)
    kept = [n for n in graph.node if n.name in selected]  # model order is a topological order

    inits = {i.name: i for i in graph.initializer}
    produced = {out for n in kept for out in n.output if out}
    used_inits: dict[str, onnx.TensorProto] = {}
    entering: list[str] = []
    for node in kept:
        for tensor in node.input:
            if not tensor or tensor in produced:
                continue
            if tensor in inits:
                used_inits.setdefault(tensor, inits[tensor])
            elif tensor not in entering:
                entering.append(tensor)
    read_outside = {t for n in graph.node if n.name not in selected for t in n.input}
    model_outputs = {v.name for v in graph.output}
    leaving = [out for n in kept for out in n.output if out and (out in read_outside or out in model_outputs)]
    if not leaving:
        raise ModelLoadError("extract_subgraph: the selected nodes produce nothing that is used")

    values = _typed_values(proto)
    if any(name not in values for name in (*entering, *leaving)):
        values = _typed_values(infer_static_shapes(proto, "extract_subgraph"))
    untyped = [name for name in (*entering, *leaving) if name not in values]
    if untyped:
        raise ModelLoadError(f"extract_subgraph: no shape known for tensor {untyped[0]!r}")

    sub = helper.make_graph(
        kept,
        f"{graph.name or 'model'}_sub",
        [values[name] for name in entering],
        [values[name] for name in leaving],
        initializer=list(used_inits.values()),
    )
    opsets = list(proto.opset_import) or [helper.make_opsetid("", CANONICAL_OPSET)]
    out = helper.make_model(sub, opset_imports=opsets, producer_name="nirc.cost")
    out.ir_version = proto.ir_version or 9
    return out
