#!/usr/bin/env python3
"""Train the seed's CIFAR-shaped networks and the digits CNN on real data, for top-1 float / int8 / NPU.

Why this exists: int8 accuracy is only meaningful on a *trained* model and *real* held-out data, and
nothing may be downloaded here. scikit-learn ships 1,797 real 8x8 handwritten digits inside its wheel
(``sklearn.datasets.load_digits``). They are upscaled here (bilinear, NumPy) to 32x32 so the seed's
CIFAR-shaped networks run at their own input size. **This is not CIFAR-100**: 10 classes, grey images
(replicated to 3 channels for the CIFAR networks), 1,257 training and 540 held-out images.

Models (architectures exactly as ``examples/build_models.py`` builds them; only the classifier has 10
outputs instead of 100, because there are 10 classes):

``vgg19_digits32``
    ``vgg19_cifar100`` (CIFAR VGG19-BN) with ``Linear(512, 10)``.
``resnet50_digits32``
    ``resnet50_cifar100`` (kuangliu CIFAR ResNet50) with ``Linear(2048, 10)``.
``mobilenetv1_digits32``
    ``mobilenetv1_cifar100`` (kuangliu CIFAR MobileNetV1) with ``Linear(1024, 10)``.
``digits_cnn32``
    ``examples/train_digits.py``'s CNN (channels 24/40/72, one residual block) on 1x1x32x32 input.

The torch modules below reproduce the builder graphs' ``state_dict`` key names, so the ONNX file is the
builder's own graph (``build_models.MODELS[...]``, ``train_digits.to_onnx``) with the trained tensors put
in by name; the script checks that every builder tensor was replaced and that ONNX Runtime matches PyTorch.

Split: ``train_digits.load_split`` (seeded, stratified 70/30). Training: AdamW + one-cycle LR, random
shifts of up to 4 pixels, a few epochs (CPU-cheap; runs at ``nice 10``); everything seeded.

Output per model in ``--outdir`` (default ``~/.cache/nirc-bench/trained/``, not committed: ResNet50 is
~95 MB): ``<name>.onnx``, ``<name>_calib.npz`` (128 training images under the input name ``input``, a
valid ``--calib`` file) and ``<name>_val.npz`` (every held-out image ``input`` and its ``labels``), plus
``manifest.json`` with the PyTorch and ONNX Runtime held-out top-1 of each model.

Needs torch and scikit-learn (the optional extra ``train``), never needed by nirc itself::

    nice -n 10 /work/torchenv/bin/python examples/train_small.py            # all four models
    python examples/train_small.py mobilenetv1_digits32 --epochs 2           # one model, shorter
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import build_models
import train_digits

SEED = 0
SIZE = 32
NUM_CLASSES = 10
CALIB_SAMPLES = 128
DEFAULT_OUT_DIR = Path.home() / ".cache" / "nirc-bench" / "trained"

#: name -> (builder model it mirrors or "digits", input channels, epochs, batch, peak learning rate)
MODELS: dict[str, tuple[str, int, int, int, float]] = {
    "digits_cnn32": ("digits", 1, 15, 32, 3e-3),
    "mobilenetv1_digits32": ("mobilenetv1_cifar100", 3, 8, 32, 3e-3),
    "vgg19_digits32": ("vgg19_cifar100", 3, 4, 32, 1e-3),
    "resnet50_digits32": ("resnet50_cifar100", 3, 3, 32, 2e-3),
}


def upscale(images: np.ndarray, size: int = SIZE) -> np.ndarray:
    """Bilinear resize of NCHW images (half-pixel centres, edge clamp; what ``align_corners=False`` does)."""
    h, w = images.shape[2:]

    def axis(n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.clip((np.arange(size) + 0.5) * n_in / size - 0.5, 0.0, n_in - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, (pos - lo).astype(np.float32)

    y0, y1, fy = axis(h)
    x0, x1, fx = axis(w)
    rows = images[:, :, y0, :] * (1 - fy)[:, None] + images[:, :, y1, :] * fy[:, None]
    out = rows[:, :, :, x0] * (1 - fx) + rows[:, :, :, x1] * fx
    return np.ascontiguousarray(out, dtype=np.float32)


def load_data(channels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_val, y_val) at 32x32 with ``channels`` identical channels, pixels in [0, 1]."""
    x_train, y_train, x_val, y_val = train_digits.load_split()
    x_train, x_val = upscale(x_train), upscale(x_val)
    if channels != 1:
        x_train, x_val = np.repeat(x_train, channels, axis=1), np.repeat(x_val, channels, axis=1)
    return x_train, y_train, x_val, y_val


