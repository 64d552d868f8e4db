"""Remove nodes whose results reach no graph output."""

from __future__ import annotations

from dataclasses import dataclass

from nirc.ir import IRModel
from nirc.pass_base import Pass, PassContext


@dataclass(frozen=True)
class EliminateDeadCodePass(Pass):
    """Remove nodes and initializers that no graph output depends on.

    Exact by construction: the outputs are computed by the same nodes as before.
    Unused graph inputs are kept, because callers feed inputs by name.
    """

    name = "eliminate-dead-code"
    exact = True

    def run(self, model: IRModel, ctx: PassContext) -> bool:
        graph = model.graph
        before = len(graph.nodes)
        graph.cleanup(remove_unused_node_outputs=False, remove_unused_graph_inputs=False)
        removed = before - len(graph.nodes)
        if removed:
            ctx.count("removed_nodes", removed)
        return removed > 0
