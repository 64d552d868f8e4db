#!/usr/bin/env python3
"""Export small attention models with PyTorch (both ONNX exporters) as nirc's attention test fixtures.

Why real exports: the patterns nirc must lower (activation x activation MatMul around Reshape/Transpose
head splits, ``scaled_dot_product_attention`` decompositions, ``nn.MultiheadAttention``) are spelled the
way each exporter spells them, which a hand-built graph would only guess.  The fixtures are kept tiny
(16x16 maps, 32 channels, a few tens of KB each) so CI runs them in seconds and needs no torch.

Run with the torch environment (nirc itself never imports torch)::

    /work/torchenv/bin/python examples/build_attention_models.py -o tests/fixtures/attention

Models (each as ``<name>_ts.onnx``, TorchScript exporter at opset 17, and ``<name>_dynamo.onnx``,
dynamo exporter at opset 18):

``mha``
    ``nn.MultiheadAttention`` (batch_first, 4 heads, 32 channels) self-attention on 16 tokens with a
    residual and a LayerNorm: batched MatMuls with 3-D and 4-D operands, head reshapes and Softmax.
``sdpa``
    A conv stem, then a ViT-style block on the flattened map (Linear qkv, reshape to heads, permute,
    ``F.scaled_dot_product_attention``), projection, reshape back to NCHW and a conv head: the hybrid
    conv-attention shape of MobileViT-like models.
``psa``
    The position-sensitive attention of YOLO11's C2PSA block: a 1x1 conv qkv, ``view`` into heads,
    ``split``, ``(q^T @ k) * scale``, Softmax, ``v @ attn^T`` and a depthwise positional conv on v,
    all on an NCHW map (Q.K^T with transposes on both sides).

Weights are seeded (``torch.manual_seed``), so the exports are reproducible for a given torch version.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


class MHA(nn.Module):
    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.attn(x, x, x, need_weights=False)
        return self.norm(x + y)


class SDPA(nn.Module):
    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.stem = nn.Sequential(nn.Conv2d(3, dim, 3, 2, 1), nn.BatchNorm2d(dim), nn.ReLU())
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.head = nn.Conv2d(dim, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)  # B, N, C
        qkv = self.qkv(t).reshape(b, h * w, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        y = F.scaled_dot_product_attention(q, k, v)
        y = y.transpose(1, 2).reshape(b, h * w, c)
        t = t + self.proj(y)
        x = t.transpose(1, 2).reshape(b, c, h, w)
        return self.head(x)


class PSA(nn.Module):
    """YOLO11 C2PSA's Attention (ultralytics.nn.modules.block.Attention), re-typed from its description."""

    def __init__(self, dim: int = 32, heads: int = 2, attn_ratio: float = 0.5) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.key_dim = int(self.head_dim * attn_ratio)
        self.scale = self.key_dim**-0.5
        h = dim + self.key_dim * heads * 2
        self.stem = nn.Sequential(nn.Conv2d(3, dim, 3, 2, 1), nn.BatchNorm2d(dim), nn.SiLU())
        self.qkv = nn.Conv2d(dim, h, 1)
        self.proj = nn.Conv2d(dim, dim, 1)
        self.pe = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        b, c, hh, ww = x.shape
        n = hh * ww
        qkv = self.qkv(x)
        q, k, v = qkv.view(b, self.heads, self.key_dim * 2 + self.head_dim, n).split(
            [self.key_dim, self.key_dim, self.head_dim], dim=2
        )
        attn = (q.transpose(-2, -1) @ k) * self.scale
        attn = attn.softmax(dim=-1)
        y = (v @ attn.transpose(-2, -1)).view(b, c, hh, ww) + self.pe(v.reshape(b, c, hh, ww))
        return x + self.proj(y)


MODELS: dict[str, tuple[type[nn.Module], tuple[int, ...]]] = {
    "mha": (MHA, (1, 16, 32)),
    "sdpa": (SDPA, (1, 3, 16, 16)),
    "psa": (PSA, (1, 3, 16, 16)),
}


def export(name: str, out_dir: Path) -> list[Path]:
    cls, shape = MODELS[name]
    torch.manual_seed(0)
    model = cls().eval()
    for m in model.modules():  # non-trivial BatchNorm statistics, as a trained model has
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    x = torch.randn(*shape)
    paths = []
    ts = out_dir / f"{name}_ts.onnx"
    torch.onnx.export(model, (x,), str(ts), dynamo=False, opset_version=17, input_names=["x"],
                      output_names=["y"])
    paths.append(ts)
    dyn = out_dir / f"{name}_dynamo.onnx"
    prog = torch.onnx.export(model, (x,), dynamo=True, opset_version=18, input_names=["x"],
                             output_names=["y"], external_data=False)
    prog.save(str(dyn))
    paths.append(dyn)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("-o", "--out-dir", type=Path, default=Path("tests/fixtures/attention"))
    parser.add_argument("names", nargs="*", default=list(MODELS))
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name in args.names:
        for p in export(name, args.out_dir):
            print(f"{p} {p.stat().st_size} bytes")


if __name__ == "__main__":
    main()
