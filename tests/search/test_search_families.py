"""The families build valid, deterministic ONNX whose size matches the reference architectures."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from nirc.errors import NircError
from nirc.search.families import FAMILIES, Candidate, candidates, default_resolutions, make_divisible
from nirc.search.graph import count_macs_params


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_smallest_variant_runs_in_onnxruntime(family: str) -> None:
    fam = FAMILIES[family]
    size = 128 if fam.task == "detection" else 64
    model = Candidate(family, next(iter(fam.variants)), size, 10).build()
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(model.SerializeToString())
    image = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    outputs = session.run(None, {session.get_inputs()[0].name: image})
    assert all(np.isfinite(o).all() for o in outputs)
    if fam.task == "classification":
        assert outputs[0].shape == (1, 10)
    else:  # box (64 DFL bins) and class maps at strides 8, 16, 32
        assert [o.shape for o in outputs] == [(1, c, size // s, size // s) for s in (8, 16, 32) for c in (64, 10)]


@pytest.mark.parametrize(
    ("family", "variant", "size", "macs_m", "params_m"),
    [
        ("mobilenetv2", "w1.0", 224, 300.8, 3.50),  # torchvision mobilenet_v2
        ("resnet", "d18-w1.0", 224, 1814.1, 11.69),  # torchvision resnet18
        ("ghostnet", "w1.0", 224, 141.2, 5.18),  # timm ghostnet_100: 5.18 M params
        ("yolo", "n", 640, 4371.5, 3.16),  # yolov8n: 8.7 GFLOPs, 3.2 M params
    ],
)
def test_sizes_match_the_reference_architectures(family: str, variant: str, size: int, macs_m: float,
                                                 params_m: float) -> None:  # fmt: skip
    macs, params = count_macs_params(Candidate(family, variant, size, 80 if family == "yolo" else 1000).build())
    assert macs / 1e6 == pytest.approx(macs_m, rel=2e-3)
    assert params / 1e6 == pytest.approx(params_m, rel=5e-3)


def test_builds_are_byte_identical() -> None:
    candidate = Candidate("efficientnet-lite", "lite0", 96, 10)
    assert candidate.build().SerializeToString() == candidate.build().SerializeToString()


def test_fused_stages_trade_depthwise_for_dense_convs() -> None:
    def depthwise(model: onnx.ModelProto) -> int:
        return sum(1 for n in model.graph.node if n.op_type == "Conv" and any(a.name == "group" and a.i > 1
                                                                              for a in n.attribute))  # fmt: skip

    counts = [depthwise(Candidate("fused-ib", f"f{k}-w0.5", 64, 10).build()) for k in (1, 2, 3)]
    assert counts[0] > counts[1] > counts[2] > 0


def test_make_divisible_rounds_like_mobilenet() -> None:
    assert [make_divisible(v) for v in (32 * 0.35, 16 * 0.35, 1280 * 1.4, 24)] == [16, 8, 1792, 24]


def test_candidate_grid_and_its_errors() -> None:
    assert default_resolutions("classification", 224) == [224, 160, 128]
    assert default_resolutions("detection", 640) == [640, 480, 320]
    grid = candidates("classification", 96, families=["resnet"], variants=["d10-w0.5"])
    assert [c.name for c in grid] == ["resnet-d10-w0.5-96", "resnet-d10-w0.5-64"]
    with pytest.raises(NircError, match="unknown family 'vgg'"):
        candidates("classification", 224, families=["vgg"])
    with pytest.raises(NircError, match="is for detection"):
        candidates("classification", 224, families=["yolo"])
    with pytest.raises(NircError, match="multiple of 32"):
        candidates("classification", 100)
