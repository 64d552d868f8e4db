"""Compose consecutive Transposes into one, and remove those that compose to the identity."""

from __future__ import annotations

from dataclasses import dataclass

import onnx_graphsurgeon as gs
from nirc.passes._rewrite import has_any_op, producer, static_shape
from nirc.passes.eliminate_identity import bypass

from nirc.ir import IRModel
from nirc.pass_base import Pass, PassContext


@dataclass(frozen=True)
class ComposeTransposesPass(Pass):
    """Compose Transpose(Transpose(x, p1), p2) into Transpose(x, p1[p2]); remove identity Transposes.

    Identity: ``Transpose(y, p2)[i...]`` moves axis ``p2[k]`` of ``y`` to
    position ``k``, and axis ``j`` of ``y = Transpose(x, p1)`` is axis ``p1[j]``
    of ``x``, so the pair is ``Transpose(x, q)`` with ``q[k] = p1[p2[k]]``.
    When ``q`` is ``0, 1, ..., n-1`` (e.g. NCHW→NHWC→NCHW) the pair is the
    identity and both nodes go. Exact: elements are only moved.

    The first Transpose is removed once nothing else reads it. An identity
    Transpose from a graph input straight to a graph output is kept (the
    output needs a producer).
    """

    name = "compose-transposes"
    exact = True

    def run(self, model: IRModel, ctx: PassContext) -> bool:
        graph = model.graph
        if not has_any_op(graph, ["Transpose"]):
            return False
        changed = False
        for node in model.view().topological_order():
            if node.op != "Transpose" or not node.inputs or not node.outputs:
                continue
            perm = _perm(node)
            src = producer(node.inputs[0])
            first = _perm(src) if src is not None and src.op == "Transpose" and len(src.outputs) == 1 else None
            composed = False
            if perm is not None and first is not None:
                perm = [first[k] for k in perm]
                node.inputs[0] = src.inputs[0]
                node.attrs["perm"] = perm
                composed = changed = True
            if perm is not None and perm == list(range(len(perm))) and bypass(graph, node):
                ctx.count("cancelled_pairs" if composed else "removed_identity")
                changed = True
            elif composed:
                ctx.count("composed")
        if changed:
            graph.cleanup()
        return changed


def _perm(node: gs.Node) -> list[int] | None:
    """The node's permutation (ONNX default: reverse the axes); None without a static rank."""
    if "perm" in node.attrs:
        return [int(p) for p in node.attrs["perm"]]
    shape = static_shape(node.inputs[0])
    return None if shape is None else list(reversed(range(len(shape))))
