#!/usr/bin/env python3
"""Export RepVGG in its training form (timm's RepVggBlock: 3x3+BN, 1x1+BN, identity BN) with realistic BN stats.

Why: structural re-parameterisation (``substitute-blocks``' ``reparam`` rule) is exact in float but
can cost int8 accuracy, because the merged kernel's centre tap absorbs the 1x1 and identity branches
and widens each output channel's weight range. Measuring that needs the real block (timm's, not a
hand-written look-alike) with outputs of realistic size: random-init BatchNorm running stats (0/1)
make deep outputs vanish, so the stats are re-estimated on image crops (momentum=None,
reset_running_stats, train mode, forward passes, then eval), as the project's zoo exports do.

Images: random crops of the two real photos scikit-learn ships (``load_sample_images``), normalised
with the ImageNet mean/std. BN statistics and the calibration set use disjoint seeds.

Two models:
  * ``--model repvgg_a0`` (timm's RepVGG-A0, 22 blocks, 8.3 M parameters) -- for benchmarks, not committed.
  * ``--model repvgg_narrow`` (the default; timm ByobNet of RepVGG blocks, 1/2/4/1 blocks per stage,
    16/32/48/64 channels, 10 classes) -- small enough to commit as a test fixture
    (``tests/fixtures/accuracy/``).

Needs torch, timm and scikit-learn (not nirc dependencies)::

    /work/torchenv/bin/python examples/export_repvgg.py --model repvgg_narrow --size 64 \\
        --out tests/fixtures/accuracy/repvgg_narrow_64.onnx \\
        --calib-out tests/fixtures/accuracy/repvgg_narrow_64_calib.npz
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def crops(count: int, size: int, seed: int) -> np.ndarray:
    """``count`` NCHW float32 crops (random position and scale) of scikit-learn's sample photos."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = [np.asarray(p) for p in load_sample_images().images]
    rng = np.random.default_rng(seed)
    out = np.empty((count, 3, size, size), dtype=np.float32)
    for i in range(count):
        photo = photos[int(rng.integers(len(photos)))]
        h, w = photo.shape[:2]
        side = int(rng.integers(min(h, w) // 4, min(h, w)))
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        patch = Image.fromarray(photo[top : top + side, left : left + side]).resize((size, size), Image.BILINEAR)
        if rng.random() < 0.5:
            patch = patch.transpose(Image.FLIP_LEFT_RIGHT)
        out[i] = ((np.asarray(patch, dtype=np.float32) / 255.0 - MEAN) / STD).transpose(2, 0, 1)
    return out


def build(name: str):  # type: ignore[no-untyped-def]
    import timm
    from timm.models.byobnet import ByoBlockCfg, ByobNet, ByoModelCfg

    if name == "repvgg_a0":
        return timm.create_model("repvgg_a0", pretrained=False)
    cfg = ByoModelCfg(
        blocks=(
            ByoBlockCfg(type="rep", d=1, c=16, s=2),
            ByoBlockCfg(type="rep", d=2, c=32, s=2),
            ByoBlockCfg(type="rep", d=4, c=48, s=2),
            ByoBlockCfg(type="rep", d=1, c=64, s=2),
        ),
        stem_type="rep",
        stem_chs=16,
        stem_pool="",
    )
    return ByobNet(cfg, num_classes=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="repvgg_narrow", choices=("repvgg_narrow", "repvgg_a0"))
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--calib-out", type=Path, required=True)
    parser.add_argument("--calib", type=int, default=16, help="calibration crops written to --calib-out")
    parser.add_argument("--bn-batches", type=int, default=32)
    parser.add_argument(
        "--bn-data",
        choices=("crops", "noise"),
        default="crops",
        help="BN statistics from photo crops, or from N(0,1) batches as /work/zoo_exports does",
    )
    args = parser.parse_args()

    import torch

    torch.manual_seed(0)
    model = build(args.model)
    # Re-estimate BN running statistics on image crops: cumulative average (momentum=None).
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        for batch in range(args.bn_batches):
            if args.bn_data == "noise":
                data = np.random.default_rng(1000 + batch).standard_normal((8, 3, args.size, args.size))
                model(torch.from_numpy(data.astype(np.float32)))
            else:
                model(torch.from_numpy(crops(16, args.size, seed=1000 + batch)))
    model.eval()
    x = torch.from_numpy(crops(1, args.size, seed=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        model, (x,), str(args.out), input_names=["input"], output_names=["logits"], opset_version=17, dynamo=False
    )
    calib = crops(args.calib, args.size, seed=7)
    np.savez_compressed(args.calib_out, input=calib)
    with torch.no_grad():
        logits = model(torch.from_numpy(calib)).numpy()
    print(f"{args.out}: {sum(p.numel() for p in model.parameters())} params, logits std {logits.std():.3f}")


if __name__ == "__main__":
    main()
