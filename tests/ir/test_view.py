from __future__ import annotations

import networkx as nx
from nirc_testing import parse

from nirc.ir import IRModel

TEXT = """
<ir_version: 9, opset_import: ["" : 18]>
g (float[1,4] x) => (float[1,4] y) {
    a = Relu (x)
    b = Sigmoid (a)
    c = Tanh (a)
    d = Add (b, c)
    y = Relu (d)
}
"""


def test_producers_consumers_and_order() -> None:
    view = IRModel.load(parse(TEXT)).view()
    order = [n.op for n in view.topological_order()]
    assert order == ["Relu", "Sigmoid", "Tanh", "Add", "Relu"]
    assert sorted(n.op for n in view.consumers["a"]) == ["Sigmoid", "Tanh"]
    assert view.producer["d"].op == "Add"
    assert not view.has_single_use(view.producer["a"].outputs[0])
    assert nx.is_directed_acyclic_graph(view.nx)


def test_match_diamond_pattern() -> None:
    view = IRModel.load(parse(TEXT)).view()
    pattern = nx.DiGraph()
    pattern.add_node("src", op="Relu")
    pattern.add_node("l", op="Sigmoid")
    pattern.add_node("r", op="Tanh")
    pattern.add_node("join", op="Add")
    pattern.add_edges_from([("src", "l"), ("src", "r"), ("l", "join"), ("r", "join")])
    matches = list(view.match(pattern))
    assert len(matches) == 1
    assert matches[0]["join"].outputs[0].name == "d"


def test_chains_require_single_use_links() -> None:
    view = IRModel.load(parse(TEXT)).view()
    assert [[n.op for n in c] for c in view.chains(["Add", "Relu"])] == [["Add", "Relu"]]
    assert list(view.chains(["Relu", "Sigmoid"])) == []  # 'a' has two readers
