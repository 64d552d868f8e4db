"""Merge Slices that cut one tensor into consecutive pieces along one axis into a single Split."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs
from nirc.passes._rewrite import Namer, has_any_op, slice_ranges, static_shape

from nirc.ir import IRModel
from nirc.pass_base import Pass, PassContext

# (slice node, axis, start, end) with start/end normalised to 0 <= start < end <= dim.
_Piece = tuple[gs.Node, int, int, int]


@dataclass(frozen=True)
class MergeSlicesPass(Pass):
    """Replace Slices that partition a tensor along one axis by one Split with those pieces as outputs.

    Identity: when the slices' ``[start, end)`` ranges along axis ``a`` (step 1,
    every other axis whole) tile ``[0, dim)`` exactly, in some order, the
    slices are the outputs of ``Split(x, axis=a, split=[end - start, ...])``
    sorted by start: each element lands in the same output at the same place.
    Exact (no arithmetic). The exporters spell one ``chunk``/``unbind`` both
    ways (TorchScript writes Split for ``unbind`` and Slices for ShuffleNet's
    ``chunk``, dynamo the opposite), so this gives both one form, and the
    Split form is the one the tiling pass follows through a region.

    Refused: slices with a non-constant parameter, a step other than 1, more
    than one cut axis, ranges that overlap, leave a gap or miss an end (a
    partial read is not a Split), and a single slice (``eliminate-identity``
    removes a whole-range one).
    """

    name = "merge-slices"
    exact = True

    def run(self, model: IRModel, ctx: PassContext) -> bool:
        graph = model.graph
        if not has_any_op(graph, ["Slice"]):
            return False
        namer = Namer(graph)
        changed = False
        for tensor in list(graph.tensors().values()):
            if isinstance(tensor, gs.Constant):
                continue
            for pieces in _partitions(tensor):
                _merge(graph, tensor, pieces, namer)
                ctx.count("merged_slices", len(pieces))
                ctx.count("splits")
                changed = True
        if changed:
            graph.cleanup()
        return changed


def _partitions(tensor: gs.Tensor) -> list[list[_Piece]]:
    shape = static_shape(tensor)
    if shape is None:
        return []
    by_axis: dict[int, list[_Piece]] = {}
    seen: set[int] = set()
    for node in tensor.outputs:
        if node.op != "Slice" or id(node) in seen or node.inputs[0] is not tensor:
            continue
        seen.add(id(node))
        piece = _piece(node, shape)
        if piece is not None:
            by_axis.setdefault(piece[1], []).append(piece)
    found = []
    for axis, pieces in by_axis.items():
        pieces.sort(key=lambda p: p[2])
        position = 0
        for _, _, start, end in pieces:
            if start != position:
                break
            position = end
        else:
            if len(pieces) > 1 and position == shape[axis]:
                found.append(pieces)
    return found


def _piece(node: gs.Node, shape: tuple[int, ...]) -> _Piece | None:
    """The one axis this Slice cuts and its normalised range, or None when it is not such a Slice."""
    if len(node.outputs) != 1 or static_shape(node.outputs[0]) is None:
        return None
    ranges = slice_ranges(node, shape)
    if ranges is None:
        return None
    cut: tuple[int, int, int] | None = None
    for rank_axis, begin, stop, step in ranges:
        dim = shape[rank_axis]
        if step != 1:
            return None
        if begin == 0 and stop == dim:
            continue
        if cut is not None or begin >= stop:
            return None
        cut = (rank_axis, begin, stop)
    if cut is None:
        return None
    return (node, *cut)


def _merge(graph: gs.Graph, tensor: gs.Tensor, pieces: list[_Piece], namer: Namer) -> None:
    axis = pieces[0][1]
    sizes = np.array([end - start for _, _, start, end in pieces], dtype=np.int64)
    outputs = [node.outputs[0] for node, _, _, _ in pieces]
    first = min(graph.nodes.index(node) for node, _, _, _ in pieces)
    for node, _, _, _ in pieces:
        node.inputs.clear()
        node.outputs.clear()
    split = gs.Node(
        "Split",
        namer.fresh(f"{pieces[0][0].name}_split"),
        attrs={"axis": axis},
        inputs=[tensor, namer.constant(f"{tensor.name}_split_sizes", sizes)],
        outputs=outputs,
    )
    graph.nodes.insert(first, split)