# -- torch modules with the builder graphs' state_dict names ----------------------------------------


def _torch_module(kind: str) -> Any:
    import torch
    from torch import nn

    def conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]

    if kind == "digits":
        return train_digits.build_torch_model()

    if kind == "vgg19_cifar100":
        layers: list[nn.Module] = []
        cin = 3
        for v in build_models._VGG19_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            assert isinstance(v, int)
            layers += [*conv_bn(cin, v, 3), nn.ReLU()]
            cin = v

        class VGG(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.features = nn.Sequential(*layers)
                self.classifier = nn.Linear(512, NUM_CLASSES)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.classifier(torch.flatten(self.features(x), 1))

        return VGG()

    if kind == "resnet50_cifar100":

        class Bottleneck(nn.Module):
            def __init__(self, cin: int, planes: int, stride: int) -> None:
                super().__init__()
                self.conv1, self.bn1 = conv_bn(cin, planes, 1)
                self.conv2, self.bn2 = conv_bn(planes, planes, 3, stride)
                self.conv3, self.bn3 = conv_bn(planes, 4 * planes, 1)
                project = stride != 1 or cin != 4 * planes
                self.shortcut = nn.Sequential(*conv_bn(cin, 4 * planes, 1, stride)) if project else nn.Sequential()

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                y = torch.relu(self.bn1(self.conv1(x)))
                y = torch.relu(self.bn2(self.conv2(y)))
                return torch.relu(self.bn3(self.conv3(y)) + self.shortcut(x))

        class ResNet(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.conv1, self.bn1 = conv_bn(3, 64, 3)
                cin = 64
                for stage, (planes, blocks, stride) in enumerate(build_models._RESNET50_STAGES, start=1):
                    seq = []
                    for i in range(blocks):
                        seq.append(Bottleneck(cin, planes, stride if i == 0 else 1))
                        cin = 4 * planes
                    setattr(self, f"layer{stage}", nn.Sequential(*seq))
                self.linear = nn.Linear(cin, NUM_CLASSES)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                x = torch.relu(self.bn1(self.conv1(x)))
                for stage in range(1, 5):
                    x = getattr(self, f"layer{stage}")(x)
                return self.linear(x.mean(dim=(2, 3)))

        return ResNet()

    if kind == "mobilenetv1_cifar100":

        class Block(nn.Module):
            def __init__(self, cin: int, cout: int, stride: int) -> None:
                super().__init__()
                self.conv1, self.bn1 = conv_bn(cin, cin, 3, stride, groups=cin)
                self.conv2, self.bn2 = conv_bn(cin, cout, 1)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))

        class MobileNet(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.conv1, self.bn1 = conv_bn(3, 32, 3)
                blocks = []
                cin = 32
                for item in build_models._MOBILENETV1_CFG:
                    cout, stride = (item, 1) if isinstance(item, int) else item
                    blocks.append(Block(cin, cout, stride))
                    cin = cout
                self.layers = nn.Sequential(*blocks)
                self.linear = nn.Linear(cin, NUM_CLASSES)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                x = self.layers(torch.relu(self.bn1(self.conv1(x))))
                return self.linear(x.mean(dim=(2, 3)))

        return MobileNet()
    raise ValueError(f"unknown architecture {kind!r}")


def train(kind: str, x: np.ndarray, y: np.ndarray, epochs: int, batch: int, lr: float) -> Any:
    import torch

    torch.manual_seed(SEED)
    model = _torch_module(kind)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    steps = epochs * ((len(x) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.25)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(SEED)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(xt), generator=gen)
        total, start_time = 0.0, time.time()
        for start in range(0, len(xt), batch):
            idx = order[start : start + batch]
            # Random shifts of up to 4 pixels (1/8 of the image), zero fill: the digits are centred.
            dy, dx = (int(v) for v in torch.randint(-4, 5, (2,), generator=gen))
            padded = torch.nn.functional.pad(xt[idx], (4, 4, 4, 4))
            images = padded[:, :, 4 + dy : 4 + dy + SIZE, 4 + dx : 4 + dx + SIZE]
            loss = torch.nn.functional.cross_entropy(model(images), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        print(
            f"  epoch {epoch + 1}/{epochs}: loss {total / len(xt):.4f} ({time.time() - start_time:.0f} s)", flush=True
        )
    model.eval()
    return model


def to_onnx(name: str, kind: str, model: Any) -> Any:
    """The builder's graph for ``kind`` with the trained tensors substituted by name, 10-class head."""
    import onnx
    from onnx import numpy_helper

    if kind == "digits":
        proto = train_digits.to_onnx(model)
        dims = proto.graph.input[0].type.tensor_type.shape.dim
        dims[2].dim_value, dims[3].dim_value = SIZE, SIZE
    else:
        proto = build_models.MODELS[kind]()
        state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
        for i, tensor in enumerate(proto.graph.initializer):
            if tensor.name.startswith("relu6."):
                continue
            if tensor.name not in state:
                raise SystemExit(f"{name}: builder tensor {tensor.name} has no trained counterpart")
            value = np.ascontiguousarray(state[tensor.name], np.float32)
            old = tuple(tensor.dims)
            if value.shape != old and old[0] != 100:  # only the 100-class head may change shape
                raise SystemExit(f"{name}: {tensor.name} shape {value.shape} != builder {old}")
            proto.graph.initializer[i].CopyFrom(numpy_helper.from_array(value, tensor.name))
        proto.graph.output[0].type.tensor_type.shape.dim[1].dim_value = NUM_CLASSES
    proto.graph.name = name
    proto.doc_string = f"{name}: trained on sklearn digits upscaled to 32x32 (not CIFAR); examples/train_small.py"
    onnx.checker.check_model(proto, full_check=True)
    return proto


def ort_logits(proto: Any, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))])


