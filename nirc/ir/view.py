"""A read-only networkx view of the IR for analysis: order, liveness, matching.

The graphsurgeon graph is good at rewiring; networkx is good at questions about
structure. Keeping the view separate and rebuilt on demand means no pass can
leave the two out of sync.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import networkx as nx
import onnx_graphsurgeon as gs
from networkx.algorithms import isomorphism


class GraphView:
    """Nodes keyed by node name; an edge u→v carries the tensors u produces for v."""

    def __init__(self, graph: gs.Graph) -> None:
        self.graph = graph
        self.nx: nx.DiGraph = nx.DiGraph()
        self._index: dict[str, int] = {}
        self.producer: dict[str, gs.Node] = {}
        self.consumers: dict[str, list[gs.Node]] = {}
        for index, node in enumerate(graph.nodes):
            self._index[node.name] = index
            self.nx.add_node(node.name, op=node.op, node=node)
            for out in node.outputs:
                self.producer[out.name] = node
        for node in graph.nodes:
            for tensor in node.inputs:
                if isinstance(tensor, gs.Constant) or not tensor.name:
                    continue
                self.consumers.setdefault(tensor.name, []).append(node)
                src = self.producer.get(tensor.name)
                if src is None:
                    continue
                if self.nx.has_edge(src.name, node.name):
                    self.nx.edges[src.name, node.name]["tensors"].append(tensor.name)
                else:
                    self.nx.add_edge(src.name, node.name, tensors=[tensor.name])
        self.graph_outputs = {t.name for t in graph.outputs}

    def topological_order(self) -> list[gs.Node]:
        """Topological order that keeps the model's own order wherever it is free to."""
        order = nx.lexicographical_topological_sort(self.nx, key=self._index.__getitem__)
        return [self.nx.nodes[name]["node"] for name in order]

    def node(self, name: str) -> gs.Node:
        node: gs.Node = self.nx.nodes[name]["node"]
        return node

    def successors(self, node: gs.Node) -> list[gs.Node]:
        return [self.node(n) for n in sorted(self.nx.successors(node.name), key=self._index.__getitem__)]

    def predecessors(self, node: gs.Node) -> list[gs.Node]:
        return [self.node(n) for n in sorted(self.nx.predecessors(node.name), key=self._index.__getitem__)]

    def consumers_of(self, tensor: gs.Tensor) -> list[gs.Node]:
        return list(self.consumers.get(tensor.name, []))

    def has_single_use(self, tensor: gs.Tensor) -> bool:
        """True when exactly one node reads the tensor and it is not a graph output."""
        return len(self.consumers.get(tensor.name, [])) == 1 and tensor.name not in self.graph_outputs

    def match(
        self,
        pattern: nx.DiGraph,
        node_match: Callable[[dict[str, Any], dict[str, Any]], bool] | None = None,
    ) -> Iterator[dict[str, gs.Node]]:
        """Occurrences of ``pattern`` (nodes with an ``op`` attribute) as induced subgraphs.

        Yields a mapping from pattern node key to IR node, in a deterministic order.
        """
        compare = node_match or (lambda a, b: a["op"] == b["op"])
        matcher = isomorphism.DiGraphMatcher(self.nx, pattern, node_match=compare)
        found = []
        for mapping in matcher.subgraph_isomorphisms_iter():
            inverse = {p: self.node(g) for g, p in mapping.items()}
            found.append(inverse)
        found.sort(key=lambda m: sorted(self._index[n.name] for n in m.values()))
        yield from found

    def chains(self, op_types: Sequence[str]) -> Iterator[list[gs.Node]]:
        """Linear chains ``op_types[0] → op_types[1] → …`` where each link is single-use."""
        for start in self.topological_order():
            if start.op != op_types[0]:
                continue
            chain = [start]
            for op in op_types[1:]:
                last = chain[-1]
                outs = [t for t in last.outputs if self.consumers.get(t.name)]
                if len(last.outputs) != 1 or len(outs) != 1 or not self.has_single_use(outs[0]):
                    break
                (nxt,) = self.consumers[outs[0].name]
                if nxt.op != op:
                    break
                chain.append(nxt)
            if len(chain) == len(op_types):
                yield chain
