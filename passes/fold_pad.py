"""Fold an explicit constant Pad into the padding of the Conv or pooling op that reads it."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs
from nirc.passes._rewrite import const_value, consumers, detach, has_any_op, input_at, single_use, static_shape

from nirc.ir import IRModel
from nirc.pass_base import Pass, PassContext

_TARGETS = ("Conv", "AveragePool", "MaxPool")


@dataclass(frozen=True)
class FoldPadPass(Pass):
    """Fold Pad(constant mode, spatial axes only) into the next Conv, AveragePool or MaxPool's pads.

    Identity: a Conv's own padding inserts zeros around the spatial axes, so
    ``Conv(Pad(x, p, value=0)) = Conv(x, pads=pads + p)``. For pooling the pad
    value must be what the pool's own padding stands for: AveragePool with
    ``count_include_pad=1`` averages padded positions as zeros (value 0);
    MaxPool ignores padded positions, which equals padding with ``-inf``
    (value -inf). Exact: the same numbers are summed, averaged or compared.

    Kept: non-constant modes (reflect/edge/wrap), negative pads (crops), any
    padding of the batch or channel axis, a non-zero (Conv/AveragePool) or
    finite (MaxPool) pad value, ``auto_pad`` SAME_* on the reader, pools with
    ``ceil_mode=1`` (where the extra window depends on where the padding came
    from), MaxPool with an Indices output, MaxPool pads that would reach a
    kernel's extent, and a Pad whose result has any other reader.
    """

    name = "fold-pad"
    exact = True

    def run(self, model: IRModel, ctx: PassContext) -> bool:
        graph = model.graph
        if not has_any_op(graph, ["Pad"]) or not has_any_op(graph, _TARGETS):
            return False
        changed = False
        for pad in list(graph.nodes):
            if pad.op != "Pad" or len(pad.outputs) != 1 or not single_use(graph, pad.outputs[0]):
                continue
            (reader,) = consumers(pad.outputs[0])
            spatial = _spatial_pads(pad)
            if spatial is None or reader.op not in _TARGETS or reader.inputs[0] is not pad.outputs[0]:
                continue
            if _fold(reader, spatial, _pad_value(pad)):
                reader.inputs[0] = pad.inputs[0]
                detach(pad)
                ctx.count(f"folded_into_{reader.op.lower()}")
                changed = True
        if changed:
            graph.cleanup()
        return changed


def _spatial_pads(pad: gs.Node) -> list[int] | None:
    """ONNX-style ``[begin..., end...]`` pads of the spatial axes (2..), or None when not foldable."""
    if pad.attrs.get("mode", "constant") != "constant":
        return None
    shape = static_shape(pad.inputs[0])
    pads = const_value(input_at(pad, 1))
    if shape is None or pads is None or len(shape) < 3:
        return None
    rank = len(shape)
    axes_value = const_value(input_at(pad, 3))
    axes = [int(a) % rank for a in axes_value.reshape(-1)] if axes_value is not None else list(range(rank))
    if input_at(pad, 3) is not None and axes_value is None:
        return None
    flat = [int(p) for p in pads.reshape(-1)]
    if len(flat) != 2 * len(axes):
        return None
    begin, end = [0] * rank, [0] * rank
    for i, axis in enumerate(axes):
        begin[axis], end[axis] = flat[i], flat[i + len(axes)]
    if any(p < 0 for p in begin + end) or begin[0] or end[0] or begin[1] or end[1]:
        return None
    return begin[2:] + end[2:]


def _pad_value(pad: gs.Node) -> float | None:
    slot = input_at(pad, 2)
    if slot is None:
        return 0.0
    value = const_value(slot)
    if value is None or value.size != 1:
        return None
    return float(value.reshape(-1)[0])


def _fold(reader: gs.Node, added: list[int], value: float | None) -> bool:
    if value is None or reader.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return False
    if reader.op == "Conv" and value != 0.0:
        return False
    if reader.op != "Conv" and int(reader.attrs.get("ceil_mode", 0)):
        return False
    if reader.op == "AveragePool" and (value != 0.0 or not int(reader.attrs.get("count_include_pad", 0))):
        return False
    if reader.op == "MaxPool" and not (value == -math.inf and len(reader.outputs) == 1):
        return False
    old = [int(p) for p in reader.attrs.get("pads", [0] * len(added))]
    if len(old) != len(added):
        return False
    new = [a + b for a, b in zip(old, added, strict=True)]
    if reader.op == "MaxPool" and not _pads_within_kernel(reader, new):
        return False
    reader.attrs["auto_pad"] = "NOTSET"
    reader.attrs["pads"] = new
    return True


def _pads_within_kernel(pool: gs.Node, pads: list[int]) -> bool:
    """Every MaxPool window must still overlap the input, or it would yield -inf rather than be skipped."""
    kernel = [int(k) for k in pool.attrs.get("kernel_shape", [])]
    dilations = [int(d) for d in pool.attrs.get("dilations", [1] * len(kernel))]
    extent = np.array([(k - 1) * d + 1 for k, d in zip(kernel, dilations, strict=True)])
    n = len(kernel)
    if not n or len(pads) != 2 * n:
        return False
    return bool(np.all(np.array(pads[:n]) < extent) and np.all(np.array(pads[n:]) < extent))
