"""nirc.compress methods, checked with ONNX Runtime: decomposition shapes and ranks, exactness at the
true rank, pruning criteria, and layer-wise reconstruction lowering the error on held-out data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from nirc_testing import ort_run, parse

from nirc.backend import input_shapes
from nirc.compress import lowrank, plan, prune
from nirc.compress.reconstruct import Reference
from nirc.ir import IRModel
from nirc.quant import load_calibration
from nirc.verify import run_tensors

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "examples" / "digits_cnn.onnx"
DIGITS_DATA = ROOT / "examples" / "digits_val.npz"
HEADER = '<ir_version: 9, opset_import: ["" : 18]>'
F32 = np.float32


def _rand(*shape: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(F32)


def _conv_model(weight: np.ndarray, bias: np.ndarray) -> onnx.ModelProto:
    o, c, kh, kw = weight.shape
    return parse(
        f"""{HEADER}
        g (float[1,{c},8,8] x) => (float[1,{o},4,4] y) {{
            y = Conv <kernel_shape = [{kh}, {kw}], pads = [1, 1, 1, 1], strides = [2, 2]> (x, w, b)
        }}""",
        w=weight,
        b=bias,
    )


def _decomposed(proto: onnx.ModelProto, ranks: lowrank.Ranks) -> onnx.ModelProto:
    model = IRModel.load(proto)
    node = next(n for n in model.graph.nodes if n.op in ("Conv", "Gemm"))
    lowrank.decompose(model.graph, node, ranks)
    model.refresh_shapes()
    return model.to_proto()


def test_tucker2_is_exact_at_the_true_ranks_and_keeps_the_geometry() -> None:
    # W = U_out . G . U_in^T with ranks 16 (input) and 32 (output): Tucker-2 at those ranks is exact.
    core = _rand(32, 16, 3, 3, seed=1)
    u_out, u_in = _rand(64, 32, seed=2), _rand(48, 16, seed=3)
    weight = np.einsum("rsij,or,cs->ocij", core, u_out, u_in, optimize=True).astype(F32)
    proto = _conv_model(weight, _rand(64, seed=4))
    after = _decomposed(proto, lowrank.Ranks(16, 32))
    convs = [n for n in after.graph.node if n.op_type == "Conv"]
    shapes = {i.name: tuple(i.dims) for i in after.graph.initializer}
    assert [shapes[n.input[1]] for n in convs] == [(16, 48, 1, 1), (32, 16, 3, 3), (64, 32, 1, 1)]
    assert [n.name.rpartition("/")[2] for n in convs] == ["lr_in", "lr_core", "lr_out"]
    x = {"x": _rand(1, 48, 8, 8, seed=5)}
    np.testing.assert_allclose(ort_run(after, x)[0], ort_run(proto, x)[0], rtol=1e-4, atol=1e-3)


def _errors_by_rank(channels: int, seed: int, cp: bool) -> list[float]:
    """Relative output error of a random 3x3 conv decomposed at 7/8, 3/4 and 1/2 of its weights removed."""
    proto = _conv_model(_rand(channels, channels, 3, 3, seed=seed), _rand(channels, seed=seed + 1))
    x = {"x": _rand(1, channels, 8, 8, seed=seed + 2)}
    want = ort_run(proto, x)[0]
    errors = []
    for removed in (0.875, 0.75, 0.5):
        ranks = lowrank.ranks_for((channels, channels, 3, 3), removed, 16, cp=cp)
        assert ranks is not None and ranks.cp == cp and ranks.first % 16 == 0
        assert ranks.core is None if cp else (ranks.core is not None and ranks.core % 16 == 0)
        got = ort_run(_decomposed(proto, ranks), x)[0]
        errors.append(float(np.sum((got - want) ** 2) / np.sum(want**2)))
    return errors


def test_error_falls_as_the_rank_grows() -> None:
    errors = _errors_by_rank(128, 6, cp=False)
    assert errors[0] > errors[1] > errors[2] > 0


def test_svd_of_a_fully_connected_layer() -> None:
    weight = (_rand(40, 16, seed=9) @ _rand(16, 96, seed=10)).astype(F32)  # rank 16, [out, in]
    proto = parse(
        f"""{HEADER}
        g (float[2,96] x) => (float[2,40] y) {{ y = Gemm <transB = 1> (x, w, b) }}""",
        w=weight,
        b=_rand(40, seed=11),
    )
    ranks = lowrank.ranks_for((40, 96), 0.25, 16)
    assert ranks == lowrank.Ranks(16, None)
    after = _decomposed(proto, ranks)
    assert [n.op_type for n in after.graph.node] == ["Gemm", "Gemm"]
    x = {"x": _rand(2, 96, seed=12)}
    np.testing.assert_allclose(ort_run(after, x)[0], ort_run(proto, x)[0], rtol=1e-4, atol=1e-4)


def test_cp_is_exact_at_the_true_rank_with_stride_padding_and_dilation_per_axis() -> None:
    """Four convs (1x1, depthwise kx1, depthwise 1xk, 1x1) reproduce an exactly rank-16 kernel."""
    a, b, ky, kx = _rand(64, 16, seed=21), _rand(48, 16, seed=22), _rand(3, 16, seed=23), _rand(3, 16, seed=24)
    weight = np.einsum("or,cr,yr,xr->ocyx", a, b, ky, kx).astype(F32)
    proto = parse(
        f"""{HEADER}
        g (float[1,48,11,12] x) => (float[1,64,6,10] y) {{
            y = Conv <kernel_shape = [3, 3], pads = [1, 0, 1, 2], strides = [2, 1], dilations = [1, 2]> (x, w, c)
        }}""",
        w=weight,
        c=_rand(64, seed=25),
    )
    ranks = lowrank.Ranks(16, None, cp=True)
    assert ranks.text() == "CP rank 16"
    after = _decomposed(proto, ranks)
    convs = [n for n in after.graph.node if n.op_type == "Conv"]
    shapes = {i.name: tuple(i.dims) for i in after.graph.initializer}
    assert [shapes[n.input[1]] for n in convs] == [(16, 48, 1, 1), (16, 1, 3, 1), (16, 1, 1, 3), (64, 16, 1, 1)]
    assert [n.name.rpartition("/")[2] for n in convs] == ["lr_in", "lr_h", "lr_w", "lr_out"]
    x = {"x": _rand(1, 48, 11, 12, seed=26)}
    want = ort_run(proto, x)[0]
    got = ort_run(after, x)[0]
    assert got.shape == want.shape == (1, 64, 6, 10)
    assert float(np.sum((got - want) ** 2) / np.sum(want**2)) < 1e-6


def test_cp_error_falls_as_the_rank_grows_and_its_ranks_are_aligned() -> None:
    errors = _errors_by_rank(96, 27, cp=True)
    assert errors[0] > errors[1] > errors[2] > 0
    for removed in (0.875, 0.75, 0.5):  # CP's ranks stay within the weights asked for
        ranks = lowrank.ranks_for((96, 96, 3, 3), removed, 16, cp=True)
        assert ranks is not None and ranks.first * (96 + 96 + 6) <= (1 - removed) * 96 * 96 * 9
    assert lowrank.ranks_for((96, 96), 0.5, 16, cp=True) is None  # a matrix has no CP form


def test_no_rank_saves_anything_on_a_narrow_layer() -> None:
    assert lowrank.ranks_for((16, 16, 3, 3), 0.5, 16) is None
    assert lowrank.ranks_for((16, 24), 0.25, 16) is None


@pytest.fixture(scope="module")
def digits() -> tuple[onnx.ModelProto, list[dict[str, np.ndarray]], np.ndarray]:
    proto = IRModel.load(DIGITS).to_proto()
    calib = load_calibration(DIGITS_DATA, input_shapes(proto), count=256)
    labels = np.load(DIGITS_DATA)["labels"][: len(calib)]
    return proto, list(calib.samples), labels


@pytest.mark.parametrize("criterion", prune.CRITERIA)
def test_pruning_a_space_keeps_the_model_well_formed(
    digits: tuple[onnx.ModelProto, list[dict[str, np.ndarray]], np.ndarray], criterion: prune.Criterion
) -> None:
    proto, samples, _ = digits
    model = IRModel.load(proto)
    acts = run_tensors(proto, samples[:16], ["flatten"]) if criterion == "activation" else None
    kept = prune.prune_space(model.graph, "conv3", 32, criterion, acts)
    after = model.to_proto()
    assert len(kept) == 32 and list(kept) == sorted(kept)
    weights = {i.name: tuple(i.dims) for i in after.graph.initializer}
    conv3 = next(n for n in after.graph.node if n.name == "conv3")
    fc = next(n for n in after.graph.node if n.name == "fc")
    assert weights[conv3.input[1]][0] == 32 and 32 in weights[fc.input[1]]
    assert ort_run(after, samples[0])[0].shape == (1, 10)


def test_activation_criterion_drops_what_the_readers_ignore(
    digits: tuple[onnx.ModelProto, list[dict[str, np.ndarray]], np.ndarray],
) -> None:
    proto, samples, _ = digits
    model = IRModel.load(proto)
    spaces = prune.ChannelSpaces(model.graph)
    space = spaces.by_key()["conv3"]
    acts = run_tensors(proto, samples[:16], [str(prune.reader_tensor(spaces, space))])
    scores = prune.scores(spaces, space, "activation", acts)
    # A channel the classifier does not read scores 0: silence the fc columns of channel 5.
    fc = spaces.nodes["fc"]
    weight = np.array(fc.inputs[1].values)
    axis = 1 if fc.attrs.get("transB", 0) else 0
    np.moveaxis(weight, axis, 0)[5] = 0.0
    fc.inputs[1].values = weight
    silenced = prune.scores(prune.ChannelSpaces(model.graph), space, "activation", acts)
    assert silenced[5] == 0.0 and scores[5] > 0.0


def test_reconstruction_lowers_the_held_out_error(
    digits: tuple[onnx.ModelProto, list[dict[str, np.ndarray]], np.ndarray],
) -> None:
    proto, samples, labels = digits
    fit, held = samples[:128], samples[128:]
    ref = Reference(proto, fit, held)
    units = plan.find_units(IRModel.load(proto), 16)
    assert {u.method for u in units} == {"prune", "lowrank"}
    config = {u.id: 1 for u in units}
    applied = plan.apply_config(proto, units, config, align=16)
    outs = [o.name for o in proto.graph.output]
    want = run_tensors(proto, held, outs)[outs[0]]
    before = run_tensors(applied.model.to_proto(), held, outs)[outs[0]]
    refits = plan.reconstruct(applied, ref)
    after = run_tensors(applied.model.to_proto(), held, outs)[outs[0]]

    def nmse(y: np.ndarray) -> float:
        return float(np.sum((y - want) ** 2) / np.sum(want**2))

    assert any(r.kept for r in refits) and all(r.error_after <= r.error_before for r in refits)
    assert nmse(after) < 0.5 * nmse(before)
    accuracy = float(np.mean(after.argmax(1) == labels[128:]))
    assert accuracy > float(np.mean(before.argmax(1) == labels[128:]))
    assert accuracy > 0.9