def run_one(name: str, outdir: Path, epochs: int | None) -> dict[str, float]:
    import onnx
    import torch

    kind, channels, default_epochs, batch, lr = MODELS[name]
    x_train, y_train, x_val, y_val = load_data(channels)
    print(f"{name}: {len(x_train)} train / {len(x_val)} held-out images, {channels}x{SIZE}x{SIZE}", flush=True)
    model = train(kind, x_train, y_train, epochs or default_epochs, batch, lr)
    with torch.no_grad():
        torch_logits = np.concatenate(
            [model(torch.from_numpy(x_val[i : i + 64])).numpy() for i in range(0, len(x_val), 64)]
        )
    proto = to_onnx(name, kind, model)
    logits = ort_logits(proto, x_val)
    err = float(np.max(np.abs(logits - torch_logits)) / max(1e-6, float(np.max(np.abs(torch_logits)))))
    if err > 1e-3:
        raise SystemExit(f"{name}: exported graph does not match the PyTorch model (rel. max diff {err:.2e})")
    top1_torch = float(np.mean(torch_logits.argmax(1) == y_val))
    top1_onnx = float(np.mean(logits.argmax(1) == y_val))
    print(f"{name}: held-out top-1 PyTorch {top1_torch:.4f}, ONNX Runtime {top1_onnx:.4f}", flush=True)
    outdir.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(outdir / f"{name}.onnx"))
    rng = np.random.default_rng(SEED)
    calib = x_train[np.sort(rng.choice(len(x_train), CALIB_SAMPLES, replace=False))]
    np.savez_compressed(outdir / f"{name}_calib.npz", input=calib)
    np.savez_compressed(outdir / f"{name}_val.npz", input=x_val, labels=y_val)
    return {"top1_torch": top1_torch, "top1_onnx": top1_onnx, "epochs": float(epochs or default_epochs)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("models", nargs="*", help=f"default: all of {', '.join(MODELS)}")
    parser.add_argument("-o", "--outdir", type=Path, default=DEFAULT_OUT_DIR)
    parser.add_argument("--epochs", type=int, default=None, help="override every model's epoch count")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    unknown = sorted(set(args.models) - set(MODELS))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    import torch

    os.nice(10)
    torch.set_num_threads(args.threads)
    manifest_path = args.outdir / "manifest.json"
    manifest: dict[str, Any] = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    for name in args.models or list(MODELS):
        manifest[name] = run_one(name, args.outdir, args.epochs)
        manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    print(f"wrote {args.outdir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
