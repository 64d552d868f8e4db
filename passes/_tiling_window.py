"""The part of a model that tiling candidates can change, cut out so Vela compiles only that.

Why: every tiling candidate of one search differs from the model only between the first
region start and the last region end, and Vela's estimate is a sum over ops. Compiling the
whole network per candidate (ResNet18-224: 13 whole-model compilations, three quarters of
``nirc optimize``'s time) spends nearly all of it on layers no candidate touches. A *window*
is the stretch between two single-tensor cuts that encloses every candidate region with a
margin of ``margin`` cuts on each side (so a cascade Vela builds across a region boundary is
inside it too); the candidates are ranked by the window's cost, and only the winner is
confirmed with a whole-model compilation, which is what the pass's accept/back-off rule
compares against the baseline.

The window is found on the untiled model; in a tiled copy its two boundary tensors keep
their names (a tiling rewrites only the nodes strictly inside a region), so the same window
is cut out of every candidate by walking back from the end tensor to the start tensor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import onnx
import onnx_graphsurgeon as gs

from nirc.ir import IRModel

WINDOW_MAX_SHARE = 0.6
"""A window with more than this share of the model's nodes is not worth cutting: cost the whole model."""


@dataclass(frozen=True)
class CostWindow:
    """The boundary tensors: the only tensor alive at the start cut and the one alive at the end cut."""

    start: str
    end: str
    nodes: int

    def nodes_of(self, model: IRModel) -> list[str]:
        """Names of the nodes of ``model`` that compute ``end`` from ``start`` (and constants)."""
        producer = {t.name: n for n in model.graph.nodes for t in n.outputs}
        if self.end not in producer:
            raise KeyError(self.end)
        seen: dict[str, gs.Node] = {}
        stack = [producer[self.end]]
        while stack:
            node = stack.pop()
            if node.name in seen:
                continue
            seen[node.name] = node
            for tensor in node.inputs:
                if isinstance(tensor, gs.Constant) or not tensor.name or tensor.name == self.start:
                    continue
                if tensor.name in producer:
                    stack.append(producer[tensor.name])
        order = {n.name: i for i, n in enumerate(model.graph.nodes)}
        return sorted(seen, key=order.__getitem__)

    def cut(self, model: IRModel) -> onnx.ModelProto:
        """The window of ``model`` as a standalone model (one input, one output)."""
        from nirc.cost import extract_subgraph

        return extract_subgraph(model.to_proto(check=False), self.nodes_of(model))


def find_window(
    model: IRModel, cuts: dict[int, gs.Tensor], regions: Sequence[tuple[int, int]], margin: int = 2
) -> CostWindow | None:
    """The window around ``regions`` ((start cut, end cut) IR positions), or None when the whole model is as good.

    ``cuts`` are the single-tensor cuts (:func:`~nirc.passes.tile_activations.single_tensor_cuts`).
    None when there are no ``margin`` cuts after the last region end (the window would reach the
    model's output anyway) or the window would hold most of the model.
    """
    if not regions:
        return None
    positions = sorted(cuts)
    lo = min(s for s, _ in regions)
    hi = max(e for _, e in regions)
    before = [c for c in positions if c < lo][-margin:]
    after = [c for c in positions if c > hi][:margin]
    if len(after) < margin:
        return None
    start = before[0] if before else lo
    end = after[-1]
    total = len(model.graph.nodes)
    if end - start > WINDOW_MAX_SHARE * total:
        return None
    start_tensor, end_tensor = cuts[start], cuts[end]
    graph_outputs = {t.name for t in model.graph.outputs}
    if end_tensor.name in graph_outputs or not end_tensor.inputs:
        return None
    return CostWindow(start_tensor.name, end_tensor.name, end - start)
