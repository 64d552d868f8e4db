"""Subgraph extraction and per-layer Vela costs mapped back onto IR node names."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from nirc.cost import estimate, extract_subgraph, per_layer_costs
from nirc.errors import ModelLoadError
from nirc.ir import IRModel
from nirc.target import Target

TINY_CNN = Path(__file__).resolve().parents[2] / "examples" / "tiny_cnn.onnx"
RESIDUAL = ["block.dw", "block.dw_bn", "block.dw_relu", "block.pw", "block.pw_bn", "block.add"]


@pytest.fixture
def tiny() -> IRModel:
    return IRModel.load(TINY_CNN)


def test_extract_subgraph_boundaries(tiny: IRModel) -> None:
    sub = extract_subgraph(tiny, RESIDUAL)
    onnx.checker.check_model(sub, full_check=True)
    assert [v.name for v in sub.graph.input] == ["down1.relu"]
    assert [v.name for v in sub.graph.output] == ["block.add"]
    assert [n.name for n in sub.graph.node] == RESIDUAL
    assert {i.name for i in sub.graph.initializer} == {
        t for n in sub.graph.node for t in n.input if t.endswith(("weight", "bias", "mean", "var"))
    }
    shape = [d.dim_value for d in sub.graph.input[0].type.tensor_type.shape.dim]
    assert shape == [1, 24, 16, 16]


def test_extract_subgraph_outputs_read_outside(tiny: IRModel) -> None:
    # block.dw_relu is read by block.pw only; cutting after it makes it an output
    sub = extract_subgraph(tiny, RESIDUAL[:3])
    assert [v.name for v in sub.graph.output] == ["block.dw_relu"]


def test_extract_subgraph_errors(tiny: IRModel) -> None:
    with pytest.raises(ModelLoadError, match="no node named"):
        extract_subgraph(tiny, ["nope"])
    with pytest.raises(ModelLoadError, match="no nodes"):
        extract_subgraph(tiny, [])


def test_subgraph_cost_keeps_real_weights(tiny: IRModel, u65: Target) -> None:
    sub = extract_subgraph(tiny, RESIDUAL)
    part = estimate(sub, u65)
    whole = estimate(tiny, u65)
    assert 0 < part.cycles < whole.cycles
    originals = {i.name: i.raw_data for i in tiny.to_proto().graph.initializer}
    assert all(init.raw_data == originals[init.name] for init in sub.graph.initializer)
    assert 24 * 9 + 24 * 24 <= part.weight_bytes <= 24 * 9 + 24 * 24 + 16  # Vela pads the depthwise weights


def test_per_layer_costs_map_to_nodes(tiny: IRModel, u65: Target) -> None:
    layers = per_layer_costs(tiny, u65)
    names = {n.name for n in tiny.graph.nodes}
    assert set(layers) <= names
    for conv in ("stem.conv", "down1.conv", "block.dw", "block.pw", "down2.conv"):
        assert layers[conv].cycles > 0
        assert 0 < layers[conv].mac_util <= 1
        assert layers[conv].mac_util == pytest.approx(layers[conv].macs / (layers[conv].cycles * u65.macs))
    assert layers["fc"].ops == ("FullyConnected",)
    assert "block.dw_relu" not in layers  # fused into the BN's Add; its cycles are the BN's
    assert layers["block.dw_bn"].ops[-1] == "Relu"
    whole = estimate(tiny, u65)
    assert sum(layer.cycles for layer in layers.values()) == sum(row.cycles for row in whole.layers)
