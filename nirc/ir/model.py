"""The IR: a canonical ONNX model held as a mutable onnx-graphsurgeon graph.

Passes mutate :attr:`IRModel.graph` in place (graphsurgeon makes rewiring cheap)
and the model goes back to a checked ``ModelProto`` whenever something needs
the ONNX form: the checker, ONNX Runtime, the emitter, ``--dump-ir``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import onnx
import onnx_graphsurgeon as gs

from nirc.errors import ModelLoadError
from nirc.ir.load import CANONICAL_OPSET, canonicalize, check_model, infer_static_shapes
from nirc.ir.view import GraphView

logger = logging.getLogger(__name__)


class IRModel:
    """A model that satisfies the front door's invariants (one opset, static shapes)."""

    def __init__(self, graph: gs.Graph, label: str = "<model>") -> None:
        self.graph = graph
        self.label = label

    # -- construction -------------------------------------------------------
    @classmethod
    def load(
        cls,
        source: str | Path | bytes | onnx.ModelProto,
        input_shapes: Mapping[str, Sequence[int]] | None = None,
    ) -> IRModel:
        """Load a file or proto, converting and checking it (see :mod:`nirc.ir.load`)."""
        proto, label = canonicalize(source, input_shapes)
        return cls.from_proto(proto, label)

    @classmethod
    def from_proto(cls, proto: onnx.ModelProto, label: str = "<model>") -> IRModel:
        """Wrap an already canonical proto (no conversion, no inference)."""
        graph = gs.import_onnx(proto)
        _name_nodes_uniquely(graph)
        return cls(graph, label)

    def copy(self) -> IRModel:
        return IRModel.from_proto(self.to_proto(check=False), self.label)

    # -- back to ONNX -------------------------------------------------------
    def to_proto(self, *, check: bool = True) -> onnx.ModelProto:
        """Export; graphsurgeon drops unused tensors so the result is tidy and deterministic.

        A node order that is already topological is kept: it is the execution
        order the emitter writes (``schedule-memory`` chooses it on purpose), and
        graphsurgeon's sort would regroup nodes by depth. Only an order a pass
        left invalid (nodes appended after their readers) is sorted.
        """
        self.graph.cleanup(remove_unused_graph_inputs=False)
        if not _is_topological(self.graph):
            self.graph.toposort()
        self.graph.opset = CANONICAL_OPSET
        proto: onnx.ModelProto = gs.export_onnx(self.graph, do_type_check=True)
        del proto.opset_import[:]
        proto.opset_import.append(onnx.helper.make_opsetid("", CANONICAL_OPSET))
        proto.ir_version = 9  # the IR version opset 18 shipped with; ORT >= 1.15 reads it
        proto.producer_name = "nirc"
        if check:
            check_model(proto, self.label)
        return proto

    def save(self, path: str | Path) -> None:
        onnx.save(self.to_proto(), str(path))

    def refresh_shapes(self) -> None:
        """Re-run static shape inference after a rewrite created tensors without shapes."""
        proto = self.to_proto(check=False)
        for value in list(proto.graph.value_info):
            proto.graph.value_info.remove(value)
        try:
            inferred = infer_static_shapes(proto, self.label)
        except ModelLoadError:
            raise
        self.graph = gs.import_onnx(inferred)

    # -- queries --------------------------------------------------------------
    def view(self) -> GraphView:
        """A fresh read-only networkx view; rebuild it after mutating the graph."""
        return GraphView(self.graph)

    def op_counts(self) -> Counter[str]:
        return Counter(node.op for node in self.graph.nodes)

    def __repr__(self) -> str:
        return f"IRModel({self.label!r}, {len(self.graph.nodes)} nodes)"


def _name_nodes_uniquely(graph: gs.Graph) -> None:
    """Passes, reports and Vela's per-layer table refer to nodes by name."""
    seen: set[str] = set()
    for index, node in enumerate(graph.nodes):
        name = node.name or f"{node.op}_{index}"
        while name in seen:
            name = f"{name}_{index}"
        node.name = name
        seen.add(name)


def _is_topological(graph: gs.Graph) -> bool:
    """Whether every node comes after the producers of its inputs (no subgraphs)."""
    available = {t.name for t in graph.inputs}
    for node in graph.nodes:
        if next(iter(node.subgraphs()), None) is not None:
            return False  # outer-scope reads are not tracked here: let graphsurgeon sort
        for tensor in node.inputs:
            if isinstance(tensor, gs.Constant) or not tensor.name or tensor.name in available:
                continue
            if tensor.inputs:  # produced by a node that has not run yet
                return False
        available.update(t.name for t in node.outputs)
    return True
