#!/usr/bin/env python3
"""Train the small digits CNN shipped as ``examples/digits_cnn.onnx``, with its calibration and validation data.

Why this exists: measuring what a lossy pass (``prune-channels``) costs in accuracy needs a *trained*
model and *real* held-out data, and nothing may be downloaded here. scikit-learn bundles 1,797 real
8x8 handwritten digits (``sklearn.datasets.load_digits``) inside its wheel, which is enough to train a
CNN to ~98% in a minute on two cores.

The architecture has deliberately misaligned channel counts (24, 40, 72: none a multiple of 16) and
one residual block, so both pad-channels and prune-channels have work to do:

    input 1x1x8x8 (pixels / 16)
    conv3x3 1->24 + BN + ReLU
    conv3x3 24->40 + BN + ReLU, MaxPool 2x2            -> 40x4x4
    residual: depthwise3x3 40 + BN + ReLU, conv1x1 40->40 + BN, Add, ReLU
    conv3x3 40->72 + BN + ReLU
    GlobalAveragePool, Flatten, Gemm 72->10            -> logits

The ONNX graph is written with ``onnx.helper`` from the trained ``state_dict`` (Conv without bias,
separate BatchNormalization and Relu, as a PyTorch eval export looks), not with ``torch.onnx``, so the
file does not depend on the exporter's version; the script checks it against PyTorch's own output.

Data split (seeded, stratified by class): 70% train, 30% held out. ``digits_calib.npz`` holds 128
training images under the model's input name ``input``; ``digits_val.npz`` holds every held-out image
(``input``) and its label (``labels``). Both are valid ``--calib`` files.

Needs torch, scikit-learn, onnx and onnxruntime; torch and scikit-learn are *not* nirc dependencies,
so run it in a separate environment, e.g.::

    python -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch scikit-learn onnx onnxruntime
    /tmp/torchvenv/bin/python examples/train_digits.py            # writes into examples/
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

SEED = 0
CHANNELS = (24, 40, 72)
CALIB_SAMPLES = 128
OPSET = 18


def load_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_val, y_val): NCHW float32 in [0, 1], stratified 70/30 with a fixed seed."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = digits.target.astype(np.int64)
    rng = np.random.default_rng(SEED)
    train: list[int] = []
    val: list[int] = []
    for label in range(10):
        index = np.flatnonzero(y == label)
        rng.shuffle(index)
        cut = round(0.7 * len(index))
        train += index[:cut].tolist()
        val += index[cut:].tolist()
    train_idx = np.array(sorted(train))
    val_idx = np.array(sorted(val))
    return x[train_idx], y[train_idx], x[val_idx], y[val_idx]


def build_torch_model():  # type: ignore[no-untyped-def]
    import torch
    from torch import nn

    c1, c2, c3 = CHANNELS

    class DigitsCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(1, c1, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(c1)
            self.conv2 = nn.Conv2d(c1, c2, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(c2)
            self.pool = nn.MaxPool2d(2)
            self.dw = nn.Conv2d(c2, c2, 3, padding=1, groups=c2, bias=False)
            self.dw_bn = nn.BatchNorm2d(c2)
            self.pw = nn.Conv2d(c2, c2, 1, bias=False)
            self.pw_bn = nn.BatchNorm2d(c2)
            self.conv3 = nn.Conv2d(c2, c3, 3, padding=1, bias=False)
            self.bn3 = nn.BatchNorm2d(c3)
            self.fc = nn.Linear(c3, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = torch.relu(self.bn1(self.conv1(x)))
            x = self.pool(torch.relu(self.bn2(self.conv2(x))))
            y = torch.relu(self.dw_bn(self.dw(x)))
            x = torch.relu(x + self.pw_bn(self.pw(y)))
            x = torch.relu(self.bn3(self.conv3(x)))
            return self.fc(x.mean(dim=(2, 3)))

    return DigitsCNN()


def train(x: np.ndarray, y: np.ndarray, epochs: int):  # type: ignore[no-untyped-def]
    import torch

    torch.manual_seed(SEED)
    torch.set_num_threads(2)
    model = build_torch_model()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(SEED)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(xt), generator=gen)
        total = 0.0
        for start in range(0, len(xt), 64):
            idx = order[start : start + 64]
            batch = xt[idx]
            # Light augmentation: random one-pixel shifts (zero fill), the digits are small.
            dx, dy = (int(v) for v in torch.randint(-1, 2, (2,), generator=gen))
            batch = torch.roll(batch, shifts=(dy, dx), dims=(2, 3))
            if dy:
                batch[:, :, 0 if dy > 0 else -1, :] = 0
            if dx:
                batch[:, :, :, 0 if dx > 0 else -1] = 0
            loss = torch.nn.functional.cross_entropy(model(batch), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        sched.step()
        if epoch % 10 == 9 or epoch == epochs - 1:
            print(f"epoch {epoch + 1}: loss {total / len(xt):.4f}")
    model.eval()
    return model


def to_onnx(model) -> object:  # type: ignore[no-untyped-def]
    """The eval-mode graph as opset-18 ONNX, names from the state_dict."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def init(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(op: str, inputs: list[str], name: str, **attrs: object) -> str:
        nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def conv(x: str, prefix: str, k: int, group: int = 1) -> str:
        w = init(f"{prefix}.weight", state[f"{prefix}.weight"])
        pad = k // 2
        return node("Conv", [x, w], prefix, kernel_shape=[k, k], pads=[pad] * 4, group=group)

    def bn(x: str, prefix: str) -> str:
        params = ("weight", "bias", "running_mean", "running_var")
        names = [init(f"{prefix}.{p}", state[f"{prefix}.{p}"]) for p in params]
        return node("BatchNormalization", [x, *names], prefix, epsilon=1e-5)

    c2 = CHANNELS[1]
    x = node("Relu", [bn(conv("input", "conv1", 3), "bn1")], "relu1")
    x = node("Relu", [bn(conv(x, "conv2", 3), "bn2")], "relu2")
    x = node("MaxPool", [x], "pool", kernel_shape=[2, 2], strides=[2, 2])
    y = node("Relu", [bn(conv(x, "dw", 3, group=c2), "dw_bn")], "dw_relu")
    y = bn(conv(y, "pw", 1), "pw_bn")
    x = node("Relu", [node("Add", [x, y], "add")], "add_relu")
    x = node("Relu", [bn(conv(x, "conv3", 3), "bn3")], "relu3")
    x = node("Flatten", [node("GlobalAveragePool", [x], "gap")], "flatten", axis=1)
    logits = node("Gemm", [x, init("fc.weight", state["fc.weight"]), init("fc.bias", state["fc.bias"])], "fc", transB=1)
    graph = helper.make_graph(
        nodes,
        "digits_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info(logits, TensorProto.FLOAT, [1, 10])],
        initializer=inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="nirc-examples")
    proto.ir_version = 9
    proto.doc_string = "CNN trained on sklearn load_digits (8x8), channels 24/40/72; see examples/train_digits.py"
    onnx.checker.check_model(proto, full_check=True)
    return proto


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--outdir", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--epochs", type=int, default=60)
    args = parser.parse_args()

    import onnx
    import onnxruntime as ort
    import torch

    x_train, y_train, x_val, y_val = load_split()
    model = train(x_train, y_train, args.epochs)
    with torch.no_grad():
        val_logits = model(torch.from_numpy(x_val)).numpy()
    accuracy = float(np.mean(val_logits.argmax(1) == y_val))
    print(f"held-out top-1 (PyTorch): {accuracy:.4f} on {len(y_val)} images")

    proto = to_onnx(model)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    onnx_logits = np.concatenate([session.run(None, {"input": x_val[i : i + 1]})[0] for i in range(len(x_val))])
    err = float(np.max(np.abs(onnx_logits - val_logits)))
    print(f"ONNX vs PyTorch max |diff| {err:.2e}, ONNX top-1 {np.mean(onnx_logits.argmax(1) == y_val):.4f}")
    if err > 1e-3:
        raise SystemExit("exported graph does not match the PyTorch model")

    args.outdir.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(args.outdir / "digits_cnn.onnx"))
    rng = np.random.default_rng(SEED)
    calib = x_train[np.sort(rng.choice(len(x_train), CALIB_SAMPLES, replace=False))]
    np.savez_compressed(args.outdir / "digits_calib.npz", input=calib)
    np.savez_compressed(args.outdir / "digits_val.npz", input=x_val, labels=y_val)
    for name in ("digits_cnn.onnx", "digits_calib.npz", "digits_val.npz"):
        print(f"wrote {args.outdir / name} ({(args.outdir / name).stat().st_size / 1024:.1f} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
