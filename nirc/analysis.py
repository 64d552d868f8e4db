"""Static cost analysis: MACs, parameters, int8 bytes and peak live activations.

These are the numbers an engineer checks first when a model will not fit: what
the weights cost in flash/DRAM, and how much activation memory the execution
order needs at its worst step, compared with the target's arena.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import onnx_graphsurgeon as gs

from nirc.ir import IRModel
from nirc.target import Target

# Inputs that hold shapes, axes or indices rather than learned weights.
_NON_WEIGHT_INPUTS: dict[str, tuple[int, ...]] = {
    "Reshape": (1,),
    "Resize": (1, 2, 3),
    "Pad": (1, 2, 3),
    "Slice": (1, 2, 3, 4),
    "Split": (1,),
    "Squeeze": (1,),
    "Unsqueeze": (1,),
    "ReduceMean": (1,),
    "Clip": (1, 2),
    "Expand": (1,),
    "Tile": (1,),
}
_BIAS_INPUT = {"Conv": 2, "ConvTranspose": 2, "Gemm": 2}
# BN's running statistics fold into the conv; PyTorch counts gamma/beta as parameters.
_BN_LEARNED = (1, 2)


@dataclass(frozen=True)
class LayerStats:
    name: str
    op: str
    output_shape: list[int]
    macs: int
    params: int
    weight_bytes: int
    activation_bytes: int
    in_channels: int | None
    out_channels: int | None
    misaligned_channels: list[int]
    cycles: int | None = None
    mac_util: float | None = None


@dataclass(frozen=True)
class Analysis:
    macs: int
    params: int
    weight_bytes: int
    activation_bytes: int
    peak_activation_bytes: int
    peak_step: str
    layers: list[LayerStats]
    target: str | None
    brick_channels: int | None
    arena_bytes: int | None
    cycles_total: int | None = None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data["layers"] = [asdict(layer) for layer in self.layers]
        return data


def with_layer_costs(analysis: Analysis, model: IRModel, target: Target) -> Analysis:
    """Add Vela's per-layer cycles and MAC utilisation (one compilation via the cost oracle).

    MAC utilisation = MACs / (cycles x MACs per cycle): the share of the NPU a layer
    actually uses, which is how a user spots layers that waste it (a 3-channel stem).
    A model the backend cannot emit keeps its static numbers and gets a note.
    """
    from nirc.cost import per_layer_costs
    from nirc.errors import NircError
    from nirc.lowering import lower_canonical

    # Cost the model as nirc would emit it: unfolded BatchNormalization alone would
    # cost more than the convs. Folded nodes' cycles land on the surviving producer.
    try:
        costs = per_layer_costs(lower_canonical(model, target), target)
    except NircError as exc:
        return replace(analysis, notes=[*analysis.notes, f"no per-layer cycles: {exc}"])
    layers = [
        replace(layer, cycles=costs[layer.name].cycles, mac_util=round(costs[layer.name].mac_util, 4))
        if layer.name in costs
        else layer
        for layer in analysis.layers
    ]
    note = "cycles: Vela estimate of the model after nirc's canonical passes (BN folded, no hardware passes)"
    total = sum(c.cycles for c in costs.values())
    return replace(analysis, layers=layers, cycles_total=total, notes=[*analysis.notes, note])


def _numel(shape: Sequence[int] | None) -> int:
    return int(math.prod(int(d) for d in shape)) if shape is not None else 0


def _shape(tensor: gs.Tensor) -> list[int]:
    return [int(d) for d in tensor.shape] if tensor.shape is not None else []


def node_macs(node: gs.Node) -> int:
    """Multiply-accumulates of the node; elementwise work is not counted as MACs."""
    if node.op in ("Conv", "ConvTranspose"):
        weight = _shape(node.inputs[1])
        if node.op == "Conv":
            # weight (Cout, Cin/g, k...): each output element costs Cin/g * prod(k).
            return _numel(node.outputs[0].shape) * _numel(weight[1:])
        # ConvTranspose weight (Cin, Cout/g, k...): each input element scatters Cout/g * prod(k).
        return _numel(node.inputs[0].shape) * _numel(weight[1:])
    if node.op == "Gemm":
        a = _shape(node.inputs[0])
        k = a[0] if node.attrs.get("transA", 0) else a[-1]
        return _numel(node.outputs[0].shape) * k
    if node.op == "MatMul":
        a = _shape(node.inputs[0])
        return _numel(node.outputs[0].shape) * (a[-1] if a else 0)
    return 0


def _weight_inputs(node: gs.Node) -> list[tuple[int, gs.Constant]]:
    skip = _NON_WEIGHT_INPUTS.get(node.op, ())
    found = []
    for index, tensor in enumerate(node.inputs):
        if index in skip or not isinstance(tensor, gs.Constant):
            continue
        if not np.issubdtype(np.asarray(tensor.values).dtype, np.floating):
            continue
        if node.op == "BatchNormalization" and index not in _BN_LEARNED:
            continue
        found.append((index, tensor))
    return found


def node_params(node: gs.Node) -> tuple[int, int]:
    """(parameter count, int8 deployment bytes) of the node's constant float inputs.

    Bytes assume int8 weights and int32 biases; BatchNormalization costs no bytes
    because it folds into the conv before deployment.
    """
    params = 0
    nbytes = 0
    for index, tensor in _weight_inputs(node):
        count = _numel(tensor.shape)
        params += count
        if node.op == "BatchNormalization":
            continue
        nbytes += count * (4 if _BIAS_INPUT.get(node.op) == index else 1)
    return params, nbytes


def _channels(tensor: gs.Tensor) -> int | None:
    shape = _shape(tensor)
    return shape[1] if len(shape) >= 2 else None


def analyze(model: IRModel, target: Target | None = None) -> Analysis:
    view = model.view()
    order = view.topological_order()
    layers = []
    brick = target.brick_channels if target else None
    for node in order:
        params, wbytes = node_params(node)
        out = node.outputs[0] if node.outputs else None
        in_ch = _channels(node.inputs[0]) if node.inputs else None
        out_ch = _channels(out) if out is not None else None
        misaligned: list[int] = []
        if brick and node.op in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            misaligned = sorted({c for c in (in_ch, out_ch) if c is not None and c % brick})
        layers.append(
            LayerStats(
                name=node.name,
                op=node.op,
                output_shape=_shape(out) if out is not None else [],
                macs=node_macs(node),
                params=params,
                weight_bytes=wbytes,
                activation_bytes=sum(_numel(o.shape) for o in node.outputs),
                in_channels=in_ch,
                out_channels=out_ch,
                misaligned_channels=misaligned,
            )
        )
    peak, peak_step = peak_live_bytes(model)
    return Analysis(
        macs=sum(layer.macs for layer in layers),
        params=sum(layer.params for layer in layers),
        weight_bytes=sum(layer.weight_bytes for layer in layers),
        activation_bytes=sum(layer.activation_bytes for layer in layers),
        peak_activation_bytes=peak,
        peak_step=peak_step,
        layers=layers,
        target=target.name if target else None,
        brick_channels=brick,
        arena_bytes=target.arena_cache_bytes if target else None,
    )


def peak_live_bytes(model: IRModel) -> tuple[int, str]:
    """Peak of int8 bytes alive at any step of the current execution order, and where."""
    peak, peak_step = 0, ""
    for step, live in live_bytes_timeline(model):
        if live > peak:
            peak, peak_step = live, step
    return peak, peak_step


def live_bytes_timeline(model: IRModel) -> list[tuple[str, int]]:
    """Int8 bytes alive at each step (node) of the current execution order.

    A tensor is alive from the step that produces it (graph inputs: from the
    start) through its last reader; graph outputs stay alive to the end. At each
    step the node's inputs and outputs are alive together, since an NPU op
    cannot write in place over an input it is still reading.
    """
    view = model.view()
    order = view.topological_order()
    position = {node.name: i for i, node in enumerate(order)}
    end = len(order)
    sizes: dict[str, int] = {}
    born: dict[str, int] = {}
    for tensor in model.graph.inputs:
        sizes[tensor.name] = _numel(tensor.shape)
        born[tensor.name] = -1
    for node in order:
        for out in node.outputs:
            sizes[out.name] = _numel(out.shape)
            born[out.name] = position[node.name]
    # Sweep: add a tensor's bytes at birth (inputs at step 0), remove after its last reader.
    delta = [0] * (end + 1)
    for name, size in sizes.items():
        readers = [position[n.name] for n in view.consumers.get(name, [])]
        dies = end if name in view.graph_outputs else max(readers, default=born[name])
        delta[max(born[name], 0)] += size
        delta[min(dies, end - 1) + 1] -= size
    timeline = []
    live = 0
    for step, node in enumerate(order):
        live += delta[step]
        timeline.append((node.name, live))
    return timeline
